"""The work done in preprocessing's worker processes: read, check and resample one utterance.

Torch-free on purpose: spawned workers import only this, numpy, soundfile and soxr.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from megatron_soda.codec.audio_io import AudioRejected, check_waveform, load_audio, resample


class DecodeTask(NamedTuple):
    path: str
    start: Optional[float]
    end: Optional[float]
    sample_rate: int  # the codec's
    min_seconds: float
    max_seconds: float


class Decoded(NamedTuple):
    wave: Optional[np.ndarray]  # float32 mono at the codec's rate, None when rejected
    reason: Optional[str]  # reject reason code
    message: Optional[str]


def decode(task: DecodeTask) -> Decoded:
    """Never raises: any failure becomes a reject with its reason."""
    try:
        wave, rate = load_audio(task.path, task.start, task.end)
        check_waveform(wave, rate, task.path, min_seconds=task.min_seconds, max_seconds=task.max_seconds)
        wave = resample(wave, rate, task.sample_rate)
        return Decoded(np.ascontiguousarray(wave, dtype=np.float32), None, None)
    except AudioRejected as error:
        return Decoded(None, error.reason, str(error))
    except Exception as error:  # a codec library's own failure on odd input
        return Decoded(None, "unreadable", f"{task.path}: {type(error).__name__}: {error}")
