#!/usr/bin/env bash
# The GPU measurements of this project, one stage per call of the device machine (10 minutes each).
#
# The device (Python 3.12, CUDA torch, transformers) lacks megatron-core, soundfile and soxr: fetch
# their cp312 wheels here once, into the git-ignored .whl/ folder, and carry it with every call:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl megatron-core==0.19.2 soundfile soxr
#
# then, through the device tool, with carry [".whl"]:
#
#   bash bench/gpu_session.sh check        # GPU, packages, the extension, the test suite's GPU-relevant files
#   bash bench/gpu_session.sh pretrain     # bf16 pretraining steps (distributed optimizer), dense and packed rows
#   bash bench/gpu_session.sh train        # bench/bench_train.py: MFU per attention backend vs transformers
#   bash bench/gpu_session.sh preprocess   # bench/bench_preprocess.py on the GPU (codec throughput)
#
# Everything a stage measures lands in $OUT (the device tool brings it back); copy the Markdown
# sections into bench/RESULTS.md with the command that made them.
set -euo pipefail
stage=${1:?"usage: bash bench/gpu_session.sh check|pretrain|train|preprocess"}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

build_extension() {  # the C++ dataset writer and packer (pybind11 and a compiler are in the device image)
    python3 setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
}

synthetic_data() {  # a speech-like dataset in SODA's vocabulary, and its packed rows
    python3 - "$1" <<'EOF'
import os
import sys

import numpy as np
from megatron_soda.data.indexed_dataset import write_dataset
from megatron_soda.data.packing import pack_dataset
from megatron_soda.data.synthetic import speech_documents
from megatron_soda.tokenizer import SODA_LAYOUT

root = sys.argv[1]
os.makedirs(root, exist_ok=True)
tokens, lengths = speech_documents(np.random.default_rng(0), 4000, SODA_LAYOUT, seconds=(2.0, 20.0))
write_dataset(f"{root}/speech", tokens, lengths, SODA_LAYOUT.vocab_size, overwrite=True)
print(pack_dataset(f"{root}/speech", f"{root}/speech_packed", 4096, overwrite=True).summary())
EOF
}

case "$stage" in
check)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    python3 -c "import torch, megatron.core, transformers; print(torch.__version__, megatron.core.__version__, transformers.__version__)" \
        | tee -a "$OUT/gpu.txt"
    build_extension
    # The suite is written for CPU (gloo, several ranks per machine): hide the GPU from it. The GPU
    # itself is exercised by the pretrain and train stages.
    CUDA_VISIBLE_DEVICES= python3 -m pytest -q tests/test_attention.py tests/test_packed_dataset.py tests/test_loss.py \
        tests/test_model_only_load.py tests/test_convert.py 2>&1 | tail -20 | tee "$OUT/tests.txt"
    ;;
pretrain)
    build_extension
    synthetic_data /tmp/data | tee "$OUT/data.txt"
    common=(--model soda-135m --bf16 --seq-length 4096 --micro-batch-size 4 --global-batch-size 32 --train-iters 30
            --lr 1e-3 --lr-decay-style cosine --lr-warmup-iters 5 --split 100,0,0 --skip-data-validation --log-interval 5)
    for run in "sdpa dense:--attention-backend sdpa --data-path /tmp/data/speech" \
               "sdpa packed:--attention-backend sdpa --packed-data --data-path /tmp/data/speech_packed" \
               "flex packed:--attention-backend flex --packed-data --data-path /tmp/data/speech_packed"; do
        name=${run%%:*}; file="$OUT/pretrain-${name// /-}.jsonl"
        # shellcheck disable=SC2086
        timeout 170 python3 -m megatron_soda.pretrain "${common[@]}" ${run#*:} --metrics-file "$file" \
            >"$OUT/pretrain-${name// /-}.log" 2>&1 || echo "$name: exit $? (see its log)"
        tail -1 "$file" 2>/dev/null || true
    done
    ;;
train)
    # Two repetitions keep soda-600m at 4096 well inside one call's 10 minutes (the section is written at the end).
    timeout 570 python3 bench/bench_train.py --repeats 2 --results "$OUT/RESULTS-train.md" --json "$OUT/bench_train.json"
    ;;
preprocess)
    timeout 570 python3 bench/bench_preprocess.py --device cuda --results "$OUT/RESULTS-preprocess.md"
    ;;
*)
    echo "unknown stage $stage: check|pretrain|train|preprocess" >&2
    exit 2
    ;;
esac
