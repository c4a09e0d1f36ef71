"""Plan an IsoFLOP study: budgets x a width family -> the run table and one trainer config per run.

Each run is an ``IsoFlopPoint`` (``models/isoflop.py``: shape, batch, steps, lr, beta2 by SODA's rules) written
as a ``--config`` YAML that ``python -m megatron_soda.pretrain`` trains as SODA's sweep did: Cautious AdamW with
AdamC, betas 0.95 / 0.98^(B/128), eps 1e-15, decay 0.1, WSD (10% warmup, 20% linear decay to 0), clip 1, no
z-loss, and a validation at the last step (the loss the fit uses). Every row states its FLOPs in both
conventions (``training/flops.py``): ``flops_training`` = 3 x forward with attention and LM head (the budget's
convention; the paper's figures) and ``flops_6nd`` = 6 x non-embedding parameters x tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from megatron_soda.flags import flag
from megatron_soda.models.isoflop import (
    CPU_BUDGETS,
    DEFAULT_BUDGETS,
    FAMILIES,
    IsoFlopPoint,
    isoflop_grid,
    marin_targets,
)
from megatron_soda.scaling.study import Study, write_table
from megatron_soda.training.flops import six_n_flops_per_token

FAMILY_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "soda": {"budgets": DEFAULT_BUDGETS, "seq_length": 4096, "batch_size": None, "flop_tolerance": 0.01},
    "cpu": {"budgets": CPU_BUDGETS, "seq_length": 64, "batch_size": 16, "flop_tolerance": 0.05},
}
"""What a family plans with unless told: SODA's sweep (Marin's batch rule, 1% of the budget), or the CPU
family's (a fixed 16 x 64 batch; runs of tens of steps miss the budget by up to a few % from rounding)."""


MIN_STEPS = 8
"""Runs of fewer steps are left out: the WSD schedule needs a warmup and a decay phase."""


@dataclass
class PlanSettings:
    """What to plan."""

    family: str = field(default="soda", metadata=flag(choices=tuple(FAMILIES)))
    """the width family: soda (SODA's sweep, widths 128..2048) or cpu (widths 32, 64, 96: a laptop's study)."""
    budgets: Optional[List[float]] = field(default=None, metadata=flag(nargs="+"))
    """forward-FLOP budgets (x3 = training FLOPs, the paper's figures); default: the family's (soda: 1e18 3e18
    6e18 1e19 3e19 6e19 1e20, the paper's 3e18..3e20; cpu: 5e10 1e11 2e11)."""
    with_targets: bool = False
    """add Marin's 7 target runs (widths 2048..3072 at 3e19..1e20; soda family only)."""
    seq_length: Optional[int] = None
    """tokens per sequence (default: soda 4096, cpu 64)."""
    batch_size: Optional[int] = None
    """sequences per step for every run (default: soda Marin's rule, a power of two near 2^16 steps; cpu 16)."""
    flop_tolerance: Optional[float] = None
    """drop runs whose rounded steps miss the budget by more than this share (default: soda 0.01, cpu 0.05)."""
    tokenizer: Optional[str] = None
    """SODA tokenizer directory: sets the vocabulary (and so N and the LM head's FLOPs); default SODA's 144,644."""
    split: str = "969,30,1"
    """train,valid,test shares (the validation share gives the final loss; a small corpus needs a larger one)."""
    eval_samples: int = 64
    """validation sequences at the last step (the loss the fit uses)."""
    micro_batch_size: int = 4
    """sequences per forward/backward (at most the run's batch; launch lowers it to fit data parallelism)."""
    saves_per_run: int = 4
    """checkpoints over a run, so a killed run resumes (launch keeps only the last once a run finishes)."""
    bf16: bool = False
    """train in bf16 (CUDA)."""
    seed: int = 1234
    """every run's seed."""

    def resolved(self, name: str) -> Any:
        """A setting, or the family's default where it is unset."""
        value = getattr(self, name)
        return FAMILY_DEFAULTS[self.family][name] if value is None else value


@dataclass
class PlanConfig:
    """``tools/isoflop.py plan``."""

    output_dir: str
    """the study directory: plan.json, plan.csv and configs/<run>.yaml go there."""
    settings: PlanSettings = field(default_factory=PlanSettings)


def run_name(point: IsoFlopPoint) -> str:
    """``1e18-d768``: the forward budget and the width (file-name safe)."""
    mantissa, _, exponent = f"{point.budget:.3g}".partition("e")
    return f"{mantissa}e{int(exponent)}-d{point.width}" if exponent else f"{mantissa}-d{point.width}"


def plan_points(settings: PlanSettings, vocab_size: int) -> List[IsoFlopPoint]:
    """The study's runs: the family's grid at every budget, then Marin's targets if asked."""
    family = FAMILIES[settings.family]
    if settings.with_targets and settings.family != "soda":
        raise ValueError("--with-targets adds Marin's runs of SODA's sweep; it needs --family soda")
    seq = settings.resolved("seq_length")
    points = isoflop_grid(
        settings.resolved("budgets"),
        batch_size=settings.resolved("batch_size"),
        seq_len=seq,
        vocab_size=vocab_size,
        flop_tolerance=settings.resolved("flop_tolerance"),
        max_steps=None if settings.family == "cpu" else 400_000,
        family=family,
    )
    points = [p for p in points if p.train_steps >= MIN_STEPS]
    if settings.with_targets:
        points += marin_targets(seq_len=seq, vocab_size=vocab_size)
    if not points:
        raise ValueError(
            f"no run of the {settings.family} family meets budgets {settings.resolved('budgets')} within "
            f"{settings.resolved('flop_tolerance')} in at least {MIN_STEPS} steps: raise the budgets or "
            f"--flop-tolerance"
        )
    return points


def plan_row(point: IsoFlopPoint, config_path: str) -> Dict[str, Any]:
    """One run as the table has it."""
    shape = point.shape
    return {
        "name": run_name(point),
        "kind": "target" if point.target else "sweep",
        "budget": point.budget,
        "budget_training": 3 * point.budget,
        "width": point.width,
        "num_layers": shape.num_layers,
        "num_attention_heads": shape.num_attention_heads,
        "kv_channels": shape.kv_channels,
        "ffn_hidden_size": shape.ffn_hidden_size,
        "vocab_size": shape.vocab_size,
        "parameters": point.total_parameters,
        "non_embedding_parameters": point.non_embedding_parameters,
        "batch_size": point.batch_size,
        "seq_length": point.seq_len,
        "train_iters": point.train_steps,
        "tokens": point.tokens,
        "lr": point.learning_rate,
        "adam_beta2": point.adam_beta2,
        "flops_training": point.training_flops,
        "flops_6nd": six_n_flops_per_token(shape) * point.tokens,
        "budget_error": point.forward_flops / point.budget - 1,
        "config": config_path,
    }


def trainer_config(point: IsoFlopPoint, settings: PlanSettings, study: Study, name: str) -> Dict[str, Any]:
    """The run as ``pretrain --config`` YAML (nested by section); launch adds --data-path."""
    shape = point.shape
    run = {
        "model": {
            "num_layers": shape.num_layers,
            "hidden_size": shape.hidden_size,
            "num_attention_heads": shape.num_attention_heads,
            "num_query_groups": shape.num_query_groups,
            "kv_channels": shape.kv_channels,
            "ffn_hidden_size": shape.ffn_hidden_size,
            "untie_embeddings_and_output_weights": not shape.tie_embeddings,
            "max_position_embeddings": shape.max_position_embeddings,
        },
        "data": {"split": settings.split},
        "training": {
            "seq_length": point.seq_len,
            "micro_batch_size": min(settings.micro_batch_size, point.batch_size),
            "global_batch_size": point.batch_size,
            "train_iters": point.train_steps,
            "z_loss_weight": point.z_loss_weight,
            "bf16": settings.bf16,
            "seed": settings.seed,
        },
        "optimizer": {
            "name": "cautious",
            "lr": point.learning_rate,
            "min_lr": 0.0,
            "adam_beta1": point.adam_beta1,
            "adam_beta2": point.adam_beta2,
            "adam_eps": point.adam_eps,
            "weight_decay": point.weight_decay,
            "adamc": True,
            "clip_grad": point.clip_grad,
        },
        "schedule": {
            "lr_decay_style": "wsd",
            "lr_warmup_fraction": point.warmup_fraction,
            "lr_decay_fraction": point.decay_fraction,
        },
        "checkpoint": {
            "save": str(study.checkpoint(name)),
            "load": str(study.checkpoint(name)),
            "save_interval": max(1, -(-point.train_steps // settings.saves_per_run)),
        },
        "logging": {"metrics_file": str(study.metrics(name)), "log_interval": max(1, point.train_steps // 20)},
        "eval": {"eval_interval": point.train_steps, "eval_samples": settings.eval_samples},
    }
    if settings.tokenizer:
        run["data"]["tokenizer"] = os.path.abspath(settings.tokenizer)
    return run


def vocab_size_of(tokenizer: Optional[str]) -> int:
    """The vocabulary the runs train with: --tokenizer's, or SODA's released layout."""
    from megatron_soda.tokenizer.layout import SODA_LAYOUT

    if not tokenizer:
        return SODA_LAYOUT.vocab_size
    from megatron_soda.tokenizer import load_soda_tokenizer

    return load_soda_tokenizer(tokenizer).layout.vocab_size


def write_plan(config: PlanConfig) -> Dict[str, Any]:
    """Plans the study into ``config.output_dir`` (plan.json, plan.csv, configs/); returns plan.json's content.
    Replanning a directory rewrites the plan and configs and keeps runs already made."""
    import yaml

    settings, study = config.settings, Study(config.output_dir)
    vocab_size = vocab_size_of(settings.tokenizer)
    points = plan_points(settings, vocab_size)
    rows = []
    for point in points:
        name = run_name(point)
        path = study.config(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (
            f"# IsoFLOP run {name}: {point.budget:.3g} forward FLOPs ({3 * point.budget:.3g} training), "
            f"width {point.width}\n# python -m megatron_soda.pretrain --config {path} [--data-path ...]\n"
        )
        path.write_text(header + yaml.safe_dump(trainer_config(point, settings, study, name), sort_keys=False))
        rows.append(plan_row(point, os.path.relpath(path, study.root)))
    names = [row["name"] for row in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"two runs share a name: {sorted(n for n in names if names.count(n) > 1)}")
    header = {
        "family": settings.family,
        "family_shape": vars(FAMILIES[settings.family]),
        "settings": vars(settings),
        "vocab_size": vocab_size,
        "seq_length": settings.resolved("seq_length"),
        "budget_convention": "forward FLOPs with attention and LM head; training = 3 x forward",
    }
    write_table(study.plan_json, study.plan_csv, header, rows)
    return {**header, "runs": rows}
