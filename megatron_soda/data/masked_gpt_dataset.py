"""megatron-core's GPTDataset that also honours per-token loss flags stored beside a dataset.

Samples are exactly GPTDataset's (same indices, cache, blend and split); where the dataset carries loss
flags (``data/loss_mask.py``), the flags of the same documents and offsets are read alongside and the
label at position ``t`` is trained only where the flag of token ``t + 1`` is set. A dataset without flags
gives GPTDataset's samples unchanged, so flagged and ordinary datasets blend.

GPTDataset concatenates documents across sample boundaries, so an example can be split between two
samples (its trained part then loses some context); packed rows (``tools/pack_dataset.py``,
``--packed-data``) keep each example whole.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset

from megatron_soda.data.packed_dataset import open_loss_mask


class LossMaskedGPTDataset(GPTDataset):
    """GPTDataset whose loss mask also follows the loss flags beside its dataset, when it has them."""

    def __init__(self, indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config) -> None:
        super().__init__(indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config)
        self.flags = open_loss_mask(dataset_path, config)

    def __getitem__(self, idx: Optional[int]) -> Dict[str, torch.Tensor]:
        sample = super().__getitem__(idx)
        if self.flags is not None:
            flags = self._sample_flags(0 if idx is None else idx)
            labelled = flags[1:] if self.config.add_extra_token_to_sequence else np.append(flags[1:], 0)
            sample["loss_mask"] = sample["loss_mask"] * torch.from_numpy(labelled.astype(np.float32))
        return sample

    def _sample_flags(self, idx: int) -> np.ndarray:
        """The flags of the tokens GPTDataset reads for sample ``idx`` (its document walk; padding: 0)."""
        extra = self.config.add_extra_token_to_sequence
        i = self.shuffle_index[idx]
        first, first_offset = self.sample_index[i]
        last, last_offset = self.sample_index[i + 1]
        parts = []
        for k in range(first, last + 1):
            offset = first_offset if k == first else 0
            length = None if k < last else last_offset - offset + extra
            parts.append(self.flags.get(self.document_index[k], offset=int(offset), length=length))
        flags = np.zeros(self.config.sequence_length + extra, dtype=np.uint8)
        joined = np.concatenate(parts)
        flags[: len(joined)] = joined
        return flags
