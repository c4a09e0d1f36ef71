"""A training run resolved and checked before anything is built: ``RunPlan``.

``plan_run`` turns a ``TrainConfig`` into the facts a run needs (vocabulary, model shape, parallel
layout, iterations, LR schedule, datasets) and refuses every impossible setting, naming the flag,
before any process group, model or dataset exists. ``--dry-run`` prints the plan (``describe``)
and stops there. ``parse_train_config`` is the one parser of every training entry point.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from megatron_soda.checks import check_output_dir, check_output_file
from megatron_soda.data.gpt_blend import samples_per_epoch
from megatron_soda.flags import FlagParser
from megatron_soda.logs import hide_known_notices
from megatron_soda.training.config import (
    SHAPE_FLAGS,
    ArchitectureConfig,
    FixedSettingsConfig,
    ModelConfig,
    TrainConfig,
    recipe_defaults,
)
from megatron_soda.training.finetune_recipes import FINETUNE_RECIPES


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
        """--use-distributed-optimizer; off unless asked, as in Megatron-LM (the plan logs which)."""
        return bool(self.config.parallel.use_distributed_optimizer)

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
    hide_known_notices()  # --help imports megatron-core to list what runs here; its import notices are noise
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
    model = given.pop("fixed.tokenizer_model", None)  # Megatron-LM's name for --tokenizer
    if model is not None:
        if given.get("data.tokenizer", model) != model:
            parser.error(f"--tokenizer-model {model} and --tokenizer {given['data.tokenizer']} differ; give one")
        given["data.tokenizer"] = model
    finetune = given.get("checkpoint.finetune", False)
    run_length = {"training.train_iters", "training.train_tokens", "training.train_samples", "training.train_epochs"}
    if given.get("finetune_recipe"):
        defaults = FINETUNE_RECIPES[given["finetune_recipe"]].defaults()
        defaults["recipe"] = f"{given['finetune_recipe']} (fine-tuning)"
        if run_length & set(given):  # the run's length, otherwise said
            defaults.pop("training.train_epochs")
        return parser.build(given, defaults)
    preset = given.get("model.preset") or (None if finetune else _checkpoint_preset(given.get("checkpoint.load")))
    custom = any(key.startswith("model.") and key.split(".")[1] in SHAPE_FLAGS for key in given)
    defaults = {} if finetune or custom else recipe_defaults(preset)
    if defaults:
        defaults["recipe"] = f"soda ({preset})"
        if run_length & set(given):
            defaults.pop("training.train_iters")
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
    from megatron_soda.models.shape_record import checkpoint_model_shape

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
    stored = checkpoint_model_shape(extra, vocab_size, f"--load {load}")
    if wanted is not None and wanted != stored:
        described = extra["model"] if isinstance(extra["model"], str) else "its recorded shape"
        raise ValueError(
            f"the model given by flags differs from the model in --load {load} ({described}); "
            f"leave --model and the shape flags out to continue that model"
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
    info = checkpointing.read_checkpoint_info(load)
    wants_optimizer = config.checkpoint.load_optim and not config.checkpoint.finetune
    if wants_optimizer and info["optimizer_metadata"] is None and not info["model_only"]:
        raise ValueError(
            f"--load {load}: the checkpoint holds no optimizer state; pass --no-load-optim (continue with a fresh "
            f"optimizer) or --finetune"
        )
    return info


_SCHEDULE_FIELDS = ("total_steps", "lr", "min_lr", "style", "warmup_steps", "decay_steps", "decay_end")
"""What makes two LR schedules the same schedule (the fields it was given may differ: fraction or steps)."""


def _check_same_schedule(schedule, resume: Dict[str, Any], load: str) -> None:
    """A resumed run continues the checkpoint's schedule unless --override-opt_param-scheduler says otherwise."""
    saved = (resume.get("scheduler_state") or {}).get("schedule")
    if not saved:  # weights-only checkpoints (imports) carry no schedule
        return
    saved = {"decay_end": saved.get("total_steps"), **saved}  # checkpoints from before --lr-decay-iters
    differ = [
        f"{k} {saved.get(k)} -> {getattr(schedule, k)}"
        for k in _SCHEDULE_FIELDS
        if saved.get(k) != getattr(schedule, k)
    ]
    if differ:
        raise ValueError(
            f"--load {load}: this run's LR schedule differs from the checkpoint's ({'; '.join(differ)}); give the "
            f"original run's flags, or --override-opt_param-scheduler to continue with this schedule"
        )


def _split_shares(split: str) -> List[float]:
    try:
        shares = [float(x) for x in split.replace("/", ",").split(",")]
    except ValueError:
        raise ValueError(f"--split {split!r}: give train,valid,test shares such as 969,30,1") from None
    shares += [0.0] * (3 - len(shares))
    if len(shares) != 3 or min(shares) < 0 or sum(shares) <= 0:
        raise ValueError(f"--split {split!r}: give three non-negative train,valid,test shares such as 969,30,1")
    return shares


def _cuda() -> bool:
    from megatron_soda.device import device_info

    return device_info().cuda


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
        ("--save-keep-latest", config.checkpoint.save_keep_latest),
        ("--save-keep-interval", config.checkpoint.save_keep_interval),
        ("--eval-interval", config.eval.eval_interval),
        ("--eval-tasks-interval", config.eval.eval_tasks_interval),
        ("--exit-interval", t.exit_interval),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    check_architecture(config.architecture, config.model.num_query_groups)
    check_fixed_settings(config.fixed)
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
    if t.bf16 and not config.dry_run and not _cuda():
        raise ValueError(
            "--bf16 needs CUDA: megatron-core's bf16 optimizer keeps its master weights in CUDA "
            "tensors; train in fp32 on the CPU (drop --bf16), or use --dry-run to plan a GPU run"
        )
    if config.logging.wandb_project:
        from megatron_soda import optional

        optional.require("wandb", "--wandb-project")
    if config.checkpoint.save_keep_interval is not None and config.checkpoint.save_keep_latest is None:
        raise ValueError("--save-keep-interval says which checkpoints --save-keep-latest spares; give both")
    if config.eval.eval_iters is not None and config.eval.eval_iters < 0:
        raise ValueError(f"--eval-iters must be >= 0 (0: no validation), got {config.eval.eval_iters}")
    if not 0 < p.distributed_timeout_minutes < math.inf:
        raise ValueError(
            f"--distributed-timeout-minutes must be a positive number, got {p.distributed_timeout_minutes}"
        )
    if p.ddp_bucket_size is not None and p.ddp_bucket_size < 1:
        raise ValueError(f"--ddp-bucket-size must be >= 1 parameters, got {p.ddp_bucket_size}")
    if p.ddp_bucket_size is not None and not p.overlap_grad_reduce:
        raise ValueError("--ddp-bucket-size applies to --overlap-grad-reduce (without it all gradients reduce at once)")
    if t.exit_duration_in_mins is not None and not t.exit_duration_in_mins > 0:
        raise ValueError(f"--exit-duration-in-mins must be > 0, got {t.exit_duration_in_mins}")
    for name, asked in (
        ("--exit-signal-handler", t.exit_signal_handler),
        ("--exit-duration-in-mins", t.exit_duration_in_mins is not None),
    ):
        if asked and not config.checkpoint.save:
            raise ValueError(
                f"{name} needs --save: the checkpoint it writes before stopping is what a relaunch continues"
            )
    if config.checkpoint.finetune and not config.checkpoint.load:
        raise ValueError("--finetune needs --load (the checkpoint whose weights to start from)")
    for flag_name, path in (("--save", config.checkpoint.save), ("--tensorboard-dir", config.logging.tensorboard_dir)):
        if path:
            check_output_dir(flag_name, path)
    if config.logging.metrics_file:
        check_output_file("--metrics-file", config.logging.metrics_file)
    lengths = [
        name
        for name, value in (
            ("--train-iters", t.train_iters),
            ("--train-tokens", t.train_tokens),
            ("--train-samples", t.train_samples),
            ("--train-epochs", t.train_epochs),
        )
        if value is not None
    ]
    if len(lengths) > 1:
        raise ValueError(
            f"give one of --train-iters, --train-tokens, --train-samples or --train-epochs, not {' and '.join(lengths)}"
        )
    if t.train_epochs is not None and t.train_epochs <= 0:
        raise ValueError(f"--train-epochs must be positive, got {t.train_epochs}")
    if t.fp16:
        raise ValueError("--fp16 is not supported: SODA trains in bf16, which needs no loss scaling; use --bf16")
    if t.recompute_activations and t.recompute_granularity not in (None, "selective"):
        raise ValueError("--recompute-activations means --recompute-granularity selective; give one of the two")
    if (t.recompute_method or t.recompute_num_layers) and t.recompute != "full":
        raise ValueError("--recompute-method and --recompute-num-layers apply to --recompute-granularity full")
    if t.recompute == "full" and (t.recompute_method is None or t.recompute_num_layers is None):
        raise ValueError(
            "--recompute-granularity full needs --recompute-method (uniform or block) and "
            "--recompute-num-layers (e.g. uniform 1: every layer)"
        )
    if p.sequence_parallel and tp == 1:
        raise ValueError(
            "--sequence-parallel splits over tensor-parallel ranks: it needs --tensor-model-parallel-size > 1"
        )
    e = config.eval
    if (e.eval_tasks or e.eval_tasks_interval) and not e.eval_tasks_data:
        raise ValueError(
            "--eval-tasks and --eval-tasks-interval run the benchmarks of --eval-tasks-data, which is not given "
            "(make it with tools/evaluate.py --prepare)"
        )
    if e.eval_tasks_data is not None:
        from megatron_soda.checks import check_file

        check_file("--eval-tasks-data", e.eval_tasks_data, " (make it with tools/evaluate.py --prepare)")
    if config.validation_interval and _split_shares(config.data.split)[1] == 0:
        raise ValueError(
            f"--eval-interval {config.eval.eval_interval} needs validation data, but --split "
            f"{config.data.split} gives none; give it a validation share (e.g. 98,2,0)"
        )
    vp = p.num_layers_per_virtual_pipeline_stage
    if vp is not None and (t.global_batch_size // (t.micro_batch_size * dp)) % pp:
        raise ValueError(
            f"interleaved pipelining (--num-layers-per-virtual-pipeline-stage) needs a multiple of "
            f"--pipeline-model-parallel-size {pp} micro-batches per step; --global-batch-size "
            f"{t.global_batch_size} / (--micro-batch-size {t.micro_batch_size} x data-parallel {dp}) gives "
            f"{t.global_batch_size // (t.micro_batch_size * dp)}"
        )
    if not config.dry_run and not _cuda():
        if p.sequence_parallel:
            raise ValueError("--sequence-parallel needs CUDA (its reduce-scatter has no gloo implementation)")
        if t.recompute:
            raise ValueError(
                f"--recompute-granularity {t.recompute} needs CUDA: megatron-core's activation checkpointing saves "
                f"and restores CUDA RNG states; plan it with --dry-run"
            )
        if p.use_distributed_optimizer:
            raise ValueError("--use-distributed-optimizer needs CUDA (megatron-core's distributed optimizer)")


def check_architecture(a: ArchitectureConfig, num_query_groups: Optional[int]) -> None:
    """Refuses Megatron-LM architecture flags that ask for another model than Qwen3's, naming them."""
    if a.group_query_attention and num_query_groups is None:
        raise ValueError(
            "--group-query-attention without --num-query-groups: Megatron-LM would build one key/value group, "
            "this trainer one per head; give --num-query-groups"
        )
    other = [
        name
        for name, asked in (
            ("--no-swiglu", not a.swiglu),
            (f"--normalization {a.normalization}", a.normalization != "RMSNorm"),
            ("--no-disable-bias-linear", not a.disable_bias_linear),
            ("--add-qkv-bias", a.add_qkv_bias),
            (f"--position-embedding-type {a.position_embedding_type}", a.position_embedding_type != "rope"),
            ("--no-qk-layernorm", not a.qk_layernorm),
            (f"--attention-dropout {a.attention_dropout:g}", a.attention_dropout != 0),
            (f"--hidden-dropout {a.hidden_dropout:g}", a.hidden_dropout != 0),
        )
        if asked
    ]
    if other:
        raise ValueError(
            f"{', '.join(other)}: this trainer builds Qwen3's architecture only (SwiGLU, RMSNorm, rotary "
            "embeddings, no biases, QK-norm, no dropout); drop the flag"
        )


def check_fixed_settings(f: FixedSettingsConfig) -> None:
    """Refuses Megatron-LM flags that ask for a setting this trainer does not offer, naming them."""
    other = [
        name
        for name, asked in (
            ("--dataloader-type cyclic", f.dataloader_type != "single"),
            ("--no-accumulate-allreduce-grads-in-fp32", not f.accumulate_allreduce_grads_in_fp32),
            ("--no-attention-softmax-in-fp32", not f.attention_softmax_in_fp32),
            ("--masked-softmax-fusion", f.masked_softmax_fusion),
            ("--bias-swiglu-fusion", f.bias_swiglu_fusion),
            ("--bias-gelu-fusion", f.bias_gelu_fusion),
            ("--bias-dropout-fusion", f.bias_dropout_fusion),
            ("--gradient-accumulation-fusion", f.gradient_accumulation_fusion),
            ("--rope-fusion", f.rope_fusion),
            ("--persist-layer-norm", f.persist_layer_norm),
        )
        if asked
    ]
    if other:
        raise ValueError(f"{', '.join(other)}: not offered by this trainer (see --help); drop the flag")
    multiple = f.make_vocab_size_divisible_by
    if multiple is not None and (multiple < 1 or 1024 % multiple):
        raise ValueError(
            f"--make-vocab-size-divisible-by {multiple}: embeddings are padded to a multiple of 1,024 at every "
            "TP size (so checkpoints move between layouts); give a divisor of 1,024 or drop the flag"
        )


def check_datasets(prefixes: List[str], vocab: Any, scan_tokens: bool, tokenizer: Optional[str] = None) -> None:
    """Refuses missing, damaged, out-of-vocabulary or other-vocabulary datasets before any work starts.

    ``vocab`` is the run's ``VocabLayout``, ``tokenizer`` its --tokenizer directory (None: SODA's layout).
    Every rank checks each dataset's index and its vocabulary record (``<prefix>.vocab.json``, left by
    preprocessing, merging and packing; cheap): a dataset made with another vocabulary is refused, naming
    the tokenizer that made it (``_check_vocabulary``). A dataset without a record (older code, megatron's
    own tools) is checked by its ids alone. The token ids (the whole ``.bin``) are scanned by global rank 0
    alone, once per unchanged dataset (``validate_tokens_once``, records under ``$MEGATRON_SODA_CACHE`` or
    ``~/.cache/megatron_soda``): a refusal there ends the job before training starts, without every rank
    reading the corpus at every restart.
    """
    from megatron_soda.data.indexed_dataset import (
        read_vocab_record,
        validate_dataset,
        validate_tokens_once,
        vocab_record,
    )

    cache = os.environ.get("MEGATRON_SODA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "megatron_soda"))
    scan = scan_tokens and int(os.environ.get("RANK", 0)) == 0
    run = None  # the run's own record, made when a dataset first has one to compare
    for prefix in prefixes:
        report = validate_dataset(prefix)  # the index (and the validator's own report of a missing one)
        if not report.ok:
            raise ValueError(f"--data-path {prefix}: {report}")
        try:
            record = read_vocab_record(prefix, report)
        except ValueError as error:
            raise ValueError(f"--data-path {prefix}: {error}") from None
        if record is not None:
            run = run or vocab_record(vocab, tokenizer)
            _check_vocabulary(prefix, record, run, tokenizer)
        if scan:
            report = validate_tokens_once(prefix, vocab.vocab_size, os.path.join(cache, "validated"))
            if not report.ok:
                raise ValueError(f"--data-path {prefix}: {report}")


def _check_vocabulary(prefix: str, record: Dict[str, Any], run: Dict[str, Any], tokenizer: Optional[str]) -> None:
    """Refuses, in one line naming the dataset, both vocabularies and the fix, a dataset whose recorded
    vocabulary (``record``) is not the run's (``run``: the ``vocab_record`` of --tokenizer ``tokenizer``)."""
    from megatron_soda.data.indexed_dataset import describe_vocab, same_vocabulary, vocab_path

    if record["content"] != "tokens":
        raise ValueError(
            f"--data-path {prefix} holds {describe_vocab(record)} (recorded in {vocab_path(prefix)}), not token "
            f"sequences: train on a preprocessing job's tokens_* shards, not its codes_* shards"
        )
    if same_vocabulary(record, run):
        return
    if tokenizer is None:
        soda = "SODA's released layout, as no --tokenizer was given"
        uses = f"this run uses {describe_vocab(run, made_by=soda)}"
    else:
        uses = f"--tokenizer {tokenizer} gives {describe_vocab(run)}"
    made_by = (record.get("tokenizer") or {}).get("path") or "<the tokenizer that made it>"
    raise ValueError(
        f"--data-path {prefix} was made with {describe_vocab(record)} (recorded in {vocab_path(prefix)}), "
        f"but {uses}; pass --tokenizer {made_by} (the tokenizer that made it)"
    )


def plan_run(config: TrainConfig, world_size: Optional[int] = None, check_data: bool = True) -> RunPlan:
    """The run ``config`` describes, every setting checked; ValueError (naming the flag) otherwise."""
    from megatron_soda.data.gpt_blend import parse_data_path
    from megatron_soda.training.parallel import ParallelLayout, check_runs_here

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
    if not config.dry_run:
        check_runs_here(layout)
    prefixes, weights = parse_data_path(config.data.data_path) if config.data.data_path else ([], None)
    if check_data and not config.dry_run:
        if not prefixes:
            raise ValueError("--data-path is required")
        check_datasets(
            prefixes, vocab, scan_tokens=not config.data.skip_data_validation, tokenizer=config.data.tokenizer
        )
    import torch  # the backend checks import megatron-core (seconds): after the cheap checks

    from megatron_soda.models.gpt import check_fp8, resolve_attention_backend

    t = config.training
    resolve_attention_backend(config.model.attention_backend, torch.bfloat16 if t.bf16 else torch.float32)
    check_fp8(t.fp8_format, t.fp8_recipe, config.model.attention_backend)
    if t.train_epochs is not None and prefixes:
        per_epoch = samples_per_epoch(prefixes, config.data.split, t.seq_length, config.data.packed_data)
        t = dataclasses.replace(t, train_samples=max(1, math.ceil(t.train_epochs * per_epoch)), train_epochs=None)
        config = dataclasses.replace(config, training=t)
    train_iters = config.training.num_iterations()
    schedule = config.lr_schedule()
    if resume is not None and not config.checkpoint.finetune and not config.schedule.override_opt_param_scheduler:
        _check_same_schedule(schedule, resume, config.checkpoint.load)
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
        recompute_granularity=t.recompute,
        sequence_parallel=plan.config.parallel.sequence_parallel,
        virtual_pipeline=plan.layout.virtual_pipeline,
    )
    lines.append("memory per GPU (estimate, busiest pipeline stage):")
    lines += ["  " + line for line in memory.lines()]
    return lines
