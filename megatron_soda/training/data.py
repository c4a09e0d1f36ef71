"""Global batches for pretraining: a pure function of the number of samples consumed so far.

Global batch ``i`` is samples ``[c, c + G)`` of the (already shuffled) blended GPTDataset, where
``c`` is the number of samples consumed before it; data-parallel rank ``r`` takes the ``r``-th
contiguous slice of ``G / DP`` and cuts it into micro-batches. So resuming needs only ``c``, no
seek and no iterator state, and the order is the same for any TP/PP layout.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from megatron_soda.data.packed_dataset import documents_after_eod

KEYS = ("tokens", "labels", "loss_mask", "position_ids", "document_ids")


def micro_batches(
    dataset,
    consumed_samples: int,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    eod_documents: Optional[int] = None,
) -> List[Dict[str, torch.Tensor]]:
    """This data-parallel rank's micro-batches of the global batch that starts at ``consumed_samples``.

    Packed rows carry ``document_ids``; with ``eod_documents`` (the EOD id) GPTDataset rows get them
    too, a new document after each EOD, so attention stays within documents
    (``--reset-attention-mask``).
    """
    per_rank = global_batch_size // dp_size
    start = consumed_samples + dp_rank * per_rank
    batches = []
    for first in range(start, start + per_rank, micro_batch_size):
        samples = [dataset[(first + k) % len(dataset)] for k in range(micro_batch_size)]
        batch = {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in KEYS if key in samples[0]}
        if eod_documents is not None and "document_ids" not in batch:
            batch["document_ids"] = documents_after_eod(batch["tokens"], eod_documents)
        batches.append(batch)
    return batches
