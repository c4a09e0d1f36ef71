#!/usr/bin/env bash
# SODA's token-composition ablations from one preprocessed speech corpus, without re-encoding it:
#   1. codebooks per frame K = 1, 2, 4, 8 (1: Mimi's semantic codebook alone), each with and without
#      interleaved transcripts (tools/rerender.py re-renders the stored codes: minutes, not a codec pass);
#   2. the text-share sweep: the speech (K = 8, with transcripts) blended with text-only documents at
#      0%, 5%, 10% and 20% of the samples (--data-path weights; 0% is the K = 8 with-text run of 1.);
# then trains a small model on each and scores each with tools/evaluate.py's likelihood tasks.
#
#   SPEECH_JOB=data/speech TOKENIZER=tokenizers/soda TEXT_DATA=data/text_all CODEC_PATH=models/mimi \
#   EVAL_INPUTS="swuggy=data/sWUGGY sblimp=data/sBLIMP" bash examples/ablations_token_composition.sh
#
# SPEECH_JOB: a tools/preprocess_audio.py --output-dir (its codes_*, meta_*.jsonl and transcripts).
# TOKENIZER: the tokenizer it was preprocessed with. Below 8 codebooks each run trains with its compact
#   tokenizer (the same ids, the audio block cut after codebook K-1), written by tools/rerender.py into
#   its job directory; its datasets and checkpoints refuse any other tokenizer.
# TEXT_DATA: a text-only dataset prefix made with TOKENIZER (tools/preprocess_text.py, then merge_datasets).
# CODEC_PATH: the Mimi the corpus was encoded with (evaluation encodes its audio with the run's K codebooks).
# EVAL_INPUTS: KEY=PATH pairs for tools/evaluate.py --input; EVAL_TASKS (default "swuggy sblimp twuggy
#   tblimp") the likelihood tasks scored on every run.
# MODEL (soda-135m), TRAIN_ITERS, GLOBAL_BATCH, MICRO_BATCH, SEQ_LENGTH, GPUS, OUT: the size of each run.
# A killed run started again with the same command resumes: re-renders skip committed shards, and each
# training continues from its newest checkpoint.
# DRY_RUN=1 checks the variables and one training command's flags (pretrain --dry-run) and exits.
set -euo pipefail

: "${SPEECH_JOB:?set SPEECH_JOB to a preprocessed speech job (tools/preprocess_audio.py --output-dir)}"
: "${TOKENIZER:?set TOKENIZER to the SODA tokenizer SPEECH_JOB was preprocessed with}"
: "${TEXT_DATA:?set TEXT_DATA to a text-only dataset prefix made with TOKENIZER (tools/preprocess_text.py)}"
: "${CODEC_PATH:?set CODEC_PATH to the Mimi codec SPEECH_JOB was encoded with}"
: "${EVAL_INPUTS:?set EVAL_INPUTS to the evaluation data, KEY=PATH pairs (e.g. swuggy=data/sWUGGY)}"
read -ra eval_tasks <<< "${EVAL_TASKS:-swuggy sblimp twuggy tblimp}"
read -ra eval_inputs <<< "$EVAL_INPUTS"
OUT=${OUT:-runs/ablations}
MODEL=${MODEL:-soda-135m}
TRAIN_ITERS=${TRAIN_ITERS:-10000}
GLOBAL_BATCH=${GLOBAL_BATCH:-128}
MICRO_BATCH=${MICRO_BATCH:-8}
SEQ_LENGTH=${SEQ_LENGTH:-4096}
GPUS=${GPUS:-8}
PY=${PYTHON:-python}

# One small model per composition, SODA's recipe for MODEL (Cautious AdamW, WSD, z-loss) over TRAIN_ITERS.
train_flags() {  # NAME TOKENIZER DATA-PATH...: sets the array `flags`
  local name=$1 tokenizer=$2
  shift 2
  flags=(
    --model "$MODEL" --tokenizer "$tokenizer" --data-path "$@" --seq-length "$SEQ_LENGTH"
    --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" --train-iters "$TRAIN_ITERS"
    --save "$OUT/ckpt/$name" --load "$OUT/ckpt/$name" --save-interval 1000 --eval-interval 1000
    --log-interval 10 --tensorboard-dir "$OUT/tensorboard/$name" --metrics-file "$OUT/metrics/$name.jsonl"
  )
  if [[ "${BF16:-1}" == 1 ]]; then flags+=(--bf16); fi
}

weights() {  # TEXT-PERCENT: the --data-path of the speech blended with that share of text-only samples
  if (( $1 == 0 )); then echo "$OUT/data/k8_text"; return; fi
  awk -v s="$1" -v speech="$OUT/data/k8_text" -v text="$TEXT_DATA" \
    'BEGIN { printf "%.2f %s %.2f %s\n", 1 - s / 100, speech, s / 100, text }'
}

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  read -ra data <<< "$(weights 5)"
  train_flags text5 "$TOKENIZER" "${data[@]}"
  exec "$PY" -m megatron_soda.pretrain "${flags[@]}" --dry-run
fi

mkdir -p "$OUT/data" "$OUT/metrics"
declare -A tokenizer_of codebooks_of

# 1. The compositions: re-render the stored codes, merge each job's shards into one dataset.
for K in 1 2 4 8; do
  for mode in text audio; do
    name="k${K}_${mode}"
    only=()
    if [[ "$mode" == audio ]]; then only=(--audio-only); fi
    "$PY" tools/rerender.py --input "$SPEECH_JOB" --output-dir "$OUT/rerender/$name" --tokenizer "$TOKENIZER" \
      --num-codebooks "$K" "${only[@]}" --json "$OUT/rerender/$name.json" > /dev/null
    "$PY" tools/merge_datasets.py --input "$OUT/rerender/$name/shards" --output "$OUT/data/$name" --overwrite
    tokenizer_of[$name]=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["tokenizer"])' \
      "$OUT/rerender/$name/report.json")
    codebooks_of[$name]=$K
  done
done

# 2. Train: each composition, then the text-share sweep (K = 8 with transcripts, plus text-only samples).
runs=()
for name in k1_text k1_audio k2_text k2_audio k4_text k4_audio k8_text k8_audio; do
  train_flags "$name" "${tokenizer_of[$name]}" "$OUT/data/$name"
  torchrun --nproc-per-node "$GPUS" -m megatron_soda.pretrain "${flags[@]}"
  runs+=("$name")
done
for share in 5 10 20; do
  name="text${share}"
  read -ra data <<< "$(weights "$share")"
  train_flags "$name" "$TOKENIZER" "${data[@]}"
  torchrun --nproc-per-node "$GPUS" -m megatron_soda.pretrain "${flags[@]}"
  tokenizer_of[$name]=$TOKENIZER
  codebooks_of[$name]=8
  runs+=("$name")
done

# 3. Score every run on the likelihood tasks, each with its own tokenizer and codebooks; then side by side.
for name in "${runs[@]}"; do
  "$PY" tools/evaluate.py --load "$OUT/ckpt/$name" --tokenizer "${tokenizer_of[$name]}" \
    --codec-path "$CODEC_PATH" --num-codebooks "${codebooks_of[$name]}" \
    --tasks "${eval_tasks[@]}" --input "${eval_inputs[@]}" --output-dir "$OUT/eval/$name"
done
compared=()
for name in "${runs[@]}"; do compared+=("$OUT/eval/$name"); done
"$PY" tools/evaluate.py --compare "${compared[@]}"
