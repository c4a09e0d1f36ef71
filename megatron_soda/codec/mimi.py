"""Mimi (Kyutai), SODA's codec, over transformers' ``MimiModel``: 24 kHz, 12.5 frames/s, codebooks of 2048.

SODA keeps the first 8 of Mimi's 32 residual codebooks: codebook 0 is the semantic one (distilled from a
self-supervised speech model), 1-7 are acoustic. Every number here is read from the model's config.
"""

from __future__ import annotations

import logging

import torch

from megatron_soda.codec.base import AudioCodec
from megatron_soda.codec.mimi_gemm import MimiGemmEncoder

logger = logging.getLogger(__name__)

DEFAULT_NUM_CODEBOOKS = 8
"""SODA's choice: 1 semantic + 7 acoustic codebooks, 100 tokens per second."""

ENCODERS = ("auto", "gemm", "transformers")
"""Implementations of Mimi's encoder network: ``gemm`` (``codec.mimi_gemm``, the faster on a CPU),
``transformers`` (``MimiModel``'s own modules, batched: the one for GPUs); ``auto`` picks by device (and
falls back to transformers' for a configuration the gemm encoder does not cover)."""


GEMM_BATCH_SECONDS = 120.0
"""Default audio per ``gemm`` encode call: it computes each clip at its own length (no padding), so a large
batch costs no work and reads the transformer's and codebooks' weights once for many clips (the fastest
measured on a CPU: ``bench/bench_preprocess.py``, bench/RESULTS.md)."""


def resolve_encoder(encoder: str, device: torch.device) -> str:
    if encoder not in ENCODERS:
        raise ValueError(f"unknown Mimi encoder {encoder!r}; choose {', '.join(ENCODERS)}")
    if encoder == "auto":
        return "gemm" if device.type == "cpu" else "transformers"
    return encoder


class MimiCodec(AudioCodec):
    """``transformers.MimiModel`` behind the ``AudioCodec`` interface.

    Encoding calls the encoder and the quantizer separately (what ``MimiModel.encode`` does in one call) so
    the quantizer can run in ``quantizer_dtype`` while the network runs in ``dtype``. transformers' encoder
    accepts a ``padding_mask`` but ignores it (transformers 5.24): batch padding stays out of a clip's codes
    by causality instead (causal convolutions padded with zeros, causal sliding-window attention). The
    ``gemm`` encoder runs each clip at its own length, so it computes no padding at all.
    """

    name = "mimi"

    def __init__(self, model, num_codebooks: int = DEFAULT_NUM_CODEBOOKS, encoder: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.encoder_impl = resolve_encoder(encoder, self.device)
        config = model.config
        semantic, available = config.num_semantic_quantizers, config.num_quantizers
        if not semantic <= num_codebooks <= available:
            raise ValueError(
                f"num_codebooks={num_codebooks}: this Mimi model has {available} codebooks "
                f"(config.num_quantizers), the first {semantic} semantic; choose {semantic}..{available}"
            )
        if config.audio_channels != 1:
            raise ValueError(f"Mimi with {config.audio_channels} audio channels: only mono models are supported")
        if model.encoder is None or model.decoder is None:
            raise ValueError("this Mimi model lacks its encoder or decoder; the codec needs both")
        self.sample_rate = int(config.sampling_rate)
        self.samples_per_frame = int(config.frame_size)
        self.num_codebooks = num_codebooks
        self.codebook_size = int(config.codebook_size)
        self.model = self._place(model, model.quantizer)
        self._gemm = None
        if self.encoder_impl == "gemm":
            try:
                self._gemm = MimiGemmEncoder(self.model)
            except ValueError as error:
                if encoder != "auto":
                    raise ValueError(f"--codec-encoder gemm cannot run this Mimi model: {error}") from error
                logger.info("Mimi's gemm encoder cannot run this model (%s); using transformers'", error)
                self.encoder_impl = "transformers"

    def batch_seconds(self, direction: str) -> float:
        if self.max_batch_seconds is None and direction == "encode" and self._gemm is not None:
            return GEMM_BATCH_SECONDS
        return super().batch_seconds(direction)

    def _encode_batch(self, audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self._gemm is None:
            latents = self.model.encoder(audio.to(self.dtype), padding_mask=mask).latents.to(self.quantizer_dtype)
            return self.model.quantizer.encode(latents, self.num_codebooks).transpose(0, 1)  # [K, B, T] -> [B, K, T]
        hop = self.samples_per_frame
        lengths = [-(-int(n) // hop) * hop for n in mask[:, 0].sum(-1).tolist()]
        rows = [i for i, n in enumerate(lengths) if n]  # an empty clip batched with others: no frames
        latents = self._gemm.latents([audio[i, 0, : lengths[i]].to(self.dtype) for i in rows])
        frames = [lat.shape[1] for lat in latents]
        # One quantizer call over every clip's frames side by side: it works frame by frame.
        codes = self.model.quantizer.encode(torch.cat(latents, 1)[None].to(self.quantizer_dtype), self.num_codebooks)
        out = codes.new_zeros(len(lengths), self.num_codebooks, audio.shape[-1] // hop)
        for i, count, part in zip(rows, frames, torch.split(codes[:, 0], frames, dim=1)):
            out[i, :, :count] = part
        return out

    def _decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        latents = self.model.quantizer.decode(codes).to(self.dtype)
        return self.model.decoder(latents).audio_values


def randomize_codebooks(model, generator: torch.Generator, std: float = 0.01) -> None:
    """Draw every codebook from N(0, std^2).

    transformers initialises codebooks to zero, which makes every code 0; small random centroids make
    the nearest one depend on the latent's direction, so a random model still gives varied codes.
    """
    for module in model.quantizer.modules():
        if hasattr(module, "embed_sum") and hasattr(module, "cluster_usage"):
            module.embed_sum.copy_(torch.randn(module.embed_sum.shape, generator=generator) * std)
            module.cluster_usage.fill_(1.0)
            module._embed = None  # the centroids are cached from embed_sum / cluster_usage on first use
