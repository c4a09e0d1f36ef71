"""Speech preprocessing: manifests -> codec tokens -> SODA sequences, in resumable shards.

Output directory::

    job.json                    what this job is (config and input fingerprints); a rerun must match it
    rejects_input.jsonl         manifest lines refused before any audio was read
    shards/tokens_NNNNN.*       rendered sequences (IndexedDataset; one sequence per rendered document), with
                                tokens_NNNNN.vocab.json: the tokenizer and vocabulary layout that made them
    shards/codes_NNNNN.*        raw codes, one document per source document, one sequence per utterance,
                                frame-major audio indices k*C + c, so formats can be re-rendered without
                                re-encoding (the expensive step); codes_NNNNN.vocab.json says so
    shards/meta_NNNNN.jsonl     one line per kept utterance (id, text, speaker, recording, seconds, frames,
                                and `document`: its document's index in the shard's codes dataset)
    shards/rejects_NNNNN.jsonl  utterances refused while decoding, with their reasons
    shards/shard_NNNNN.json     counts; written last, it is the shard's commit point
    report.json                 totals over all shards

A killed job rerun with the same command skips committed shards and redoes the rest from scratch, so
no utterance is lost or duplicated, and the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import numpy as np

from megatron_soda.checks import check_at_least, check_exists, check_output_dir
from megatron_soda.codec.config import CodecConfig
from megatron_soda.data.audio_decode import DecodePool, DecodeTask
from megatron_soda.data.formats import Utterance, document_orders, render, speech_document
from megatron_soda.data.indexed_dataset import DatasetWriter, add_vocab_record, vocab_record
from megatron_soda.data.jobs import (
    ShardedJob,
    content_digest,
    file_fingerprint,
    jsonl,
    records_digest,
    summarize,
    write_atomic,
)
from megatron_soda.data.manifest import Reject, group_documents, read_inputs
from megatron_soda.data.text_pipeline import check_tokenizer, load_tokenizer
from megatron_soda.flags import flag

logger = logging.getLogger(__name__)


def _seconds_or_never(text: str) -> Optional[float]:
    """--max-document-seconds: 0 means never split."""
    return float(text) or None


@dataclass
class AudioPreprocessConfig:
    """What ``tools/preprocess_audio.py`` runs; its fields are the tool's flags."""

    inputs: List[str] = field(metadata=flag("--input", nargs="+"))
    """JSONL manifests and/or directories of audio files with same-named .txt transcripts."""
    output_dir: str
    """job directory (job.json, shards, rejects, report); a rerun of the same command resumes it."""
    tokenizer: str
    """SODA tokenizer directory (tools/build_tokenizer.py)."""
    codec: CodecConfig = field(default_factory=CodecConfig)
    documents_per_shard: int = 1000
    """documents per output shard (the unit of resume)."""
    workers: int = 2
    """processes that read and resample audio; 0 does it in this process."""
    text_first_probability: Optional[float] = None
    """render each document once, text-first with this probability (default: both orders, as SODA)."""
    seed: int = 0
    """seed of the per-document order choice (--text-first-probability)."""
    min_seconds: float = 0.1
    """reject shorter utterances."""
    max_seconds: float = 600.0
    """reject longer utterances (absurd durations)."""
    max_document_seconds: Optional[float] = field(default=60.0, metadata=flag(parse=_seconds_or_never))
    """split longer documents into consecutive chunks (SODA's YODAS2 cap); 0: never split."""
    encode_batch_seconds: float = field(default=600.0, metadata=flag(hidden=True))
    """Audio handed to the codec per call (the codec batches further by length)."""
    overwrite: bool = False
    """discard an existing job in --output-dir and start again."""
    progress: bool = True
    """show a progress bar."""

    def check(self) -> None:
        """Refuses settings that cannot work, naming the flag; reads no audio and loads nothing.

        The codec's flags are checked by ``codec.cli.check_codec`` (``load_codec`` refuses the same).
        """
        for path in self.inputs:
            check_exists("--input", path, " (give JSONL manifests or directories of audio)")
        check_output_dir("--output-dir", self.output_dir)
        check_tokenizer("--tokenizer", self.tokenizer)
        check_at_least("--documents-per-shard", self.documents_per_shard, 1)
        check_at_least("--workers", self.workers, 0)
        check_at_least("--min-seconds", self.min_seconds, 0)
        if self.max_seconds <= self.min_seconds:
            raise ValueError(f"--max-seconds {self.max_seconds} must be above --min-seconds {self.min_seconds}")
        check_at_least("--max-document-seconds", self.max_document_seconds, 0)
        if self.text_first_probability is not None and not 0 <= self.text_first_probability <= 1:
            raise ValueError(f"--text-first-probability must lie in [0, 1], got {self.text_first_probability}")
        from megatron_soda.codec.cli import check_codec

        check_codec(self.codec)


def _fingerprint(config: AudioPreprocessConfig, records, codec) -> dict:
    """Everything that determines the output; a resumed job must have the same.

    The records themselves (audio path, size, mtime, transcript, segment) are hashed, not only the
    manifests: a file added to an input directory, or a transcript edited in place, is a new job.
    The codec's resolved dtype and device type are included (``auto`` means bf16 on GPU, fp32 on CPU).
    """

    def stat(path):
        try:
            s = os.stat(path)
            return s.st_size, s.st_mtime_ns
        except OSError:
            return None

    rows = ((r.audio, stat(r.audio), r.text, r.start, r.end, r.recording, r.index) for r in records)
    job = {
        k: v for k, v in asdict(config).items() if k not in ("inputs", "output_dir", "workers", "overwrite", "progress")
    }
    job["codec"] = {k: v for k, v in job["codec"].items() if k not in ("device", "dtype", "max_batch_seconds")}
    job["codec"].update(dtype=str(codec.dtype), device_type=codec.device.type)
    return {
        "inputs": [file_fingerprint(path) for path in config.inputs],
        "records_sha256": records_digest(rows),
        "tokenizer_sha256": content_digest(config.tokenizer),
        "job": job,
    }


class _Progress:
    """tqdm over utterances, showing audio hours done and hours of audio per second of wall time."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="utt", desc="preprocess", disable=not enabled, dynamic_ncols=True)
        self.seconds = 0.0
        self.start = time.time()

    def update(self, utterances: int, seconds: float) -> None:
        self.seconds += seconds
        elapsed = max(time.time() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.seconds / 3600:.3f} h audio, {self.seconds / 3600 / elapsed:.4f} h/s")
        self.bar.update(utterances)

    def close(self) -> None:
        self.bar.close()


def _process_shard(job, index, documents, orders, codec, tokenizer, pool, config, progress, vocab) -> None:
    """Encodes, renders and commits shard ``index``; ``vocab`` (``vocab_record``) goes beside its datasets."""
    records = [r for document in documents for r in document]
    tasks = [
        DecodeTask(r.audio, r.start, r.end, codec.sample_rate, config.min_seconds, config.max_seconds) for r in records
    ]
    decoded = pool.map(tasks)

    codes_by_record, rejects, batch, batch_seconds = {}, [], [], 0.0

    def encode_batch():
        nonlocal batch, batch_seconds
        if batch:
            for (position, _), codes in zip(batch, codec.encode([wave for _, wave in batch])):
                codes_by_record[position] = codes
            progress.update(len(batch), batch_seconds)
        batch, batch_seconds = [], 0.0

    for position, (record, result) in enumerate(zip(records, decoded)):
        if result.wave is None:
            rejects.append(Reject(record.source, result.reason, result.message, record.id))
            progress.update(1, 0.0)
            continue
        batch.append((position, result.wave))
        batch_seconds += len(result.wave) / codec.sample_rate
        if batch_seconds >= config.encode_batch_seconds:
            encode_batch()
    encode_batch()

    layout = tokenizer.layout
    token_docs, code_tokens, code_lengths, utterances_per_doc, meta = [], [], [], [], []
    position = 0
    for number, document in enumerate(documents):
        utterances = []
        for record in document:
            codes = codes_by_record.get(position)
            position += 1
            if codes is None:
                continue
            try:
                text_ids = tokenizer.encode_text(record.text)
            except Exception as error:  # the tokenizer's own refusal of odd text
                rejects.append(Reject(record.source, "bad_text", f"{record.source}: {error}", record.id))
                continue
            utterances.append(Utterance(text_ids, codes))
            code_tokens.append(layout.codes_to_ids(codes) - layout.audio_offset)
            code_lengths.append(code_tokens[-1].size)
            meta.append(
                {
                    "id": record.id,
                    "text": record.text,
                    "speaker": record.speaker,
                    "recording": record.recording,
                    "document": len(utterances_per_doc),
                    "seconds": codes.shape[1] / codec.frame_rate,
                    "frames": int(codes.shape[1]),
                }
            )
        if not utterances:
            continue
        utterances_per_doc.append(len(utterances))
        token_docs += [render(speech_document(utterances, order, layout), layout).ids for order in orders[number]]

    lengths = [len(d) for d in token_docs]
    with DatasetWriter(job.path("tokens", index), layout.vocab_size, overwrite=True, vocab=vocab) as writer:
        writer.add_documents(np.concatenate(token_docs) if token_docs else np.zeros(0, np.int64), lengths)
    codes_vocab = {**vocab, "content": "codes"}
    with DatasetWriter(job.path("codes", index), layout.num_audio_tokens, overwrite=True, vocab=codes_vocab) as writer:
        writer.add_documents(
            np.concatenate(code_tokens) if code_tokens else np.zeros(0, np.int64), code_lengths, utterances_per_doc
        )
    write_atomic(job.path("meta", index, ".jsonl"), jsonl(meta))
    write_atomic(job.path("rejects", index, ".jsonl"), "".join(r.to_json() + "\n" for r in rejects))
    job.commit(
        index,
        {
            "documents": len(utterances_per_doc),
            "sequences": len(token_docs),
            "utterances": len(meta),
            "seconds": sum(m["seconds"] for m in meta),
            "tokens": int(sum(lengths)),
            "audio_tokens": int(sum(code_lengths)),
            "rejects": dict(Counter(r.reason for r in rejects)),
        },
    )


def preprocess_audio(config: AudioPreprocessConfig) -> dict:
    """Runs (or resumes) a preprocessing job and returns its report."""
    from megatron_soda.codec.loading import load_codec  # torch: imported only when a job runs

    if config.documents_per_shard <= 0:
        raise ValueError(f"documents_per_shard must be positive, got {config.documents_per_shard}")
    # Settings are checked (tokenizer and codec loaded) before the output directory is touched, so a
    # mistyped flag never claims a directory for a job that cannot run.
    tokenizer = load_tokenizer("--tokenizer", config.tokenizer)
    codec = load_codec(config.codec)
    layout = tokenizer.layout
    if (codec.num_codebooks, codec.codebook_size) != (layout.num_codebooks, layout.codebook_size):
        raise ValueError(
            f"codec {codec.name} gives {codec.num_codebooks} codebooks x {codec.codebook_size} codes but the "
            f"tokenizer at {config.tokenizer} has {layout.num_codebooks} x {layout.codebook_size}"
        )
    records, input_rejects = read_inputs(config.inputs)
    job = ShardedJob(config.output_dir, _fingerprint(config, records, codec), config.overwrite)
    job.write("rejects_input.jsonl", "".join(r.to_json() + "\n" for r in input_rejects))
    documents = group_documents(records, config.max_document_seconds)
    orders = document_orders(len(documents), config.text_first_probability, config.seed)
    shards = [
        range(i, min(i + config.documents_per_shard, len(documents)))
        for i in range(0, len(documents), config.documents_per_shard)
    ]
    todo = [i for i in range(len(shards)) if not job.is_committed(i)]
    vocab = vocab_record(layout, config.tokenizer)  # beside every dataset written: what its ids mean
    for i in set(range(len(shards))) - set(todo):  # shards committed by code that wrote no record
        add_vocab_record(job.path("tokens", i), vocab)
        add_vocab_record(job.path("codes", i), {**vocab, "content": "codes"})
    logger.info(
        "%d utterances in %d documents, %d shards (%d to do), %d input rejects",
        len(records),
        len(documents),
        len(shards),
        len(todo),
        len(input_rejects),
    )

    if todo:
        progress = _Progress(sum(len(documents[d]) for i in todo for d in shards[i]), config.progress)
        pool = DecodePool(config.workers)
        try:
            for i in todo:
                docs = [documents[d] for d in shards[i]]
                _process_shard(
                    job, i, docs, [orders[d] for d in shards[i]], codec, tokenizer, pool, config, progress, vocab
                )
        finally:
            progress.close()
            pool.close()
    report = summarize(job.reports(len(shards)), input_rejects)
    report["hours"] = report.get("seconds", 0.0) / 3600
    job.write("report.json", json.dumps(report, indent=2))
    return report
