"""Packing documents into fixed-length rows (best-fit decreasing, in C++).

A document that fits in a row is never split; a longer one is cut at row boundaries (full rows of
its own plus a remainder packed like any document) and reported. The packed dataset keeps document
boundaries: one IndexedDataset *document* per row, one *sequence* per packed piece, so
``document_indices`` marks rows and the sequence lengths of a row are its cu_seqlens for
document-masked attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_soda._native import _C
from megatron_soda.data.indexed_dataset import (
    PathLike,
    _prefix,
    bind_vocab_record,
    commit_with_vocab_record,
    dataset_exists,
    read_vocab_record,
    validate_dataset,
)
from megatron_soda.data.loss_mask import index_arrays, mask_prefix


@dataclass(frozen=True)
class PackingPlan:
    """Rows as runs of pieces: row ``r`` holds pieces ``row_offsets[r]:row_offsets[r+1]``; piece ``k``
    is ``piece_length[k]`` tokens of document ``piece_document[k]`` from token ``piece_start[k]``."""

    row_length: int
    row_offsets: np.ndarray
    piece_document: np.ndarray
    piece_start: np.ndarray
    piece_length: np.ndarray
    split_documents: np.ndarray  # documents longer than a row
    num_tokens: int
    num_empty_documents: int  # skipped: no tokens

    @property
    def num_rows(self) -> int:
        return len(self.row_offsets) - 1

    @property
    def fill(self) -> float:
        """Tokens over row capacity: 1.0 means no padding at all."""
        return 1.0 if self.num_rows == 0 else self.num_tokens / (self.num_rows * self.row_length)

    def row_lengths(self) -> np.ndarray:
        """Tokens used in each row."""
        return np.add.reduceat(self.piece_length, self.row_offsets[:-1]) if self.num_rows else np.zeros(0, np.int64)

    def summary(self) -> str:
        return (
            f"{self.num_tokens} tokens in {self.num_rows} rows of {self.row_length}: "
            f"fill {100 * self.fill:.2f}%, {len(self.split_documents)} documents longer than a row split, "
            f"{self.num_empty_documents} empty documents skipped"
        )

    @classmethod
    def _from_native(cls, d: dict) -> "PackingPlan":
        return cls(**d)


def plan_packing(lengths, row_length: int, seed: int = 0) -> PackingPlan:
    """Plans rows for documents of the given token lengths; a pure function of its arguments."""
    return PackingPlan._from_native(_C.plan_packing(np.asarray(lengths, dtype=np.int64), int(row_length), int(seed)))


def pack_dataset(
    source: PathLike, output: PathLike, row_length: int, *, seed: int = 0, overwrite: bool = False
) -> PackingPlan:
    """Packs the sequences of a complete dataset into rows of ``row_length`` tokens at ``output``.

    The source holds one sequence per document (as GPT data is written); the output is finalized
    atomically like any dataset this package writes, with the source's vocabulary record beside it
    (packing keeps every token, so the record is bound to the source's token count).

    Loss flags beside the source are packed with the same plan (it depends on lengths and seed only). A
    flagged document longer than a row is refused, not cut: its trained part would lose its context.
    """
    report = validate_dataset(source)
    record = bind_vocab_record(read_vocab_record(source, report), dtype=report.dtype, tokens=report.num_tokens)

    def pack(src: str, out: str, replace: bool) -> PackingPlan:
        return PackingPlan._from_native(_C.pack_dataset(src, out, int(row_length), int(seed), replace))

    source, output = _prefix(source), _prefix(output)
    pack_flags = None
    if report.loss_mask:
        _refuse_cut_examples(source, row_length)
        if dataset_exists(output) and not overwrite:
            raise FileExistsError(f"{output}: dataset already exists; pass overwrite=True (--overwrite) to replace it")

        def pack_flags() -> None:
            pack(mask_prefix(source), mask_prefix(output), True)

    return commit_with_vocab_record(output, record, lambda: pack(source, output, overwrite), pack_flags)


def _refuse_cut_examples(source: str, row_length: int) -> None:
    lengths, _ = index_arrays(source)
    too_long = np.flatnonzero(lengths > row_length)
    if too_long.size:
        raise ValueError(
            f"{source}: {too_long.size} documents with loss flags are longer than a row of {row_length} tokens "
            f"(document {too_long[0]}: {lengths[too_long[0]]} tokens); packing would cut them and orphan their "
            f"trained part: preprocess with --seq-length {row_length} (it rejects them) or pack into longer rows"
        )
