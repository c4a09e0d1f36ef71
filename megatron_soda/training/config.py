"""The training configuration: one dataclass per concern, composed by ``TrainConfig``.

Every setting is spelled once, as a field with its documentation; ``megatron_soda.flags`` turns the
fields into Megatron-LM's flag names (``--lr``, ``--tensor-model-parallel-size``, ...) and reads the
same settings from ``--config run.yaml``. Precedence: command line > YAML > the SODA recipe of a
SODA preset (``recipe_defaults``) > the defaults written here. Pure data: importing this module
touches no device, data or process group, so ``--dry-run`` and ``--help`` are instant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional

from megatron_soda.flags import flag
from megatron_soda.training.finetune_recipes import FINETUNE_RECIPES

SHAPE_FIELDS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "kv_channels",
    "ffn_hidden_size",
    "max_position_embeddings",
    "rotary_base",
    "norm_epsilon",
)
"""ModelConfig fields named as the ``ModelShape`` fields they set."""
SHAPE_FLAGS = SHAPE_FIELDS + ("untie_embeddings_and_output_weights", "use_rope_scaling", "rope_scaling_factor")
"""ModelConfig fields that describe a shape (given any of them, the model is a custom shape)."""
EXIT_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
"""The signals --exit-signal-handler can answer (``training/stopping.py``)."""


@dataclass
class ModelConfig:
    """Which model: a preset, or a shape from flags (Megatron-LM's names), optionally over a preset."""

    preset: Optional[str] = field(default=None, metadata=flag("--model"))
    """a preset (soda-135m, soda-600m, soda-1.7b, soda-4b, ablation-*, tiny); default: the --load checkpoint's
    model, else the shape flags, else tiny. Shape flags given with a preset change that preset's shape (the
    run is then no SODA preset and takes no recipe)."""
    num_layers: Optional[int] = None
    """Transformer layers of a custom shape."""
    hidden_size: Optional[int] = None
    """Residual width of a custom shape."""
    num_attention_heads: Optional[int] = None
    """Query heads of a custom shape."""
    num_query_groups: Optional[int] = None
    """Key/value heads (GQA groups) of a custom shape; default: --num-attention-heads."""
    kv_channels: Optional[int] = None
    """Head dimension of a custom shape; default: hidden size / heads."""
    ffn_hidden_size: Optional[int] = None
    """SwiGLU inner width of a custom shape; default: 4 x hidden size."""
    untie_embeddings_and_output_weights: Optional[bool] = None
    """Separate LM head (as Megatron-LM: a custom shape is tied unless this is given; a preset keeps its own)."""
    max_position_embeddings: Optional[int] = None
    """Longest sequence the model is built for; default: the preset's (4096), or --seq-length for a custom shape."""
    rotary_base: Optional[float] = None
    """RoPE theta; default 500000 (SODA)."""
    norm_epsilon: Optional[float] = None
    """RMSNorm epsilon; default 1e-5 (SODA)."""
    use_rope_scaling: Optional[bool] = None
    """Llama-3 RoPE frequency scaling (default on, as SODA: factor 8, low/high 1/4, original context 8192)."""
    rope_scaling_factor: Optional[float] = None
    """the Llama-3 scaling factor; default 8 (SODA)."""
    init_method_std: float = 0.02
    """Standard deviation of the normal weight initialization."""
    attention_backend: str = "auto"
    """core attention, one of:"""

    @property
    def custom(self) -> bool:
        """True when any shape flag is given (the model is then no preset, whatever --model says)."""
        return any(getattr(self, name) is not None for name in SHAPE_FLAGS)

    def shape(self, vocab_size: int, seq_length: int):
        """The ``ModelShape`` these settings describe, over ``vocab_size``; ValueError naming the flag."""
        from megatron_soda.models.presets import ModelShape, get_preset

        if self.preset is not None:
            try:
                base = get_preset(self.preset, vocab_size=vocab_size)
            except KeyError as error:
                raise ValueError(f"--model: {error.args[0]}") from None
        else:
            missing = [
                f"--{name.replace('_', '-')}"
                for name in ("num_layers", "hidden_size", "num_attention_heads")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"a custom shape needs {', '.join(missing)} (or --model PRESET)")
            heads = self.num_attention_heads
            if self.kv_channels is None and self.hidden_size % heads:
                raise ValueError(
                    f"--hidden-size {self.hidden_size} is not a multiple of --num-attention-heads {heads}; "
                    f"give --kv-channels"
                )
            # Megatron-LM's defaults where a flag is left out: GQA off, head dim hidden / heads, 4h MLP, tied.
            base = ModelShape(
                num_layers=self.num_layers,
                hidden_size=self.hidden_size,
                num_attention_heads=heads,
                num_query_groups=heads,
                kv_channels=self.hidden_size // heads if self.hidden_size % heads == 0 else 1,
                ffn_hidden_size=4 * self.hidden_size,
                vocab_size=vocab_size,
                tie_embeddings=True,
                max_position_embeddings=seq_length,
            )
        changes = {name: getattr(self, name) for name in SHAPE_FIELDS if getattr(self, name) is not None}
        if self.untie_embeddings_and_output_weights is not None:
            changes["tie_embeddings"] = not self.untie_embeddings_and_output_weights
        rope = base.rope_scaling
        if self.use_rope_scaling is False:
            rope = None
        elif rope is None and (self.use_rope_scaling or self.rope_scaling_factor is not None):
            from megatron_soda.models.presets import LLAMA3_ROPE_SCALING

            rope = LLAMA3_ROPE_SCALING
        if rope is not None and self.rope_scaling_factor is not None:
            rope = replace(rope, factor=self.rope_scaling_factor)
        elif rope is None and self.rope_scaling_factor is not None:
            raise ValueError("--rope-scaling-factor needs RoPE scaling; drop --no-use-rope-scaling")
        changes["rope_scaling"] = rope
        try:
            return replace(base, **changes)
        except ValueError as error:
            where = f"--model {self.preset} with shape flags" if self.preset else "custom shape"
            raise ValueError(f"{where}: {error}") from None


@dataclass
class ArchitectureConfig:
    """Megatron-LM's architecture flags, so that a launch script written for Megatron-LM runs as it is.

    This trainer builds one architecture, Qwen3's (SwiGLU, RMSNorm, rotary embeddings, no biases, per-head
    RMSNorm on queries and keys, no dropout); each flag is accepted where it says so and refused, naming
    it, where it asks for something else (``plan.check_architecture``).
    """

    swiglu: bool = True
    """SwiGLU MLP (always: --no-swiglu is refused)."""
    normalization: str = field(default="RMSNorm", metadata=flag(choices=("RMSNorm", "LayerNorm")))
    """RMSNorm (always: LayerNorm is refused)."""
    disable_bias_linear: bool = True
    """no biases in linear layers (always: --no-disable-bias-linear is refused)."""
    add_qkv_bias: bool = False
    """refused: the attention projections have no bias."""
    position_embedding_type: str = field(default="rope", metadata=flag(choices=("rope", "learned_absolute", "none")))
    """rotary position embeddings (always; --rotary-base sets the base)."""
    qk_layernorm: bool = True
    """RMSNorm on each query and key head (always, as Qwen3: --no-qk-layernorm is refused)."""
    group_query_attention: bool = False
    """accepted with --num-query-groups, which sets the key/value heads whether or not this is given (alone it
    is refused: Megatron-LM would make one group of it)."""
    attention_dropout: float = 0.0
    """must be 0: SODA trains without dropout."""
    hidden_dropout: float = 0.0
    """must be 0: SODA trains without dropout."""
    use_mcore_models: bool = True
    """accepted: the model is megatron-core's GPTModel."""
    distributed_backend: str = field(default="nccl", metadata=flag(choices=("nccl", "gloo")))
    """accepted: the backend follows the device (NCCL on GPUs, gloo on CPUs)."""


@dataclass
class FixedSettingsConfig:
    """Megatron-LM flags for what this trainer fixes (formats, fused kernels, what it always logs), so a
    Megatron-LM launch script runs as it is: accepted where they agree, refused naming the flag otherwise."""

    tokenizer_type: str = field(default="HuggingFaceTokenizer", metadata=flag(choices=("HuggingFaceTokenizer",)))
    """accepted: a SODA tokenizer is a Hugging Face tokenizer with SODA's audio and special tokens."""
    tokenizer_model: Optional[str] = None
    """Megatron-LM's name for --tokenizer (the SODA tokenizer directory)."""
    make_vocab_size_divisible_by: Optional[int] = None
    """accepted where it divides 1,024: embeddings are padded to the next multiple of 1,024 above the
    vocabulary at every TP size, so checkpoints move between layouts."""
    ckpt_format: str = field(default="torch_dist", metadata=flag(choices=("torch_dist",)))
    """accepted: checkpoints are megatron-core dist checkpoints (torch_dist), loadable at any TP/PP."""
    dataloader_type: str = field(default="single", metadata=flag(choices=("single", "cyclic")))
    """single (accepted): samples are read in the blend's order, resumable by the samples consumed;
    cyclic is refused."""
    log_throughput: bool = True
    """accepted: tokens per second and TFLOP/s per device are always logged."""
    attention_softmax_in_fp32: bool = True
    """accepted: attention softmax runs in fp32 (or the kernel's own fp32 accumulation)."""
    accumulate_allreduce_grads_in_fp32: bool = True
    """accepted: gradients are accumulated and reduced in fp32 (--no-accumulate-allreduce-grads-in-fp32 is refused)."""
    masked_softmax_fusion: bool = False
    """off (--no-masked-softmax-fusion accepted; the fused kernel is refused)."""
    bias_swiglu_fusion: bool = False
    """off: there are no biases to fuse (--no-bias-swiglu-fusion accepted)."""
    bias_gelu_fusion: bool = False
    """off: there are no biases to fuse (--no-bias-gelu-fusion accepted)."""
    bias_dropout_fusion: bool = False
    """off: there are no biases and no dropout (--no-bias-dropout-fusion accepted)."""
    gradient_accumulation_fusion: bool = False
    """off: it needs apex's or Transformer Engine's fused weight-gradient kernel (--no-gradient-accumulation-fusion
    accepted)."""
    rope_fusion: bool = False
    """off (--no-rope-fusion accepted; the fused kernel is refused)."""
    persist_layer_norm: bool = False
    """off (--no-persist-layer-norm accepted)."""


@dataclass
class DataConfig:
    """What the model reads."""

    data_path: List[str] = field(default_factory=list)
    """prefixes, or weight/prefix pairs (``0.95 speech 0.05 text``); weights are probabilities."""
    tokenizer: Optional[str] = None
    """SODA tokenizer directory; sets the vocabulary (default: SODA's released 144,644 ids)."""
    split: str = "969,30,1"
    """train,valid,test shares of each dataset's documents (rows for --packed-data)."""
    data_cache_path: Optional[str] = None
    """where megatron-core keeps GPTDataset's sample indices (default: a cache/ folder beside each dataset)."""
    packed_data: bool = False
    """the datasets are packed rows (tools/pack_dataset.py), one row per sample, attention within documents."""
    reset_attention_mask: bool = False
    """GPTDataset rows (documents joined by EOD) attend within each document only."""
    eod_mask_loss: bool = False
    """no loss where the input token is EOD (GPTDataset rows; default: EOD is learned)."""
    num_workers: int = 2
    """threads that read the next step's samples while this step computes (0: read in the step)."""
    skip_data_validation: bool = False
    """do not scan token ids against the vocabulary (each index is still checked); the scan runs on rank 0 once
    per unchanged dataset, remembered under $MEGATRON_SODA_CACHE (default ~/.cache/megatron_soda)."""


@dataclass
class TrainingConfig:
    """How long, in what batches, at what precision."""

    seq_length: int = 4096
    """tokens per sequence."""
    micro_batch_size: int = 1
    """sequences per forward/backward on one rank."""
    global_batch_size: int = 8
    """sequences per optimizer step over all data-parallel ranks (the rest is gradient accumulation)."""
    train_iters: Optional[int] = None
    """optimizer steps of the whole run (the LR schedule spans them)."""
    train_tokens: Optional[int] = None
    """alternative to --train-iters: iterations = ceil(tokens / (global batch x seq length))."""
    train_samples: Optional[int] = None
    """alternative to --train-iters: iterations = ceil(samples / global batch)."""
    train_epochs: Optional[float] = None
    """alternative to --train-iters: passes over the training split of every --data-path dataset (whatever the
    blend weights): samples = epochs x (packed rows, or tokens // seq length, of those splits)."""
    z_loss_weight: float = 0.0
    """weight of the z-loss, mean(logsumexp(logits)^2) per loss token."""
    bf16: bool = False
    """bf16 parameters and activations, fp32 master weights and gradient reduction (CUDA)."""
    fp16: bool = False
    """refused: SODA trains in bf16 (fp16 would need loss scaling, which this trainer does not do); use --bf16."""
    recompute_activations: bool = False
    """recompute each layer's attention core in backward (Megatron-LM's shorthand for --recompute-granularity
    selective)."""
    recompute_granularity: Optional[str] = field(default=None, metadata=flag(choices=("full", "selective")))
    """activation recomputation: full (keep only each recomputed layer's input) or selective (attention core)."""
    recompute_method: Optional[str] = field(default=None, metadata=flag(choices=("uniform", "block")))
    """full recompute: uniform (every layer, in groups of --recompute-num-layers) or block (the first
    --recompute-num-layers layers of each pipeline stage)."""
    recompute_num_layers: Optional[int] = None
    """full recompute: layers per recomputed group (uniform) or recomputed layers per stage (block)."""
    fp8_format: Optional[str] = field(default=None, metadata=flag(choices=("e4m3", "hybrid")))
    """FP8 linear layers through Transformer Engine (needs TE)."""
    fp8_recipe: str = field(default="delayed", metadata=flag(choices=("delayed", "tensorwise", "mxfp8", "blockwise")))
    """Transformer Engine's FP8 scaling recipe."""
    seed: int = 1234
    """seed of initialization, data order and dropout."""
    nan_policy: str = field(default="stop", metadata=flag(choices=("stop", "skip")))
    """what a NaN/inf loss does: stop the run, or skip that update."""
    exit_interval: Optional[int] = None
    """stop after the first iteration whose number is a multiple of this (saving first when --save is set), as
    Megatron-LM does; the schedule still spans --train-iters, so a later --load continues the same run."""
    exit_duration_in_mins: Optional[float] = None
    """stop after the first iteration that ends this many minutes after the run started, saving to --save and
    exiting with code 75 (a relaunch with --load continues): set it below a job's time limit."""
    exit_signal_handler: bool = False
    """on --exit-signal (preemption, a time limit), finish the iteration under way on every rank, save to
    --save and exit with code 75 (a relaunch with --load continues)."""
    exit_signal: str = field(default="SIGTERM", metadata=flag(choices=EXIT_SIGNALS))
    """the signal --exit-signal-handler answers (SLURM and torchrun send SIGTERM; sbatch --signal may name
    another, ahead of the time limit)."""

    @property
    def tokens_per_iteration(self) -> int:
        return self.global_batch_size * self.seq_length

    @property
    def recompute(self) -> Optional[str]:
        """The recompute granularity in force (--recompute-activations means selective)."""
        return self.recompute_granularity or ("selective" if self.recompute_activations else None)

    def num_iterations(self) -> int:
        if self.train_iters is not None:
            return self.train_iters
        if self.train_tokens is not None:
            return math.ceil(self.train_tokens / self.tokens_per_iteration)
        if self.train_samples is not None:
            return math.ceil(self.train_samples / self.global_batch_size)
        if self.train_epochs is not None:
            raise ValueError("--train-epochs counts the samples of --data-path, which this run has none of")
        raise ValueError("give --train-iters, --train-tokens, --train-samples or --train-epochs")


@dataclass
class OptimizerConfig:
    """The optimizer (training/optimizer.py): Cautious AdamW or AdamW, decoupled decay, clipping."""

    name: str = field(default="cautious", metadata=flag("--optimizer", choices=("adamw", "cautious")))
    """adamw, or cautious (Cautious AdamW, as SODA trained)."""
    lr: float = 3e-4
    """peak learning rate (the schedule's plateau, AdamC's reference)."""
    min_lr: float = 0.0
    """learning rate at the end of the decay."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon (also the cautious rescale's)."""
    weight_decay: float = 0.1
    """decoupled weight decay on matrices (never norms, embeddings or biases)."""
    adamc: bool = False
    """AdamC: the decay follows the schedule, weight_decay x lr_t / lr_max."""
    clip_grad: float = 1.0
    """global gradient-norm clip (0 turns clipping off)."""

    def __post_init__(self):
        if self.name not in ("cautious", "adamw"):
            raise ValueError(f"--optimizer {self.name!r}: choose adamw or cautious")


@dataclass
class ScheduleConfig:
    """The learning-rate schedule (training/schedules.py) over the run's iterations."""

    lr_decay_style: str = field(default="wsd", metadata=flag(choices=("wsd", "cosine", "linear", "constant")))
    """wsd (warmup, constant, linear decay), cosine, linear or constant."""
    lr_warmup_iters: Optional[int] = None
    """linear warmup steps (replaces --lr-warmup-fraction)."""
    lr_warmup_fraction: Optional[float] = 0.1
    """share of the run spent warming up."""
    lr_decay_fraction: Optional[float] = 0.2
    """wsd only: share of the run spent decaying to --min-lr."""
    lr_wsd_decay_iters: Optional[int] = None
    """wsd only: steps spent decaying to --min-lr (replaces --lr-decay-fraction)."""
    lr_decay_iters: Optional[int] = None
    """the step at which the decay ends (the lr then stays at --min-lr); default: the last step."""
    override_opt_param_scheduler: bool = field(default=False, metadata=flag("--override-opt_param-scheduler"))
    """on --load, train with this run's schedule even where it differs from the checkpoint's (which is
    otherwise refused, naming the difference)."""


@dataclass
class ParallelConfig:
    """How the world is split (data parallelism takes what tensor x pipeline leave)."""

    tensor_model_parallel_size: int = 1
    """ranks that split each layer's weights (must divide heads and query groups)."""
    pipeline_model_parallel_size: int = 1
    """pipeline stages (must divide the layers)."""
    num_layers_per_virtual_pipeline_stage: Optional[int] = None
    """layers per model chunk for the interleaved 1F1B schedule."""
    sequence_parallel: bool = False
    """split the sequence over tensor-parallel ranks outside attention and MLP (norms, dropout, residuals):
    less activation memory at TP > 1 (NCCL)."""
    use_distributed_optimizer: bool = False
    """shard optimizer state over data-parallel ranks (megatron's distributed optimizer; CUDA only)."""
    overlap_grad_reduce: bool = False
    """reduce each bucket of gradients over data-parallel ranks as soon as the last micro-batch's backward has
    produced it, overlapping the communication with the rest of backward (the same sums as reducing at the end)."""
    use_cpu_initialization: bool = False
    """draw fresh weights on the CPU, each whole, every tensor-parallel rank taking its shard, then move them
    to the GPU: a fresh GPU run is then the same model at every TP size, as on a CPU (where this is always so).
    Slower to start, and it needs the model in host memory."""
    distributed_timeout_minutes: float = 10
    """how long a rank waits for the others in any collective before it fails naming the timeout (instead of
    the job hanging); raise it where ranks legitimately wait, e.g. while rank 0 builds a large blend's index."""
    ddp_bucket_size: Optional[int] = None
    """parameters per gradient-reduction bucket (megatron-core's default: max(40M, 1M x data-parallel size))."""


@dataclass
class CheckpointConfig:
    """Where checkpoints go and what a load restores."""

    save: Optional[str] = None
    """checkpoint directory to write (latest_checkpointed_iteration.txt + iter_NNNNNNN/)."""
    load: Optional[str] = None
    """checkpoint directory to start from (its latest complete checkpoint; any TP/PP)."""
    save_interval: Optional[int] = None
    """save every this many iterations (and at the end)."""
    save_keep_latest: Optional[int] = None
    """after each save, delete all but this many newest checkpoints in --save (default: keep every one)."""
    save_keep_interval: Optional[int] = None
    """with --save-keep-latest: never delete checkpoints at multiples of this iteration count (for analysis)."""
    finetune: bool = False
    """load weights only: iteration, consumed samples, optimizer and schedule start fresh, and the recipe comes
    from the flags, not from the checkpoint."""
    load_optim: bool = True
    """restore the optimizer state from --load (--no-load-optim starts it fresh)."""
    load_rng: bool = True
    """restore the RNG states from --load (--no-load-rng keeps this run's seed)."""


@dataclass
class LoggingConfig:
    """What the run reports, and where."""

    log_interval: int = 1
    """console line every this many iterations."""
    tensorboard_dir: Optional[str] = None
    """write tensorboard scalars here."""
    verbose: bool = False
    """every rank's log and megatron-core's own INFO lines and import-time notices (default: rank 0, the run)."""
    wandb_project: Optional[str] = None
    """log to Weights & Biases under this project (needs wandb; WANDB_MODE=offline writes locally, no network)."""
    wandb_exp_name: Optional[str] = None
    """the Weights & Biases run name."""
    wandb_save_dir: Optional[str] = None
    """where Weights & Biases keeps its local files (default: ./wandb)."""
    metrics_file: Optional[str] = None
    """JSON lines: the run's description first, then one record per iteration (one rank writes it)."""


@dataclass
class EvalConfig:
    """Validation: one fixed set of sequences per data blend, comparable across runs and layouts."""

    eval_interval: Optional[int] = None
    """validation loss every this many iterations, and always at the last."""
    eval_samples: int = 64
    """sequences of the validation split evaluated each time (the same ones whatever the batch or layout)."""
    eval_iters: Optional[int] = None
    """Megatron-LM's way to say --eval-samples (and wins over it): this many batches of --global-batch-size
    sequences; 0 turns validation off."""
    eval_tasks_data: Optional[str] = None
    """likelihood benchmarks to run during training: a file made by tools/evaluate.py --prepare (sWUGGY,
    sBLIMP, SALMon, tWUGGY, tBLIMP, HellaSwag, read and encoded once), scored at the training layout."""
    eval_tasks: Optional[List[str]] = field(default=None, metadata=flag(nargs="+"))
    """the tasks of --eval-tasks-data to run (default: all it holds)."""
    eval_tasks_interval: Optional[int] = None
    """run --eval-tasks-data every this many iterations (default: at the last iteration only)."""


@dataclass
class TrainConfig:
    """A training run: pretraining, or fine-tuning from --load with --finetune."""

    model: ModelConfig = field(default_factory=ModelConfig)
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    fixed: FixedSettingsConfig = field(default_factory=FixedSettingsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dry_run: bool = False
    """parse and check every setting, print the model, layout, run size and memory per GPU, and exit."""
    finetune_recipe: Optional[str] = field(default=None, metadata=flag(choices=tuple(FINETUNE_RECIPES)))
    """a named fine-tuning recipe's settings as defaults (soda-s2st-sft: SODA's response-only S2ST fine-tuning,
    soda-s2st-lm: its whole-sequence variant; training/finetune_recipes.py); every flag still overrides them."""
    recipe: Optional[str] = field(default=None, metadata=flag(hidden=True))
    """The recipe in force (set by ``resolve_config``): "soda (<preset>)", "<name> (fine-tuning)" or None."""

    @property
    def validation_samples(self) -> int:
        """Sequences evaluated each validation: --eval-iters x --global-batch-size, else --eval-samples."""
        if self.eval.eval_iters is not None:
            return self.eval.eval_iters * self.training.global_batch_size
        return self.eval.eval_samples

    @property
    def validation_interval(self) -> Optional[int]:
        """--eval-interval, or None where there is nothing to validate on (--eval-iters 0, as Megatron-LM)."""
        return self.eval.eval_interval if self.validation_samples > 0 else None

    def lr_schedule(self):
        """The run's LR schedule, or a ValueError naming the flags that make it impossible."""
        from megatron_soda.training.schedules import LRSchedule

        iters = self.training.num_iterations()
        s = self.schedule
        if s.lr_warmup_iters is not None:
            warmup = {"warmup_iters": s.lr_warmup_iters}
        else:
            warmup = {"warmup_fraction": s.lr_warmup_fraction or 0.0}
        decay = {}
        if s.lr_decay_style == "wsd":
            decay = (
                {"decay_iters": s.lr_wsd_decay_iters}
                if s.lr_wsd_decay_iters is not None
                else {"decay_fraction": s.lr_decay_fraction or 0.0}
            )
        try:
            return LRSchedule(
                total_steps=iters,
                lr=self.optimizer.lr,
                min_lr=self.optimizer.min_lr,
                style=s.lr_decay_style,
                decay_end=s.lr_decay_iters,
                **warmup,
                **decay,
            )
        except ValueError as error:
            given = {**warmup, **decay, "decay_end": s.lr_decay_iters}
            settings = ", ".join(f"{_SCHEDULE_FLAGS[k]} {v}" for k, v in given.items() if v is not None)
            message = str(error)
            for name, flag_name in _SCHEDULE_FLAGS.items():
                message = message.replace(name, flag_name)
            raise ValueError(
                f"--lr-decay-style {s.lr_decay_style} over {iters} iterations ({settings}, --lr {self.optimizer.lr}, "
                f"--min-lr {self.optimizer.min_lr}): {message}"
            ) from None


_SCHEDULE_FLAGS = {
    "warmup_fraction": "--lr-warmup-fraction",
    "warmup_iters": "--lr-warmup-iters",
    "decay_fraction": "--lr-decay-fraction",
    "decay_iters": "--lr-wsd-decay-iters",
    "decay_end": "--lr-decay-iters",
    "total_steps": "--train-iters",
}
"""``LRSchedule``'s argument names -> the flags that set them, for error messages."""


def recipe_defaults(preset: Optional[str]) -> Dict[str, Any]:
    """SODA's recipe for a SODA preset (models/presets.py ``soda_recipe``), by config path; {} otherwise."""
    from megatron_soda.models.presets import soda_recipe

    if preset is None:
        return {}
    try:
        recipe = soda_recipe(preset)
    except KeyError:
        return {}
    return {
        "optimizer.lr": recipe.lr,
        "optimizer.min_lr": recipe.min_lr,
        "training.global_batch_size": recipe.global_batch_size,
        "training.seq_length": recipe.seq_length,
        "training.train_iters": recipe.train_steps,
        "schedule.lr_decay_style": "wsd",
        "schedule.lr_warmup_fraction": recipe.lr_warmup_fraction,
        "schedule.lr_decay_fraction": recipe.lr_decay_fraction,
        "optimizer.name": recipe.optimizer,
        "optimizer.adam_beta1": recipe.adam_beta1,
        "optimizer.adam_beta2": recipe.adam_beta2,
        "optimizer.adam_eps": recipe.adam_eps,
        "optimizer.weight_decay": recipe.weight_decay,
        "optimizer.adamc": recipe.adamc,
        "optimizer.clip_grad": recipe.clip_grad,
        "training.z_loss_weight": recipe.z_loss_weight,
    }
