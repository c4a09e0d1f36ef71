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
    model: Optional[str] = None
    """--model: a preset from megatron_soda.models.presets (soda-135m, soda-600m, soda-1.7b, soda-4b, tiny, ...);
    default: the model of the --load checkpoint (e.g. one imported from Hugging Face), else tiny."""
    tokenizer: Optional[str] = None
    """--tokenizer: SODA tokenizer directory; sets the vocabulary (default: SODA's released 144,644 ids)."""
    data_path: List[str] = field(default_factory=list)
    """--data-path: prefixes, or weight/prefix pairs (``0.95 speech 0.05 text``); weights are probabilities."""
    data_cache_path: Optional[str] = None
    """--data-cache-path: where megatron-core keeps GPTDataset's sample indices (built by rank 0, read by
    the others); default: a cache/ folder beside each dataset."""
    split: str = "969,30,1"
    """--split: train,valid,test shares of each dataset's documents (rows for --packed-data)."""
    packed_data: bool = False
    """--packed-data: the --data-path datasets are packed rows (tools/pack_dataset.py), one row per sample,
    attention kept within documents; rows must fit --seq-length."""
    reset_attention_mask: bool = False
    """--reset-attention-mask: GPTDataset rows (documents joined by EOD) attend within each document only."""
    eod_mask_loss: bool = False
    """--eod-mask-loss: no loss where the input token is EOD (GPTDataset rows; default: EOD is learned)."""
    tensor_model_parallel_size: int = 1
    """--tensor-model-parallel-size: ranks that split each layer's weights (must divide heads and query groups)."""
    pipeline_model_parallel_size: int = 1
    """--pipeline-model-parallel-size: pipeline stages (must divide the layers)."""
    num_layers_per_virtual_pipeline_stage: Optional[int] = None
    """--num-layers-per-virtual-pipeline-stage: layers per model chunk for the interleaved 1F1B schedule."""
    micro_batch_size: int = 1
    """--micro-batch-size: sequences per forward/backward on one rank."""
    global_batch_size: int = 8
    """--global-batch-size: sequences per optimizer step over all data-parallel ranks (the rest is gradient accumulation)."""
    seq_length: int = 4096
    """--seq-length: tokens per sequence."""
    train_iters: Optional[int] = None
    """--train-iters: optimizer steps of the whole run (the LR schedule spans them)."""
    train_tokens: Optional[int] = None
    """--train-tokens: alternative to --train-iters; iterations = ceil(tokens / (global batch x seq length))."""
    lr: float = 3e-4
    """--lr: peak learning rate."""
    min_lr: float = 0.0
    """--min-lr: learning rate at the end of the decay."""
    lr_decay_style: str = "wsd"
    """wsd | cosine | linear | constant."""
    lr_warmup_iters: Optional[int] = None
    """--lr-warmup-iters: linear warmup steps (overrides --lr-warmup-fraction)."""
    lr_warmup_fraction: Optional[float] = 0.1
    """--lr-warmup-fraction: share of the run spent warming up."""
    lr_decay_fraction: Optional[float] = 0.2
    """wsd only: share of the run spent decaying to --min-lr."""
    optimizer: str = "cautious"
    """adamw | cautious (Cautious AdamW, as SODA trained)."""
    adam_beta1: float = 0.9
    """--adam-beta1: Adam beta1."""
    adam_beta2: float = 0.95
    """--adam-beta2: Adam beta2."""
    adam_eps: float = 1e-8
    """--adam-eps: Adam epsilon."""
    weight_decay: float = 0.1
    """--weight-decay: decoupled weight decay (not on norms or embeddings)."""
    adamc: bool = False
    """AdamC weight decay: decay scaled by lr_t / lr_max."""
    clip_grad: float = 1.0
    """--clip-grad: global gradient-norm clip (0 turns clipping off)."""
    z_loss_weight: float = 0.0
    """--z-loss-weight: weight of the z-loss, mean(logsumexp(logits)^2)."""
    attention_backend: str = "auto"
    """--attention-backend: core attention, one of:"""
    bf16: bool = False
    """--bf16: bf16 parameters and activations, fp32 master weights and gradient reduction."""
    fp8_format: Optional[str] = None
    """--fp8-format: e4m3 | hybrid: FP8 linear layers through Transformer Engine (needs TE)."""
    fp8_recipe: str = "delayed"
    """--fp8-recipe: delayed | tensorwise | mxfp8 | blockwise: Transformer Engine's FP8 scaling recipe."""
    seed: int = 1234
    """--seed: seed of initialization, data order and dropout."""
    save: Optional[str] = None
    """--save: checkpoint directory to write (latest_checkpointed_iteration.txt + iter_NNNNNNN/)."""
    load: Optional[str] = None
    """--load: checkpoint directory to resume from (its latest complete checkpoint; any TP/PP)."""
    save_interval: Optional[int] = None
    """--save-interval: save every this many iterations (and at the end)."""
    exit_interval: Optional[int] = None
    """--exit-interval: stop after this many iterations (saving first when --save is set); the schedule still
    spans --train-iters, so a later --load continues the same run."""
    eval_interval: Optional[int] = None
    """--eval-interval: validation loss every this many iterations."""
    eval_iters: int = 10
    """--eval-iters: global batches per validation."""
    log_interval: int = 1
    """--log-interval: console line every this many iterations."""
    tensorboard_dir: Optional[str] = None
    """--tensorboard-dir: write tensorboard scalars here."""
    metrics_file: Optional[str] = None
    """--metrics-file: one JSON line per iteration (rank of the last pipeline stage, TP rank 0)."""
    nan_policy: str = "stop"
    """stop | skip: what a NaN/inf loss does."""
    skip_data_validation: bool = False
    """--skip-data-validation: do not scan token ids against the vocabulary (each dataset's index is still
    checked). The scan runs on rank 0 once per unchanged dataset; its record is kept under
    $MEGATRON_SODA_CACHE (default ~/.cache/megatron_soda)."""

    def num_train_iters(self) -> int:
        if self.train_iters is not None:
            return self.train_iters
        if self.train_tokens is not None:
            return math.ceil(self.train_tokens / (self.global_batch_size * self.seq_length))
        raise ValueError("give --train-iters or --train-tokens")

    def lr_schedule(self):
        """The run's LR schedule, or an error naming the flags that make it impossible."""
        from megatron_soda.training.schedules import LRSchedule

        iters = self.num_train_iters()
        if self.lr_warmup_iters is not None:
            warmup, warmup_flag = {"warmup_iters": self.lr_warmup_iters}, f"--lr-warmup-iters {self.lr_warmup_iters}"
        else:
            warmup = {"warmup_fraction": self.lr_warmup_fraction or 0.0}
            warmup_flag = f"--lr-warmup-fraction {self.lr_warmup_fraction}"
        decay = {"decay_fraction": self.lr_decay_fraction or 0.0} if self.lr_decay_style == "wsd" else {}
        try:
            return LRSchedule(total_steps=iters, lr=self.lr, min_lr=self.min_lr, style=self.lr_decay_style,
                              **warmup, **decay)
        except ValueError as error:
            raise ValueError(f"--lr-decay-style {self.lr_decay_style} over {iters} iterations with {warmup_flag}, "
                             f"--lr-decay-fraction {self.lr_decay_fraction}, --lr {self.lr}, --min-lr {self.min_lr}: "
                             f"{error}") from None

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
        if self.packed_data and self.reset_attention_mask:
            raise ValueError("--reset-attention-mask is for GPTDataset rows; packed rows (--packed-data) keep "
                             "documents apart already")
        if self.attention_backend == "local" and (self.packed_data or self.reset_attention_mask):
            raise ValueError("--attention-backend local cannot keep documents apart (no packed rows); drop "
                             "--packed-data / --reset-attention-mask or choose another backend")
        import torch

        from megatron_soda.models.gpt import check_fp8, resolve_attention_backend

        resolve_attention_backend(self.attention_backend, torch.bfloat16 if self.bf16 else torch.float32)
        check_fp8(self.fp8_format, self.fp8_recipe, self.attention_backend)
        self.lr_schedule()


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


def _attention_backend_help() -> str:
    from megatron_soda.models.gpt import ATTENTION_BACKENDS, available_attention_backends

    runnable = available_attention_backends()
    return "; ".join(f"{name}: {text}{'' if name in runnable else ' [not runnable in this build]'}"
                     for name, text in ATTENTION_BACKENDS.items())


def _checkpoint_model(load: Optional[str]) -> Optional[str]:
    """The preset name a --load checkpoint records, so that resuming without --model keeps its recipe."""
    from megatron_soda.training import checkpointing

    if not load or checkpointing.latest_iteration(load) is None:
        return None
    model = (checkpointing.read_checkpoint_info(load)["extra"] or {}).get("model")
    return model if isinstance(model, str) else None


def _soda_defaults(model: Optional[str]) -> dict:
    """SODA's recipe for a SODA preset (SODA.md), as config fields."""
    from megatron_soda.models.presets import soda_recipe

    if model is None:
        return {}
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
    docs["attention_backend"] += " " + _attention_backend_help()
    for f in dataclasses.fields(PretrainConfig):
        help_text = docs.get(f.name, "").removeprefix(_flag(f.name) + ":").strip() or None
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind == "bool":
            parser.add_argument(_flag(f.name), action="store_true", default=None, help=help_text)
        elif kind.startswith("List"):
            parser.add_argument(_flag(f.name), nargs="+", default=None, help=help_text)
        else:
            caster = int if "int" in kind else float if "float" in kind else str
            parser.add_argument(_flag(f.name), type=caster, default=None, help=help_text)
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
    merged = {**_soda_defaults(values.get("model") or _checkpoint_model(values.get("load"))), **values}
    return PretrainConfig(**merged)
