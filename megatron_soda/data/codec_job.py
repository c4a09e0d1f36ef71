"""What every preprocessing job that runs audio through a codec shares (speech, fine-tuning examples).

Loading the codec against the tokenizer, decoding and encoding audio in batches, the progress bar, the
codec's part of the job fingerprint, and the job's last steps. Each job keeps its own records, shard
contents and reports; ``audio_pipeline`` and ``sft_pipeline`` are the users.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from megatron_soda.checks import check_at_least, check_output_dir
from megatron_soda.data.audio_decode import Decoded, DecodePool
from megatron_soda.data.jobs import ShardedJob, content_digest, file_fingerprint, records_digest, summarize
from megatron_soda.data.text_pipeline import check_tokenizer, load_tokenizer

NOT_FINGERPRINTED = ("inputs", "output_dir", "workers", "overwrite", "progress")
"""Config fields that do not change a job's output (inputs are fingerprinted by content instead)."""


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


def job_fingerprint(config, rows: Iterable[Iterable], codec) -> dict:
    """Everything that determines a codec job's output; a resumed job must have the same.

    ``rows`` describe the records themselves (audio path and ``file_stat``, text, ...), not only the input
    files: a file added to an input directory, or an audio file replaced in place, is a new job. The codec's
    resolved dtype and device type are included (``auto`` means bf16 on GPU, fp32 on CPU).
    """
    job = {k: v for k, v in asdict(config).items() if k not in NOT_FINGERPRINTED}
    job["codec"] = {k: v for k, v in job["codec"].items() if k not in ("device", "dtype", "max_batch_seconds")}
    job["codec"].update(dtype=str(codec.dtype), device_type=codec.device.type)
    return {
        "inputs": [file_fingerprint(path) for path in config.inputs],
        "records_sha256": records_digest(rows),
        "tokenizer_sha256": content_digest(config.tokenizer),
        "job": job,
    }


class Progress:
    """tqdm over audio files, showing audio hours done and hours of audio per second of wall time."""

    def __init__(self, total: int, enabled: bool, unit: str = "utt"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit=unit, desc="preprocess", disable=not enabled, dynamic_ncols=True)
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


def write_report(job: ShardedJob, num_shards: int, input_rejects) -> dict:
    """Totals over the committed shards (and audio hours), written as ``report.json`` and returned."""
    report = summarize(job.reports(num_shards), input_rejects)
    report["hours"] = report.get("seconds", 0.0) / 3600
    job.write("report.json", json.dumps(report, indent=2))
    return report
