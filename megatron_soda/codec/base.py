"""The codec interface the data pipeline sees: waveforms in, int64 codes ``[K, frames]`` out, and back.

Backends (Mimi, EnCodec) supply one batched encode and decode on tensors; this class owns everything
around them: input checks, batching clips of similar length, padding, and trimming each clip back to
its own frame count, so a clip's codes never depend on what it was batched with.
"""

from __future__ import annotations

import abc
from typing import Optional, Sequence, Union

import numpy as np
import torch

from megatron_soda.device import device_info

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``"auto"`` -> the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if device_info().cuda else "cpu")
    return torch.device(device)


DEFAULT_BATCH_SECONDS = {"cpu": 5.0, "cuda": 120.0}
"""``max_batch_seconds`` when none is given, per device type: the fastest measured there for transformers'
networks
(``bench/bench_preprocess.py``; figures in bench/RESULTS.md). On a CPU small batches stay in cache (120 s
of audio is ~740 MB per activation in the first convolutions); a GPU wants large ones."""


def default_batch_seconds(device: torch.device) -> float:
    return DEFAULT_BATCH_SECONDS.get(device.type, DEFAULT_BATCH_SECONDS["cuda"])


def resolve_dtype(dtype: Union[str, torch.dtype], device: torch.device) -> torch.dtype:
    """``"auto"`` -> bfloat16 on a GPU (twice the throughput), float32 on the CPU (bfloat16 is slow there)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown codec dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def plan_batches(lengths: Sequence[int], max_size: int, min_batched: int = 0) -> list[list[int]]:
    """Indices grouped longest first, each group's padded size (count x longest) at most ``max_size``.

    Sorting by length keeps padding small; an item longer than ``max_size`` or shorter than ``min_batched``
    goes alone. Ties keep input order, so the plan is deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        fits = batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_size
        if fits and lengths[i] >= min_batched:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class AudioCodec(abc.ABC):
    """A neural audio codec: mono audio at ``sample_rate`` <-> K codebooks of C codes per frame.

    The network runs in ``dtype`` on ``device``; the quantizer (nearest-centroid search over residuals)
    runs in ``quantizer_dtype``, float32 (float64 with a float64 network), because distances computed in
    bfloat16 pick different centroids.
    """

    name: str
    """Registry name (``mimi``, ``encodec``)."""
    sample_rate: int
    """Hz of the waveforms ``encode`` takes and ``decode`` returns."""
    samples_per_frame: int
    """Hop: waveform samples per code frame."""
    num_codebooks: int
    """K, codes per frame (the residual quantizers in use)."""
    codebook_size: int
    """C, entries per codebook: codes lie in [0, C)."""
    min_batched_frames: int = 0
    """Clips of fewer frames are encoded and decoded alone: the backend reads this far past a clip's start,
    so a shorter clip's codes would see whatever follows it in a batch (EnCodec's reflection padding)."""

    def __init__(self, *, device="auto", dtype="auto", max_batch_seconds: Optional[float] = None, random_init=False):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.quantizer_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        if max_batch_seconds is not None and max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be positive, got {max_batch_seconds}")
        self.max_batch_seconds = max_batch_seconds
        """Audio per network call (padded), both ways; None: ``batch_seconds``' defaults."""
        self.random_init = random_init

    def _place(self, model: torch.nn.Module, quantizer: torch.nn.Module) -> torch.nn.Module:
        """``model`` on ``device`` in eval mode: ``quantizer`` in ``quantizer_dtype``, the rest in ``dtype``.

        Child by child: casting the whole model to bfloat16 first would round the codebooks for good.
        """
        model.to(self.device).eval()
        for child in model.children():
            child.to(self.quantizer_dtype if child is quantizer else self.dtype)
        return model

    def batch_seconds(self, direction: str) -> float:
        """Padded audio per ``direction`` (``encode``/``decode``) call: ``max_batch_seconds`` when set, else
        the fastest measured on the device (``DEFAULT_BATCH_SECONDS``)."""
        return self.max_batch_seconds or default_batch_seconds(self.device)

    @property
    def frame_rate(self) -> float:
        """Code frames per second."""
        return self.sample_rate / self.samples_per_frame

    def num_frames(self, num_samples: int) -> int:
        """Frames of a clip of ``num_samples``: a final partial frame counts (it is padded with zeros)."""
        return -(-num_samples // self.samples_per_frame)

    @abc.abstractmethod
    def _encode_batch(self, audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``audio`` float32 ``[B, 1, T]`` (T a multiple of the hop), ``mask`` bool ``[B, 1, T]`` (True =
        real audio) -> codes ``[B, K, T / hop]``."""

    @abc.abstractmethod
    def _decode_batch(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, frames]`` -> float waveforms ``[B, 1, frames * hop]``."""

    def encode(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mono float waveforms at ``sample_rate`` -> int64 codes ``[K, num_frames(len)]`` each, in input order.

        Each clip is zero-padded to whole frames, then to its batch's length. The backends are causal (a
        frame reads no audio after it; see ``min_batched_frames`` for the exception), so that padding cannot
        reach a clip's codes. Floating point can: the batch's shape changes the rounding of the latents
        (~1e-6 relative), which flips the rare code whose two nearest centroids tie within that rounding
        (up to ~5 in 10,000 codes with random weights). A float64 network makes codes batch-invariant in
        practice (Mimi still computes distances in float32).
        """
        waves = [self._check_waveform(i, w) for i, w in enumerate(_as_list(waveforms, "waveforms"))]
        padded = [self.num_frames(len(w)) * self.samples_per_frame for w in waves]
        out: list[np.ndarray] = [np.zeros((self.num_codebooks, 0), np.int64)] * len(waves)
        max_samples = int(self.batch_seconds("encode") * self.sample_rate)
        for batch in plan_batches(padded, max_samples, self.min_batched_frames * self.samples_per_frame):
            length = padded[batch[0]]
            if length == 0:
                continue  # only empty clips: nothing to run
            audio = np.zeros((len(batch), 1, length), np.float32)
            mask = np.zeros((len(batch), 1, length), bool)
            for row, i in enumerate(batch):
                audio[row, 0, : len(waves[i])] = waves[i]
                mask[row, 0, : len(waves[i])] = True
            with torch.inference_mode():
                audio_t, mask_t = torch.from_numpy(audio).to(self.device), torch.from_numpy(mask).to(self.device)
                codes = self._encode_batch(audio_t, mask_t)
            expected = [len(batch), self.num_codebooks, length // self.samples_per_frame]
            if list(codes.shape) != expected:
                raise RuntimeError(f"{self.name} returned codes of shape {list(codes.shape)}, expected {expected}")
            codes = codes.cpu().numpy().astype(np.int64)
            for row, i in enumerate(batch):
                out[i] = np.ascontiguousarray(codes[row, :, : self.num_frames(len(waves[i]))])
        return out

    def decode(self, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codes ``[K, T]`` -> mono float32 waveforms of ``T * samples_per_frame`` samples, in input order."""
        items = [self._check_codes(i, c) for i, c in enumerate(_as_list(codes, "codes"))]
        frames = [c.shape[1] for c in items]
        max_frames = int(self.batch_seconds("decode") * self.frame_rate)
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(items)
        for batch in plan_batches(frames, max_frames, self.min_batched_frames):
            length = frames[batch[0]]
            if length == 0:
                continue
            padded = np.zeros((len(batch), self.num_codebooks, length), np.int64)
            for row, i in enumerate(batch):
                padded[row, :, : frames[i]] = items[i]
            with torch.inference_mode():
                audio = self._decode_batch(torch.from_numpy(padded).to(self.device))
            audio = audio.float().cpu().numpy()
            for row, i in enumerate(batch):
                out[i] = np.ascontiguousarray(audio[row, 0, : frames[i] * self.samples_per_frame])
        return out

    def _check_waveform(self, index: int, wave) -> np.ndarray:
        wave = np.asarray(wave)
        if wave.ndim != 1:
            raise ValueError(
                f"waveform {index} has shape {list(wave.shape)}; {self.name} encodes mono 1-D waveforms at "
                f"{self.sample_rate} Hz: downmix and resample first (megatron_soda.codec.audio_io)"
            )
        if not np.issubdtype(wave.dtype, np.floating):
            raise ValueError(f"waveform {index} has dtype {wave.dtype}; pass float samples in [-1, 1]")
        if not np.isfinite(wave).all():
            raise ValueError(f"waveform {index} contains NaN or infinite samples")
        return wave.astype(np.float32, copy=False)

    def _check_codes(self, index: int, codes) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(
                f"codes {index} have shape {list(codes.shape)} and dtype {codes.dtype}; "
                f"{self.name} decodes integer codes of shape [{self.num_codebooks}, frames]"
            )
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes {index} lie in [{codes.min()}, {codes.max()}], outside [0, {self.codebook_size})")
        return codes

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sample_rate={self.sample_rate}, frame_rate={self.frame_rate:g}, "
            f"num_codebooks={self.num_codebooks}, codebook_size={self.codebook_size}, device={self.device}, "
            f"dtype={self.dtype}, random_init={self.random_init})"
        )


def _as_list(items, what: str) -> list:
    if isinstance(items, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{what} must be a sequence of arrays, one per clip; wrap a single clip in a list")
    return list(items)
