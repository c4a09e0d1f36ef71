"""Global batches for pretraining: a pure function of the number of samples consumed so far.

Global batch ``i`` is samples ``[c, c + G)`` of the (already shuffled) blended GPTDataset, where
``c`` is the number of samples consumed before it; data-parallel rank ``r`` takes the ``r``-th
contiguous slice of ``G / DP`` and cuts it into micro-batches. So resuming needs only ``c``, no
seek and no iterator state, and the order is the same for any TP/PP layout.

``Prefetcher`` reads the next global batch in background threads (``--num-workers``) while the
current one trains; what it returns is exactly what ``micro_batches`` returns.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Tuple

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
    executor: Optional[ThreadPoolExecutor] = None,
) -> List[Dict[str, torch.Tensor]]:
    """This data-parallel rank's micro-batches of the global batch that starts at ``consumed_samples``.

    Packed rows carry ``document_ids``; with ``eod_documents`` (the EOD id) GPTDataset rows get them
    too, a new document after each EOD, so attention stays within documents
    (``--reset-attention-mask``). ``executor`` reads the samples in its threads.
    """
    per_rank = global_batch_size // dp_size
    start = consumed_samples + dp_rank * per_rank
    read = executor.map if executor is not None else map
    samples_of_rank = list(read(lambda index: dataset[index % len(dataset)], range(start, start + per_rank)))
    batches = []
    for offset in range(0, per_rank, micro_batch_size):
        samples = samples_of_rank[offset : offset + micro_batch_size]
        batch = {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in KEYS if key in samples[0]}
        if eod_documents is not None and "document_ids" not in batch:
            batch["document_ids"] = documents_after_eod(batch["tokens"], eod_documents)
        batches.append(batch)
    return batches


class Prefetcher:
    """``read(first_sample)`` for the next step, started in the background while this step trains.

    ``get(first, following)`` returns ``read(first)`` (from the prefetch when it was for ``first``)
    and starts reading ``following`` (None: nothing more). With ``workers`` 0 it reads in the caller.
    """

    def __init__(self, read: Callable[[int, Optional[ThreadPoolExecutor]], object], workers: int):
        self.read = read
        self.samples = ThreadPoolExecutor(workers, thread_name_prefix="samples") if workers > 0 else None
        self.step = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if workers > 0 else None
        self.pending: Optional[Tuple[int, Future]] = None

    def get(self, first: int, following: Optional[int]):
        if self.pending is not None and self.pending[0] == first:
            batches = self.pending[1].result()
        else:
            batches = self.read(first, self.samples)
        self.pending = None
        if self.step is not None and following is not None:
            self.pending = (following, self.step.submit(self.read, following, self.samples))
        return batches

    def close(self) -> None:
        for pool in (self.step, self.samples):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
