"""Audio input without torch: read (a segment of) a file as mono float32, resample, and reject bad clips.

Every problem with a file's content is an ``AudioRejected`` with a stable ``reason`` code, so a corpus
run can count and report rejects instead of dying on the first broken file.
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np
import soundfile as sf
import soxr

REASONS = ("unreadable", "empty", "non_finite", "too_short", "too_long")

SEGMENT_END_TOLERANCE_S = 0.05
"""A segment may end this far past the end of the file (manifest timestamps are rounded)."""

_UNKNOWN_SIZE = 0xFFFFFFFF  # the data size a streaming writer leaves in the header: unknown, not wrong
_WAV_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioRejected(Exception):
    """A clip that cannot be used; ``reason`` is one of ``REASONS``, the message names the file."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; known: {', '.join(REASONS)}")
        super().__init__(message)
        self.reason = reason


def load_audio(path, start: Optional[float] = None, end: Optional[float] = None) -> tuple[np.ndarray, int]:
    """The ``[start, end)`` seconds of ``path`` (whole file by default) as mono float32, and its sample rate.

    Only the segment is read (seek, then read its frames). Channels are averaged. Raises ``AudioRejected``:
    ``unreadable`` for a file that cannot be opened or decoded, that ends before its header says (a
    truncated download), or that ends before the segment does. Content checks are ``check_waveform``'s.
    """
    if (start or 0.0) < 0 or (end is not None and end <= (start or 0.0)):
        raise ValueError(f"{path}: invalid segment [{start}, {end}) seconds: need 0 <= start < end")
    try:
        with sf.SoundFile(str(path)) as f:
            rate, total = f.samplerate, f.frames
            _check_wav_not_truncated(f, path)
            first = 0 if start is None else int(round(start * rate))
            last = total if end is None else int(round(end * rate))
            if (start is not None and first >= total) or last > total + SEGMENT_END_TOLERANCE_S * rate:
                raise AudioRejected(
                    "unreadable",
                    f"{path}: segment [{start}, {end}) s reaches past the end of the file, which holds "
                    f"{total / rate:g} s (truncated, or the wrong file)",
                )
            last = min(last, total)
            if first:
                f.seek(first)
            data = f.read(max(last - first, 0), dtype="float32", always_2d=True)
    except AudioRejected:
        raise
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise AudioRejected("unreadable", f"{path}: cannot read audio: {err}") from err
    if len(data) < last - first:
        raise AudioRejected(
            "unreadable", f"{path}: decoding stopped after {len(data)} of {last - first} frames (truncated file?)"
        )
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(wave), rate


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """``wave`` at ``to_rate`` (soxr, high quality); ``round(len * to_rate / from_rate)`` samples."""
    if wave.ndim != 1:
        raise ValueError(f"resample takes a mono 1-D waveform, got shape {list(wave.shape)}")
    if from_rate == to_rate:
        return wave.astype(np.float32, copy=False)
    return soxr.resample(wave.astype(np.float32, copy=False), from_rate, to_rate, quality="HQ")


def check_waveform(
    wave: np.ndarray, sample_rate: int, path, min_seconds: float = 0.1, max_seconds: float = 120.0
) -> None:
    """Raise ``AudioRejected`` for a clip the codec must not see: empty, NaN/inf, or outside the length bounds.

    ``max_seconds`` defaults to the codec's batch budget: a longer clip would be encoded alone, and the
    encoder's attention grows quadratically with length.
    """
    if wave.ndim != 1:
        raise ValueError(f"check_waveform takes a mono 1-D waveform, got shape {list(wave.shape)}")
    seconds = len(wave) / sample_rate
    if len(wave) == 0:
        raise AudioRejected("empty", f"{path}: no audio samples")
    if not np.isfinite(wave).all():
        raise AudioRejected("non_finite", f"{path}: {int((~np.isfinite(wave)).sum())} NaN or infinite samples")
    if seconds < min_seconds:
        raise AudioRejected("too_short", f"{path}: {seconds:.3f} s is shorter than the minimum {min_seconds:g} s")
    if seconds > max_seconds:
        raise AudioRejected("too_long", f"{path}: {seconds:.1f} s is longer than the maximum {max_seconds:g} s")


def _check_wav_not_truncated(f: sf.SoundFile, path) -> None:
    """libsndfile opens a WAV shorter than its header declares and silently shortens it; its log tells."""
    match = _WAV_DATA_SIZE.search(f.extra_info)
    if match is not None and int(match.group(1)) != _UNKNOWN_SIZE and int(match.group(2)) < int(match.group(1)):
        declared, present = match.groups()
        raise AudioRejected(
            "unreadable", f"{path}: truncated, the header declares {declared} bytes of audio, the file holds {present}"
        )
