#!/usr/bin/env bash
# SODA's IsoFLOP study on a SLURM cluster: plan the 59-run grid (WITH_TARGETS=1 adds Marin's 7 target
# runs), submit it as one array job (a task per run; finished runs are skipped, killed ones resume), then
# collect, fit and plot once the array is done (run this script again with STAGE=analyse).
#
#   DATA="0.95 data/speech 0.05 data/text" TOKENIZER=tokenizers/soda bash examples/isoflop_sweep.sh
#   STAGE=analyse bash examples/isoflop_sweep.sh
#
# DRY_RUN=1 plans and writes the array script without submitting it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
STUDY=${STUDY:-runs/isoflop}
if [[ "${STAGE:-launch}" == analyse ]]; then
  "$PY" tools/isoflop.py collect --output-dir "$STUDY"
  "$PY" tools/isoflop.py fit --output-dir "$STUDY" --predict 1e21
  exec "$PY" tools/isoflop.py plot --output-dir "$STUDY"
fi
: "${DATA:?set DATA to the --data-path blend, e.g. \"0.95 data/speech 0.05 data/text\"}"
: "${TOKENIZER:?set TOKENIZER to the SODA tokenizer directory}"
targets=()
[[ "${WITH_TARGETS:-0}" == 1 ]] && targets=(--with-targets)
"$PY" tools/isoflop.py plan --output-dir "$STUDY" --tokenizer "$TOKENIZER" --bf16 "${targets[@]}"
submit=(--submit)
[[ "${DRY_RUN:-0}" == 1 ]] && submit=()
# shellcheck disable=SC2086  # DATA is a list of weights and prefixes
"$PY" tools/isoflop.py launch --output-dir "$STUDY" --data-path $DATA --slurm "${submit[@]}" \
  --nproc-per-node "${GPUS_PER_RUN:-8}" --slurm-max-parallel "${MAX_PARALLEL:-16}"
