"""Packed rows (``tools/pack_dataset.py`` output) as training samples with document boundaries.

A packed dataset holds one IndexedDataset *document* per row and one *sequence* per packed piece
(docs/design.md). A sample is one row: its pieces concatenated, padded to ``seq_length`` with the pad id
(loss-masked), and ``document_ids`` numbering the pieces (the padding is a piece of its own), from
which the trainer builds cu_seqlens so attention never crosses a document. The label of a position
is the next token *of the same piece*; the last position of each piece has no target.

``PackedRowDataset`` is a megatron-core ``MegatronDataset``, so ``BlendedMegatronDatasetBuilder``
splits it (by rows), blends it with weights and caches its blend indices exactly as for GPTDataset.
Loss flags beside the dataset (``data/loss_mask.py``) are read with the same pieces and mask the labels
further. Rows are shuffled per epoch with a seed of (config seed, split, epoch, dataset path): a pure function
of the sample index, so a resumed run reads the same rows.
"""

from __future__ import annotations

import zlib
from typing import Dict, Optional

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.megatron_dataset import MegatronDataset


class PackedRowDataset(MegatronDataset):
    """Rows of a packed dataset; ``config`` is a ``GPTDatasetConfig`` (sequence length, seed, pad id)."""

    def __init__(self, dataset: IndexedDataset, dataset_path, indices, num_samples, index_split, config) -> None:
        super().__init__(dataset, dataset_path, indices, num_samples, index_split, config)
        rows = dataset.document_indices
        ends = np.concatenate([[0], np.cumsum(dataset.sequence_lengths, dtype=np.int64)])
        lengths = ends[rows[1:]] - ends[rows[:-1]]
        too_long = np.flatnonzero(lengths > config.sequence_length)
        if too_long.size:
            raise ValueError(
                f"{dataset_path}: row {too_long[0]} holds {lengths[too_long[0]]} tokens, more than --seq-length "
                f"{config.sequence_length}; pack it again with --row-length {config.sequence_length} or less"
            )
        self.pad_id = config.tokenizer.pad
        self.flags = open_loss_mask(dataset_path, config)
        self.rows = rows
        self.length = len(indices) if num_samples is None else num_samples
        self._epoch = None

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: IndexedDataset) -> int:
        return low_level_dataset.document_indices.shape[0] - 1

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config) -> IndexedDataset:
        return IndexedDataset(dataset_path, multimodal=False, mmap=config.mmap_bin_files)

    def __len__(self) -> int:
        return self.length

    def _row(self, index: int) -> int:
        epoch, position = divmod(index, len(self.indices))
        if self._epoch is None or self._epoch[0] != epoch:
            seed = (self.config.random_seed, self.index_split.value, epoch, zlib.crc32(str(self.dataset_path).encode()))
            self._epoch = (epoch, np.random.default_rng(seed).permutation(len(self.indices)))
        return int(self.indices[self._epoch[1][position]])

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        row = self._row(index)
        pieces = range(self.rows[row], self.rows[row + 1])
        tokens = [np.asarray(self.dataset[i], dtype=np.int64) for i in pieces]
        flags = None if self.flags is None else [self.flags[i] for i in pieces]
        return packed_sample(tokens, self.config.sequence_length, self.pad_id, flags)


def open_loss_mask(dataset_path: str, config) -> Optional[IndexedDataset]:
    """The loss flags beside a dataset as an IndexedDataset (None: it has none, every token trains)."""
    from megatron_soda.data.loss_mask import has_loss_mask, mask_prefix

    if not has_loss_mask(dataset_path):
        return None
    return IndexedDataset(mask_prefix(dataset_path), multimodal=False, mmap=config.mmap_bin_files)


def documents_after_eod(tokens: torch.Tensor, eod_id: int) -> torch.Tensor:
    """Document ids for GPTDataset rows (documents joined by EOD): a new document after each EOD."""
    ends = (tokens == eod_id).to(torch.int64)
    return torch.cumsum(ends, dim=-1) - ends


def packed_sample(pieces, seq_length: int, pad_id: int, flags=None) -> Dict[str, torch.Tensor]:
    """One row of ``pieces`` (token arrays) as a training sample of ``seq_length`` positions.

    ``flags``: the pieces' loss flags (0/1 per token); a label is trained where its token's flag is 1."""
    tokens = np.full(seq_length, pad_id, dtype=np.int64)
    labels = np.full(seq_length, pad_id, dtype=np.int64)
    loss_mask = np.zeros(seq_length, dtype=np.float32)
    position_ids = np.zeros(seq_length, dtype=np.int64)
    document_ids = np.full(seq_length, len(pieces), dtype=np.int64)
    start = 0
    for k, piece in enumerate(pieces):
        end = start + len(piece)
        tokens[start:end] = piece
        labels[start : end - 1] = piece[1:]
        loss_mask[start : end - 1] = 1.0 if flags is None else flags[k][1:]
        position_ids[start:end] = np.arange(len(piece))
        document_ids[start:end] = k
        start = end
    return {
        key: torch.from_numpy(value)
        for key, value in (
            ("tokens", tokens),
            ("labels", labels),
            ("loss_mask", loss_mask),
            ("position_ids", position_ids),
            ("document_ids", document_ids),
        )
    }
