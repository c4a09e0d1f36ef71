"""SODA's IsoFLOP grid (Marin ``experiments/audio/isoflop_audio_sweep.py``): shapes from a width rule,
tokens from a compute budget, and the sweep's hyperparameters; plus Marin's target runs
(``isoflop_audio_target.py``) and a CPU-sized width family for trying the whole study on a laptop.

Budgets are **forward** model FLOPs as ``training.flops.forward_flops_per_token`` counts them
(Levanter's ``lm_flops_per_token``: attention core and LM head included) times trained tokens; the
paper quotes them x3 as training FLOPs (1e18 .. 1e20 here = 3e18 .. 3e20 there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

from megatron_soda.models.presets import ModelShape
from megatron_soda.tokenizer.layout import SODA_LAYOUT
from megatron_soda.training.flops import forward_flops_per_token

DEFAULT_BUDGETS = (1e18, 3e18, 6e18, 1e19, 3e19, 6e19, 1e20)
"""The sweep's forward-FLOP budgets."""
MIN_WIDTH, MAX_WIDTH = 128, 2048
HEAD_DIM = 128
"""heads = kv heads = width / 128."""
FFN_RATIO = 4
COARSE_ABOVE = 9e18
"""Budgets above this step the width by 256 instead of 128."""
MAX_SWEEP_LR = 0.01


@dataclass(frozen=True)
class WidthFamily:
    """The models a sweep tries: widths per budget, and the shape each width gets (untied, multi-head
    attention with a fixed head dimension, SwiGLU FFN ``ffn_ratio`` x width, SODA's norms and RoPE)."""

    name: str
    """What plans and results call it (``soda``, ``cpu``)."""
    min_width: int = MIN_WIDTH
    """Smallest width tried."""
    max_width: int = MAX_WIDTH
    """Widths are ``range(min_width, max_width + 1, step)``: the last is reached only if on the step."""
    width_step: int = 128
    """Width step at budgets up to ``coarse_above``."""
    coarse_width_step: int = 256
    """Width step above ``coarse_above``."""
    coarse_above: float = COARSE_ABOVE
    """Forward-FLOP budget above which the coarse step is used."""
    head_dim: int = HEAD_DIM
    """Head dimension: heads = kv heads = width / head_dim."""
    ffn_ratio: int = FFN_RATIO
    """FFN width over model width."""
    width_per_layer: Optional[int] = None
    """Depth rule: None is SODA's L = round(d / (64 + 4 log2 d - 7)); a number n gives L = round(d / n). At
    least one layer either way."""

    def widths(self, budget: float) -> list[int]:
        """Widths tried at a budget (with SODA's steps 128/256: 128 .. 2048, or 128, 384 .. 1920)."""
        step = self.coarse_width_step if budget > self.coarse_above else self.width_step
        return list(range(self.min_width, self.max_width + 1, step))

    def num_layers(self, width: int) -> int:
        """Layers at a width (Python's round, as the sweep uses)."""
        if self.width_per_layer is None:
            return max(1, round(width / (64 + 4 * math.log2(width) - 7)))
        return max(1, round(width / self.width_per_layer))

    def shape(self, width: int, vocab_size: int = SODA_LAYOUT.vocab_size, seq_len: int = 4096) -> ModelShape:
        """The model at ``width``; ValueError unless it is a multiple of the head dimension."""
        if width <= 0 or width % self.head_dim:
            raise ValueError(f"IsoFLOP widths are multiples of {self.head_dim}, got {width}")
        heads = width // self.head_dim
        return ModelShape(
            self.num_layers(width),
            width,
            heads,
            heads,
            self.head_dim,
            self.ffn_ratio * width,
            vocab_size=vocab_size,
            tie_embeddings=False,
            max_position_embeddings=seq_len,
        )


SODA_FAMILY = WidthFamily("soda")
"""SODA's sweep (Marin's ``isoflop_audio_sweep.py``)."""
CPU_FAMILY = WidthFamily(
    "cpu", min_width=32, max_width=96, width_step=32, coarse_width_step=32, head_dim=16, width_per_layer=32
)
"""Widths 32, 64, 96 (1, 2, 3 layers, head dim 16): the whole study in minutes on a laptop's CPU."""
FAMILIES = {family.name: family for family in (SODA_FAMILY, CPU_FAMILY)}
CPU_BUDGETS = (5e10, 1e11, 2e11)
"""Forward-FLOP budgets of the CPU family: tens to hundreds of steps of 16 x 64 tokens per run (with SODA's
17k-id vocabulary the LM head is most of a tiny model's FLOPs, so these are small)."""

MARIN_TARGETS = (
    (1e20, 2304),
    (1e20, 2048),
    (6e19, 2048),
    (3e19, 2048),
    (6e19, 2304),
    (1e20, 3072),
    (1e20, 2816),
)
"""(forward budget, width) of Marin's ``isoflop_audio_target.py``: larger models at the top budgets, for the
parabolas' right arms; their hyperparameters follow the sweep's rules."""


def width_step(budget: float) -> int:
    return SODA_FAMILY.coarse_width_step if budget > COARSE_ABOVE else SODA_FAMILY.width_step


def isoflop_widths(budget: float) -> list[int]:
    """Widths tried at a budget: ``range(128, 2049, step)``. With step 256 that is 128, 384 .. 1920
    (2048 is not reached), as in Marin's code."""
    return SODA_FAMILY.widths(budget)


def num_layers_for_width(width: int) -> int:
    """L = round(d / (64 + 4 log2 d - 7)) (Python's round, as the sweep uses)."""
    return SODA_FAMILY.num_layers(width)


def isoflop_shape(width: int, vocab_size: int = SODA_LAYOUT.vocab_size, seq_len: int = 4096) -> ModelShape:
    """The sweep's model at width ``d``: untied, MHA with head dim 128, FFN 4d, SODA's norms and RoPE."""
    return SODA_FAMILY.shape(width, vocab_size, seq_len)


def sweep_learning_rate(batch_size: int, width: int) -> float:
    """lr = 0.33 sqrt(B) / d, capped at 0.01 (B in sequences)."""
    return min(0.33 * math.sqrt(batch_size) / width, MAX_SWEEP_LR)


def sweep_beta2(batch_size: int) -> float:
    """beta2 = 0.98^(B/128): the same half-life in tokens at every batch size."""
    return 0.98 ** (batch_size / 128)


@dataclass(frozen=True)
class IsoFlopPoint:
    """One model of the sweep with its data budget and hyperparameters."""

    budget: float
    """Target forward FLOPs (Levanter count); x3 for training FLOPs."""
    shape: ModelShape
    """The model (``WidthFamily.shape(width)``)."""
    batch_size: int
    """Sequences per step."""
    seq_len: int
    """Tokens per sequence."""
    train_steps: int
    """round(budget / forward FLOPs per step)."""
    learning_rate: float
    """Peak lr, ``sweep_learning_rate``."""
    adam_beta2: float
    """``sweep_beta2(batch_size)``."""
    adam_beta1: float = 0.95
    """First-moment decay."""
    adam_eps: float = 1e-15
    """Adam epsilon."""
    weight_decay: float = 0.1
    """Decoupled decay (AdamC, Cautious AdamW as in SODA's suite)."""
    warmup_fraction: float = 0.1
    """Linear warmup fraction, as in the suite."""
    decay_fraction: float = 0.2
    """Linear decay to 0 over this last fraction, as in the suite."""
    clip_grad: float = 1.0
    """Gradient-norm clip."""
    z_loss_weight: float = 0.0
    """The sweep uses no z-loss."""
    target: bool = False
    """One of Marin's target runs (``MARIN_TARGETS``), not of the sweep's grid."""

    @property
    def width(self) -> int:
        return self.shape.hidden_size

    @property
    def tokens(self) -> int:
        """D: tokens trained on."""
        return self.train_steps * self.batch_size * self.seq_len

    @property
    def non_embedding_parameters(self) -> int:
        return self.shape.num_non_embedding_parameters()

    @property
    def total_parameters(self) -> int:
        return self.shape.num_parameters()

    @property
    def forward_flops(self) -> int:
        """Forward FLOPs actually spent (differs from ``budget`` by the rounding of steps)."""
        return forward_flops_per_token(self.shape, self.seq_len) * self.tokens

    @property
    def training_flops(self) -> int:
        """3 x ``forward_flops``: the figure the paper reports."""
        return 3 * self.forward_flops


def _marin_batch_size(budget: float, flops_per_sequence: int, width: int, target_steps: int) -> int:
    """Marin's choice: the power of two at or above budget / (flops per sequence x target steps),
    halved while the lr would exceed 0.01."""
    exact = budget / (flops_per_sequence * target_steps)
    batch = 1 if exact <= 1 else 2 ** math.ceil(math.log2(exact))
    while 0.33 * math.sqrt(batch) / width > MAX_SWEEP_LR:
        batch //= 2
    return batch


def isoflop_point(
    budget: float,
    width: int,
    family: WidthFamily = SODA_FAMILY,
    batch_size: Optional[int] = None,
    seq_len: int = 4096,
    vocab_size: int = SODA_LAYOUT.vocab_size,
    target_steps: int = 2**16,
    target: bool = False,
) -> IsoFlopPoint:
    """One model at one budget: ``batch_size``, or Marin's batch rule when None (``_marin_batch_size``), and
    steps = round(budget / FLOPs per step) (possibly 0, or off the budget: ``isoflop_grid`` filters)."""
    shape = family.shape(width, vocab_size, seq_len)
    flops_per_sequence = forward_flops_per_token(shape, seq_len) * seq_len
    batch = batch_size or _marin_batch_size(budget, flops_per_sequence, width, target_steps)
    steps = round(budget / (flops_per_sequence * batch))
    return IsoFlopPoint(
        budget,
        shape,
        batch,
        seq_len,
        steps,
        sweep_learning_rate(batch, width),
        sweep_beta2(batch),
        target=target,
    )


def isoflop_grid(
    budgets: Iterable[float] = DEFAULT_BUDGETS,
    batch_size: Optional[int] = None,
    seq_len: int = 4096,
    vocab_size: int = SODA_LAYOUT.vocab_size,
    flop_tolerance: float = 0.01,
    target_steps: int = 2**16,
    min_batch_size: int = 8,
    max_steps: Optional[int] = 400_000,
    family: WidthFamily = SODA_FAMILY,
) -> list[IsoFlopPoint]:
    """Every (budget, width) point of the sweep, budgets in the order given, widths ascending.

    ``batch_size=None`` reproduces Marin's sweep: the batch is the power of two that gives about
    ``target_steps`` steps, halved until lr <= 0.01, and widths whose batch falls below
    ``min_batch_size`` are skipped. A fixed ``batch_size`` uses it everywhere and caps the lr at 0.01
    instead. Either way steps = round(budget / FLOPs per step), points missing the budget by more
    than ``flop_tolerance`` (relative) are dropped, and so are runs of ``max_steps`` steps or more
    (Marin left those out).
    """
    points = []
    for budget in budgets:
        for width in family.widths(budget):
            point = isoflop_point(budget, width, family, batch_size, seq_len, vocab_size, target_steps)
            if batch_size is None and point.batch_size < min_batch_size:
                continue
            if point.train_steps < 1 or abs(point.forward_flops - budget) > flop_tolerance * budget:
                continue
            if max_steps is not None and point.train_steps >= max_steps:
                continue
            points.append(point)
    return points


def marin_targets(
    seq_len: int = 4096, vocab_size: int = SODA_LAYOUT.vocab_size, target_steps: int = 2**16
) -> list[IsoFlopPoint]:
    """Marin's seven target runs (``MARIN_TARGETS``), with the sweep's batch, lr and beta2 rules."""
    return [
        isoflop_point(budget, width, SODA_FAMILY, None, seq_len, vocab_size, target_steps, target=True)
        for budget, width in MARIN_TARGETS
    ]
