"""A training run resolved and checked before anything is built: ``RunPlan``.

``plan_run`` turns a ``TrainConfig`` into the facts a run needs (vocabulary, model shape, parallel
layout, iterations, LR schedule, datasets) and refuses every impossible setting, naming the flag,
before any process group, model or dataset exists. ``--dry-run`` prints the plan (``describe``)
and stops there. ``parse_train_config`` is the one parser of every training entry point.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from megatron_soda.flags import FlagParser
from megatron_soda.training.config import SHAPE_FLAGS, ModelConfig, TrainConfig, recipe_defaults


@dataclass
class RunPlan:
    """Everything decided about a run before it starts."""

    config: TrainConfig
    vocab: Any
    """The tokenizer's ``VocabLayout`` (SODA's 144,644 ids without --tokenizer)."""
    shape: Any
    """The ``ModelShape`` to train."""
    layout: Any
    """The ``ParallelLayout`` (TP, PP, virtual stages)."""
    world_size: int
    train_iters: int
    schedule: Any
    """The ``LRSchedule`` over ``train_iters``."""
    prefixes: List[str]
    weights: Optional[List[float]]
    resume: Optional[Dict[str, Any]]
    """The --load checkpoint's common state (``read_checkpoint_info``), None when starting fresh."""

    @property
    def data_parallel(self) -> int:
        return self.world_size // (self.layout.tensor * self.layout.pipeline)

    @property
    def distributed_optimizer(self) -> bool:
        from megatron_soda.device import device_info

        chosen = self.config.parallel.use_distributed_optimizer
        return device_info().cuda if chosen is None else chosen

    def record(self) -> Dict[str, Any]:
        """The run in plain data: the first line of the metrics file."""
        from megatron_soda.models.shape_record import record_for
        from megatron_soda.training.flops import six_n_flops_per_token, training_flops_per_token

        shape, training = self.shape, self.config.training
        return {
            "model": record_for(shape),
            "parameters": shape.num_parameters(),
            "non_embedding_parameters": shape.num_non_embedding_parameters(),
            "tokens_per_iteration": training.tokens_per_iteration,
            "train_iters": self.train_iters,
            "flops_per_token": training_flops_per_token(shape, training.seq_length),
            "six_n_flops_per_token": six_n_flops_per_token(shape),
            "layout": {
                "tensor": self.layout.tensor,
                "pipeline": self.layout.pipeline,
                "virtual_pipeline": self.layout.virtual_pipeline,
                "data": self.data_parallel,
                "world_size": self.world_size,
                "distributed_optimizer": self.distributed_optimizer,
            },
            "recipe": self.config.recipe,
            "finetune": self.config.checkpoint.finetune,
        }


# ---- parsing ------------------------------------------------------------------------------------


def _attention_backend_help() -> str:
    from megatron_soda.models.gpt import ATTENTION_BACKENDS, available_attention_backends

    runnable = available_attention_backends()
    return "; ".join(
        f"{name}: {text}{'' if name in runnable else ' [not runnable in this build]'}"
        for name, text in ATTENTION_BACKENDS.items()
    )


def train_flag_parser(prog: str = "pretrain", description: Optional[str] = None) -> FlagParser:
    return FlagParser(
        TrainConfig,
        prog=prog,
        description=description,
        config_file=True,
        help_extra=lambda: {"model.attention_backend": _attention_backend_help()},
    )


def _checkpoint_preset(load: Optional[str]) -> Optional[str]:
    """The preset name a --load checkpoint records, so that resuming without --model keeps its recipe."""
    from megatron_soda.training import checkpointing

    try:
        if not load or checkpointing.latest_iteration(load) is None:
            return None
        model = (checkpointing.read_checkpoint_info(load)["extra"] or {}).get("model")
    except (OSError, ValueError):
        return None  # reported with its reason by plan_run
    return model if isinstance(model, str) else None


def parse_train_config(
    argv: Optional[Sequence[str]] = None, prog: str = "pretrain", description: Optional[str] = None
) -> TrainConfig:
    """Flags and ``--config`` YAML over SODA's recipe (a SODA preset, not fine-tuning) over the defaults.

    A SODA preset named by --model, or recorded in the --load checkpoint being resumed, brings SODA's
    recipe; a custom shape, a non-SODA preset or --finetune brings none (``config.recipe`` says which).
    """
    parser = train_flag_parser(prog, description)
    given = parser.given(argv)
    finetune = given.get("checkpoint.finetune", False)
    preset = given.get("model.preset") or (None if finetune else _checkpoint_preset(given.get("checkpoint.load")))
    custom = any(key.startswith("model.") and key.split(".")[1] in SHAPE_FLAGS for key in given)
    defaults = {} if finetune or custom else recipe_defaults(preset)
    if defaults:
        defaults["recipe"] = f"soda ({preset})"
    return parser.build(given, defaults)


# ---- resolving and checking ---------------------------------------------------------------------


def _vocab(config: TrainConfig):
    from megatron_soda.tokenizer import SODA_LAYOUT, load_soda_tokenizer

    if config.data.tokenizer is None:
        return SODA_LAYOUT
    if not os.path.isdir(config.data.tokenizer):
        raise ValueError(
            f"--tokenizer {config.data.tokenizer}: no such directory (make one with tools/build_tokenizer.py)"
        )
    try:
        return load_soda_tokenizer(config.data.tokenizer).layout
    except Exception as error:  # tokenizers' own errors name neither the flag nor the file
        raise ValueError(f"--tokenizer {config.data.tokenizer}: not a SODA tokenizer directory ({error})") from None


def _model_shape(config: TrainConfig, vocab_size: int, resume: Optional[Dict[str, Any]]):
    """The model to train: the flags' shape, or the --load checkpoint's model; refuses a mismatch."""
    from megatron_soda.models.shape_record import shape_from_record

    model, load = config.model, config.checkpoint.load
    wanted = model.shape(vocab_size, config.training.seq_length) if (model.preset or model.custom) else None
    if resume is None:
        if wanted is None and load:
            raise ValueError(
                f"--load {load} holds no checkpoint, and no --model says what to start; pass "
                f"--model for a new run, or the directory of the checkpoint to continue"
            )
        return wanted or ModelConfig(preset="tiny").shape(vocab_size, config.training.seq_length)
    extra = resume["extra"] or {}
    if "model" not in extra:
        if wanted is None:
            raise ValueError(f"--load {load}: the checkpoint does not say which model it holds; pass --model")
        return wanted
    stored = shape_from_record(extra["model"], vocab_size, f"--load {load}")
    if wanted is not None and wanted != stored:
        described = extra["model"] if isinstance(extra["model"], str) else "its recorded shape"
        raise ValueError(
            f"the model given by flags differs from the model in --load {load} ({described}); "
            f"leave --model and the shape flags out to continue that model"
        )
    padded = extra.get("padded_vocab_size")
    if padded is not None and padded != stored.padded_vocab_size():
        raise ValueError(
            f"--load {load}: its embedding has {padded} rows, the model here "
            f"{stored.padded_vocab_size()}; pass the --tokenizer it was trained with"
        )
    return stored


def _read_resume(config: TrainConfig) -> Optional[Dict[str, Any]]:
    from megatron_soda.training import checkpointing

    load = config.checkpoint.load
    if not load:
        return None
    if os.path.exists(load) and not os.path.isdir(load):
        raise ValueError(f"--load {load} is a file; give the checkpoint directory")
    if not os.path.isdir(load) or checkpointing.latest_iteration(load) is None:
        if config.checkpoint.finetune:
            raise ValueError(f"--finetune needs a checkpoint in --load {load}; found none")
        return None
    return checkpointing.read_checkpoint_info(load)


def _check_output_path(flag_name: str, path: Optional[str]) -> None:
    """A directory the run will write: refused now if it is a file or cannot be created, not after training."""
    if not path:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag_name} {path} is a file; give a directory")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ValueError(f"{flag_name} {path}: cannot create it under {parent} (not a writable directory)")


def _check_output_file(flag_name: str, path: Optional[str]) -> None:
    if not path:
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag_name} {path} is a directory; give a file name")
    _check_output_path(flag_name, os.path.dirname(os.path.abspath(path)))


def check_settings(config: TrainConfig, world_size: int) -> None:
    """Settings that cannot work together, refused naming the flags (no files read)."""
    t, p = config.training, config.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    for name, value in (
        ("--micro-batch-size", t.micro_batch_size),
        ("--global-batch-size", t.global_batch_size),
        ("--seq-length", t.seq_length),
        ("--tensor-model-parallel-size", tp),
        ("--pipeline-model-parallel-size", pp),
        ("--log-interval", config.logging.log_interval),
        ("--eval-samples", config.eval.eval_samples),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    for name, value in (
        ("--train-iters", t.train_iters),
        ("--save-interval", config.checkpoint.save_interval),
        ("--eval-interval", config.eval.eval_interval),
        ("--exit-interval", t.exit_interval),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if world_size % (tp * pp):
        raise ValueError(
            f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
            f"--pipeline-model-parallel-size {pp}"
        )
    dp = world_size // (tp * pp)
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ValueError(
            f"--global-batch-size {t.global_batch_size} is not divisible by --micro-batch-size "
            f"{t.micro_batch_size} x data-parallel size {dp}"
        )
    d = config.data
    if d.packed_data and d.reset_attention_mask:
        raise ValueError(
            "--reset-attention-mask is for GPTDataset rows; packed rows (--packed-data) keep documents apart already"
        )
    if config.model.attention_backend == "local" and (d.packed_data or d.reset_attention_mask):
        raise ValueError(
            "--attention-backend local cannot keep documents apart (no packed rows); drop "
            "--packed-data / --reset-attention-mask or choose another backend"
        )
    if config.checkpoint.finetune and not config.checkpoint.load:
        raise ValueError("--finetune needs --load (the checkpoint whose weights to start from)")
    _check_output_path("--save", config.checkpoint.save)
    _check_output_path("--tensorboard-dir", config.logging.tensorboard_dir)
    _check_output_file("--metrics-file", config.logging.metrics_file)


def _check_data(prefixes: List[str], vocab_size: int, scan_tokens: bool) -> None:
    """Refuses missing, damaged or out-of-vocabulary datasets before any work starts.

    Every rank checks each dataset's index (cheap). The token ids (the whole ``.bin``) are scanned by
    global rank 0 alone, once per unchanged dataset (``validate_tokens_once``, records under
    ``$MEGATRON_SODA_CACHE`` or ``~/.cache/megatron_soda``): a refusal there ends the job before
    training starts, without every rank reading the corpus at every restart.
    """
    from megatron_soda.data.indexed_dataset import validate_dataset, validate_tokens_once

    cache = os.environ.get("MEGATRON_SODA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "megatron_soda"))
    scan = scan_tokens and int(os.environ.get("RANK", 0)) == 0
    for prefix in prefixes:
        if not os.path.exists(prefix + ".idx"):  # the validator's own report, without a cache lookup first
            raise ValueError(f"--data-path {prefix}: {validate_dataset(prefix)}")
        report = (
            validate_tokens_once(prefix, vocab_size, os.path.join(cache, "validated"))
            if scan
            else validate_dataset(prefix)
        )
        if not report.ok:
            raise ValueError(f"--data-path {prefix}: {report}")


def plan_run(config: TrainConfig, world_size: Optional[int] = None, check_data: bool = True) -> RunPlan:
    """The run ``config`` describes, every setting checked; ValueError (naming the flag) otherwise."""
    from megatron_soda.data.gpt_blend import parse_data_path
    from megatron_soda.training.parallel import ParallelLayout

    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    check_settings(config, world_size)
    vocab = _vocab(config)
    resume = _read_resume(config)
    shape = _model_shape(config, vocab.vocab_size, resume)
    if config.training.seq_length > shape.max_position_embeddings:
        raise ValueError(
            f"--seq-length {config.training.seq_length} exceeds the model's "
            f"{shape.max_position_embeddings} positions (--max-position-embeddings)"
        )
    p = config.parallel
    vp = p.num_layers_per_virtual_pipeline_stage
    if vp is not None and (vp < 1 or shape.num_layers % (p.pipeline_model_parallel_size * vp)):
        raise ValueError(
            f"--num-layers-per-virtual-pipeline-stage {vp} does not split {shape.num_layers} layers "
            f"over {p.pipeline_model_parallel_size} pipeline stages"
        )
    layout = ParallelLayout(
        p.tensor_model_parallel_size,
        p.pipeline_model_parallel_size,
        shape.num_layers // p.pipeline_model_parallel_size // vp if vp else None,
    )
    layout.check(world_size, shape.num_layers, shape.num_attention_heads, shape.num_query_groups)
    prefixes, weights = parse_data_path(config.data.data_path) if config.data.data_path else ([], None)
    if check_data and not config.dry_run:
        if not prefixes:
            raise ValueError("--data-path is required")
        _check_data(prefixes, vocab.vocab_size, scan_tokens=not config.data.skip_data_validation)
    import torch  # the backend checks import megatron-core (seconds): after the cheap checks

    from megatron_soda.models.gpt import check_fp8, resolve_attention_backend

    t = config.training
    resolve_attention_backend(config.model.attention_backend, torch.bfloat16 if t.bf16 else torch.float32)
    check_fp8(t.fp8_format, t.fp8_recipe, config.model.attention_backend)
    train_iters = config.training.num_iterations()
    schedule = config.lr_schedule()
    if resume is not None and config.checkpoint.finetune:
        resume = {**resume, "finetune": True}
    return RunPlan(config, vocab, shape, layout, world_size, train_iters, schedule, prefixes, weights, resume)


# ---- describing ---------------------------------------------------------------------------------


def describe(plan: RunPlan) -> List[str]:
    """The plan as lines a person reads: model, layout, run size, recipe, memory per GPU."""
    from megatron_soda.training.memory import estimate_memory

    record = plan.record()
    shape, t = plan.shape, plan.config.training
    tokens = plan.train_iters * t.tokens_per_iteration
    model = record["model"] if isinstance(record["model"], str) else "custom shape"
    lines = [
        f"model: {model}: {shape.num_layers} layers, hidden {shape.hidden_size}, {shape.num_attention_heads} heads "
        f"({shape.num_query_groups} kv groups, head dim {shape.kv_channels}), ffn {shape.ffn_hidden_size}, "
        f"{'tied' if shape.tie_embeddings else 'untied'} embeddings, vocabulary {shape.vocab_size:,} "
        f"(padded {shape.padded_vocab_size():,})",
        f"parameters: {record['parameters']:,} total, {record['non_embedding_parameters']:,} non-embedding",
        f"FLOPs per token: {record['flops_per_token']:.4g} (with attention), "
        f"{record['six_n_flops_per_token']:.4g} (6N)",
        f"layout: TP={plan.layout.tensor} x PP={plan.layout.pipeline}"
        + (f" (x{plan.layout.virtual_pipeline} virtual)" if plan.layout.virtual_pipeline else "")
        + f" x DP={plan.data_parallel} = {plan.world_size} ranks; distributed optimizer "
        + ("on" if plan.distributed_optimizer else "off"),
        f"run: {plan.train_iters:,} iterations x {t.global_batch_size} sequences x {t.seq_length} tokens = "
        f"{tokens:,} tokens, {tokens * record['flops_per_token']:.3g} FLOPs; "
        f"micro-batch {t.micro_batch_size}, {t.global_batch_size // (t.micro_batch_size * plan.data_parallel)} "
        f"micro-batches per rank per step",
        f"recipe: {plan.config.recipe or 'none (the flags and defaults alone)'}; lr {plan.config.optimizer.lr:g} "
        f"({plan.config.schedule.lr_decay_style}), optimizer {plan.config.optimizer.name}",
    ]
    memory = estimate_memory(
        shape,
        tensor_parallel=plan.layout.tensor,
        pipeline_parallel=plan.layout.pipeline,
        data_parallel=plan.data_parallel,
        micro_batch_size=t.micro_batch_size,
        seq_length=t.seq_length,
        bf16=t.bf16,
        distributed_optimizer=plan.distributed_optimizer,
    )
    lines.append("memory per GPU (estimate, busiest pipeline stage):")
    lines += ["  " + line for line in memory.lines()]
    return lines
