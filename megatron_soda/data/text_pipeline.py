"""Text-only documents (SODA's 5% text share) -> token datasets, in resumable shards.

Each document is rendered as ``<|begin_of_text|>text<|end_of_text|>`` (plain text, no text markers).
Inputs are JSONL (one object per line, text under ``text_key``) or parquet (a string column). Bad
lines (not UTF-8, not JSON, no text) go to the rejects with their reason. Output layout and resume
follow ``jobs.ShardedJob``: ``shards/tokens_NNNNN.*``, ``shards/rejects_NNNNN.jsonl``, ``report.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Iterator, List, Tuple, Union

import numpy as np

from megatron_soda.data.formats import render, text_document
from megatron_soda.data.indexed_dataset import DatasetWriter
from megatron_soda.data.jobs import ShardedJob, content_digest, file_fingerprint, summarize, write_atomic
from megatron_soda.data.manifest import Reject, is_encodable, read_jsonl


@dataclass
class TextPreprocessConfig:
    """What ``tools/preprocess_text.py`` runs."""

    inputs: List[str]
    """JSONL (``.jsonl``/``.json``) and parquet (``.parquet``) files, read in this order."""
    output_dir: str
    tokenizer: str
    """Directory of a SODA tokenizer."""
    text_key: str = "text"
    documents_per_shard: int = 100_000
    overwrite: bool = False
    progress: bool = True


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
            yield source, text if isinstance(text, str) else Reject(source, "missing_field", f"{source}: no string {key!r}")


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


def preprocess_text(config: TextPreprocessConfig) -> dict:
    """Runs (or resumes) a text job and returns its report."""
    from tqdm import tqdm

    from megatron_soda.tokenizer import load_soda_tokenizer

    if config.documents_per_shard <= 0:
        raise ValueError(f"documents_per_shard must be positive, got {config.documents_per_shard}")
    fingerprint = {
        "inputs": [file_fingerprint(p) for p in config.inputs],
        "tokenizer_sha256": content_digest(config.tokenizer),
        "job": {k: v for k, v in asdict(config).items() if k in ("text_key", "documents_per_shard")},
    }
    tokenizer = load_soda_tokenizer(config.tokenizer)  # before the output directory is claimed
    job = ShardedJob(config.output_dir, fingerprint, config.overwrite)
    layout = tokenizer.layout
    records = read_texts(config.inputs, config.text_key)
    index = 0
    with tqdm(unit="doc", desc="preprocess_text", disable=not config.progress) as bar:
        while True:
            chunk = list(islice(records, config.documents_per_shard))
            if not chunk:
                break
            if not job.is_committed(index):
                docs = [render(text_document(tokenizer.encode_text(t)), layout).ids for _, t in chunk if isinstance(t, str)]
                rejects = [r for _, r in chunk if isinstance(r, Reject)]
                with DatasetWriter(job.path("tokens", index), layout.vocab_size, overwrite=True) as writer:
                    writer.add_documents(np.concatenate(docs) if docs else np.zeros(0, np.int64), [len(d) for d in docs])
                write_atomic(job.path("rejects", index, ".jsonl"), "".join(r.to_json() + "\n" for r in rejects))
                job.commit(index, {
                    "documents": len(docs),
                    "tokens": int(sum(len(d) for d in docs)),
                    "rejects": dict(Counter(r.reason for r in rejects)),
                })
            bar.update(len(chunk))
            index += 1
    report = summarize(job.reports(index))
    job.write("report.json", json.dumps(report, indent=2))
    return report
