#!/usr/bin/env bash
# Voice-preserving speech-to-speech translation: fine-tune a SODA base model on CVSS-style pairs, then
# translate and evaluate (BLEU, ASR-BLEU, speaker similarity). One node; torchrun starts the ranks.
#
#   CVSS_TRAIN=data/cvss/train.jsonl CVSS_TEST=data/cvss/test.jsonl TOKENIZER=tokenizers/soda \
#   CODEC_PATH=models/mimi BASE_HF=models/soda-600m bash examples/finetune_s2st.sh
#
# CVSS_TRAIN / CVSS_TEST: JSONL, one pair per line: source_audio, source_language (fr, de, ...),
#   source_text (optional), target_text, target_audio (audio paths relative to the file).
# BASE_HF: the base model as a Hugging Face Qwen3 directory (imported once), or BASE_CKPT: our checkpoint.
# VARIANT: sft (loss on target text, target audio and <|end_of_text|>; default) or lm (every token).
# A killed run started again with the same command resumes: preprocessing skips committed shards, and
# training continues from the newest checkpoint in $OUT/ckpt.
# DRY_RUN=1 checks the variables and the fine-tuning flags (pretrain --dry-run) and exits.
set -euo pipefail

: "${CVSS_TRAIN:?set CVSS_TRAIN to the training pairs (JSONL)}"
: "${TOKENIZER:?set TOKENIZER to the SODA tokenizer directory}"
: "${CODEC_PATH:?set CODEC_PATH to the Mimi codec (a local directory or hub id in the cache)}"
if [[ -z "${BASE_HF:-}" && -z "${BASE_CKPT:-}" ]]; then
  echo "set BASE_HF (a Hugging Face base model directory) or BASE_CKPT (a training checkpoint)" >&2
  exit 2
fi
VARIANT=${VARIANT:-sft}
OUT=${OUT:-runs/s2st_${VARIANT}}
GPUS=${GPUS:-8}
TP=${TP:-1}
MICRO_BATCH=${MICRO_BATCH:-4}
SEQ_LENGTH=${SEQ_LENGTH:-2048}
PY=${PYTHON:-python}

# SODA's S2ST settings come with the recipe (Cautious AdamW with AdamC, lr 2e-5, 3% warmup, cosine to
# 0.1 x lr for sft or 0 for lm, batch 64 x 2,048, 5 epochs, z-loss 1e-4); any flag below overrides it.
train_flags=(
  --finetune-recipe "soda-s2st-${VARIANT}" --tokenizer "$TOKENIZER"
  --data-path "$OUT/data/s2st_packed" --packed-data --split 98,2,0 --seq-length "$SEQ_LENGTH"
  --micro-batch-size "$MICRO_BATCH" --tensor-model-parallel-size "$TP"
  --save "$OUT/ckpt" --save-interval 1000 --eval-interval 1000 --log-interval 10 --exit-signal-handler
  --tensorboard-dir "$OUT/tensorboard" --metrics-file "$OUT/metrics.jsonl"
)
[[ "${BF16:-1}" == 1 ]] && train_flags+=(--bf16)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  exec "$PY" -m megatron_soda.pretrain "${train_flags[@]}" --model soda-600m --train-iters 28615 --dry-run
fi

# 1. Pairs -> SODA's S2ST sequences with their loss flags (shards, resumable, rejects with reasons).
"$PY" tools/preprocess_sft.py --format s2st --variant "$VARIANT" --input "$CVSS_TRAIN" \
  --tokenizer "$TOKENIZER" --codec-path "$CODEC_PATH" --seq-length "$SEQ_LENGTH" --output-dir "$OUT/prep"
"$PY" tools/merge_datasets.py --input "$OUT/prep/shards" --output "$OUT/data/s2st" --overwrite
# Packed rows keep every example whole, so no response loses its source.
"$PY" tools/pack_dataset.py --input "$OUT/data/s2st" --output "$OUT/data/s2st_packed" \
  --seq-length "$SEQ_LENGTH" --overwrite

# 2. The base model: a Hugging Face directory is imported once into a checkpoint.
BASE=${BASE_CKPT:-$OUT/base}
if [[ -n "${BASE_HF:-}" && ! -e "$BASE/latest_checkpointed_iteration.txt" ]]; then
  "$PY" tools/convert_checkpoint.py import --hf "$BASE_HF" --save "$BASE" --tensor-model-parallel-size "$TP"
fi

# 3. Fine-tune: from the base's weights, or on from our own newest checkpoint after a restart (SIGTERM saves
#    one first: torchrun passes it on and waits up to SHUTDOWN_TIMEOUT seconds).
if [[ -e "$OUT/ckpt/latest_checkpointed_iteration.txt" ]]; then
  start=(--load "$OUT/ckpt")
else
  start=(--load "$BASE" --finetune)
fi
TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-600} \
  torchrun --nproc-per-node "$GPUS" -m megatron_soda.pretrain "${train_flags[@]}" "${start[@]}"

# 4. Translate the test set (text greedy, then speech in the source speaker's voice) and evaluate.
if [[ -n "${CVSS_TEST:-}" ]]; then
  "$PY" tools/generate.py --task s2st --load "$OUT/ckpt" --tokenizer "$TOKENIZER" --codec-path "$CODEC_PATH" \
    --input "$CVSS_TEST" --output-dir "$OUT/translations"
  eval_models=()
  [[ -n "${ASR_MODEL:-}" ]] && eval_models+=(--asr-model "$ASR_MODEL")
  [[ -n "${SPEAKER_MODEL:-}" ]] && eval_models+=(--speaker-model "$SPEAKER_MODEL")
  "$PY" tools/evaluate.py --load "$OUT/ckpt" --tokenizer "$TOKENIZER" --codec-path "$CODEC_PATH" \
    --tasks s2st --input "s2st=$CVSS_TEST" "${eval_models[@]}" --output-dir "$OUT/eval"
fi
