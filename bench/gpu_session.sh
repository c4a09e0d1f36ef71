#!/usr/bin/env bash
# The GPU measurements of this project, through the device machine (10 minutes a call, about 15 minutes of
# device time a session, start-up included).
#
# The device (Python 3.12, CUDA torch, transformers) lacks megatron-core, soundfile and soxr: fetch
# their cp312 wheels here once, into the git-ignored .whl/ folder, and carry it with every call:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl megatron-core==0.19.2 soundfile soxr
#
# then, through the device tool, with carry [".whl"] (without a .whl/ folder the installed packages are used):
#
#   bash bench/gpu_session.sh all          # everything below but check, shortened, in ONE call of at most 9
#                                          # minutes (timeout_s 600), ending with one summary table
#   bash bench/gpu_session.sh check        # GPU, packages, the extension, the test suite's GPU-relevant files
#   bash bench/gpu_session.sh pretrain     # bf16 pretraining steps (distributed optimizer), dense and packed rows
#   bash bench/gpu_session.sh train        # bench/bench_train.py: MFU per attention backend vs transformers
#   bash bench/gpu_session.sh preprocess   # bench/bench_preprocess.py on the GPU (codec throughput)
#
# and here, on the CPU (tests/test_bench_generate.py runs it, so `all` does not rot between GPU windows):
#
#   PYTHON=.venv/bin/python bash bench/gpu_session.sh smoke   # `all`'s sequence, tiny settings, CUDA hidden
#
# `all` (the settings block below): bf16 pretraining of soda-135m at 4096, dense rows (weights drawn on the
# CPU: --use-cpu-initialization) and packed rows, distributed optimizer, 12 iterations each; bench_train's soda-600m at 4096 (sdpa vs transformers with fused AdamW, 1
# repetition of 2 + 5 steps); bench_preprocess's codec encode on the GPU (no pipeline runs); bench_generate
# on soda-600m in bf16; bench_evaluate (batched likelihood scoring against a one-item loop) on soda-135m in bf16,
# 256 items, 2 repetitions. Each step runs under its own `timeout`; one with less than half its cap left before
# the 9-minute deadline (the last 30 s kept for the summary) is skipped, else its cap ends at the deadline. The
# Markdown sections, the JSON figures, summary.md and details.tar.gz (every log and metrics file) land in
# $OUT (the device tool brings back at most 8 files: bench_evaluate's JSON rides in details.tar.gz), and one
# line per step is printed last: status, wall seconds, headline figure. Copy the Markdown sections into
# bench/RESULTS.md with the command that made them.
set -euo pipefail
stages="check|pretrain|train|preprocess|all|smoke"
stage=${1:?"usage: bash bench/gpu_session.sh $stages"}
OUT=${OUT:-bench/out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no .whl/*.whl here: using the packages $PYTHON has"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

build_extension() {  # the C++ dataset writer and packer (pybind11 and a compiler are in the device image)
    "$PYTHON" setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
}

# A speech-like dataset in SODA's vocabulary, and its packed rows: ROOT [DOCUMENTS [ROW_LENGTH]].
SYNTHETIC_DATA='
import os
import sys

import numpy as np
from megatron_soda.data.indexed_dataset import write_dataset
from megatron_soda.data.packing import pack_dataset
from megatron_soda.data.synthetic import speech_documents
from megatron_soda.tokenizer import SODA_LAYOUT

root, documents, row = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(root, exist_ok=True)
tokens, lengths = speech_documents(np.random.default_rng(0), documents, SODA_LAYOUT, seconds=(2.0, 20.0))
write_dataset(f"{root}/speech", tokens, lengths, SODA_LAYOUT.vocab_size, overwrite=True)
print(pack_dataset(f"{root}/speech", f"{root}/speech_packed", row, overwrite=True).summary())
'
synthetic_data() { "$PYTHON" -c "$SYNTHETIC_DATA" "$1" "${2:-4000}" "${3:-4096}"; }

# bf16 pretraining of soda-135m at 4096 with the distributed optimizer (`pretrain` and `all`).
PRETRAIN=(--model soda-135m --bf16 --use-distributed-optimizer --seq-length 4096 --micro-batch-size 4
          --global-batch-size 32 --lr 1e-3 --lr-decay-style cosine --lr-warmup-iters 5 --split 100,0,0
          --skip-data-validation)

case "$stage" in
check)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    "$PYTHON" -c "import torch, megatron.core, transformers; print(torch.__version__, megatron.core.__version__, transformers.__version__)" \
        | tee -a "$OUT/gpu.txt"
    build_extension
    # The suite is written for CPU (gloo, several ranks per machine): hide the GPU from it. The GPU
    # itself is exercised by the pretrain and train stages.
    CUDA_VISIBLE_DEVICES= "$PYTHON" -m pytest -q tests/test_attention.py tests/test_packed_dataset.py tests/test_loss.py \
        tests/test_model_only_load.py tests/test_convert.py 2>&1 | tail -20 | tee "$OUT/tests.txt"
    exit 0
    ;;
pretrain)
    build_extension
    synthetic_data /tmp/data | tee "$OUT/data.txt"
    for run in "sdpa dense:--attention-backend sdpa --data-path /tmp/data/speech" \
               "sdpa packed:--attention-backend sdpa --packed-data --data-path /tmp/data/speech_packed" \
               "flex packed:--attention-backend flex --packed-data --data-path /tmp/data/speech_packed"; do
        name=${run%%:*}; file="$OUT/pretrain-${name// /-}.jsonl"
        # shellcheck disable=SC2086
        timeout 170 "$PYTHON" -m megatron_soda.pretrain "${PRETRAIN[@]}" --train-iters 30 --log-interval 5 ${run#*:} \
            --metrics-file "$file" >"$OUT/pretrain-${name// /-}.log" 2>&1 || echo "$name: exit $? (see its log)"
        tail -1 "$file" 2>/dev/null || true
    done
    exit 0
    ;;
train)
    # Two repetitions keep soda-600m at 4096 well inside one call's 10 minutes (the section is written at the end).
    timeout 570 "$PYTHON" bench/bench_train.py --repeats 2 --results "$OUT/RESULTS-train.md" --json "$OUT/bench_train.json"
    exit 0
    ;;
preprocess)
    timeout 570 "$PYTHON" bench/bench_preprocess.py --device cuda --results "$OUT/RESULTS-preprocess.md"
    exit 0
    ;;
all | smoke) ;;
*)
    echo "unknown stage $stage: $stages" >&2
    exit 2
    ;;
esac

# ---------------------------------------------------------------------------------------------------------
# all / smoke: one call, every step capped, one summary table last.

START=0  # the deadline counts from the script's start (the wheels' install included)
RESERVE=30  # seconds kept for the summary at the end
WORK=$(mktemp -d /tmp/gpu_session.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$LOGS"
: >"$LOGS/status.tsv"

if [[ $stage == smoke ]]; then
    export CUDA_VISIBLE_DEVICES=  # the CPU, even on a GPU machine: this is the script's own test
    BUDGET=${BUDGET:-300}  # ~80 s on 2 idle cores; the caps only bound a stuck step
else
    BUDGET=${BUDGET:-540}  # the call's 9 minutes, from here
fi
CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$LOGS/status.tsv"; }

# step NAME CAP COMMAND...: COMMAND under `timeout CAP` (less if the deadline is nearer), output in
# $LOGS/NAME.log; its status and wall seconds go to status.tsv. A failed step does not stop the others.
step() {
    local name=$1 cap=$2 left rc=0 began=$SECONDS status
    shift 2
    left=$((BUDGET - RESERVE - (SECONDS - START)))
    if ((left < cap / 2 || left < 10)); then
        record "$name" "skipped (${left}s left of the budget, step needs up to ${cap}s)" 0
        return 0
    fi
    ((cap > left)) && cap=$left
    echo "[$((SECONDS - START))s] $name (cap ${cap}s)"
    printf '%q ' "$@" >"$LOGS/$name.log"
    printf '\n' >>"$LOGS/$name.log"
    timeout --kill-after=10 "$cap" "$@" >>"$LOGS/$name.log" 2>&1 || rc=$?
    case $rc in
    0) status=ok ;;
    124 | 137) status="timeout (${cap}s cap)" ;;
    *) status="failed (exit $rc)" ;;
    esac
    record "$name" "$status" $((SECONDS - began))
    echo "[$((SECONDS - START))s] $name: $status"
}

skip() { record "$1" "skipped ($2)" 0; }

if [[ $stage == all ]]; then  # with the gpu step's 20 s the caps sum to 510 s, within 540 - 30
    DOCUMENTS=4000 ROW=4096 CAP_BUILD=60 CAP_DATA=25 CAP_PRETRAIN=55 CAP_TRAIN=90 CAP_PREPROCESS=45 CAP_GENERATE=110
    CAP_EVALUATE=50
    PRETRAIN_RUN=("${PRETRAIN[@]}" --train-iters 12 --log-interval 4)
    TRAIN=(--attention-backends sdpa --repeats 1 --warmup 2 --steps 5)
    PREPROCESS=(--device cuda --pipeline "" --batch-seconds 30,120 --repeats 2 --max-wait 2)
    GENERATE=(--model soda-600m --new-tokens 128 --repeats 2 --prompt-lengths 50,200)
    EVALUATE=(--model soda-135m --items 256 --repeats 2)
else  # smoke: tiny everything, fp32 on the CPU
    DOCUMENTS=200 ROW=64 CAP_BUILD=60 CAP_DATA=20 CAP_PRETRAIN=60 CAP_TRAIN=75 CAP_PREPROCESS=60 CAP_GENERATE=90
    CAP_EVALUATE=60
    PRETRAIN_RUN=(--model tiny --seq-length 64 --micro-batch-size 2 --global-batch-size 4 --train-iters 3
                  --lr 1e-3 --lr-decay-style cosine --lr-warmup-iters 1 --split 100,0,0 --skip-data-validation --log-interval 1)
    TRAIN=(--model tiny --seq-length 64 --micro-batch-size 2 --global-batch-size 4 --attention-backends sdpa
           --repeats 1 --warmup 1 --steps 2)
    PREPROCESS=(--device cpu --pipeline "" --utterances 12 --encode-seconds 2 --batch-seconds 5
                --single-thread-batch-seconds "" --decode-passes 5 --repeats 1 --max-wait 0)
    GENERATE=(--quick)
    EVALUATE=(--quick)
fi

if ((CUDA)); then
    step gpu 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; \
        $PYTHON -c 'import torch, megatron.core, transformers; print(torch.__version__, megatron.core.__version__, transformers.__version__)'"
else
    skip gpu "no CUDA"
fi
# The extension is built unless this Python already imports it (a git-ignored build output: never carried).
step build "$CAP_BUILD" bash -c "$PYTHON -c 'import megatron_soda._C' 2>/dev/null && echo 'already built' \
    || $PYTHON setup.py -q build_ext --inplace"
step data "$CAP_DATA" "$PYTHON" -c "$SYNTHETIC_DATA" "$WORK/data" "$DOCUMENTS" "$ROW"

for kind in dense packed; do
    if ((CUDA)) || [[ $stage == smoke ]]; then
        data=(--data-path "$WORK/data/speech")
        # dense rows also build the model on the CPU and move it (--use-cpu-initialization's GPU path)
        [[ $kind == dense ]] && data+=(--use-cpu-initialization)
        [[ $kind == packed ]] && data=(--packed-data --data-path "$WORK/data/speech_packed")
        step "pretrain-$kind" "$CAP_PRETRAIN" "$PYTHON" -m megatron_soda.pretrain "${PRETRAIN_RUN[@]}" \
            --attention-backend sdpa "${data[@]}" --metrics-file "$LOGS/pretrain-$kind.jsonl"
    else
        skip "pretrain-$kind" "no CUDA"
    fi
done

if ((CUDA)) || [[ $stage == smoke ]]; then
    step train "$CAP_TRAIN" "$PYTHON" bench/bench_train.py "${TRAIN[@]}" \
        --results "$OUT/RESULTS-train.md" --json "$OUT/bench_train.json"
    step preprocess "$CAP_PREPROCESS" "$PYTHON" bench/bench_preprocess.py "${PREPROCESS[@]}" \
        --results "$OUT/RESULTS-preprocess.md"
    step generate "$CAP_GENERATE" "$PYTHON" bench/bench_generate.py "${GENERATE[@]}" \
        --results "$OUT/RESULTS-generate.md" --json "$OUT/bench_generate.json"
    step evaluate "$CAP_EVALUATE" "$PYTHON" bench/bench_evaluate.py "${EVALUATE[@]}" \
        --results "$OUT/RESULTS-evaluate.md" --json "$LOGS/bench_evaluate.json"  # 8 files in $OUT at most
else
    for name in train preprocess generate evaluate; do skip "$name" "no CUDA"; done
fi

tar -czf "$OUT/details.tar.gz" -C "$WORK" logs 2>/dev/null || true
# One line per step: status, wall seconds, the headline figure (read from what the step wrote).
timeout 25 "$PYTHON" - "$LOGS" "$OUT" "$stage" $((SECONDS - START)) <<'EOF' || cut -f1-3 "$LOGS/status.tsv" | tee "$OUT/summary.md"
import json
import re
import statistics
import sys
from pathlib import Path

logs, out, stage, total = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]


def read(path):
    try:
        return path.read_text()
    except OSError:
        return ""


def output(name):
    """What step NAME printed (its log without the command line the script wrote first)."""
    return "".join(read(logs / f"{name}.log").splitlines(keepends=True)[1:])


def peak():
    """The GPU's dense bf16 peak, from the name the gpu step printed."""
    from megatron_soda.training.flops import peak_bf16_flops

    name = output("gpu").split(",")[0]
    return peak_bf16_flops(name) if name else None


def pretrain(kind):
    rows = [json.loads(line) for line in read(logs / f"pretrain-{kind}.jsonl").splitlines() if line.strip()]
    steps = [r for r in rows if "iteration" in r]
    if not steps:
        return ""
    timed = steps[2:] or steps  # the first iterations warm up
    rate = statistics.median(r["tokens per second"] for r in timed)
    tflops = statistics.median(r["TFLOP/s per device"] for r in timed)
    p = peak()
    mfu = f", MFU {tflops * 1e12 / p:.1%}" if p else ""
    return ("fp32 tiny (bf16 needs CUDA): " if stage == "smoke" else "bf16 soda-135m: ") + (
        f"{rate:,.0f} tokens/s, {tflops:.3g} TFLOP/s{mfu} (median of iterations {timed[0]['iteration']}-"
        f"{timed[-1]['iteration']}); lm loss {steps[0]['lm loss']:.3f} -> {steps[-1]['lm loss']:.3f}"
    )


def train():
    result = json.loads(read(out / "bench_train.json") or "{}")
    parts = []
    for name, run in result.get("runs", {}).items():
        if run.get("kind") != "ours" or "median_tokens_per_s" not in run:
            continue
        mfu = f", MFU {run['mfu']:.1%}" if run.get("mfu") else ""
        ratios = ", ".join(f"{r:.2f}x {b}" for b, r in result.get("ratios", {}).get(name, {}).items())
        parts.append(f"{name} {run['median_tokens_per_s']:,.0f} tokens/s{mfu}" + (f" ({ratios})" if ratios else ""))
    return "; ".join(parts)


def preprocess():
    text = output("preprocess")
    peer = re.search(r"peer encode, one utterance at a time: (\S+)x realtime", text)
    hits = re.findall(r"encode, encoder=(\S+), max_batch_seconds=(\S+), (\d+) thread\(s\): (\S+)x realtime", text)
    ratio = lambda x: f" = {float(x) / float(peer[1]):.2f}x the peer" if peer else ""
    parts = [f"{e} {b} s batches {x}x realtime{ratio(x)}" for e, b, threads, x in hits]
    head = f"peer (MimiModel.encode per utterance) {peer[1]}x realtime; " if peer else ""
    return head + "codec encode " + ", ".join(parts) if hits else ""


def generate():
    result = json.loads(read(out / "bench_generate.json") or "{}")
    parts = []
    for batch, entry in result.get("batches", {}).items():
        ours = entry.get("ours", {}).get("median_tokens_per_s")
        theirs = entry.get("transformers", {}).get("median_tokens_per_s")
        if ours and theirs:
            parts.append(f"batch {batch}: ours {ours:,.0f} vs {theirs:,.0f} new tokens/s = {entry['ratio']:.2f}x")
    fraction = result.get("bandwidth_bound", {}).get("ours_fraction")
    if fraction:
        parts.append(f"batch 1 at {fraction:.0%} of the bandwidth bound")
    if "realism" in result:
        parts.append(f"entropy {result['realism']['ours']['mean_entropy']:.2f} nats")
    return "; ".join(parts)


def evaluate():
    result = json.loads(read(logs / "bench_evaluate.json") or "{}")
    runs, ratios = result.get("engines", {}), result.get("ratios", {})
    ours, loop = (runs.get(n, {}).get("median_items_per_s") for n in ("ours", "loop"))
    if not (ours and loop):
        return ""
    rate = lambda x: f"{x:,.0f}" if x >= 100 else f"{x:.3g}"  # noqa: E731
    parts = [f"ours {rate(ours)} vs loop {rate(loop)} items/s = {ratios['ours']:.2f}x"]
    if ratios.get("megatron"):
        parts.append(f"megatron {ratios['megatron']:.2f}x")
    agreement = result.get("agreement", {})
    worst = max((agreement.get(n) or 0 for n in ("ours", "megatron")), default=0)
    parts.append(f"max score diff {worst:.2g}")
    return "; ".join(parts)


def data():
    return (output("data").strip().splitlines() or [""])[-1]


def gpu():
    return " / ".join(output("gpu").strip().splitlines())


HEADLINES = {"gpu": gpu, "data": data, "pretrain-dense": lambda: pretrain("dense"),
             "pretrain-packed": lambda: pretrain("packed"), "train": train, "preprocess": preprocess,
             "generate": generate, "evaluate": evaluate}
lines = [f"GPU session `{stage}`: {total} s; every log in details.tar.gz", "", "| step | status | wall s | headline |", "|---|---|---:|---|"]
for line in read(logs / "status.tsv").splitlines():
    name, status, seconds = line.split("\t")
    try:
        headline = HEADLINES[name]() if status == "ok" and name in HEADLINES else ""
    except Exception as error:  # a figure that cannot be read must not hide the others
        headline = f"(unreadable: {type(error).__name__})"
    lines.append(f"| {name} | {status} | {seconds} | {headline} |")
text = "\n".join(lines) + "\n"
(out / "summary.md").write_text(text)
print("\n" + text, end="")
EOF
rm -rf "$WORK"
