"""Re-rendering a speech preprocessing job's stored codes into other token compositions, without re-encoding.

``tools/preprocess_audio.py`` keeps each shard's raw codes (``codes_NNNNN``: one document per source
document, one sequence per utterance, frame-major indices ``k * C + c``) and utterance metadata
(``meta_NNNNN.jsonl``) beside its tokens. Encoding is the expensive step; this renders the codes again, for
SODA's token-composition ablations:

- the first K codebooks of each frame (``num_codebooks``; 1 is Mimi's semantic codebook alone);
- interleaved with the transcripts, in both orders (SODA), or one order per document drawn as preprocessing
  draws it (``text_first_probability``, ``seed``), or audio-only (``audio_only``);
- the source's documents (its recordings, split as it split them) and their order, unchanged.

Output directory, as preprocessing's, one shard per source shard::

    job.json                    the source (its files' sizes and times), tokenizer and settings; a rerun must match
    tokenizer/                  below the source's K only: the compact tokenizer of K codebooks (see below)
    shards/tokens_NNNNN.*       rendered sequences, with tokens_NNNNN.vocab.json (the tokenizer to train with)
    shards/rejects_NNNNN.jsonl  why a source shard was skipped (its codes and metadata disagree)
    shards/shard_NNNNN.json     counts; written last, it is the shard's commit point
    report.json                 totals, and the tokenizer to train with

Resumable and deterministic like preprocessing: a killed job rerun with the same command redoes only
uncommitted shards and ends byte-identical to an uninterrupted run, and the source's own settings (all
codebooks, both orders, or the same probability and seed) give the source's tokens byte for byte. Orders are
drawn per document of the source job (its index, ``job_document``, kept in ``meta_*.jsonl``), so each
document gets preprocessing's draw even where preprocessing dropped another whole document of the shard
(every utterance rejected). Jobs written before that index was kept are drawn per document slot (shard i,
document j: ``i * documents_per_shard + j``), exact unless such a document was dropped.

**Vocabulary below the source's K: compact.** ``VocabLayout(num_codebooks=K)`` keeps the base, the specials
and the audio offset, so every id keeps its meaning (codebook k, code c is ``audio_offset + k * C + c`` in
both) and only the audio block ends after codebook K-1 (K=1: base + 4 + 2,048 ids). Not SODA's 144,644:
the layout's K is how detokenizing, generation and evaluation cut audio into frames, so a K=1 model read
through an 8-codebook tokenizer would be misparsed; and its LM head would carry 7 x 2,048 rows it never
sees as targets. The compact tokenizer (the source's base rebuilt by ``build_soda_tokenizer`` with K
codebooks) is written to ``<output-dir>/tokenizer`` and named in every dataset's vocabulary record, so
tokenizer, dataset and checkpoint agree, and the existing checks refuse a mismatch by name: training refuses
a dataset made with another vocabulary than ``--tokenizer``'s, and a checkpoint a tokenizer of another
vocabulary size. Checkpoints of different K are different models and do not load into each other.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

from megatron_soda.checks import check_at_least, check_dir, check_output_dir
from megatron_soda.data.codec_job import Progress, file_stat, write_report
from megatron_soda.data.formats import Order, Utterance, document_orders, render, speech_document
from megatron_soda.data.indexed_dataset import (
    DatasetWriter,
    describe_vocab,
    read_vocab_record,
    same_vocabulary,
    validate_dataset,
    vocab_record,
)
from megatron_soda.data.jobs import ShardedJob, content_digest, jsonl, records_digest, write_atomic
from megatron_soda.data.manifest import Reject
from megatron_soda.data.text_pipeline import check_tokenizer, load_tokenizer
from megatron_soda.flags import flag
from megatron_soda.tokenizer.layout import VocabLayout

TOKENIZER_DIR = "tokenizer"
"""Where a job below the source's K writes its compact tokenizer, inside --output-dir."""


@dataclass
class RerenderConfig:
    """What ``tools/rerender.py`` runs; its fields are the tool's flags."""

    input: str = field(metadata=flag("--input"))
    """a speech preprocessing job directory (tools/preprocess_audio.py --output-dir): its codes and metadata."""
    output_dir: str
    """job directory (job.json, shards, rejects, report, tokenizer/); a rerun of the same command resumes it."""
    tokenizer: str
    """the SODA tokenizer the source job was preprocessed with (its transcripts are tokenized again)."""
    num_codebooks: int = 8
    """codebooks kept per frame, the first K (1: Mimi's semantic codebook alone); below the source's, the
    vocabulary is compact and its tokenizer is written to <output-dir>/tokenizer."""
    audio_only: bool = False
    """render audio alone, one sequence per document (no transcripts; default: interleaved, as SODA)."""
    text_first_probability: Optional[float] = None
    """render each document once, text-first with this probability (default: both orders, as SODA)."""
    seed: int = 0
    """seed of the per-document order choice (--text-first-probability); preprocessing's gives its draw."""
    overwrite: bool = False
    """discard an existing job in --output-dir and start again."""
    progress: bool = True
    """show a progress bar."""

    def check(self) -> None:
        """Refuses settings that cannot work, naming the flag; reads no codes and loads nothing."""
        check_dir("--input", self.input, ("job.json",), " (give a tools/preprocess_audio.py --output-dir)")
        check_output_dir("--output-dir", self.output_dir)
        if os.path.abspath(self.output_dir) == os.path.abspath(self.input):
            raise ValueError(f"--output-dir {self.output_dir} is the --input job; give a new directory")
        check_tokenizer("--tokenizer", self.tokenizer)
        check_at_least("--num-codebooks", self.num_codebooks, 1)
        if self.text_first_probability is not None and not 0 <= self.text_first_probability <= 1:
            raise ValueError(f"--text-first-probability must lie in [0, 1], got {self.text_first_probability}")
        if self.audio_only and self.text_first_probability is not None:
            raise ValueError("--text-first-probability orders transcripts; --audio-only renders none")


@dataclass(frozen=True)
class Source:
    """A finished speech preprocessing job: its shards, documents per shard and codec vocabulary."""

    path: str
    num_shards: int
    documents_per_shard: int
    layout: VocabLayout
    """the source tokenizer's layout (its K is the codes' codebooks per frame)."""

    def path_of(self, kind: str, index: int, ext: str = "") -> str:
        return os.path.join(self.path, "shards", f"{kind}_{index:05d}{ext}")

    def shard_report(self, index: int) -> dict:
        """The counts preprocessing committed for shard ``index`` ({} when unreadable)."""
        try:
            with open(self.path_of("shard", index, ".json"), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def fingerprint_rows(self):
        """What a re-render reads, per shard: its files' (size, mtime); a changed source is a new job."""
        for i in range(self.num_shards):
            files = (self.path_of("shard", i, ".json"), self.path_of("meta", i, ".jsonl"))
            files += tuple(self.path_of("codes", i, ext) for ext in (".bin", ".idx"))
            yield [i, *(file_stat(path) for path in files)]


def open_source(path: str, tokenizer_path: str, tokenizer) -> Source:
    """The finished job at ``path``, its codes checked to be ``tokenizer``'s (ValueError naming the flag)."""
    try:
        with open(os.path.join(path, "job.json"), encoding="utf-8") as f:
            settings = json.load(f)["job"]
        with open(os.path.join(path, "report.json"), encoding="utf-8") as f:
            num_shards = int(json.load(f)["shards"])
        per_shard = int(settings["documents_per_shard"])
    except FileNotFoundError as error:
        raise ValueError(
            f"--input {path}: no {os.path.basename(error.filename)}; is the preprocessing job finished? "
            "(rerun its tools/preprocess_audio.py command to complete it)"
        ) from None
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--input {path}: not a speech preprocessing job ({error!r})") from None
    source = Source(path, num_shards, per_shard, tokenizer.layout)
    unfinished = [i for i in range(num_shards) if not os.path.exists(source.path_of("shard", i, ".json"))]
    if unfinished:
        raise ValueError(f"--input {path}: shard {unfinished[0]} is not committed; finish preprocessing first")
    ours = vocab_record(tokenizer.layout, tokenizer_path, content="codes")
    for i in range(num_shards):  # the first shard that records its vocabulary speaks for the job
        try:
            record = read_vocab_record(source.path_of("codes", i))
        except ValueError:
            continue
        if record is not None:
            if not same_vocabulary(record, ours):
                made_by = (record.get("tokenizer") or {}).get("path") or "<the tokenizer that made it>"
                raise ValueError(
                    f"--input {path} holds {describe_vocab(record)}, but --tokenizer {tokenizer_path} gives "
                    f"{describe_vocab(ours)}; pass --tokenizer {made_by}"
                )
            break
    return source


# ---- one source shard: codes and metadata, checked against each other ----------------------------------


@dataclass(frozen=True)
class StoredUtterance:
    text: str
    codes: np.ndarray  # [K_source, T]
    seconds: float
    job_document: Optional[int] = None
    """Its document's index in the source job (the order draw's); None in jobs written before it was kept."""


def read_shard(source: Source, index: int) -> Union[List[List[StoredUtterance]], Reject]:
    """Shard ``index``'s documents of utterances, or the Reject saying how its codes and metadata disagree."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset  # megatron-core reads datasets

    codes_prefix, meta_path = source.path_of("codes", index), source.path_of("meta", index, ".jsonl")
    name = f"shard {index} of {source.path}"

    def reject(reason: str, message: str) -> Reject:
        return Reject(os.path.relpath(codes_prefix, source.path), reason, f"{name}: {message}")

    report = validate_dataset(codes_prefix)
    if not report.ok or not os.path.exists(meta_path):
        missing = meta_path if report.ok else f"a readable {codes_prefix}.bin/.idx ({report})"
        return reject("missing_file", f"no {missing}")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = [json.loads(line) for line in f if line.strip()]
        texts = [m["text"] for m in meta]
        if not all(isinstance(text, str) for text in texts):
            raise TypeError("a transcript ('text') that is not a string")
        frames = np.array([int(m["frames"]) for m in meta], dtype=np.int64)
        documents = np.array([int(m["document"]) for m in meta], dtype=np.int64)
        seconds = [float(m["seconds"]) for m in meta]
        job_documents = [None if m.get("job_document") is None else int(m["job_document"]) for m in meta]
    except (ValueError, KeyError, TypeError) as error:
        return reject("bad_meta", f"{meta_path}: unreadable utterance metadata ({error!r})")

    dataset = IndexedDataset(codes_prefix, mmap=True)
    lengths = dataset.index.sequence_lengths.astype(np.int64)
    doc_starts = dataset.index.document_indices.astype(np.int64)
    if len(meta) != len(lengths):
        return reject(
            "missing_utterance",
            f"{meta_path} lists {len(meta)} utterances but {codes_prefix} holds the codes of {len(lengths)}",
        )
    K, C = source.layout.num_codebooks, source.layout.codebook_size
    expected_docs = np.searchsorted(doc_starts, np.arange(len(lengths)), side="right") - 1
    if not np.array_equal(documents, expected_docs):
        at = int(np.flatnonzero(documents != expected_docs)[0])
        return reject(
            "document_mismatch",
            f"utterance {meta[at].get('id')!r} ({meta_path}:{at + 1}) is in document {documents[at]} there, "
            f"{expected_docs[at]} in the codes",
        )
    if (frames * K != lengths).any():
        at = int(np.flatnonzero(frames * K != lengths)[0])
        return reject(
            "frame_mismatch",
            f"utterance {meta[at].get('id')!r} ({meta_path}:{at + 1}) has {frames[at]} frames there, but its "
            f"codes hold {lengths[at]} ids ({lengths[at] / K:g} frames of {K} codebooks)",
        )
    flat = np.zeros(0, np.int64)  # numpy cannot map an empty file (a shard whose every utterance was rejected)
    if os.path.getsize(codes_prefix + ".bin"):
        flat = np.asarray(np.memmap(codes_prefix + ".bin", dtype=dataset.index.dtype, mode="r"), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
    if len(flat) != lengths.sum():
        return reject("bad_codes", f"{codes_prefix}.bin holds {len(flat)} ids, its index {lengths.sum()}")
    position = np.arange(len(flat)) - np.repeat(starts, lengths)  # within its utterance: frame-major
    bad = (flat < 0) | (flat >= K * C) | (flat // C != position % K)
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        return reject(
            "bad_codes", f"{codes_prefix}.bin: id {at} ({flat[at]}) is not a code of codebook {position[at] % K}"
        )

    first, per_shard = index * source.documents_per_shard, source.documents_per_shard
    outside = [j for j in job_documents if j is not None and not first <= j < first + per_shard]
    if outside:
        return reject("document_mismatch", f"{meta_path} names job document {outside[0]}, not one of this shard's")
    utterances = [
        StoredUtterance(text, (flat[start : start + length].reshape(-1, K).T % C), sec, job_document)
        for text, start, length, sec, job_document in zip(
            texts, starts.tolist(), lengths.tolist(), seconds, job_documents
        )
    ]
    return [utterances[a:b] for a, b in zip(doc_starts[:-1].tolist(), doc_starts[1:].tolist())]


# ---- the compact tokenizer of K codebooks --------------------------------------------------------------


def codebook_tokenizer(source, num_codebooks: int, directory: str) -> VocabLayout:
    """Saves in ``directory`` the ``SodaTokenizer`` ``source`` with only its first ``num_codebooks`` codebooks'
    audio tokens (same base, specials and ids), and returns its layout. A directory already holding that
    vocabulary is kept; a new one is renamed into place whole, so a killed job leaves the old or the new."""
    from tokenizers import Tokenizer

    from megatron_soda.data.indexed_dataset import tokenizer_fingerprint
    from megatron_soda.tokenizer import build_soda_tokenizer, save_soda_tokenizer
    from megatron_soda.tokenizer.soda_tokenizer import LAYOUT_FILE

    layout = replace(source.layout, num_codebooks=num_codebooks)
    spec = json.loads(source.hf.backend_tokenizer.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < layout.base_size]  # the base alone
    built = build_soda_tokenizer(Tokenizer.from_str(json.dumps(spec)), num_codebooks, layout.codebook_size)
    tmp = f"{directory}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_soda_tokenizer(built, tmp, num_codebooks, layout.codebook_size)  # checked against ``layout`` first

    def same(path: str) -> bool:
        layout_file = Path(path, LAYOUT_FILE)
        return (
            layout_file.is_file()
            and layout_file.read_bytes() == Path(tmp, LAYOUT_FILE).read_bytes()
            and tokenizer_fingerprint(path) == tokenizer_fingerprint(tmp)
        )

    if os.path.isdir(directory) and same(directory):
        shutil.rmtree(tmp)
    else:
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    return layout


# ---- the job ------------------------------------------------------------------------------------------


def render_shard(
    documents: List[List[StoredUtterance]], orders: List[List[Order]], layout: VocabLayout, tokenizer, audio_only: bool
) -> List[np.ndarray]:
    """The rendered sequences of one shard's documents: each in its orders, or once audio-only."""
    sequences = []
    for document, its_orders in zip(documents, orders):
        text = [None if audio_only else tokenizer.encode_text(u.text) for u in document]
        utterances = [Utterance(ids, u.codes[: layout.num_codebooks]) for ids, u in zip(text, document)]
        for order in [Order.AUDIO_FIRST] if audio_only else its_orders:  # audio-only: the order is moot
            sequences.append(render(speech_document(utterances, order, layout), layout).ids)
    return sequences


def rerender(config: RerenderConfig) -> dict:
    """Runs (or resumes) a re-render job and returns its report."""
    tokenizer = load_tokenizer("--tokenizer", config.tokenizer)  # before the output directory is claimed
    source = open_source(config.input, config.tokenizer, tokenizer)
    K_source = source.layout.num_codebooks
    if not 1 <= config.num_codebooks <= K_source:
        raise ValueError(f"--num-codebooks {config.num_codebooks}: the source's codes have 1 .. {K_source}")
    fingerprint = {
        "input": {"path": os.path.abspath(config.input), "shards_sha256": records_digest(source.fingerprint_rows())},
        "tokenizer_sha256": content_digest(config.tokenizer),
        "job": {
            "num_codebooks": config.num_codebooks,
            "audio_only": config.audio_only,
            "text_first_probability": config.text_first_probability,
            "seed": config.seed,
        },
    }
    job = ShardedJob(config.output_dir, fingerprint, config.overwrite)
    if config.num_codebooks < K_source:
        train_tokenizer = os.path.join(config.output_dir, TOKENIZER_DIR)
        layout = codebook_tokenizer(tokenizer, config.num_codebooks, train_tokenizer)
    else:
        train_tokenizer, layout = config.tokenizer, source.layout
    vocab = vocab_record(layout, train_tokenizer)
    slots = source.num_shards * source.documents_per_shard
    orders = document_orders(slots, config.text_first_probability, config.seed)
    todo = [i for i in range(source.num_shards) if not job.is_committed(i)]
    counts = [source.shard_report(i) for i in todo]  # the source's counts, for the progress bar
    progress = Progress(sum(c.get("utterances", 0) for c in counts), config.progress, desc="rerender")
    try:
        for index, count in zip(todo, counts):
            documents = read_shard(source, index)
            first = index * source.documents_per_shard
            shard_orders = orders[first : first + source.documents_per_shard]
            if not isinstance(documents, Reject) and all(d[0].job_document is not None for d in documents):
                shard_orders = [orders[d[0].job_document] for d in documents]  # exact where documents were dropped
            if isinstance(documents, Reject) or len(documents) > len(shard_orders):
                _skip_shard(job, index, documents, source)
            else:
                _write_shard(job, index, documents, shard_orders, layout, tokenizer, config.audio_only, vocab)
            progress.update(count.get("utterances", 0), count.get("seconds", 0.0))
    finally:
        progress.close()
    return write_report(job, source.num_shards, (), tokenizer=os.path.abspath(train_tokenizer))


def _write_shard(job, index, documents, orders, layout, tokenizer, audio_only, vocab) -> None:
    """Renders, writes and commits shard ``index``; its counts are those preprocessing reports."""
    sequences = render_shard(documents, orders, layout, tokenizer, audio_only)
    lengths = [len(s) for s in sequences]
    with DatasetWriter(job.path("tokens", index), layout.vocab_size, overwrite=True, vocab=vocab) as writer:
        writer.add_documents(np.concatenate(sequences) if sequences else np.zeros(0, np.int64), lengths)
    write_atomic(job.path("rejects", index, ".jsonl"), "")
    utterances = [u for document in documents for u in document]
    job.commit(
        index,
        {
            "documents": len(documents),
            "sequences": len(sequences),
            "utterances": len(utterances),
            "seconds": sum(u.seconds for u in utterances),
            "tokens": int(sum(lengths)),
            "audio_tokens": layout.num_codebooks * sum(u.codes.shape[1] for u in utterances),
            "rejects": {},
        },
    )


def _skip_shard(job, index, documents, source) -> None:
    """Commits shard ``index`` with no tokens and its Reject (a shard whose codes and metadata disagree)."""
    if not isinstance(documents, Reject):
        documents = Reject(
            os.path.relpath(source.path_of("codes", index), source.path),
            "document_mismatch",
            f"shard {index} of {source.path}: {len(documents)} documents, more than the job's "
            f"{source.documents_per_shard} per shard",
        )
    write_atomic(job.path("rejects", index, ".jsonl"), jsonl([json.loads(documents.to_json())]))
    job.commit(index, {"skipped_shards": 1, "rejects": dict(Counter([documents.reason]))})
