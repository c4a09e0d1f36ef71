#!/usr/bin/env bash
# SODA pretraining on one node with torchrun (8 GPUs by default).
#
#   SIZE=600m DATA="0.95 data/speech 0.05 data/text" TOKENIZER=tokenizers/soda bash examples/pretrain.sh
#
# SIZE: 135m, 600m, 1.7b or 4b (layout and micro-batch from examples/soda_sizes.sh). A killed run started
# again resumes from the newest checkpoint in $OUT/ckpt. SIGTERM to torchrun makes the run save one at the
# end of the iteration under way: torchrun passes the signal on and gives its workers SHUTDOWN_TIMEOUT
# seconds (default 600) before it kills them, then exits non-zero; start the script again to continue. DRY_RUN=1 prints the plan (model, layout, run
# size, memory per GPU; SODA's vocabulary when TOKENIZER is unset) and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SIZE:?set SIZE to 135m, 600m, 1.7b or 4b}"
: "${DATA:?set DATA to the --data-path blend, e.g. \"0.95 data/speech 0.05 data/text\"}"
[[ "${DRY_RUN:-0}" == 1 ]] || : "${TOKENIZER:?set TOKENIZER to the SODA tokenizer directory}"
source examples/soda_sizes.sh
soda_size "$SIZE"
GPUS=${GPUS:-8}
OUT=${OUT:-runs/soda-$SIZE}
pretrain_flags
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  WORLD_SIZE=$GPUS exec "${PYTHON:-python}" -m megatron_soda.pretrain "${PRETRAIN_FLAGS[@]}" --dry-run
fi
echo "SODA $SIZE on $GPUS GPUs: TP=$TP PP=$PP micro-batch $MICRO_BATCH, about $MEMORY_GIB GiB per GPU"
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-600}
exec torchrun --standalone --nproc-per-node "$GPUS" -m megatron_soda.pretrain "${PRETRAIN_FLAGS[@]}"
