"""Which codec to load and how: torch-free, so command-line parsing (and the processes that re-import
a tool's main module, such as spawned decode workers) never load torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class CodecConfig:
    """Which codec to load and how to run it (the ``--codec-*`` flags)."""

    name: str = "mimi"
    """``mimi`` (SODA's codec) or ``encodec`` (24 kHz)."""
    path: Optional[str] = None
    """Local directory or hub id handed to ``from_pretrained`` (e.g. ``kyutai/mimi``,
    ``facebook/encodec_24khz``). Required unless ``random_init``."""
    random_init: bool = False
    """Random weights from the default config instead of ``path``: for tests only, the tokens are noise."""
    seed: int = 0
    """Seed of the random weights, so random-init tokens are reproducible."""
    num_codebooks: Optional[int] = None
    """Mimi only: codebooks kept per frame (default 8, as SODA; at most the model's 32)."""
    bandwidth: Optional[float] = None
    """EnCodec only: kbps, which fixes the codebooks per frame (default 6.0 -> 8)."""
    device: str = "auto"
    """``auto`` (GPU when present), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    dtype: str = "auto"
    """Network dtype: ``auto`` (bfloat16 on GPU, float32 on CPU), ``float32``, ``bfloat16``, ``float16``.
    The quantizer always runs in float32."""
    max_batch_seconds: float = 120.0
    """Padded audio per encoder call; bounds memory, larger batches run faster."""
    config_overrides: dict = field(default_factory=dict)
    """Random init only: fields changed in the default model config (a smaller model for fast tests)."""
