"""Which codec to load and how: torch-free, so command-line parsing (and the processes that re-import
a tool's main module, such as spawned decode workers) never load torch.

``CodecConfig`` is also the ``--codec*`` flags of every tool that loads a codec (``megatron_soda.flags``
makes one flag per field; ``codec.cli.check_codec`` checks them before anything is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megatron_soda.flags import flag, json_object


@dataclass
class CodecConfig:
    """Which codec to load and how to run it (the ``--codec*`` flags)."""

    name: str = field(default="mimi", metadata=flag("--codec", choices=("mimi", "encodec")))
    """codec family: mimi (SODA's, 12.5 Hz) or encodec (24 kHz)."""
    path: Optional[str] = field(default=None, metadata=flag("--codec-path"))
    """local directory or hub id of the codec weights, handed to from_pretrained (e.g. kyutai/mimi,
    facebook/encodec_24khz); required unless --codec-random-init."""
    random_init: bool = field(default=False, metadata=flag("--codec-random-init"))
    """random codec weights instead of --codec-path (tests and offline demos only: the tokens mean nothing)."""
    seed: int = field(default=0, metadata=flag("--codec-seed"))
    """seed of a random-init codec's weights, so its tokens are reproducible."""
    num_codebooks: Optional[int] = None
    """Mimi only: codebooks kept per frame (default 8, as SODA; at most the model's 32)."""
    bandwidth: Optional[float] = None
    """EnCodec only: bandwidth in kbps, which fixes the codebooks per frame (default 6.0 -> 8)."""
    device: str = "auto"
    """auto (cuda when present), cpu, cuda, cuda:N."""
    dtype: str = field(default="auto", metadata=flag(hidden=True))
    """Network dtype: ``auto`` (bfloat16 on GPU, float32 on CPU), ``float32``, ``bfloat16``, ``float16``.
    The quantizer always runs in float32."""
    max_batch_seconds: Optional[float] = field(default=None, metadata=flag("--codec-batch-seconds"))
    """padded audio per codec call (bounds memory); default: the fastest measured on the device
    (codec.base.DEFAULT_BATCH_SECONDS: 5 on a CPU, 120 on a GPU; encoding with Mimi's gemm encoder, which
    pads nothing: 120; bench/RESULTS.md)."""
    encoder: str = field(default="auto", metadata=flag("--codec-encoder", choices=("auto", "gemm", "transformers")))
    """Mimi only: its encoder's implementation. auto: gemm on a CPU (channels-last GEMMs, the faster there),
    transformers on a GPU (batched); both compute the same function (codes agree but for float rounding)."""
    config_overrides: dict = field(
        default_factory=dict, metadata=flag("--codec-config", parse=json_object, metavar="JSON")
    )
    """random init only: JSON fields changed in the codec's default config (a smaller model for fast tests),
    e.g. '{"num_hidden_layers": 2}'."""
