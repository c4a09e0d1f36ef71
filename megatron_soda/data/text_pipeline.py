"""Text-only documents (SODA's 5% text share) -> token datasets, in resumable shards.

Each document is rendered as ``<|begin_of_text|>text<|end_of_text|>`` (plain text, no text markers).
Inputs are JSONL (one object per line, text under ``text_key``) or parquet (a string column). Bad
lines (not UTF-8, not JSON, no text) go to the rejects with their reason. Output layout, resume and
workers follow ``jobs.ShardedJob``: ``shards/tokens_NNNNN.*`` (with ``tokens_NNNNN.vocab.json``, the
tokenizer and vocabulary layout that made them), ``shards/rejects_NNNNN.jsonl``, and once every shard is
committed ``tokens.*`` (the shards merged) and ``report.json``. Every worker reads the inputs through (they
are what numbers the shards) and tokenizes only its own shards.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Iterator, List, Tuple, Union

import numpy as np

from megatron_soda.checks import check_at_least, check_dir, check_file, check_output_dir
from megatron_soda.data.formats import render, text_document
from megatron_soda.data.indexed_dataset import DatasetWriter, add_vocab_record, vocab_record
from megatron_soda.data.jobs import WorkerConfig, content_digest, file_fingerprint, finish, open_job, write_atomic
from megatron_soda.data.manifest import Reject, is_encodable, read_jsonl
from megatron_soda.flags import flag


def check_tokenizer(flag_name: str, path: str) -> None:
    """A SODA tokenizer directory given by ``flag_name`` exists and holds a tokenizer.json (ValueError if not)."""
    check_dir(flag_name, path, ("tokenizer.json",), " (make one with tools/build_tokenizer.py)")


def load_tokenizer(flag_name: str, path: str):
    """``load_soda_tokenizer(path)``; its failures (the tokenizers library's own name neither the flag nor
    the file) as one ValueError naming both."""
    from megatron_soda.tokenizer import load_soda_tokenizer

    try:
        return load_soda_tokenizer(path)
    except Exception as error:
        raise ValueError(f"{flag_name} {path}: not a SODA tokenizer ({error})") from None


@dataclass
class TextPreprocessConfig:
    """What ``tools/preprocess_text.py`` runs; its fields are the tool's flags."""

    inputs: List[str] = field(metadata=flag("--input"))
    """JSONL (.jsonl/.json) and parquet (.parquet) files, read in this order."""
    output_dir: str
    """job directory (shards, rejects, report); a rerun of the same command resumes it."""
    tokenizer: str
    """SODA tokenizer directory (tools/build_tokenizer.py)."""
    text_key: str = "text"
    """field (JSONL) or column (parquet) holding the text."""
    documents_per_shard: int = 100_000
    """documents per output shard (the unit of resume)."""
    cluster: WorkerConfig = field(default_factory=WorkerConfig)
    overwrite: bool = False
    """discard an existing job in --output-dir and start again."""
    progress: bool = True
    """show a progress bar."""

    def check(self) -> None:
        """Refuses settings that cannot work, naming the flag; reads no document and loads nothing."""
        for path in self.inputs:
            check_file("--input", path, " (give .jsonl or .parquet files)")
        check_output_dir("--output-dir", self.output_dir)
        check_tokenizer("--tokenizer", self.tokenizer)
        if not self.text_key:
            raise ValueError("--text-key may not be empty")
        check_at_least("--documents-per-shard", self.documents_per_shard, 1)
        self.cluster.check(self.overwrite)


def _jsonl_texts(path: str, key: str) -> Iterator[Tuple[str, Union[str, Reject]]]:
    for source, obj in read_jsonl(path):
        if isinstance(obj, Reject):
            yield source, obj
            continue
        text = obj.get(key) if isinstance(obj, dict) else None
        yield source, text if isinstance(text, str) else Reject(source, "missing_field", f"{source}: no string {key!r}")


def _parquet_texts(path: str, key: str) -> Iterator[Tuple[str, Union[str, Reject]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=[key]):
        for text in batch.column(0).to_pylist():
            row += 1
            source = f"{path}:row {row}"
            yield (
                source,
                text if isinstance(text, str) else Reject(source, "missing_field", f"{source}: no string {key!r}"),
            )


def read_texts(paths: List[str], key: str) -> Iterator[Tuple[str, Union[str, Reject]]]:
    """(source, text or Reject) for every record of every input, in order."""
    for path in paths:
        reader = _parquet_texts if path.endswith(".parquet") else _jsonl_texts
        for source, item in reader(path, key):
            if isinstance(item, str) and not item.strip():
                item = Reject(source, "empty_text", f"{source}: empty text")
            elif isinstance(item, str) and not is_encodable(item):
                item = Reject(source, "non_utf8", f"{source}: text is not valid Unicode (lone surrogate escape)")
            yield source, item


def _run_shard(job, index: int, chunk, tokenizer, vocab: dict) -> None:
    """Renders and commits shard ``index`` (its ``chunk`` of (source, text or Reject)) unless committed."""
    layout = tokenizer.layout
    if job.is_committed(index):
        add_vocab_record(job.path("tokens", index), vocab)  # committed by code that wrote none
        return
    docs = [render(text_document(tokenizer.encode_text(t)), layout).ids for _, t in chunk if isinstance(t, str)]
    rejects = [r for _, r in chunk if isinstance(r, Reject)]
    with DatasetWriter(job.path("tokens", index), layout.vocab_size, overwrite=True, vocab=vocab) as writer:
        writer.add_documents(np.concatenate(docs) if docs else np.zeros(0, np.int64), [len(d) for d in docs])
    write_atomic(job.path("rejects", index, ".jsonl"), "".join(r.to_json() + "\n" for r in rejects))
    counts = {"documents": len(docs), "tokens": int(sum(len(d) for d in docs))}
    job.commit(index, {**counts, "rejects": dict(Counter(r.reason for r in rejects))})


def preprocess_text(config: TextPreprocessConfig) -> dict:
    """Runs (or resumes) this worker's share of a text job; returns the job's report once every shard is
    committed, else this worker's part (``finalized`` false)."""
    from tqdm import tqdm

    if config.documents_per_shard <= 0:
        raise ValueError(f"documents_per_shard must be positive, got {config.documents_per_shard}")
    fingerprint = {
        "inputs": [file_fingerprint(p) for p in config.inputs],
        "tokenizer_sha256": content_digest(config.tokenizer),
        "job": {k: v for k, v in asdict(config).items() if k in ("text_key", "documents_per_shard")},
    }
    tokenizer = load_tokenizer("--tokenizer", config.tokenizer)  # before the output directory is claimed
    job = open_job(config, fingerprint)
    vocab = vocab_record(tokenizer.layout, config.tokenizer)
    records = read_texts(config.inputs, config.text_key)
    index = 0
    with tqdm(unit="doc", desc="preprocess_text", disable=not config.progress) as bar:
        while True:
            chunk = list(islice(records, config.documents_per_shard))
            if not chunk:
                break
            if job.share.owns(index) and not config.cluster.finalize:
                _run_shard(job, index, chunk, tokenizer, vocab)
            bar.update(len(chunk))
            index += 1
    return finish(job, index, ("tokens",), (), config.cluster.finalize)
