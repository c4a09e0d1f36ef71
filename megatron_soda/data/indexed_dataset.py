"""Writing, merging and validating megatron-core IndexedDataset files (``<prefix>.bin/.idx``).

The work happens in C++ (``csrc/``): documents are appended from numpy arrays with no per-token or
per-document Python work, and a dataset becomes visible only when its ``.idx`` is renamed into place
after everything is fsynced. So a prefix whose ``.idx`` exists is complete; a killed job leaves
only ``*.tmp-<pid>-<n>`` files behind. Reading is megatron-core's job
(``megatron.core.datasets.indexed_dataset.IndexedDataset``); this module never imports torch, so
preprocessing runs on machines without a GPU stack.

Beside a dataset written with a vocabulary (``DatasetWriter(vocab=vocab_record(layout, tokenizer))``, as
preprocessing does, and carried by ``merge_datasets`` and ``tools/pack_dataset.py``) lies
``<prefix>.vocab.json``: which ``VocabLayout`` and tokenizer made its ids, so that training can refuse a
run whose vocabulary differs (``training.plan.check_datasets``). It is written before the ``.idx`` commit
and bound to the dataset's counts, so it never makes a half-written dataset look complete, and a stale
one (an overwrite killed before its commit) is ignored.

A dataset may also carry per-token loss flags, ``<prefix>.loss.bin/.idx`` (``DatasetWriter(loss_mask=True)``;
``data/loss_mask.py``), committed and validated together with its tokens and carried by merging and packing.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, TypeVar, Union

import numpy as np

from megatron_soda._native import _C
from megatron_soda.data.loss_mask import FLAG_DTYPE, LOSS_SUFFIX, has_loss_mask, mask_prefix, mismatch
from megatron_soda.data.loss_mask import read_loss_mask as read_loss_mask  # the writer's reader, re-exported

PathLike = Union[str, os.PathLike]
T = TypeVar("T")

# megatron-core's DType codes (megatron.core.datasets.indexed_dataset.DType).
DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The token dtype for a vocabulary: uint16 up to 65,536 ids, else int32 (int64 beyond 2^31).

    It depends on the vocabulary alone, never on the ids a shard happens to hold, so every shard of
    a dataset shares it and shards can be merged.
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 31:
        return np.dtype(np.int32)
    return np.dtype(np.int64)


def dtype_code(dtype) -> int:
    """megatron-core's code for a numpy dtype."""
    try:
        return DTYPE_CODES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype {np.dtype(dtype)} has no megatron-core IndexedDataset code") from None


def _prefix(prefix: PathLike) -> str:
    path = os.fspath(prefix)
    if path.endswith((".bin", ".idx")):
        raise ValueError(f"{path}: pass the dataset prefix, without .bin or .idx")
    return path


def dataset_exists(prefix: PathLike) -> bool:
    """Whether a complete dataset is at ``prefix`` (its ``.idx``, the commit point, exists)."""
    return os.path.exists(_prefix(prefix) + ".idx")


class DatasetWriter:
    """Streams documents into a new dataset at ``prefix``; use it as a context manager.

    Leaving the ``with`` block normally finalizes (atomic, durable); leaving it through an exception
    aborts and removes the temporary files, so a failed job never looks complete. An existing
    dataset at ``prefix`` is refused (``FileExistsError``) unless ``overwrite=True``; it stays
    complete and readable until the new one is fully written.

    Token ids must lie in ``[0, vocab_size)``; the stored dtype follows ``dtype_for_vocab`` unless
    ``dtype`` says otherwise. ``vocab`` (a ``vocab_record``) is written beside the dataset as
    ``<prefix>.vocab.json`` just before the commit; without it, an old record at ``prefix`` is removed.
    With ``loss_mask``, every ``add_documents`` call also takes the tokens' 0/1 loss flags, written to
    ``<prefix>.loss`` and committed with the tokens.
    """

    def __init__(
        self,
        prefix: PathLike,
        vocab_size: int,
        *,
        dtype=None,
        overwrite: bool = False,
        buffer_bytes: int = 16 << 20,
        vocab: Optional[dict] = None,
        loss_mask: bool = False,
    ):
        self.prefix = _prefix(prefix)
        if vocab is not None and record_id_range(vocab) != vocab_size:
            raise ValueError(
                f"{self.prefix}: vocab_size {vocab_size} does not fit {describe_vocab(vocab)} (given as "
                f"vocab), whose ids lie below {record_id_range(vocab)}"
            )
        self.dtype = np.dtype(dtype) if dtype is not None else dtype_for_vocab(vocab_size)
        self._vocab = vocab
        self._writer = _C.DatasetWriter(self.prefix, dtype_code(self.dtype), int(vocab_size), overwrite, buffer_bytes)
        self._flags = None
        if loss_mask:  # made after the tokens' writer, which refuses an existing dataset without overwrite
            self._flags = _C.DatasetWriter(mask_prefix(self.prefix), dtype_code(FLAG_DTYPE), 2, True, buffer_bytes)

    def add_documents(self, tokens, lengths, sequences_per_document=None, loss_mask=None) -> None:
        """Appends ``len(lengths)`` sequences taken in order from the flat array ``tokens``.

        Each sequence is one document unless ``sequences_per_document`` groups consecutive
        sequences (packed rows: one document per row, one sequence per piece). A refused call
        (bad id, lengths not summing to ``len(tokens)``) raises ``ValueError`` and writes nothing.
        ``loss_mask``: 0/1 per token, required exactly when the writer was made with ``loss_mask``.
        """
        flags = self._check_flags(tokens, loss_mask)
        tokens = np.ascontiguousarray(tokens)
        if tokens.dtype.kind not in "iu":
            raise ValueError(f"{self.prefix}: tokens must be integers, got dtype {tokens.dtype}")
        if not tokens.dtype.isnative:  # e.g. big-endian '>i4': the C++ side reads native integers
            tokens = tokens.astype(tokens.dtype.newbyteorder("="))
        lengths = np.asarray(lengths, dtype=np.int64)
        groups = None if sequences_per_document is None else np.asarray(sequences_per_document, dtype=np.int64)
        self._writer.add_documents(tokens.reshape(-1), lengths, groups)
        if flags is not None:  # the tokens passed every check, so the same lengths and groups do too
            self._flags.add_documents(flags, lengths, groups)

    def _check_flags(self, tokens, loss_mask) -> Optional[np.ndarray]:
        if (loss_mask is None) != (self._flags is None):
            wanted = "needs" if self._flags is not None else "was made without loss_mask=True and takes no"
            raise ValueError(f"{self.prefix}: this writer {wanted} loss_mask flags")
        if loss_mask is None:
            return None
        flags = np.asarray(loss_mask).reshape(-1)
        if flags.size != np.size(tokens):
            raise ValueError(f"{self.prefix}: {flags.size} loss flags for {np.size(tokens)} tokens")
        if flags.dtype != np.bool_ and not np.isin(flags, (0, 1)).all():
            raise ValueError(f"{self.prefix}: loss flags must be 0 or 1")
        return np.ascontiguousarray(flags, dtype=FLAG_DTYPE)

    def add_document(self, tokens, loss_mask=None) -> None:
        """Appends one document of one sequence."""
        tokens = np.asarray(tokens)
        self.add_documents(tokens, [tokens.size], loss_mask=loss_mask)

    def append_dataset(self, prefix: PathLike) -> None:
        """Appends a complete dataset of the same dtype (its bytes are copied by the kernel)."""
        self._writer.append_dataset(_prefix(prefix))

    def finalize(self) -> None:
        """Makes the dataset visible: fsync, (vocabulary record,) rename ``.bin``, then ``.idx`` (commit),
        fsync the directory."""
        record = bind_vocab_record(
            self._vocab,
            dtype=self.dtype,
            tokens=self.num_tokens,
            sequences=self.num_sequences,
            documents=self.num_documents,
        )
        flags = None if self._flags is None else self._flags.finalize
        commit_with_vocab_record(self.prefix, record, self._writer.finalize, flags)

    def abort(self) -> None:
        """Discards everything written; the prefix is left as it was."""
        self._writer.abort()
        if self._flags is not None:
            self._flags.abort()

    @property
    def num_documents(self) -> int:
        return self._writer.num_documents

    @property
    def num_sequences(self) -> int:
        return self._writer.num_sequences

    @property
    def num_tokens(self) -> int:
        return self._writer.num_tokens

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


def write_dataset(
    prefix: PathLike,
    tokens,
    lengths,
    vocab_size: int,
    *,
    sequences_per_document=None,
    overwrite: bool = False,
    dtype=None,
    vocab: Optional[dict] = None,
) -> None:
    """Writes one complete dataset from a flat token array in a single call."""
    with DatasetWriter(prefix, vocab_size, dtype=dtype, overwrite=overwrite, vocab=vocab) as writer:
        writer.add_documents(tokens, lengths, sequences_per_document)


def merge_datasets(
    output: PathLike, inputs: Sequence[PathLike], *, overwrite: bool = False, progress: bool = False
) -> None:
    """Concatenates complete datasets of one dtype into ``output``, byte-identical to building in one go.

    Every input is validated first (structure, not token ids), so a damaged shard stops the merge
    before anything is written. The layout matches megatron-core's ``IndexedDatasetBuilder.add_index``;
    the bytes are copied by the kernel, never through Python; the output is finalized atomically.

    The inputs' vocabulary records (``<prefix>.vocab.json``) must agree, or all be absent: datasets of
    different vocabularies (or one without a record among recorded ones) are refused, naming both. The
    output gets the common record. Loss flags are merged alike; inputs with and without flags are refused.
    """
    inputs = [_prefix(p) for p in inputs]
    if not inputs:
        raise ValueError("merge_datasets needs at least one input prefix")
    out = _prefix(output)
    if out in inputs:
        raise ValueError(f"output prefix {out} is also an input")
    reports = [validate_dataset(p) for p in inputs]
    for report in reports:
        if not report.ok:
            raise ValueError(f"cannot merge a damaged dataset: {report}")
        if report.dtype != reports[0].dtype:
            raise ValueError(f"{report.prefix}: dtype {report.dtype} differs from {inputs[0]}'s {reports[0].dtype}")
    masked = [r.loss_mask for r in reports]
    if any(masked) and not all(masked):
        with_flags, without = (inputs[masked.index(flag)] for flag in (True, False))
        raise ValueError(
            f"cannot merge datasets with and without loss flags ({with_flags} has {mask_prefix(with_flags)}, "
            f"{without} has none); preprocess them alike, or train on them side by side in one blend"
        )
    record = _common_vocab_record(inputs, reports)
    record = bind_vocab_record(
        record,
        dtype=reports[0].dtype,
        tokens=sum(r.num_tokens for r in reports),
        sequences=sum(r.num_sequences for r in reports),
        documents=sum(r.num_documents for r in reports),
    )
    code = dtype_code(reports[0].dtype)
    writer = _C.DatasetWriter(out, code, _C.dtype_capacity(code), overwrite)
    flags = _C.DatasetWriter(mask_prefix(out), dtype_code(FLAG_DTYPE), 2, True) if all(masked) else None
    try:
        for prefix in _progress(inputs, progress, desc=f"merging into {out}", unit="shard"):
            writer.append_dataset(prefix)
            if flags is not None:
                flags.append_dataset(mask_prefix(prefix))
        commit_with_vocab_record(out, record, writer.finalize, flags and flags.finalize)
    finally:
        writer.abort()  # a no-op after finalize; removes the temporaries otherwise
        if flags is not None:
            flags.abort()


def _common_vocab_record(inputs: Sequence[str], reports) -> Optional[dict]:
    """The vocabulary record all inputs share (None: none has one); ValueError naming two that differ."""
    records = [read_vocab_record(p, r) for p, r in zip(inputs, reports)]

    def what(prefix, record):
        if record is None:
            return f"{prefix} has no vocabulary record ({vocab_path(prefix)}: made by older code or another tool)"
        return f"{vocab_path(prefix)} records {describe_vocab(record)}"

    for prefix, record in zip(inputs[1:], records[1:]):
        first = records[0]
        if (record is None) != (first is None) or (first is not None and not same_vocabulary(first, record)):
            raise ValueError(
                f"cannot merge datasets of different vocabularies: {what(inputs[0], first)}, but "
                f"{what(prefix, record)}; merge only datasets made with one tokenizer (rerunning the "
                f"preprocessing command that made a shard adds its record)"
            )
    return records[0]


def _progress(items, enabled: bool, **kwargs):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, **kwargs)


@dataclass(frozen=True)
class ValidationReport:
    """What ``validate_dataset`` found: ``ok``, or the first violation with its file and byte offset."""

    prefix: str
    ok: bool
    error: str
    file: str
    offset: int
    dtype: Optional[np.dtype]
    num_sequences: int
    num_documents: int
    num_tokens: int
    max_token: Optional[int]
    loss_mask: bool = False
    """whether per-token loss flags (``<prefix>.loss``) lie beside the tokens (checked with them)."""

    def __str__(self) -> str:
        if self.ok:
            max_token = "" if self.max_token is None else f", max token id {self.max_token}"
            flags = ", with loss flags" if self.loss_mask else ""
            return (
                f"{self.prefix}: OK ({self.num_documents} documents, {self.num_sequences} sequences, "
                f"{self.num_tokens} tokens, dtype {self.dtype}{max_token}{flags})"
            )
        where = f" at byte {self.offset}" if self.offset >= 0 else ""
        return f"{self.file}{where}: {self.error}"


def validate_dataset(prefix: PathLike, vocab_size: Optional[int] = None) -> ValidationReport:
    """Checks every invariant of a dataset; with ``vocab_size``, also every token id.

    Header (magic, version, dtype code), counts against the index size, lengths against pointers,
    monotone pointers, the document index (starts at 0, non-decreasing, ends at the sequence count),
    the ``.bin`` size, and ids < ``vocab_size``; loss flags beside the tokens must share their sequences and
    documents (and, with ``vocab_size``, be 0 or 1).
    """
    path = _prefix(prefix)
    report = _report(path, _C.validate_dataset(path, int(vocab_size or 0)))
    if not report.ok or not has_loss_mask(path):
        return report
    flags = _report(mask_prefix(path), _C.validate_dataset(mask_prefix(path), 2 if vocab_size else 0))
    error = mismatch(path, report, flags)
    if error is None:
        return dataclasses.replace(report, loss_mask=True)
    where = (flags.file, flags.offset) if not flags.ok else (mask_prefix(path) + ".idx", -1)
    return dataclasses.replace(report, ok=False, error=error, file=where[0], offset=where[1])


def _report(path: str, r) -> ValidationReport:
    return ValidationReport(
        prefix=path,
        ok=r.ok,
        error=r.error,
        file=r.file,
        offset=r.offset,
        dtype=CODE_DTYPES.get(r.dtype_code),
        num_sequences=r.num_sequences,
        num_documents=r.num_documents,
        num_tokens=r.num_tokens,
        max_token=None if r.max_token < 0 else r.max_token,
    )


def validate_tokens_once(prefix: PathLike, vocab_size: int, cache_dir: PathLike) -> ValidationReport:
    """``validate_dataset`` with the token scan remembered: a dataset whose files have not changed since
    a scan found every id below ``vocab_size`` is checked by its index only.

    The scan reads the whole ``.bin`` (terabytes for a full SODA corpus), which a training job should
    not repeat at every restart. The record, one small file in ``cache_dir`` named by a hash of the
    dataset's real path, the size and mtime of both files and the vocabulary size, is written only
    after a clean scan; any change to the files gives another name, so a stale record never applies.
    """
    import hashlib
    import json

    path = os.path.realpath(_prefix(prefix))
    stats = [os.stat(path + suffix) for suffix in (".idx", ".bin")]
    key = json.dumps([path, [(s.st_size, s.st_mtime_ns) for s in stats], int(vocab_size)])
    record = os.path.join(os.fspath(cache_dir), hashlib.sha256(key.encode()).hexdigest() + ".json")
    if os.path.exists(record):
        return validate_dataset(prefix)
    report = validate_dataset(prefix, vocab_size)
    if report.ok:
        os.makedirs(os.fspath(cache_dir), exist_ok=True)
        tmp = f"{record}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(key)
        os.replace(tmp, record)
    return report


def find_datasets(paths: Iterable[PathLike]) -> list[str]:
    """Expands files and directories into the sorted list of complete dataset prefixes under them.

    A path whose ``.idx`` exists is that dataset's prefix, even where a directory of the same name sits
    beside it: megatron-core's GPTDataset keeps its index cache in ``<prefix>/cache/`` by default, so a
    dataset that has been trained on has one. Only a directory with no ``.idx`` of its name is searched;
    a dataset's loss flags found there are part of it, not another dataset.
    """
    prefixes = []
    for path in map(os.fspath, paths):
        bare = path.rstrip("/" + os.sep) or path
        if os.path.isdir(path) and not os.path.isfile(bare + ".idx"):
            for root, _, files in os.walk(path):
                prefixes += [os.path.join(root, f[:-4]) for f in files if f.endswith(".idx")]
        elif path.endswith(".idx"):
            prefixes.append(path[:-4])
        else:
            prefixes.append(bare)
    # A dataset's loss flags (<prefix>.loss.idx, matched by a folder or a glob) belong to it: no dataset of their own.
    found = set(prefixes)
    return sorted(p for p in found if not (p.endswith(LOSS_SUFFIX) and p[: -len(LOSS_SUFFIX)] in found))


# ---- vocabulary records (``<prefix>.vocab.json``) ------------------------------------------------

VOCAB_SUFFIX = ".vocab.json"
VOCAB_FORMAT = "megatron-soda vocabulary record 1"
_LAYOUT_KEYS = ("vocab_size", "base_size", "audio_offset", "num_codebooks", "codebook_size", "special_ids")


def vocab_path(prefix: PathLike) -> str:
    """Where the vocabulary record of the dataset at ``prefix`` lives."""
    return _prefix(prefix) + VOCAB_SUFFIX


def tokenizer_fingerprint(directory: PathLike) -> Optional[str]:
    """sha256 of a tokenizer directory's id -> token table (``tokenizer.json``: model vocabulary and added
    tokens), or None without a ``tokenizer.json``.

    The table, not the files' bytes: the same vocabulary saved again (another ``tokenizer_config.json``,
    another library version) keeps its fingerprint, while a BPE retrained to the same size changes it.
    """
    import hashlib
    import json

    path = os.path.join(os.fspath(directory), "tokenizer.json")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        raw = f.read()
    try:
        spec = json.loads(raw)
        vocab = spec["model"]["vocab"]
        table = dict(enumerate(entry[0] for entry in vocab)) if isinstance(vocab, list) else {}
        if isinstance(vocab, dict):
            table = {int(i): token for token, i in vocab.items()}
        table.update({int(t["id"]): t["content"] for t in spec.get("added_tokens") or ()})
    except (ValueError, KeyError, TypeError, IndexError):  # not the usual layout: the file itself
        return hashlib.sha256(raw).hexdigest()
    return hashlib.sha256(json.dumps(sorted(table.items()), ensure_ascii=False).encode()).hexdigest()


def vocab_record(layout, tokenizer: Optional[PathLike] = None, *, content: str = "tokens") -> dict:
    """What a dataset's ids mean: the ``VocabLayout`` and the tokenizer (path, fingerprint) that made them.

    ``content`` is ``"tokens"`` (ids in ``[0, vocab_size)``) or ``"codes"`` (a preprocessing job's raw
    codec codes, ``k * codebook_size + c``). Give it to ``DatasetWriter(vocab=...)``, which binds it to
    the dataset it commits (``dataset``: dtype and counts) and writes it beside the ``.bin``/``.idx``.
    """
    if content not in ("tokens", "codes"):
        raise ValueError(f"content must be 'tokens' or 'codes', got {content!r}")
    return {
        "format": VOCAB_FORMAT,
        "content": content,
        "vocab_size": int(layout.vocab_size),
        "base_size": int(layout.base_size),
        "audio_offset": int(layout.audio_offset),
        "num_codebooks": int(layout.num_codebooks),
        "codebook_size": int(layout.codebook_size),
        "special_ids": {
            "begin_of_text": int(layout.bos_id),
            "end_of_text": int(layout.eos_id),
            "text_start": int(layout.text_start_id),
            "text_end": int(layout.text_end_id),
            "audio_start": int(layout.audio_start_id),
            "audio_end": int(layout.audio_end_id),
        },
        "tokenizer": None
        if tokenizer is None
        else {"path": os.path.abspath(os.fspath(tokenizer)), "vocab_sha256": tokenizer_fingerprint(tokenizer)},
    }


def record_id_range(record: dict) -> int:
    """The ids a dataset with this record may hold: ``[0, result)``."""
    return record["vocab_size"] if record["content"] == "tokens" else record["num_codebooks"] * record["codebook_size"]


def same_vocabulary(a: dict, b: dict) -> bool:
    """Whether two records give ids the same meaning: same content, layout and (where both know it) tokenizer."""
    if a["content"] != b["content"] or any(a[key] != b[key] for key in _LAYOUT_KEYS):
        return False
    fingerprints = [(r.get("tokenizer") or {}).get("vocab_sha256") for r in (a, b)]
    return None in fingerprints or fingerprints[0] == fingerprints[1]


def describe_vocab(record: dict, made_by: Optional[str] = None) -> str:
    """A record in words: ``a 16,690-id vocabulary (base 302, audio from 306: 8 x 2,048 codes; tokenizer T, ...)``;
    ``made_by`` replaces what is said of the tokenizer."""
    tokenizer = record.get("tokenizer") or {}
    if made_by is None:
        made_by = f"tokenizer {tokenizer['path']}" if tokenizer.get("path") else "tokenizer not recorded"
        if tokenizer.get("vocab_sha256"):
            made_by += f", vocabulary sha256 {tokenizer['vocab_sha256'][:12]}"
    what = "a " if record["content"] == "tokens" else "raw codec codes for a "
    return (
        f"{what}{record['vocab_size']:,}-id vocabulary (base {record['base_size']:,}, audio from "
        f"{record['audio_offset']:,}: {record['num_codebooks']} x {record['codebook_size']:,} codes; {made_by})"
    )


def bind_vocab_record(record: Optional[dict], **dataset) -> Optional[dict]:
    """``record`` bound to the dataset it will describe (``dtype``, ``tokens``, ``sequences``, ``documents``).

    A reader ignores a record whose binding disagrees with the dataset beside it: the trace of an overwrite
    killed between writing the new record and committing the new ``.idx``.
    """
    if record is None:
        return None
    bound = {key: value for key, value in record.items() if key != "dataset"}
    bound["dataset"] = {key: (str(value) if key == "dtype" else int(value)) for key, value in dataset.items()}
    return bound


def read_vocab_record(prefix: PathLike, report: Optional["ValidationReport"] = None) -> Optional[dict]:
    """The vocabulary record beside a complete dataset, or None: no record (older code, megatron's own tools),
    or a stale one (its binding disagrees with the dataset). ``report``: the dataset's ``validate_dataset``
    report if at hand (index only; made here otherwise). A record that cannot be read raises ValueError.
    """
    import json

    path = vocab_path(prefix)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable vocabulary record ({error})") from None
    if not isinstance(record, dict) or record.get("format") != VOCAB_FORMAT:
        raise ValueError(f"{path}: not a vocabulary record of this version (format {VOCAB_FORMAT!r})")
    missing = [key for key in ("content", *_LAYOUT_KEYS, "dataset") if key not in record]
    if missing:
        raise ValueError(f"{path}: vocabulary record without {', '.join(missing)}")
    report = report if report is not None else validate_dataset(prefix)
    actual = {
        "dtype": str(report.dtype),
        "tokens": report.num_tokens,
        "sequences": report.num_sequences,
        "documents": report.num_documents,
    }
    if not report.ok or any(actual.get(key) != value for key, value in (record["dataset"] or {}).items()):
        return None
    return record


def add_vocab_record(prefix: PathLike, record: dict) -> bool:
    """Puts ``record`` (a ``vocab_record``) beside the complete dataset at ``prefix`` if it has none; whether
    it did. For datasets committed before records existed, by a caller that knows what made them (a resumed
    preprocessing job, whose fingerprint pins its tokenizer); the result equals what a writer leaves."""
    import json

    from megatron_soda.data.jobs import write_atomic

    if os.path.exists(vocab_path(prefix)):
        return False
    report = validate_dataset(prefix)
    if not report.ok:
        return False
    bound = bind_vocab_record(
        record,
        dtype=report.dtype,
        tokens=report.num_tokens,
        sequences=report.num_sequences,
        documents=report.num_documents,
    )
    write_atomic(vocab_path(prefix), json.dumps(bound, indent=2) + "\n")
    return True


def commit_with_vocab_record(
    prefix: PathLike, record: Optional[dict], commit: Callable[[], T], commit_loss_mask: Optional[Callable] = None
) -> T:
    """Runs ``commit`` (which renames the dataset's ``.idx`` into place) with ``record`` beside it, and the
    loss flags that ``commit_loss_mask`` renames into place (None: the dataset has none).

    The record (bound by ``bind_vocab_record``) is written atomically and durably *before* the commit, so a
    dataset never appears without it, and a record beside no ``.idx`` (a killed job) describes nothing.
    With ``record`` None an old record at ``prefix`` is removed first. If ``commit`` raises, the old record
    (or its absence) is restored. Where loss flags are written or an old dataset's flags are replaced, the
    old ``.idx`` goes first: old tokens never stand beside new flags, nor new tokens beside old ones.
    """
    from megatron_soda.data.jobs import fsync_path, write_atomic

    directory = os.path.dirname(os.path.abspath(prefix))
    if commit_loss_mask is not None or has_loss_mask(prefix):
        for stale in (_prefix(prefix) + ".idx", mask_prefix(prefix) + ".idx", mask_prefix(prefix) + ".bin"):
            if os.path.exists(stale):
                os.remove(stale)
        fsync_path(directory)
        if commit_loss_mask is not None:
            commit_loss_mask()
    path = vocab_path(prefix)
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read()
    except FileNotFoundError:
        old = None
    if record is not None:
        import json

        write_atomic(path, json.dumps(record, indent=2) + "\n")
    elif old is not None:
        os.remove(path)
        fsync_path(directory)
    try:
        return commit()
    except BaseException:
        if old is not None:
            write_atomic(path, old)
        elif record is not None and os.path.exists(path):
            os.remove(path)
        raise
