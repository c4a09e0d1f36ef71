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


def _check_length_from_header(task: DecodeTask) -> None:
    """Rejects an absurdly long file or segment from its header, before decoding hours of audio."""
    import soundfile

    try:
        info = soundfile.info(task.path)
    except Exception:
        return  # unreadable headers are load_audio's to report, with its reason
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if task.start is not None:
        seconds = (task.end if task.end is not None else seconds) - task.start
    if seconds > task.max_seconds:
        raise AudioRejected("too_long", f"{task.path}: {seconds:.1f} s is longer than the {task.max_seconds:.1f} s limit")


def decode(task: DecodeTask) -> Decoded:
    """Never raises: any failure becomes a reject with its reason."""
    try:
        _check_length_from_header(task)
        wave, rate = load_audio(task.path, task.start, task.end)
        check_waveform(wave, rate, task.path, min_seconds=task.min_seconds, max_seconds=task.max_seconds)
        wave = resample(wave, rate, task.sample_rate)
        return Decoded(np.ascontiguousarray(wave, dtype=np.float32), None, None)
    except AudioRejected as error:
        return Decoded(None, error.reason, str(error))
    except Exception as error:  # a codec library's own failure on odd input
        return Decoded(None, "unreadable", f"{task.path}: {type(error).__name__}: {error}")
