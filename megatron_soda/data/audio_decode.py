"""The work done in preprocessing's worker processes: read, check and resample one utterance.

Torch-free on purpose: spawned workers import only this, numpy, soundfile and soxr.

``DecodePool`` runs ``decode`` in those workers, in order, with a bounded number of utterances in
flight (memory stays flat however large a shard is), and survives a worker that dies inside a
decoding library (a segfault on a malformed file): the file that kills a worker when decoded alone
is rejected as ``decoder_crashed`` and the job goes on.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Iterable, Iterator, NamedTuple, Optional

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
        raise AudioRejected(
            "too_long", f"{task.path}: {seconds:.1f} s is longer than the {task.max_seconds:.1f} s limit"
        )


CRASH_HOOK = "MEGATRON_SODA_TEST_CRASH_DECODING"
"""Test hook: a worker decoding a path that ends with this variable's value dies (os.abort), as a
decoder crash would kill it."""


def decode(task: DecodeTask) -> Decoded:
    """Never raises: any failure becomes a reject with its reason."""
    crash = os.environ.get(CRASH_HOOK)
    if crash and task.path.endswith(crash):
        os.abort()
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


class DecodePool:
    """``decode`` over tasks in ``workers`` spawned processes (in this process when 0), results in order."""

    def __init__(self, workers: int, in_flight_per_worker: int = 8):
        self.workers = workers
        self.window = max(1, workers * in_flight_per_worker)
        self.pool: Optional[ProcessPoolExecutor] = None

    def _restart(self) -> ProcessPoolExecutor:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        return self.pool

    def map(self, tasks: Iterable[DecodeTask]) -> Iterator[Decoded]:
        if self.workers == 0:
            yield from map(decode, tasks)
            return
        if self.pool is None:
            self._restart()
        pending = deque()
        for task in tasks:
            pending.append((task, self._submit(task)))
            if len(pending) >= self.window:
                yield self._result(pending)
        while pending:
            yield self._result(pending)

    def _submit(self, task: DecodeTask) -> Future:
        """A future of ``decode(task)``; an already failed one when the pool broke before the submission."""
        try:
            return self.pool.submit(decode, task)
        except BrokenProcessPool as error:  # a worker died since the last result was taken
            failed = Future()
            failed.set_exception(error)
            return failed

    def _result(self, pending: deque) -> Decoded:
        task, future = pending.popleft()
        try:
            return future.result()
        except BrokenProcessPool:
            pass
        # A worker died and took the pool (and every future in flight) with it. Decode this task
        # alone in a fresh pool: if that dies too, it is the culprit; the others are resubmitted.
        try:
            result = self._restart().submit(decode, task).result()
        except BrokenProcessPool:
            self._restart()
            result = Decoded(
                None,
                "decoder_crashed",
                f"{task.path}: the decoding process died (a crash in the audio library on this file)",
            )
        for k, (other, future) in enumerate(pending):
            if not future.done() or future.exception() is not None:  # finished ones keep their result
                pending[k] = (other, self._submit(other))
        return result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None
