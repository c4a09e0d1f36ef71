"""Writing, merging and validating megatron-core IndexedDataset files (``<prefix>.bin/.idx``).

The work happens in C++ (``csrc/``): documents are appended from numpy arrays with no per-token or
per-document Python work, and a dataset becomes visible only when its ``.idx`` is renamed into place
after everything is fsynced. So a prefix whose ``.idx`` exists is complete; a killed job leaves
only ``*.tmp-<pid>-<n>`` files behind. Reading is megatron-core's job
(``megatron.core.datasets.indexed_dataset.IndexedDataset``); this module never imports torch, so
preprocessing runs on machines without a GPU stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from megatron_soda._native import _C

PathLike = Union[str, os.PathLike]

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
    ``dtype`` says otherwise.
    """

    def __init__(
        self,
        prefix: PathLike,
        vocab_size: int,
        *,
        dtype=None,
        overwrite: bool = False,
        buffer_bytes: int = 16 << 20,
    ):
        self.prefix = _prefix(prefix)
        self.dtype = np.dtype(dtype) if dtype is not None else dtype_for_vocab(vocab_size)
        self._writer = _C.DatasetWriter(self.prefix, dtype_code(self.dtype), int(vocab_size), overwrite, buffer_bytes)

    def add_documents(self, tokens, lengths, sequences_per_document=None) -> None:
        """Appends ``len(lengths)`` sequences taken in order from the flat array ``tokens``.

        Each sequence is one document unless ``sequences_per_document`` groups consecutive
        sequences (packed rows: one document per row, one sequence per piece). A refused call
        (bad id, lengths not summing to ``len(tokens)``) raises ``ValueError`` and writes nothing.
        """
        tokens = np.ascontiguousarray(tokens)
        if tokens.dtype.kind not in "iu":
            raise ValueError(f"{self.prefix}: tokens must be integers, got dtype {tokens.dtype}")
        if not tokens.dtype.isnative:  # e.g. big-endian '>i4': the C++ side reads native integers
            tokens = tokens.astype(tokens.dtype.newbyteorder("="))
        self._writer.add_documents(
            tokens.reshape(-1),
            np.asarray(lengths, dtype=np.int64),
            None if sequences_per_document is None else np.asarray(sequences_per_document, dtype=np.int64),
        )

    def add_document(self, tokens) -> None:
        """Appends one document of one sequence."""
        tokens = np.asarray(tokens)
        self.add_documents(tokens, [tokens.size])

    def append_dataset(self, prefix: PathLike) -> None:
        """Appends a complete dataset of the same dtype (its bytes are copied by the kernel)."""
        self._writer.append_dataset(_prefix(prefix))

    def finalize(self) -> None:
        """Makes the dataset visible: fsync, rename ``.bin``, then ``.idx`` (commit), fsync the directory."""
        self._writer.finalize()

    def abort(self) -> None:
        """Discards everything written; the prefix is left as it was."""
        self._writer.abort()

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
) -> None:
    """Writes one complete dataset from a flat token array in a single call."""
    with DatasetWriter(prefix, vocab_size, dtype=dtype, overwrite=overwrite) as writer:
        writer.add_documents(tokens, lengths, sequences_per_document)


def merge_datasets(
    output: PathLike, inputs: Sequence[PathLike], *, overwrite: bool = False, progress: bool = False
) -> None:
    """Concatenates complete datasets of one dtype into ``output``, byte-identical to building in one go.

    Every input is validated first (structure, not token ids), so a damaged shard stops the merge
    before anything is written. The layout matches megatron-core's ``IndexedDatasetBuilder.add_index``;
    the bytes are copied by the kernel, never through Python; the output is finalized atomically.
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
    code = dtype_code(reports[0].dtype)
    writer = _C.DatasetWriter(out, code, _C.dtype_capacity(code), overwrite)
    try:
        for prefix in _progress(inputs, progress, desc=f"merging into {out}", unit="shard"):
            writer.append_dataset(prefix)
        writer.finalize()
    finally:
        writer.abort()  # a no-op after finalize; removes the temporaries otherwise


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

    def __str__(self) -> str:
        if self.ok:
            max_token = "" if self.max_token is None else f", max token id {self.max_token}"
            return (
                f"{self.prefix}: OK ({self.num_documents} documents, {self.num_sequences} sequences, "
                f"{self.num_tokens} tokens, dtype {self.dtype}{max_token})"
            )
        where = f" at byte {self.offset}" if self.offset >= 0 else ""
        return f"{self.file}{where}: {self.error}"


def validate_dataset(prefix: PathLike, vocab_size: Optional[int] = None) -> ValidationReport:
    """Checks every invariant of a dataset; with ``vocab_size``, also every token id.

    Header (magic, version, dtype code), counts against the index size, lengths against pointers,
    monotone pointers, the document index (starts at 0, non-decreasing, ends at the sequence count),
    the ``.bin`` size, and ids < ``vocab_size``.
    """
    path = _prefix(prefix)
    r = _C.validate_dataset(path, int(vocab_size or 0))
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
    """Expands files and directories into the sorted list of complete dataset prefixes under them."""
    prefixes = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            for root, _, files in os.walk(path):
                prefixes += [os.path.join(root, f[:-4]) for f in files if f.endswith(".idx")]
        elif path.endswith(".idx"):
            prefixes.append(path[:-4])
        else:
            prefixes.append(path)
    return sorted(prefixes)
