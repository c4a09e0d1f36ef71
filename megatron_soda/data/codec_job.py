"""What every preprocessing job that runs audio through a codec shares (speech, fine-tuning examples).

Loading the codec against the tokenizer, decoding and encoding audio in batches, the progress bar, the
job fingerprint, running this worker's shards and the job's last steps. Each job keeps its own records,
shard contents and reports; ``audio_pipeline`` and ``sft_pipeline`` are the users.

The fingerprint splits in two so that workers never read each other's inputs: ``job.json`` holds what
every worker knows alike (settings, the records' text and paths, the codec's identity); each shard's
commit holds the size and time of its own audio files, and the device and dtype its codec ran in (a job
started on a GPU may be resumed on a CPU: only a different codec or weights is refused).
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from megatron_soda.checks import check_at_least, check_output_dir
from megatron_soda.data.audio_decode import Decoded, DecodePool
from megatron_soda.data.jobs import ShardedJob, content_digest, file_fingerprint, records_digest, summarize
from megatron_soda.data.text_pipeline import check_tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

NOT_FINGERPRINTED = ("inputs", "output_dir", "workers", "overwrite", "progress", "cluster", "codec")
"""Config fields that do not change a job's output (inputs are fingerprinted by content, the codec by
``codec_identity``)."""


def check_codec_job(config) -> None:
    """The settings every codec job has (output, tokenizer, shards, workers, clip lengths, codec), checked
    as flags: each refusal a ValueError naming the flag. Reads no audio and loads nothing."""
    from megatron_soda.codec.cli import check_codec

    check_output_dir("--output-dir", config.output_dir)
    check_tokenizer("--tokenizer", config.tokenizer)
    check_at_least("--documents-per-shard", config.documents_per_shard, 1)
    check_at_least("--workers", config.workers, 0)
    check_at_least("--min-seconds", config.min_seconds, 0)
    if config.max_seconds <= config.min_seconds:
        raise ValueError(f"--max-seconds {config.max_seconds} must be above --min-seconds {config.min_seconds}")
    check_codec(config.codec)
    config.cluster.check(config.overwrite)


def load_codec_and_tokenizer(config):
    """The tokenizer (``config.tokenizer``) and codec (``config.codec``), refused unless the codec's codebooks
    are the tokenizer's. Loaded before the output directory is touched, so a mistyped flag never claims a
    directory for a job that cannot run."""
    from megatron_soda.codec.loading import load_codec  # torch: imported only when a job runs

    tokenizer = load_tokenizer("--tokenizer", config.tokenizer)
    codec = load_codec(config.codec)
    layout = tokenizer.layout
    if (codec.num_codebooks, codec.codebook_size) != (layout.num_codebooks, layout.codebook_size):
        raise ValueError(
            f"codec {codec.name} gives {codec.num_codebooks} codebooks x {codec.codebook_size} codes but the "
            f"tokenizer at {config.tokenizer} has {layout.num_codebooks} x {layout.codebook_size}"
        )
    return tokenizer, codec


def file_stat(path: str) -> Optional[Tuple[int, int]]:
    """(size, mtime) of an audio file for a fingerprint; None when it is missing (its reject is decoding's)."""
    try:
        s = os.stat(path)
        return s.st_size, s.st_mtime_ns
    except OSError:
        return None


def codec_identity(config, codec) -> dict:
    """What makes a codec's codes: a resume with another is refused. Not its device, dtype, batch size or
    encoder implementation (recorded per shard by ``codec_run``): they change the codes no more than float
    rounding does."""
    weights = config.codec.path
    return {
        "name": codec.name,
        "path": weights,
        "weights_sha256": content_digest(weights) if weights and os.path.exists(weights) else None,
        "random_init": config.codec.random_init,
        "seed": config.codec.seed if config.codec.random_init else None,
        "config_overrides": config.codec.config_overrides,
        "sample_rate": codec.sample_rate,
        "num_codebooks": codec.num_codebooks,
        "codebook_size": codec.codebook_size,
    }


def codec_run(codec) -> dict:
    """How a shard's codec ran, kept in its commit."""
    run = {"device": codec.device.type, "dtype": str(codec.dtype).replace("torch.", "")}
    return {**run, "encoder": codec.encoder_impl} if hasattr(codec, "encoder_impl") else run


def job_fingerprint(config, rows: Iterable[Iterable], codec) -> dict:
    """What every worker of a codec job knows alike and a resumed job must match (``job.json``).

    ``rows`` describe the records themselves (audio path, text, segment, ...), not only the input files: a
    file added to an input directory is a new job. The audio files' sizes and times are each shard's own
    (``shard_inputs``), so no worker stats another's files.
    """
    return {
        "inputs": [file_fingerprint(path) for path in config.inputs],
        "records_sha256": records_digest(rows),
        "tokenizer_sha256": content_digest(config.tokenizer),
        "job": {k: v for k, v in asdict(config).items() if k not in NOT_FINGERPRINTED},
        "codec": codec_identity(config, codec),
    }


def shard_inputs(paths: Iterable[str]) -> str:
    """A shard's audio files (path, size, mtime) as one digest: a file replaced in place is seen on resume."""
    return records_digest((path, file_stat(path)) for path in paths)


class Progress:
    """tqdm over audio files, showing audio hours done and hours of audio per second of wall time."""

    def __init__(self, total: int, enabled: bool, unit: str = "utt", desc: str = "preprocess"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)
        self.seconds = 0.0
        self.start = time.time()

    def update(self, files: int, seconds: float) -> None:
        self.seconds += seconds
        elapsed = max(time.time() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.seconds / 3600:.3f} h audio, {self.seconds / 3600 / elapsed:.4f} h/s")
        self.bar.update(files)

    def close(self) -> None:
        self.bar.close()


@contextmanager
def decoding(workers: int, total: int, show_progress: bool, unit: str) -> Iterator[Tuple[DecodePool, Progress]]:
    """A decode pool and a progress bar over ``total`` audio files, both closed on the way out."""
    progress = Progress(total, show_progress, unit)
    pool = DecodePool(workers)
    try:
        yield pool, progress
    finally:
        progress.close()
        pool.close()


def encode_decoded(
    decoded: Iterable[Decoded], codec, batch_seconds: float, progress: Progress
) -> List[Union[np.ndarray, Decoded]]:
    """Per decoded file, in order: its codes ``[K, T]``, or its ``Decoded`` when decoding rejected it.

    Waves go to the codec in batches of about ``batch_seconds`` while decoding goes on (``decoded`` is
    consumed lazily, so a pool's workers keep reading ahead), and are dropped once encoded.
    """
    encoded: List[Union[np.ndarray, Decoded, None]] = []
    batch, seconds = [], 0.0

    def encode_batch():
        nonlocal batch, seconds
        if batch:
            for (position, _), codes in zip(batch, codec.encode([wave for _, wave in batch])):
                encoded[position] = codes
            progress.update(len(batch), seconds)
        batch, seconds = [], 0.0

    for result in decoded:
        if result.wave is None:
            encoded.append(result)
            progress.update(1, 0.0)
            continue
        encoded.append(None)
        batch.append((len(encoded) - 1, result.wave))
        seconds += len(result.wave) / codec.sample_rate
        if seconds >= batch_seconds:
            encode_batch()
    encode_batch()
    return encoded


def shard_ranges(count: int, per_shard: int) -> List[range]:
    """Item indices of each shard: consecutive runs of ``per_shard`` (the last may be shorter)."""
    return [range(i, min(i + per_shard, count)) for i in range(0, count, per_shard)]


def run_shards(
    job: ShardedJob,
    config,
    codec,
    num_shards: int,
    audio_of: Callable[[int], List[str]],
    process: Callable,
    unit: str,
) -> None:
    """Encodes and commits this worker's uncommitted shards: ``process(index, pool, progress)`` writes shard
    ``index``'s files and returns its counts; the commit adds its inputs' digest and how the codec ran.

    A committed shard whose audio files (``audio_of(index)``) changed since is refused, not mixed in.
    """
    todo = []
    for index in [] if config.cluster.finalize else job.own(num_shards):
        digest = shard_inputs(audio_of(index))
        record = job.commit_record(index)
        if record is None:
            todo.append((index, digest))
        elif record.get("inputs_sha256", digest) != digest:
            raise ValueError(
                f"{config.output_dir}: the audio files of shard {index} changed (size or time) since it was "
                "committed; rerun with the original files, or pass --overwrite to start again"
            )
    logger.info("%s: %d of %d shards, %d to do", job.share, len(job.own(num_shards)), num_shards, len(todo))
    if not todo:
        return
    total = sum(len(audio_of(index)) for index, _ in todo)
    with decoding(config.workers, total, config.progress, unit) as (pool, progress):
        for index, digest in todo:
            start = time.perf_counter()
            report = process(index, pool, progress)
            job.record_time(index, codec.device.type, time.perf_counter() - start, report.get("seconds", 0.0))
            job.commit(index, {**report, "inputs_sha256": digest, "codec": codec_run(codec)})
            if index == todo[0][0]:
                _pause_for_tests()


def _pause_for_tests() -> None:
    """``MEGATRON_SODA_PAUSE_AFTER_SHARD=S`` sleeps S seconds after this run's first commit, so a test can
    cancel a worker, or start another, between shards; ``=PATH`` waits until that file exists."""
    pause = os.environ.get("MEGATRON_SODA_PAUSE_AFTER_SHARD")
    if not pause:
        return
    try:
        time.sleep(float(pause))
    except ValueError:
        while not os.path.exists(pause):
            time.sleep(0.05)


def write_report(job: ShardedJob, num_shards: int, input_rejects, **extra) -> dict:
    """Totals over the committed shards (and audio hours), with ``extra`` entries, written as ``report.json``
    and returned. (A job with shards to merge uses ``jobs.finalize_job``.)"""
    report = summarize(job.reports(num_shards), input_rejects)
    report["hours"] = report.get("seconds", 0.0) / 3600
    report.update(extra)
    job.write("report.json", json.dumps(report, indent=2))
    return report
