#!/usr/bin/env python
"""Benchmark: training throughput of a SODA preset per attention backend, against transformers' Qwen3.

Measures, in one process and on the same synthetic batches:

* **ours**, once per ``--attention-backends`` entry: the model built and trained through the same
  library path as ``megatron_soda.pretrain`` (``parallel.initialize``, ``build_model_chunks``,
  megatron-core's ``DistributedDataParallel``, ``build_megatron_optimizer`` with Cautious AdamW,
  ``forward_backward`` with SODA's z-loss), bf16 with fp32 master weights and fp32 gradients on CUDA;
* **the baseline**: transformers' ``Qwen3ForCausalLM`` of the same shape (SDPA attention, its own
  cross-entropy loss, ``torch.optim.AdamW``, gradient clipping at the same norm), with fp32 master
  weights under bf16 autocast (``--baseline autocast``, the default on CUDA) or pure bf16 parameters
  and optimizer state (``--baseline bf16``).

Each run builds a fresh model (same seed), takes ``--warmup`` untimed optimizer steps, then
``--steps`` timed ones (``torch.cuda.synchronize`` before and after); every step is a global batch of
``--global-batch-size`` rows (gradient accumulation over micro-batches). Runs are interleaved across
``--repeats`` repetitions (order rotated each repetition) and medians reported. Token ids come from
SODA's audio block with Zipf frequencies (fixed generator seed), so the loss has something to learn
and must fall. A run that fails (out of memory, a backend that cannot train here) is reported as
such and the others go on.

FLOPs per token come from ``megatron_soda.training.flops`` (attention core and LM head included; 6N
beside it); MFU is against ``flops.PEAK_BF16_FLOPS`` of the device (H100/H200 told apart by name).

    python bench/bench_train.py                                  # soda-600m, seq 4096, on the GPU
    python bench/bench_train.py --results bench/RESULTS.md       # also append a section there
    python bench/bench_train.py --model tiny --seq-length 64 --micro-batch-size 2 \\
        --global-batch-size 4 --steps 2 --warmup 1 --repeats 1   # CPU smoke run (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import shlex
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):  # run as a script from anywhere; bench_common is a sibling module
    if path not in sys.path:
        sys.path.insert(0, path)

from bench_common import cpu_model, git_commit, synchronize, versions  # noqa: E402

from megatron_soda.device import device_info  # noqa: E402
from megatron_soda.models.presets import PRESETS  # noqa: E402
from megatron_soda.tokenizer.layout import SODA_LAYOUT  # noqa: E402

RESULTS_HEADING = "# Training throughput benchmark (`bench/bench_train.py`)"
TARGET = {"model": "soda-600m", "seq_length": 4096, "device": "H100", "mfu": 0.50, "vs_baseline": 1.5}
"""The issue's targets: >= 50% MFU bf16 on one H100 for soda-600m at 4096, >= 1.5x transformers."""
BASELINES = ("autocast", "bf16", "fp32")
ZIPF_EXPONENT = 1.1
Z_LOSS_WEIGHT = 1e-4
"""SODA's z-loss weight, for both sides (it costs a little per step)."""
"""Token frequencies in the synthetic batches fall off as rank ** -1.1 over the audio block."""


@dataclass
class BenchConfig:
    """One benchmark run's settings (``parse_args`` fills it from the command line)."""

    model: str = "soda-600m"
    seq_length: int = 4096
    micro_batch_size: int = 2
    global_batch_size: int = 16
    bf16: bool = True
    """Ours in bf16 (fp32 master weights and gradients); False trains in fp32 (the CPU default)."""
    attention_backends: List[str] = field(default_factory=list)
    baselines: List[str] = field(default_factory=list)
    """transformers runs: autocast (fp32 params, bf16 autocast), bf16 (pure bf16), fp32."""
    optimizer: str = "cautious"
    lr: float = 1e-3
    """Constant (no schedule: the lr does not change a step's cost)."""
    warmup: int = 3
    steps: int = 10
    repeats: int = 3
    seed: int = 1234
    peak_tflops: Optional[float] = None
    """Overrides the device's dense bf16 peak (for GPUs other than H100/H200)."""
    results: Optional[str] = None
    json_path: Optional[str] = None

    @property
    def accumulation(self) -> int:
        return self.global_batch_size // self.micro_batch_size

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_length


@dataclass
class RunResult:
    """One timed run: wall seconds of the timed steps, every step's loss, peak device memory."""

    seconds: float
    losses: List[float]
    peak_memory_bytes: Optional[int]


# --------------------------------------------------------------------------------------------------
# Process and device


def single_process_env() -> None:
    """torch.distributed's environment for one process when not launched by torchrun (a free port)."""
    if "RANK" in os.environ:
        if int(os.environ.get("WORLD_SIZE", "1")) != 1:
            raise SystemExit("bench_train.py measures one device: launch it with one process (WORLD_SIZE=1)")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")


def describe_device(config: BenchConfig) -> dict:
    """Name of the device and its dense bf16 peak (None where unknown, e.g. the CPU)."""
    from megatron_soda.training.flops import peak_bf16_flops

    if not device_info().cuda:
        return {
            "name": f"CPU: {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
            "cuda": False,
            "peak_flops": None,
        }
    name = torch.cuda.get_device_name()
    peak = config.peak_tflops * 1e12 if config.peak_tflops else peak_bf16_flops(name)
    return {"name": name, "cuda": True, "peak_flops": peak}


def free_memory() -> None:
    """Returns the previous run's model, optimizer and caches to the device before the next run."""
    gc.collect()
    if device_info().cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> Optional[int]:
    return torch.cuda.max_memory_allocated() if device_info().cuda else None


def reseed(seed: int) -> None:
    """Every run starts from the same weights for its model type."""
    torch.manual_seed(seed)
    if device_info().cuda:
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# Data


def make_batches(config: BenchConfig, device: torch.device) -> List[List[Dict[str, torch.Tensor]]]:
    """Global batches (lists of micro-batches) for every step, on the device before any timing.

    Ids from SODA's audio block with Zipf frequencies (``ZIPF_EXPONENT``): frequent ids recur in every
    batch, so even a tiny model's loss falls within a few steps (with ids uniform over 16,384 codes a
    small batch shows no learnable structure, and the loss wanders). The cost of a step does not depend
    on the ids. Rows are ``seq_length + 1`` ids: tokens and the next-token labels.
    """
    generator = torch.Generator().manual_seed(config.seed)
    low, high = SODA_LAYOUT.audio_offset, SODA_LAYOUT.vocab_size
    weights = 1.0 / torch.arange(1, high - low + 1, dtype=torch.float64) ** ZIPF_EXPONENT
    batches = []
    for _ in range(config.warmup + config.steps):
        micro = []
        for _ in range(config.accumulation):
            rows = low + torch.multinomial(
                weights, config.micro_batch_size * (config.seq_length + 1), replacement=True, generator=generator
            ).view(config.micro_batch_size, -1)
            rows = rows.to(device)
            micro.append(
                {
                    "tokens": rows[:, :-1].contiguous(),
                    "labels": rows[:, 1:].contiguous(),
                    "loss_mask": torch.ones(config.micro_batch_size, config.seq_length, device=device),
                    "position_ids": torch.arange(config.seq_length, device=device).expand(config.micro_batch_size, -1),
                }
            )
        batches.append(micro)
    return batches


def timed_steps(config: BenchConfig, step: Callable[[list], object], batches) -> RunResult:
    """``--warmup`` untimed steps, then ``--steps`` timed ones; losses read after the clock stops."""
    losses = [step(batch) for batch in batches[: config.warmup]]
    synchronize()
    start = time.perf_counter()
    losses += [step(batch) for batch in batches[config.warmup :]]
    synchronize()
    seconds = time.perf_counter() - start
    return RunResult(seconds, [float(loss) for loss in losses], peak_memory())


# --------------------------------------------------------------------------------------------------
# Ours: the pretrain.py path


def run_ours(config: BenchConfig, backend: str, batches) -> RunResult:
    """Builds the model for ``backend`` with the trainer ``pretrain`` uses and steps it over ``batches``."""
    from megatron_soda.training.plan import plan_run
    from megatron_soda.training.trainer import Trainer

    reseed(config.seed)
    trainer = Trainer(plan_run(train_config(config, backend), world_size=1, check_data=False))
    trainer.setup_model_and_optimizer()
    _check_parameter_count(sum(p.numel() for c in trainer.model for p in c.parameters()), trainer.plan.shape, "ours")
    return timed_steps(config, lambda micro_batches: trainer.train_step(micro_batches)["lm loss"], batches)


def train_config(config: BenchConfig, backend: str = "sdpa"):
    """The ``pretrain`` configuration of our runs (a SODA preset brings SODA's optimizer settings)."""
    from megatron_soda.training.plan import parse_train_config

    return parse_train_config(
        [
            str(flag)
            for flag in (
                "--model",
                config.model,
                "--attention-backend",
                backend,
                "--seq-length",
                config.seq_length,
                "--micro-batch-size",
                config.micro_batch_size,
                "--global-batch-size",
                config.global_batch_size,
                "--train-iters",
                config.warmup + config.steps,
                "--optimizer",
                config.optimizer,
                "--lr",
                config.lr,
                "--lr-decay-style",
                "constant",
                "--lr-warmup-fraction",
                0,
                "--z-loss-weight",
                Z_LOSS_WEIGHT,
                "--seed",
                config.seed,
                "--bf16" if config.bf16 else "--no-bf16",
            )
        ]
    )


def _check_parameter_count(count: int, shape, who: str) -> None:
    """Both models must be the same size: the preset's count with the padded vocabulary."""
    expected = dataclasses.replace(shape, vocab_size=shape.padded_vocab_size()).num_parameters()
    if count != expected:
        raise RuntimeError(
            f"{who}: {count:,} parameters, expected {expected:,} for the preset with its padded vocabulary"
        )


# --------------------------------------------------------------------------------------------------
# Baseline: transformers' Qwen3ForCausalLM


def hf_config(shape):
    """``Qwen3Config`` of ``shape`` with the padded vocabulary (the same LM-head matmul as ours).

    RoPE is plain (theta only): Llama-3 frequency scaling changes the frequencies, not the cost.
    transformers 5 takes ``rope_parameters``, 4.x ``rope_theta``.
    """
    import inspect

    from transformers import Qwen3Config

    kwargs = dict(
        vocab_size=shape.padded_vocab_size(),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.ffn_hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_query_groups,
        head_dim=shape.kv_channels,
        hidden_act="silu",
        max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=shape.norm_epsilon,
        tie_word_embeddings=shape.tie_embeddings,
        attention_bias=shape.bias,
        attention_dropout=0.0,
        use_cache=False,
    )
    if "rope_parameters" in inspect.signature(Qwen3Config.__init__).parameters:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": shape.rotary_base}
    else:
        kwargs["rope_theta"] = shape.rotary_base
    return Qwen3Config(**kwargs)


def run_hf(config: BenchConfig, precision: str, batches) -> RunResult:
    """transformers' training step as people write it: model(input_ids, labels) -> loss, AdamW, clipping."""
    from transformers import Qwen3ForCausalLM

    shape = PRESETS[config.model]
    hyper = train_config(config).optimizer  # the same hyperparameters as ours
    cuda = device_info().cuda
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    reseed(config.seed)
    with device:
        model = Qwen3ForCausalLM._from_config(hf_config(shape), attn_implementation="sdpa")
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    model.train()
    params = list(model.parameters())
    _check_parameter_count(sum(p.numel() for p in params), shape, "transformers")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": hyper.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=(hyper.adam_beta1, hyper.adam_beta2),
        eps=hyper.adam_eps,
        **({"fused": True} if cuda else {}),
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "autocast")

    def step(micro_batches):
        total = torch.zeros((), device=device)
        for micro in micro_batches:
            with autocast:
                loss = model(input_ids=micro["tokens"], labels=micro["tokens"]).loss
            (loss / len(micro_batches)).backward()
            total += loss.detach().float()
        torch.nn.utils.clip_grad_norm_(params, hyper.clip_grad, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total / len(micro_batches)  # a device tensor: read after the timing, no per-step sync

    return timed_steps(config, step, batches)


# --------------------------------------------------------------------------------------------------
# Running interleaved


@dataclass
class Runner:
    name: str
    kind: str  # "ours" or "baseline"
    run: Callable[[], RunResult]
    results: List[RunResult] = field(default_factory=list)
    error: Optional[str] = None


def run_all(config: BenchConfig, runners: List[Runner], log) -> None:
    """Every runner once per repetition, the order rotated; a runner that fails is reported and dropped."""
    for rep in range(config.repeats):
        order = runners[rep % len(runners) :] + runners[: rep % len(runners)]
        for runner in order:
            if runner.error is not None:
                continue
            free_memory()
            if device_info().cuda:  # what the previous runs left behind (should stay ~0)
                allocated = torch.cuda.memory_allocated() / 2**30
                log(f"rep {rep + 1} {runner.name:14s} starting, {allocated:.2f} GiB allocated")
            try:
                result = runner.run()
            except Exception as error:  # out of memory, a backend this machine cannot run: report, go on
                runner.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                log(f"rep {rep + 1} {runner.name:14s} FAILED: {runner.error}")
                continue
            finally:
                free_memory()
            runner.results.append(result)
            rate = config.steps * config.tokens_per_step / result.seconds
            memory = f", peak {result.peak_memory_bytes / 2**30:.1f} GiB" if result.peak_memory_bytes else ""
            log(
                f"rep {rep + 1} {runner.name:14s} {result.seconds:8.3f}s  {rate:10.4g} tokens/s  "
                f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}{memory}"
            )


def summarize(config: BenchConfig, runners: List[Runner], device: dict) -> dict:
    """Medians and derived figures per runner, and ours/baseline ratios of medians."""
    from megatron_soda.training import flops

    shape = PRESETS[config.model]
    model_flops = flops.training_flops_per_token(shape, config.seq_length)
    six_n = flops.six_n_flops_per_token(shape)
    peak = device["peak_flops"]
    runs = {}
    for runner in runners:
        entry = {"kind": runner.kind, "error": runner.error}
        if runner.results:
            rates = [config.steps * config.tokens_per_step / r.seconds for r in runner.results]
            rate = statistics.median(rates)
            losses = [r.losses for r in runner.results]
            memory = [r.peak_memory_bytes for r in runner.results if r.peak_memory_bytes is not None]
            entry.update(
                tokens_per_s=rates,
                median_tokens_per_s=rate,
                tflops=rate * model_flops / 1e12,
                six_n_tflops=rate * six_n / 1e12,
                mfu=rate * model_flops / peak if peak else None,
                six_n_mfu=rate * six_n / peak if peak else None,
                peak_memory_gib=max(memory) / 2**30 if memory else None,
                losses=losses,
                first_loss=statistics.median(run[0] for run in losses),
                final_loss=statistics.median(run[-1] for run in losses),
                loss_finite=all(math.isfinite(x) for run in losses for x in run),
                loss_falls=all(run[-1] < run[0] for run in losses),
            )
        runs[runner.name] = entry
    ratios = {
        ours: {
            base: runs[ours]["median_tokens_per_s"] / runs[base]["median_tokens_per_s"]
            for base in runs
            if runs[base]["kind"] == "baseline" and "median_tokens_per_s" in runs[base]
        }
        for ours in runs
        if runs[ours]["kind"] == "ours" and "median_tokens_per_s" in runs[ours]
    }
    return {"runs": runs, "ratios": ratios, "flops_per_token": model_flops, "six_n_flops_per_token": six_n}


def targets(config: BenchConfig, device: dict, summary: dict) -> List[str]:
    """The issue's targets, judged only on the run they are stated for."""
    applies = (
        config.model == TARGET["model"]
        and config.seq_length == TARGET["seq_length"]
        and config.bf16
        and TARGET["device"].lower() in device["name"].lower()
    )
    ours = {n: r for n, r in summary["runs"].items() if r["kind"] == "ours" and "median_tokens_per_s" in r}
    lines = []
    if not applies:
        lines.append(
            f"- not judged: the targets are stated for {TARGET['model']} at sequence length "
            f"{TARGET['seq_length']}, bf16, on one {TARGET['device']}; this run is {config.model} at "
            f"{config.seq_length}, {'bf16' if config.bf16 else 'fp32'}, on {device['name']}"
        )
    elif ours:
        best = max(ours, key=lambda n: ours[n]["median_tokens_per_s"])
        mfu = ours[best]["mfu"]
        lines.append(
            f"- MFU >= {TARGET['mfu']:.0%} (bf16, {TARGET['model']}, {TARGET['seq_length']}): best backend "
            f"{best} at {mfu:.1%} — {'met' if mfu >= TARGET['mfu'] else 'NOT met'}"
        )
        for base, ratio in summary["ratios"][best].items():
            lines.append(
                f"- >= {TARGET['vs_baseline']}x transformers ({base}): {best} at {ratio:.2f}x — "
                f"{'met' if ratio >= TARGET['vs_baseline'] else 'NOT met'}"
            )
        if not summary["ratios"][best]:
            lines.append(f"- >= {TARGET['vs_baseline']}x transformers: no baseline finished in this run — not judged")
    sane = all(r.get("loss_finite") and r.get("loss_falls") for r in summary["runs"].values() if "losses" in r)
    lines.append(
        f"- sanity (every run's loss finite and lower after its last step than after its first): "
        f"{'yes' if sane else 'NO'}"
    )
    return lines


# --------------------------------------------------------------------------------------------------
# Reporting


def _fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def _rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s:,.0f}" if tokens_per_s >= 100 else f"{tokens_per_s:.3g}"


def _row(cells: List[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(config: BenchConfig, summary: dict) -> List[str]:
    baselines = [n for n, r in summary["runs"].items() if r["kind"] == "baseline" and "median_tokens_per_s" in r]
    head = [
        "run",
        "median tokens/s",
        "min – max tokens/s",
        "TFLOP/s",
        "6N TFLOP/s",
        "MFU",
        "6N MFU",
        "peak memory GiB",
        "loss first → final",
    ] + [f"vs {b}" for b in baselines]
    lines = [_row(head), "|---|" + "---:|" * (len(head) - 1)]
    for name, r in summary["runs"].items():
        if "median_tokens_per_s" not in r:
            lines.append(_row([name, f"failed: {r['error']}"] + [""] * (len(head) - 2)))
            continue
        rates = r["tokens_per_s"]
        lines.append(
            _row(
                [
                    name,
                    _rate(r["median_tokens_per_s"]),
                    f"{_rate(min(rates))} – {_rate(max(rates))}",
                    f"{r['tflops']:.3g}",
                    f"{r['six_n_tflops']:.3g}",
                    _fmt(r["mfu"], ".1%"),
                    _fmt(r["six_n_mfu"], ".1%"),
                    _fmt(r["peak_memory_gib"], ".1f"),
                    f"{r['first_loss']:.3f} → {r['final_loss']:.3f}",
                ]
                + [f"{summary['ratios'][name][b]:.2f}x" if r["kind"] == "ours" else "" for b in baselines]
            )
        )
    return lines


def report(
    config: BenchConfig, command: str, started: str, device: dict, vers: dict, summary: dict, load: tuple
) -> str:
    shape = PRESETS[config.model]
    L = [f"### bench_train run of {started}: {config.model} on {device['name']}", "", f"Command: `{command}`", ""]
    L.append(
        "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + f"; megatron-soda commit {git_commit()}. "
        f"Host load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end, {os.cpu_count()} CPUs "
        "(other processes on the host slow the runs alike; compare ratios of medians)."
    )
    L.append("")
    precision = "bf16 params, fp32 master weights and gradients" if config.bf16 else "fp32"
    L.append(
        f"{config.model}: {shape.num_layers} layers, hidden {shape.hidden_size}, {shape.num_attention_heads} heads / "
        f"{shape.num_query_groups} kv heads x {shape.kv_channels}, FFN {shape.ffn_hidden_size}, vocabulary "
        f"{shape.vocab_size:,} padded to {shape.padded_vocab_size():,} (both models), "
        f"{'tied' if shape.tie_embeddings else 'untied'}. Sequence length {config.seq_length}, micro-batch "
        f"{config.micro_batch_size}, global batch {config.global_batch_size} ({config.accumulation} micro-batches, "
        f"{config.tokens_per_step:,} tokens per step); {config.warmup} untimed + {config.steps} timed steps per run, "
        f"{config.repeats} interleaved repetitions (order rotated), medians. Ours: {precision}, "
        f"{'Cautious AdamW' if config.optimizer == 'cautious' else 'AdamW'} (megatron optimizer wrappers), "
        f"z-loss, clip {train_config(config).optimizer.clip_grad}. Baseline: transformers Qwen3ForCausalLM, SDPA, "
        "plain RoPE "
        "(Llama-3 scaling does not change the cost), torch AdamW"
        f"{' (fused)' if device['cuda'] else ''}, same clip; `hf-autocast` = fp32 params under bf16 autocast, "
        "`hf-bf16` = pure bf16 params and state. Token ids from the audio block, Zipf frequencies "
        f"(exponent {ZIPF_EXPONENT}), generator seed "
        f"{config.seed}; lr {config.lr} constant."
    )
    L.append("")
    L.append(
        f"TFLOP/s = tokens/s x {summary['flops_per_token'] / 1e9:.3f} GFLOP/token (`flops.training_flops_per_token`: "
        f"attention core and LM head included); 6N = {summary['six_n_flops_per_token'] / 1e9:.3g} GFLOP/token. "
        + (
            f"MFU against {device['peak_flops'] / 1e12:.0f} TFLOP/s dense bf16."
            if device["peak_flops"]
            else "MFU: n/a (no GPU peak for this device)."
        )
    )
    L.append("")
    if not device["cuda"]:
        L.append(
            f"**Ran on the CPU ({os.cpu_count()} cores), not on a GPU**: these figures show that the benchmark "
            "works end to end and compare the two stacks' overheads at a toy size; they say nothing about GPU "
            "throughput. MFU and the targets need a session with a GPU: run the command in the intro there."
        )
        L.append("")
    L += table(config, summary)
    L.append("")
    L.append(
        "Per-repetition tokens/s: "
        + "; ".join(
            f"{name} " + ", ".join(_rate(x) for x in r["tokens_per_s"])
            for name, r in summary["runs"].items()
            if "tokens_per_s" in r
        )
    )
    L.append("")
    L.append("Targets:")
    L.append("")
    L += targets(config, device, summary)
    return "\n".join(L) + "\n"


INTRO = f"""{RESULTS_HEADING}

Training throughput of a SODA preset through the library's own training path (megatron-core DDP, megatron
optimizer wrappers with Cautious AdamW, `forward_backward` with SODA's z-loss), one run per attention backend,
against transformers' `Qwen3ForCausalLM` of the same shape in the same process. Each run below appends its own
section; what a run measured is stated in it. Targets (the issue): >= 50% MFU in bf16 on one H100 for soda-600m
at sequence length 4096, and >= 1.5x transformers' throughput. On one GPU (defaults: soda-600m, sequence
length 4096, micro-batch 2, global batch 16, bf16, every attention backend this build can run, transformers
with fp32 master weights under bf16 autocast; add `--baseline autocast,bf16` for a pure-bf16 baseline too):

```
python bench/bench_train.py --results bench/RESULTS.md
```
"""


def append_results(path: str, section: str) -> None:
    """Appends ``section`` to ``path`` (the intro first, if this benchmark has never written there)."""
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    addition = "" if RESULTS_HEADING in text else INTRO + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if text and not text.endswith("\n\n") else "") + addition + section)


# --------------------------------------------------------------------------------------------------
# Main


def default_backends() -> List[str]:
    """Every backend this build runs but ``auto`` (an alias) and ``local``: megatron's unfused attention
    keeps each layer's full probability map, which does not fit at SODA's sizes (ask for it by name)."""
    from megatron_soda.models.gpt import available_attention_backends

    return [b for b in available_attention_backends() if b not in ("auto", "local")]


def parse_args(argv=None) -> BenchConfig:
    p = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", default="soda-600m", choices=list(PRESETS))
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument(
        "--micro-batch-size",
        type=int,
        default=2,
        help="rows per forward pass (4 may fit in 78 GiB at 4096; see the peak memory column)",
    )
    p.add_argument("--global-batch-size", type=int, default=16, help="rows per optimizer step (accumulation)")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ours in bf16 with fp32 master weights (default: on with CUDA; CPU trains fp32)",
    )
    p.add_argument(
        "--attention-backends",
        default=None,
        help="comma-separated --attention-backend values (default: all this build can run, minus auto)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help=f"comma-separated transformers runs among {', '.join(BASELINES)}, or 'none' "
        "(default: autocast with bf16, fp32 without)",
    )
    p.add_argument("--optimizer", default="cautious", choices=["cautious", "adamw"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    p.add_argument("--steps", type=int, default=10, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: from the name)")
    p.add_argument("--results", metavar="FILE", default=None, help="append a Markdown section to FILE")
    p.add_argument("--json", metavar="PATH", dest="json_path", default=None, help="write every figure as JSON")
    args = p.parse_args(argv)
    cuda = device_info().cuda
    bf16 = cuda if args.bf16 is None else args.bf16
    if bf16 and not cuda:
        p.error("--bf16 needs CUDA: megatron-core's bf16 optimizer wrapper checks for CUDA tensors")
    if args.global_batch_size % args.micro_batch_size:
        p.error(
            f"--global-batch-size {args.global_batch_size} is not a multiple of --micro-batch-size "
            f"{args.micro_batch_size}"
        )
    if min(args.seq_length, args.micro_batch_size, args.steps, args.repeats) < 1 or args.warmup < 0:
        p.error("--seq-length, --micro-batch-size, --steps and --repeats must be >= 1, --warmup >= 0")
    if args.seq_length > PRESETS[args.model].max_position_embeddings:
        p.error(f"--seq-length {args.seq_length} exceeds {args.model}'s {PRESETS[args.model].max_position_embeddings}")
    backends = args.attention_backends.split(",") if args.attention_backends else default_backends()
    if args.baseline is None:
        baselines = ["autocast" if bf16 else "fp32"]
    else:
        baselines = [] if args.baseline == "none" else args.baseline.split(",")
    for name in baselines:
        if name not in BASELINES or (name != "fp32" and not cuda):
            p.error(f"--baseline {name!r}: choose among {', '.join(BASELINES)} (autocast and bf16 need CUDA)")
    return BenchConfig(
        model=args.model,
        seq_length=args.seq_length,
        micro_batch_size=args.micro_batch_size,
        global_batch_size=args.global_batch_size,
        bf16=bf16,
        attention_backends=backends,
        baselines=baselines,
        optimizer=args.optimizer,
        lr=args.lr,
        warmup=args.warmup,
        steps=args.steps,
        repeats=args.repeats,
        seed=args.seed,
        peak_tflops=args.peak_tflops,
        results=args.results,
        json_path=args.json_path,
    )


_START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", flush=True)


def main(argv=None) -> int:
    config = parse_args(argv)
    words = sys.argv if argv is None else ["bench/bench_train.py", *argv]
    command = " ".join(shlex.quote(a) for a in ["python", *words])
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    single_process_env()
    from megatron_soda.training import parallel

    parallel.initialize(parallel.ParallelLayout(), seed=config.seed)
    try:
        device = describe_device(config)
        vers = versions()
        log(f"{config.model} on {device['name']}; " + ", ".join(f"{k} {v}" for k, v in vers.items()))
        data_device = torch.device("cuda", torch.cuda.current_device()) if device["cuda"] else torch.device("cpu")
        batches = make_batches(config, data_device)
        runners = [
            Runner(f"ours-{b}", "ours", lambda b=b: run_ours(config, b, batches)) for b in config.attention_backends
        ]
        runners += [Runner(f"hf-{p}", "baseline", lambda p=p: run_hf(config, p, batches)) for p in config.baselines]
        load_start = os.getloadavg()[0]
        run_all(config, runners, log)
        load = (load_start, os.getloadavg()[0])
        summary = summarize(config, runners, device)
    finally:
        parallel.destroy()
    section = report(config, command, started, device, vers, summary, load)
    print()
    print(section)
    if config.results:
        append_results(config.results, section)
        log(f"section appended to {config.results}")
    if config.json_path:
        with open(config.json_path, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "command": command,
                    "started": started,
                    "config": dataclasses.asdict(config),
                    "device": device,
                    "versions": vers,
                    "load_average": load,
                    **summary,
                    "targets": targets(config, device, summary),
                },
                f,
                indent=1,
            )
    failed = [n for n, r in summary["runs"].items() if "losses" in r and not (r["loss_finite"] and r["loss_falls"])]
    if failed:
        log(f"sanity check failed (loss not finite or not falling): {', '.join(failed)}")
    return 1 if failed or not any("losses" in r for r in summary["runs"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
