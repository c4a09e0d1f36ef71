"""Mimi's encoder recomputed as channels-last GEMMs: the CPU path of ``MimiCodec.encode``.

transformers runs Mimi's SEANet convolutions through oneDNN on ``[batch, channels, time]`` tensors. On a CPU
the first layers are memory-bound there: 64 channels at 24 kHz make every activation tens of megabytes, and
each layer streams them through DRAM several times (pad, ELU, convolution), at a fraction of the GEMM rate.
This module computes the same function from the same weights, shaped for a CPU:

- every causal convolution is a sum of GEMMs over strided views of a ``[time, channels]`` tensor (no
  im2col copy; a stride-s kernel of 2s taps is two GEMMs over rows of s frames);
- the high-rate layers, whose weights are small, run over the clip in chunks of time, each convolution
  carrying its left context from chunk to chunk (what Mimi's streaming mode carries), so their activations
  stay in cache; the low-rate layers, whose weights are large, run over the whole clip at once;
- the transformer runs every clip of a batch in one set of GEMMs (its weights are read once per batch,
  not once per clip), attention clip by clip, and each clip is computed at its own length (no batch padding).

The result equals transformers' encoder up to float32 rounding (~1e-6 relative; ``tests/test_mimi_gemm.py``
compares latents and codes), so a code whose two nearest centroids tie within that rounding can flip, as it
does between batch shapes or devices. ``bench/bench_preprocess.py`` measures both paths against
transformers' ``MimiModel.encode`` one utterance at a time.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

STREAM_WEIGHT_BYTES = 1 << 20
"""Layers run chunk by chunk while their weights stay under this size (they are re-read every chunk)."""

DEFAULT_CHUNK_FRAMES = 8
"""Chunk of the streamed layers, in code frames (8 x 1920 samples: ~4 MB activations at 64 channels). 2 to
16 frames and 0.5 to 2 MiB of streamed weights measure within 5% of each other on a 2-core CPU."""


class CausalConv:
    """One of Mimi's causal convolutions (``MimiConv1d``) on ``[time, channels]`` rows.

    The input is left-padded by ``kernel - stride`` rows (zeros, or the first row repeated in ``replicate``
    mode), exactly as ``MimiConv1d`` pads a waveform whose length is a multiple of the stride.
    """

    def __init__(self, module):
        conv = module.conv
        self.kernel, self.stride, self.dilation = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        if conv.groups != 1:
            raise ValueError(f"grouped convolutions are not supported (groups={conv.groups})")
        if not module.causal or module.pad_mode not in ("constant", "replicate"):
            raise ValueError(
                f"only causal convolutions padded with zeros or by replication are supported (causal="
                f"{module.causal}, pad_mode={module.pad_mode!r})"
            )
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.pad = (self.kernel - 1) * self.dilation + 1 - self.stride
        self.replicate = module.pad_mode == "replicate"
        weight = conv.weight.detach()  # [out, in, kernel]
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.weight_bytes = weight.numel() * weight.element_size()
        if self.dilation == 1 and self.kernel % self.stride == 0 and self.in_channels * self.stride > 1:
            # Rows of `stride` frames: tap group i is frames [i*stride, (i+1)*stride) of each output's window.
            s = self.stride
            self.mode = "frames"
            self.weights = [
                weight[:, :, i * s : (i + 1) * s].permute(2, 1, 0).reshape(s * self.in_channels, -1).contiguous()
                for i in range(self.kernel // s)
            ]
        else:  # a single input channel (the waveform): one GEMM over copied windows
            self.mode = "windows"
            self.weights = [weight.permute(2, 1, 0).reshape(self.kernel * self.in_channels, -1).contiguous()]

    def __call__(self, x: torch.Tensor, context: Optional[torch.Tensor], elu: bool = False, residual=None):
        """``x`` ``[n, in]`` (ELU applied first when ``elu``) after ``context`` ``[pad, in]`` (None: the clip
        starts here, padded as ``MimiConv1d`` pads it) -> (``[n / stride, out]`` (+ ``residual``), the context
        for the rows that follow)."""
        n = x.shape[0]
        if n % self.stride:
            raise ValueError(f"{n} rows do not divide by the stride {self.stride}")
        rows = torch.empty(self.pad + n, self.in_channels, dtype=x.dtype, device=x.device)
        if elu:
            torch._C._nn.elu(x, 1.0, 1, 1, out=rows[self.pad :])
        else:
            rows[self.pad :] = x
        if context is not None:
            rows[: self.pad] = context
        elif self.replicate:
            rows[: self.pad] = rows[self.pad]  # the first row as the convolution sees it (after the ELU)
        else:
            rows[: self.pad] = 0
        out_rows = n // self.stride
        if self.mode == "frames":
            frames = rows.view(-1, self.stride * self.in_channels)
            out = self._gemm(frames[:out_rows], self.weights[0])
            for i, weight in enumerate(self.weights[1:], 1):
                out.addmm_(frames[i : i + out_rows], weight)
        else:
            windows = rows.unfold(0, (self.kernel - 1) * self.dilation + 1, self.stride)[..., :: self.dilation]
            out = self._gemm(windows.transpose(1, 2).reshape(out_rows, -1), self.weights[0])
        if residual is not None:
            out += residual
        return out, rows[n:] if self.pad else context

    def _gemm(self, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return rows @ weight if self.bias is None else torch.addmm(self.bias, rows, weight)


class _ResnetBlock:
    """SEANet's residual unit: x + conv(ELU(conv(ELU(x)))), identity shortcut."""

    def __init__(self, block):
        if not isinstance(block.shortcut, torch.nn.Identity):
            raise ValueError("Mimi resnet blocks with a convolution shortcut are not supported")
        _check_elus(block.block)
        self.convs = [CausalConv(layer) for layer in block.block if hasattr(layer, "conv")]
        self.weight_bytes = sum(c.weight_bytes for c in self.convs)
        self.stride = 1

    def __call__(self, x, contexts, elu):
        first, second = self.convs
        contexts = contexts or (None, None)
        h, c0 = first(x, contexts[0], elu=True)
        out, c1 = second(h, contexts[1], elu=True, residual=x)
        return out, (c0, c1)


class _Conv:
    def __init__(self, module):
        self.conv = CausalConv(module)
        self.weight_bytes, self.stride = self.conv.weight_bytes, self.conv.stride

    def __call__(self, x, context, elu):
        return self.conv(x, context, elu=elu)


class MimiGemmEncoder:
    """``MimiModel``'s encoder (SEANet, transformer, downsampling) over clips of their own lengths.

    ``latents(clips)``: 1-D waveforms at 24 kHz, each a multiple of the frame hop long -> latents
    ``[latent_dim, frames]`` each, what ``model.encoder(wave).latents`` gives for one clip.
    """

    def __init__(self, model, chunk_frames: int = DEFAULT_CHUNK_FRAMES, stream_weight_bytes: int = STREAM_WEIGHT_BYTES):
        encoder = model.encoder
        self.hop = int(model.config.frame_size)
        self.chunk = chunk_frames * self.hop
        self.layers: list[tuple[object, bool]] = []  # (layer, ELU before it)
        elu = False
        _check_elus(encoder.encoder_seanet.layers)
        for layer in encoder.encoder_seanet.layers:
            if isinstance(layer, torch.nn.ELU):
                elu = True
            elif hasattr(layer, "conv"):
                self.layers.append((_Conv(layer), elu))
                elu = False
            elif hasattr(layer, "block"):
                self.layers.append((_ResnetBlock(layer), elu))
                elu = False
            else:
                raise ValueError(f"unexpected SEANet layer {type(layer).__name__}")
        self.streamed = 0
        while self.streamed < len(self.layers) and self.layers[self.streamed][0].weight_bytes <= stream_weight_bytes:
            self.streamed += 1
        self.stream_stride = 1
        for layer, _ in self.layers[: self.streamed]:
            self.stream_stride *= layer.stride
        if self.chunk % self.stream_stride:
            raise ValueError(f"chunk of {self.chunk} samples does not divide by the strides {self.stream_stride}")
        self.transformer = encoder.encoder_transformer
        self.downsample = None if encoder.downsample is None else CausalConv(encoder.downsample)

    @torch.inference_mode()
    def latents(self, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        for i, clip in enumerate(clips):
            if clip.ndim != 1 or clip.numel() == 0 or clip.numel() % self.hop:
                raise ValueError(
                    f"clip {i}: {list(clip.shape)} samples; give 1-D clips of whole {self.hop}-sample frames"
                )
        hidden = [self._seanet(clip) for clip in clips]
        hidden = self._transformer(hidden)
        out = []
        for h in hidden:
            if self.downsample is not None:
                h, _ = self.downsample(h, None)
            out.append(h.t())
        return out

    def _seanet(self, wave: torch.Tensor) -> torch.Tensor:
        rows = wave.view(-1, 1)
        contexts: list[Optional[object]] = [None] * self.streamed
        chunks = []
        for start in range(0, rows.shape[0], self.chunk):
            x = rows[start : start + self.chunk]
            for i, (layer, elu) in enumerate(self.layers[: self.streamed]):
                x, contexts[i] = layer(x, contexts[i], elu)
            chunks.append(x)
        x = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        for layer, elu in self.layers[self.streamed :]:
            x, _ = layer(x, None, elu)
        return x

    def _transformer(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """All clips' rows through each layer's GEMMs together; attention (causal, sliding window) per clip."""
        lengths = [h.shape[0] for h in hidden]
        x = torch.cat(hidden)
        window = self.transformer.config.sliding_window
        rotary = []
        for n in lengths:
            positions = torch.arange(n, device=x.device)[None]
            cos, sin = self.transformer.rotary_emb(x, positions)
            rotary.append((cos[0][:, None], sin[0][:, None]))  # [n, 1, head_dim]: broadcast over heads
        for layer in self.transformer.layers:
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(x.shape[0], -1, attn.head_dim)
            k = attn.k_proj(h).view(x.shape[0], -1, attn.head_dim)
            v = attn.v_proj(h).view(x.shape[0], -1, attn.head_dim)
            outs, start = [], 0
            for n, (cos, sin) in zip(lengths, rotary):
                part = slice(start, start + n)
                start += n
                qi, ki = _rotate(q[part], cos, sin), _rotate(k[part], cos, sin)
                outs.append(_attention(qi, ki, v[part], window))
            x = x + layer.self_attn_layer_scale(attn.o_proj(torch.cat(outs)))
            x = x + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(x)))
        return list(torch.split(x, lengths))


def _check_elus(layers) -> None:
    for layer in layers:
        if isinstance(layer, torch.nn.ELU) and layer.alpha != 1.0:
            raise ValueError(f"only ELUs of alpha 1 are supported (alpha={layer.alpha})")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as transformers applies it (halves rotated), on ``[time, heads, head_dim]``."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _attention(q, k, v, window: Optional[int]) -> torch.Tensor:
    """Causal attention over the last ``window`` positions (itself included); ``[time, heads, dim]`` in and
    ``[time, heads * dim]`` out."""
    n, heads = q.shape[0], q.shape[1]
    q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))
    gqa = {"enable_gqa": True} if k.shape[1] != heads else {}
    if window is None or n <= window:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
    else:
        i = torch.arange(n, device=q.device)
        mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)
    return out[0].transpose(0, 1).reshape(n, -1)
