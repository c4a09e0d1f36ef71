"""Model shapes (SODA's sizes, the ablation shapes, a CPU test shape) and SODA's training recipe.

The one place that knows the shapes. Parameter counts follow transformers' ``Qwen3ForCausalLM``
exactly (the tests build one on the meta device and compare), so the SODA table in docs/recipe.md is
reproduced to the parameter. The vocabulary comes from ``SODA_LAYOUT`` unless a caller overrides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from megatron_soda.tokenizer.layout import SODA_LAYOUT


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3-style RoPE frequency scaling (Levanter's ``Llama3RotaryEmbeddingsConfig`` defaults)."""

    factor: float = 8.0
    """Wavelengths longer than ``original_max_position / low_freq_factor`` are divided by this."""
    low_freq_factor: float = 1.0
    """Sets the long-wavelength edge of the smooth interpolation band."""
    high_freq_factor: float = 4.0
    """Sets the short-wavelength edge: shorter wavelengths are left unscaled."""
    original_max_position: int = 8192
    """Context length the unscaled frequencies were designed for."""


LLAMA3_ROPE_SCALING = RopeScaling()
"""The scaling every SODA model and IsoFLOP shape uses."""


@dataclass(frozen=True)
class ModelShape:
    """A Qwen3-architecture decoder (megatron-core names where they differ from Hugging Face's)."""

    num_layers: int
    """Transformer layers."""
    hidden_size: int
    """Residual stream width."""
    num_attention_heads: int
    """Query heads."""
    num_query_groups: int
    """Key/value heads (GQA groups); equal to ``num_attention_heads`` for plain multi-head attention."""
    kv_channels: int
    """Head dimension; Qwen3 >= 600M decouples it from ``hidden_size / num_attention_heads``."""
    ffn_hidden_size: int
    """MLP inner width (each of SwiGLU's gate and up projections)."""
    vocab_size: int = SODA_LAYOUT.vocab_size
    """Real vocabulary size (unpadded); padding for TP is ``padded_vocab_size()``."""
    tie_embeddings: bool = False
    """Whether the LM head shares the input embedding (SODA's four sizes: untied)."""
    norm_epsilon: float = 1e-5
    """RMSNorm epsilon (Levanter's default, not HF Qwen3's 1e-6)."""
    rotary_base: float = 500_000.0
    """RoPE theta."""
    rope_scaling: Optional[RopeScaling] = LLAMA3_ROPE_SCALING
    """Llama-3 frequency scaling, or None for plain RoPE."""
    max_position_embeddings: int = 4096
    """Longest sequence trained on."""
    qk_layernorm: bool = True
    """RMSNorm over each query and key head (Qwen3's q_norm / k_norm, ``kv_channels`` weights each)."""
    swiglu: bool = True
    """Gated SiLU MLP (gate, up, down); False means a plain two-matrix MLP."""
    bias: bool = False
    """Biases on the q/k/v/o projections (HF Qwen3's ``attention_bias``); SODA has none."""

    def __post_init__(self):
        for name in (
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "num_query_groups",
            "kv_channels",
            "ffn_hidden_size",
            "vocab_size",
            "max_position_embeddings",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"ModelShape.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_query_groups={self.num_query_groups}"
            )

    def layer_parameters(self) -> int:
        """Parameters of one decoder layer: attention, q/k norms, MLP and its two RMSNorms."""
        h, hd = self.hidden_size, self.kv_channels
        q_dim, kv_dim = self.num_attention_heads * hd, self.num_query_groups * hd
        attention = h * q_dim + 2 * h * kv_dim + q_dim * h
        if self.bias:
            attention += q_dim + 2 * kv_dim + h
        qk_norms = 2 * hd if self.qk_layernorm else 0
        mlp = (3 if self.swiglu else 2) * h * self.ffn_hidden_size
        return attention + qk_norms + mlp + 2 * h

    def num_non_embedding_parameters(self) -> int:
        """All layers plus the final norm: everything but the embedding and the LM head."""
        return self.num_layers * self.layer_parameters() + self.hidden_size

    def num_embedding_parameters(self) -> int:
        """Input embedding, plus the LM head when untied (unpadded vocabulary)."""
        return (1 if self.tie_embeddings else 2) * self.vocab_size * self.hidden_size

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Parameter count as ``Qwen3ForCausalLM`` has it (a tied LM head counted once)."""
        n = self.num_non_embedding_parameters()
        return n + self.num_embedding_parameters() if include_embeddings else n

    def padded_vocab_size(self, multiple: int = 1024) -> int:
        """Embedding rows in a megatron checkpoint: the next multiple of ``multiple`` above the vocabulary.

        A fixed function of the vocabulary, never of the TP size (docs/design.md): megatron's default of
        128 x TP would give different row counts at TP=1 and TP=2 and make checkpoints non-portable.
        1,024 serves TP up to 8 (and any power of two dividing 1,024). Always at least one row past
        the vocabulary, even when it is a multiple already: training's pad id (``vocab_size``) lives there.
        """
        if multiple <= 0:
            raise ValueError(f"multiple must be positive, got {multiple}")
        return (self.vocab_size // multiple + 1) * multiple


def _soda(num_layers, hidden, heads, kv_heads, head_dim, ffn) -> ModelShape:
    return ModelShape(num_layers, hidden, heads, kv_heads, head_dim, ffn, tie_embeddings=False)


def _ablation(num_layers, hidden, heads, ffn) -> ModelShape:
    return ModelShape(num_layers, hidden, heads, heads, hidden // heads, ffn, tie_embeddings=True)


PRESETS: dict[str, ModelShape] = {
    # SODA's released suite (Marin qwen3_135m, qwen3_0_6b_hd128, qwen3_1_7b, qwen3_4b_hd128), all untied.
    "soda-135m": _soda(15, 512, 8, 8, 64, 1792),
    "soda-600m": _soda(28, 1024, 16, 8, 128, 3072),
    "soda-1.7b": _soda(28, 2048, 16, 8, 128, 6144),
    "soda-4b": _soda(36, 2560, 32, 8, 128, 9728),
    # Ablation shapes (Marin experiments/audio/qwen3.py): tied, head dim = hidden / heads,
    # kv heads = heads. *Unverified* for the runs that used them (a run may override the tying).
    "ablation-30m": _ablation(8, 192, 2, 448),
    "ablation-50m": _ablation(12, 256, 4, 896),
    "ablation-75m": _ablation(16, 336, 4, 1024),
    "ablation-150m": _ablation(20, 512, 8, 1792),
    "ablation-300m": _ablation(22, 768, 12, 2688),
    # CPU tests: GQA (2 query heads per group), untied, the full SODA vocabulary.
    "tiny": ModelShape(2, 64, 4, 2, 16, 128, tie_embeddings=False),
}
"""Every named shape. Names are names, not counts: ``soda-135m`` has 205,149,568 parameters untied."""


def get_preset(name: str, **overrides) -> ModelShape:
    """The named shape, with ``ModelShape`` fields replaced by ``overrides`` (e.g. ``vocab_size=``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


# SODA's final suite (exp1699_marin_audio_all.py): lr = 0.003 * sqrt(batch / 256) * sqrt(1024 / width).
_BASE_LR, _BASE_BATCH, _BASE_WIDTH = 0.003, 256, 1024
_LR_WIDTH = {"soda-135m": 1024, "soda-600m": 1024, "soda-1.7b": 2048, "soda-4b": 2560}
"""Width in the lr rule; the 135M run uses 1024, not its real 512, to keep its lr from growing."""


@dataclass(frozen=True)
class TrainingRecipe:
    """SODA's pretraining hyperparameters for one size (Levanter semantics, docs/recipe.md)."""

    lr: float
    """Peak lr, from the width rule."""
    lr_width: int
    """Width the lr rule was evaluated at (1024 for the 135M model, whose hidden size is 512)."""
    global_batch_size: int = 512
    """Sequences per optimizer step."""
    seq_length: int = 4096
    """Tokens per sequence."""
    train_tokens: int = 500_000_000_000
    """Token budget; every suite size trains on 500B tokens."""
    min_lr: float = 0.0
    """lr at the end of the decay."""
    lr_warmup_fraction: float = 0.1
    """Linear warmup from 0 over this fraction of the steps."""
    lr_decay_fraction: float = 0.2
    """Linear decay to ``min_lr`` over this last fraction (warmup-stable-decay)."""
    optimizer: str = "cautious"
    """AdamW whose update is masked where its sign disagrees with the gradient's, then rescaled."""
    adam_beta1: float = 0.98
    """First-moment decay."""
    adam_beta2: float = 0.98
    """Second-moment decay."""
    adam_eps: float = 1e-16
    """Adam epsilon."""
    weight_decay: float = 0.033
    """Decoupled decay lambda; not applied to norms, embeddings and biases."""
    adamc: bool = True
    """AdamC: the decay coefficient follows the schedule, lambda * lr_t / lr_max (weight_decay/lr constant)."""
    clip_grad: float = 1.0
    """Global gradient-norm clip."""
    z_loss_weight: float = 1e-4
    """Weight of the squared log-partition (z-loss) term."""

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_length

    @property
    def train_steps(self) -> int:
        """ceil(train_tokens / tokens per step): 238,419 for SODA."""
        return -(-self.train_tokens // self.tokens_per_step)

    @property
    def warmup_steps(self) -> int:
        """Truncated like Levanter's fraction-to-steps conversion."""
        return int(self.lr_warmup_fraction * self.train_steps)

    @property
    def decay_steps(self) -> int:
        """Truncated like Levanter's fraction-to-steps conversion."""
        return int(self.lr_decay_fraction * self.train_steps)


def soda_learning_rate(width: int, global_batch_size: int = 512) -> float:
    """SODA's lr rule: 0.003 * sqrt(batch / 256) * sqrt(1024 / width)."""
    return _BASE_LR * math.sqrt(global_batch_size / _BASE_BATCH) * math.sqrt(_BASE_WIDTH / width)


def soda_recipe(preset_name: str) -> TrainingRecipe:
    """SODA's recipe for one of its four sizes."""
    if preset_name not in _LR_WIDTH:
        raise KeyError(f"SODA trained no {preset_name!r}; recipes exist for: {', '.join(_LR_WIDTH)}")
    width = _LR_WIDTH[preset_name]
    return TrainingRecipe(lr=soda_learning_rate(width), lr_width=width)
