"""Speech preprocessing: manifests -> codec tokens -> SODA sequences, in resumable shards.

Output directory::

    job.json                    what this job is (config, records, codec) and how many workers share it;
                                every worker and rerun must match it
    tokens.*, codes.*           every shard's tokens (and codes) merged, written by finalizing
    rejects_input.jsonl         manifest lines refused before any audio was read
    shards/tokens_NNNNN.*       rendered sequences (IndexedDataset; one sequence per rendered document), with
                                tokens_NNNNN.vocab.json: the tokenizer and vocabulary layout that made them
    shards/codes_NNNNN.*        raw codes, one document per source document, one sequence per utterance,
                                frame-major audio indices k*C + c, so formats can be re-rendered without
                                re-encoding (the expensive step); codes_NNNNN.vocab.json says so
    shards/meta_NNNNN.jsonl     one line per kept utterance (id, text, speaker, recording, seconds, frames,
                                and `document`: its document's index in the shard's codes dataset)
    shards/rejects_NNNNN.jsonl  utterances refused while decoding, with their reasons
    shards/shard_NNNNN.json     counts, its audio files' digest, the codec's device and dtype; written last,
                                it is the shard's commit point
    timing/shard_NNNNN.json     wall seconds the shard took on its device (throughput.json sums them)
    report.json                 totals over all shards, written once every shard is committed

A killed job rerun with the same command skips committed shards and redoes the rest from scratch, so
no utterance is lost or duplicated, and the result is byte-identical to an uninterrupted run. Workers
(``--num-workers-total W --worker-rank r``, or a SLURM array, srun or torchrun) share a job by shards:
worker r does shard i when i % W == r; the last to finish (or ``--finalize``) merges and reports.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from megatron_soda.checks import check_at_least, check_exists
from megatron_soda.codec.config import CodecConfig
from megatron_soda.data.audio_decode import Decoded, DecodeTask
from megatron_soda.data.codec_job import (
    check_codec_job,
    encode_decoded,
    job_fingerprint,
    load_codec_and_tokenizer,
    run_shards,
    shard_ranges,
)
from megatron_soda.data.formats import Utterance, document_orders, render, speech_document
from megatron_soda.data.indexed_dataset import DatasetWriter, add_vocab_record, vocab_record
from megatron_soda.data.jobs import WorkerConfig, finish, jsonl, open_job, write_atomic
from megatron_soda.data.manifest import Reject, group_documents, read_inputs, rejects_jsonl
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
    cluster: WorkerConfig = field(default_factory=WorkerConfig)
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

        The settings every codec job has are ``codec_job.check_codec_job``'s (the codec's flags through
        ``codec.cli.check_codec``, which refuses what ``load_codec`` would).
        """
        for path in self.inputs:
            check_exists("--input", path, " (give JSONL manifests or directories of audio)")
        check_at_least("--max-document-seconds", self.max_document_seconds, 0)
        if self.text_first_probability is not None and not 0 <= self.text_first_probability <= 1:
            raise ValueError(f"--text-first-probability must lie in [0, 1], got {self.text_first_probability}")
        check_codec_job(self)


def _fingerprint(config: AudioPreprocessConfig, records, codec) -> dict:
    """``codec_job.job_fingerprint`` over each record's audio path, transcript and segment."""
    rows = ((r.audio, r.text, r.start, r.end, r.recording, r.index) for r in records)
    return job_fingerprint(config, rows, codec)


def _process_shard(job, index, documents, orders, codec, tokenizer, pool, config, progress, vocab, first) -> dict:
    """Encodes, renders and writes shard ``index`` (the job's documents ``first``, ``first + 1``, ...) and
    returns its counts (for its commit); ``vocab`` (``vocab_record``) goes beside its datasets."""
    records = [r for document in documents for r in document]
    tasks = [
        DecodeTask(r.audio, r.start, r.end, codec.sample_rate, config.min_seconds, config.max_seconds) for r in records
    ]
    encoded = encode_decoded(pool.map(tasks), codec, config.encode_batch_seconds, progress)
    rejects = [
        Reject(record.source, result.reason, result.message, record.id)
        for record, result in zip(records, encoded)
        if isinstance(result, Decoded)
    ]

    layout = tokenizer.layout
    token_docs, code_tokens, code_lengths, utterances_per_doc, meta = [], [], [], [], []
    position = 0
    for number, document in enumerate(documents):
        utterances = []
        for record in document:
            codes = encoded[position]
            position += 1
            if isinstance(codes, Decoded):
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
                    "job_document": first + number,  # the order draw's index (rerender.py draws it again)
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
    write_atomic(job.path("rejects", index, ".jsonl"), rejects_jsonl(rejects))
    return {
        "documents": len(utterances_per_doc),
        "sequences": len(token_docs),
        "utterances": len(meta),
        "seconds": sum(m["seconds"] for m in meta),
        "tokens": int(sum(lengths)),
        "audio_tokens": int(sum(code_lengths)),
        "rejects": dict(Counter(r.reason for r in rejects)),
    }


def preprocess_audio(config: AudioPreprocessConfig) -> dict:
    """Runs (or resumes) this worker's share of a preprocessing job; returns the job's report once every
    shard is committed, else this worker's part (``finalized`` false)."""
    if config.documents_per_shard <= 0:
        raise ValueError(f"documents_per_shard must be positive, got {config.documents_per_shard}")
    tokenizer, codec = load_codec_and_tokenizer(config)
    records, input_rejects = read_inputs(config.inputs)
    job = open_job(config, _fingerprint(config, records, codec))
    documents = group_documents(records, config.max_document_seconds)
    orders = document_orders(len(documents), config.text_first_probability, config.seed)
    shards = shard_ranges(len(documents), config.documents_per_shard)
    vocab = vocab_record(tokenizer.layout, config.tokenizer)  # beside every dataset written: what its ids mean
    for i in job.own(len(shards)):  # shards committed by code that wrote no record
        if job.is_committed(i):
            add_vocab_record(job.path("tokens", i), vocab)
            add_vocab_record(job.path("codes", i), {**vocab, "content": "codes"})
    logger.info(
        "%d utterances in %d documents, %d shards, %d input rejects",
        len(records),
        len(documents),
        len(shards),
        len(input_rejects),
    )

    def process(i, pool, progress):
        docs = [documents[d] for d in shards[i]]
        orders_i = [orders[d] for d in shards[i]]
        return _process_shard(job, i, docs, orders_i, codec, tokenizer, pool, config, progress, vocab, shards[i][0])

    def audio_of(i):
        return [r.audio for d in shards[i] for r in documents[d]]

    run_shards(job, config, codec, len(shards), audio_of, process, unit="utt")
    return finish(job, len(shards), ("tokens", "codes"), input_rejects, config.cluster.finalize)
