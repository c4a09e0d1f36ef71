"""Pretraining configuration: one dataclass, Megatron-style flags, an optional YAML file.

Precedence: command-line flags > ``--config`` YAML > the SODA recipe of a SODA preset (SODA.md) >
the generic defaults below. Impossible settings are refused here, naming the flag, before any
process group or model exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class PretrainConfig:
    model: str = "tiny"
    """--model: a preset from megatron_soda.models.presets (soda-135m, soda-600m, soda-1.7b, soda-4b, tiny, ...)."""
    tokenizer: Optional[str] = None
    """--tokenizer: SODA tokenizer directory; sets the vocabulary (default: SODA's released 144,644 ids)."""
    data_path: List[str] = field(default_factory=list)
    """--data-path: prefixes, or weight/prefix pairs (``0.95 speech 0.05 text``); weights are probabilities."""
    split: str = "969,30,1"
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    num_layers_per_virtual_pipeline_stage: Optional[int] = None
    micro_batch_size: int = 1
    global_batch_size: int = 8
    seq_length: int = 4096
    train_iters: Optional[int] = None
    train_tokens: Optional[int] = None
    """--train-tokens: alternative to --train-iters; iterations = ceil(tokens / (global batch x seq length))."""
    lr: float = 3e-4
    min_lr: float = 0.0
    lr_decay_style: str = "wsd"
    """wsd | cosine | linear | constant."""
    lr_warmup_iters: Optional[int] = None
    lr_warmup_fraction: Optional[float] = 0.1
    lr_decay_fraction: Optional[float] = 0.2
    """wsd only: share of the run spent decaying to --min-lr."""
    optimizer: str = "cautious"
    """adamw | cautious (Cautious AdamW, as SODA trained)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 0.1
    adamc: bool = False
    """AdamC weight decay: decay scaled by lr_t / lr_max."""
    clip_grad: float = 1.0
    z_loss_weight: float = 0.0
    attention_backend: str = "auto"
    """auto | te | sdpa."""
    bf16: bool = False
    fp8_format: Optional[str] = None
    """e4m3 | hybrid: FP8 through Transformer Engine recipes (needs TE)."""
    seed: int = 1234
    save: Optional[str] = None
    load: Optional[str] = None
    save_interval: Optional[int] = None
    exit_interval: Optional[int] = None
    """--exit-interval: stop after this many iterations (saving first when --save is set); the schedule still
    spans --train-iters, so a later --load continues the same run."""
    eval_interval: Optional[int] = None
    eval_iters: int = 10
    log_interval: int = 1
    tensorboard_dir: Optional[str] = None
    metrics_file: Optional[str] = None
    """--metrics-file: one JSON line per iteration (rank of the last pipeline stage, TP rank 0)."""
    nan_policy: str = "stop"
    """stop | skip: what a NaN/inf loss does."""
    skip_data_validation: bool = False

    def num_train_iters(self) -> int:
        if self.train_iters is not None:
            return self.train_iters
        if self.train_tokens is not None:
            return math.ceil(self.train_tokens / (self.global_batch_size * self.seq_length))
        raise ValueError("give --train-iters or --train-tokens")

    def check(self, world_size: int) -> None:
        """Refuses settings that cannot work, naming the flag."""
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        if world_size % (tp * pp):
            raise ValueError(f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
                             f"--pipeline-model-parallel-size {pp}")
        dp = world_size // (tp * pp)
        if self.global_batch_size % (self.micro_batch_size * dp):
            raise ValueError(f"--global-batch-size {self.global_batch_size} is not divisible by --micro-batch-size "
                             f"{self.micro_batch_size} x data-parallel size {dp}")
        if not self.data_path:
            raise ValueError("--data-path is required")
        if self.lr_decay_style not in ("wsd", "cosine", "linear", "constant"):
            raise ValueError(f"--lr-decay-style {self.lr_decay_style!r}: choose wsd, cosine, linear or constant")
        if self.optimizer not in ("adamw", "cautious"):
            raise ValueError(f"--optimizer {self.optimizer!r}: choose adamw or cautious")
        if self.nan_policy not in ("stop", "skip"):
            raise ValueError(f"--nan-policy {self.nan_policy!r}: choose stop or skip")
        if self.fp8_format is not None:
            from megatron_soda import optional

            optional.require("transformer_engine", f"--fp8-format {self.fp8_format}")
        self.num_train_iters()


def _field_docs(cls) -> dict:
    """The string literal under each field of a dataclass: its documentation, shown by --help."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _soda_defaults(model: str) -> dict:
    """SODA's recipe for a SODA preset (SODA.md), as config fields."""
    from megatron_soda.models.presets import soda_recipe

    try:
        recipe = soda_recipe(model)
    except (KeyError, ValueError):
        return {}
    return dict(
        lr=recipe.learning_rate, min_lr=recipe.min_learning_rate, global_batch_size=recipe.global_batch_size,
        seq_length=recipe.seq_length, train_iters=recipe.train_steps, lr_decay_style="wsd",
        lr_warmup_fraction=recipe.warmup_fraction, lr_decay_fraction=recipe.decay_fraction, optimizer="cautious",
        adam_beta1=recipe.adam_beta1, adam_beta2=recipe.adam_beta2, adam_eps=recipe.adam_eps,
        weight_decay=recipe.weight_decay, adamc=recipe.adamc_weight_decay, clip_grad=recipe.clip_grad,
        z_loss_weight=recipe.z_loss_weight,
    )


def parse_args(argv=None) -> PretrainConfig:
    parser = argparse.ArgumentParser(description="SODA pretraining on megatron-core (launch with torchrun).")
    parser.add_argument("--config", help="YAML file of config fields (flags given here override it)")
    docs = _field_docs(PretrainConfig)
    for f in dataclasses.fields(PretrainConfig):
        help_text = docs.get(f.name, "").removeprefix(_flag(f.name) + ":").strip() or None
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind == "bool":
            parser.add_argument(_flag(f.name), action="store_true", default=None, help=help_text)
        elif kind.startswith("List"):
            parser.add_argument(_flag(f.name), nargs="+", default=None)
        else:
            caster = int if "int" in kind else float if "float" in kind else str
            parser.add_argument(_flag(f.name), type=caster, default=None)
    args = vars(parser.parse_args(argv))
    values = {}
    config_file = args.pop("config")
    if config_file:
        import yaml

        with open(config_file) as f:
            values = yaml.safe_load(f) or {}
        unknown = set(values) - {f.name for f in dataclasses.fields(PretrainConfig)}
        if unknown:
            raise SystemExit(f"{config_file}: unknown fields {sorted(unknown)}")
    values.update({k: v for k, v in args.items() if v is not None})
    model = values.get("model", PretrainConfig.model)
    merged = {**_soda_defaults(model), **values}
    return PretrainConfig(**merged)
