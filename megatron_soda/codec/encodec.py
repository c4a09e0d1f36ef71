"""EnCodec (Meta) 24 kHz over transformers' ``EncodecModel``: 75 frames/s, codebooks of 1024.

The bandwidth picks the number of residual codebooks: K = bandwidth / (frame rate x log2 C), i.e.
1.5/3/6/12/24 kbps -> 2/4/8/16/32 for the 24 kHz model. Every number is read from the model's config.
"""

from __future__ import annotations

import torch

from megatron_soda.codec.base import AudioCodec

DEFAULT_BANDWIDTH = 6.0
"""kbps; 8 codebooks for the 24 kHz model, like SODA's Mimi setting."""


class EncodecCodec(AudioCodec):
    """``transformers.EncodecModel`` behind the ``AudioCodec`` interface.

    ``EncodecModel.encode`` returns ``[chunks, B, K, T]`` plus per-chunk loudness scales, and ``decode``
    takes them back; for the 24 kHz model (no chunking, no normalisation) there is one chunk and no scale.
    This class calls the encoder and the quantizer directly instead — the same computation — so the
    quantizer can run in ``quantizer_dtype`` while the network runs in ``dtype``. The 48 kHz model (stereo, chunked,
    normalised) is refused.
    """

    name = "encodec"

    def __init__(self, model, bandwidth: float = DEFAULT_BANDWIDTH, **kwargs):
        super().__init__(**kwargs)
        config = model.config
        if config.chunk_length_s is not None or config.normalize or config.audio_channels != 1:
            raise ValueError(
                "this EnCodec model chunks, normalises or is not mono (the 48 kHz model); "
                "only the mono 24 kHz model (facebook/encodec_24khz) is supported"
            )
        if bandwidth not in config.target_bandwidths:
            codebooks = model.quantizer.get_num_quantizers_for_bandwidth
            choices = ", ".join(f"{b:g} ({codebooks(b)} codebooks)" for b in config.target_bandwidths)
            raise ValueError(f"EnCodec bandwidth {bandwidth:g} kbps is not one this model supports: {choices}")
        self.bandwidth = float(bandwidth)
        self.sample_rate = int(config.sampling_rate)
        self.samples_per_frame = int(config.hop_length)
        self.num_codebooks = int(model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth))
        self.codebook_size = int(config.codebook_size)
        if config.pad_mode == "reflect":
            # The first decoder conv and the last encoder conv run at the frame rate and pad on the left by
            # reflection, reading kernel - 1 frames past the start: a shorter clip reads past its own end.
            self.min_batched_frames = max(config.kernel_size, config.last_kernel_size)
        self.model = self._place(model, model.quantizer)

    def _encode_batch(self, audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # EncodecModel.encode only multiplies the input by the mask; the padding is already zeros.
        embeddings = self.model.encoder(audio.to(self.dtype)).to(self.quantizer_dtype)
        return self.model.quantizer.encode(embeddings, self.bandwidth).transpose(0, 1)  # [K, B, T] -> [B, K, T]

    def _decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        embeddings = self.model.quantizer.decode(codes.transpose(0, 1)).to(self.dtype)
        return self.model.decoder(embeddings)


def randomize_codebooks(model, generator: torch.Generator, std: float = 0.01) -> None:
    """Draw every codebook from N(0, std^2): transformers initialises them to zero (every code 0)."""
    for module in model.quantizer.modules():
        if hasattr(module, "embed") and hasattr(module, "cluster_size"):
            module.embed.copy_(torch.randn(module.embed.shape, generator=generator) * std)
