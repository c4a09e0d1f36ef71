#!/usr/bin/env bash
# A trained checkpoint -> a Hugging Face directory, then SODA's benchmarks on it from local data.
#
#   LOAD=runs/soda-600m/ckpt TOKENIZER=tokenizers/soda CODEC_PATH=models/mimi EVAL_DATA=data/eval \
#       bash examples/export_and_evaluate.sh
#
# EVAL_DATA holds local copies of the benchmarks: sWUGGY/, sBLIMP/, salmon/, hellaswag_val.jsonl,
# librispeech_test_clean.jsonl (those present are run). ASR_MODEL (a local Whisper) scores TTS by WER.
# DRY_RUN=1 checks the checkpoint and prints the tensor mapping of the export, writing nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
: "${LOAD:?set LOAD to the training checkpoint directory}"
: "${TOKENIZER:?set TOKENIZER to the SODA tokenizer directory}"
OUT=${OUT:-$LOAD/../export}
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  exec "$PY" tools/convert_checkpoint.py export --load "$LOAD" --tokenizer "$TOKENIZER" --output "$OUT/hf" --dry-run
fi
: "${CODEC_PATH:?set CODEC_PATH to the Mimi codec}"
: "${EVAL_DATA:?set EVAL_DATA to the folder of local benchmark copies}"
"$PY" tools/convert_checkpoint.py export --load "$LOAD" --tokenizer "$TOKENIZER" --output "$OUT/hf"
tasks=() inputs=()
for entry in swuggy=sWUGGY sblimp=sBLIMP salmon=salmon hellaswag=hellaswag_val.jsonl \
  asr=librispeech_test_clean.jsonl; do
  if [[ -e "$EVAL_DATA/${entry#*=}" ]]; then
    tasks+=("${entry%%=*}") inputs+=("${entry%%=*}=$EVAL_DATA/${entry#*=}")
  fi
done
[[ " ${tasks[*]} " == *" swuggy "* ]] && tasks+=(twuggy)
[[ " ${tasks[*]} " == *" sblimp "* ]] && tasks+=(tblimp)
(( ${#tasks[@]} )) || { echo "no benchmark data under $EVAL_DATA" >&2; exit 2; }
"$PY" tools/evaluate.py --hf "$OUT/hf" --codec-path "$CODEC_PATH" --tasks "${tasks[@]}" --input "${inputs[@]}" \
  ${ASR_MODEL:+--asr-model "$ASR_MODEL"} --output-dir "$OUT/eval"
