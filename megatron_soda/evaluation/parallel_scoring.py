"""Likelihood scoring at the training layout (TP/PP/DP, interleaved or not), forward only.

The same scores as ``scoring.mean_log_probs`` on a TP=1 model, computed by the model chunks a training
run holds: items are right-padded to the run's sequence length, split over data-parallel ranks, and
run through megatron-core's pipeline schedule; the last stage turns its vocab-parallel logits into each
target's log-probability over the true vocabulary (``training.loss.cross_entropy_and_logsumexp`` with
the padding rows masked), and every rank gets every item's mean.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, List, Sequence

import numpy as np
import torch

from megatron_soda.evaluation.scoring import ScoringItem


def _micro_batches(items: Sequence[ScoringItem], indices: List[int], seq_length: int, size: int, pad_id: int):
    """Right-padded micro-batches ``{tokens, labels, position_ids, targets, index}`` of ``items[indices]``;
    index -1 marks a filler row."""
    batches = []
    for start in range(0, len(indices), size):
        chunk = indices[start : start + size] + [-1] * (size - len(indices[start : start + size]))
        tokens = torch.full((size, seq_length + 1), pad_id, dtype=torch.long)
        targets = torch.zeros(size, seq_length)
        for row, index in enumerate(chunk):
            if index < 0:
                continue
            ids = items[index].ids
            tokens[row, : len(ids)] = torch.as_tensor(ids)
            targets[row, torch.as_tensor(items[index].targets) - 1] = 1.0  # label t-1 is token t
        batches.append(
            {
                "tokens": tokens[:, :-1],
                "labels": tokens[:, 1:],
                "position_ids": torch.arange(seq_length).expand(size, -1),
                "targets": targets,
                "index": torch.tensor(chunk),
            }
        )
    return batches


def _sums(vocab_size: int, batch: Dict[str, torch.Tensor], logits: torch.Tensor):
    from megatron_soda.training.loss import cross_entropy_and_logsumexp

    nll, _ = cross_entropy_and_logsumexp(logits.float(), batch["labels"], mask_from=vocab_size)
    targets = batch["targets"].to(nll.device)
    sums = -(nll * targets).sum(-1).double()
    zero = logits.new_zeros((), requires_grad=False).float()
    return zero, torch.tensor(1, dtype=torch.int, device=nll.device), {"sums": sums, "index": batch["index"]}


def _forward_step(vocab_size: int, data_iterator, model):
    from megatron_soda.training.step import _to_device

    batch = _to_device(next(data_iterator))
    logits = model(batch["tokens"], batch["position_ids"], None, labels=None)
    return logits, partial(_sums, vocab_size, batch)


@torch.no_grad()
def parallel_mean_log_probs(
    model_chunks: List[torch.nn.Module],
    items: Sequence[ScoringItem],
    *,
    seq_length: int,
    micro_batch_size: int,
    vocab_size: int,
    pad_id: int,
) -> np.ndarray:
    """Every item's mean target log-probability, on every rank (collective over the whole world).

    Items longer than ``seq_length`` cannot run at this layout: a ValueError names the first.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for number, item in enumerate(items):
        if len(item.ids) > seq_length:
            raise ValueError(f"item {number} has {len(item.ids)} tokens, more than --seq-length {seq_length}")
    dp, rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    pipeline = parallel_state.get_pipeline_model_parallel_world_size()
    # Every data-parallel rank runs as many micro-batches (a multiple of the pipeline size, as the
    # interleaved schedule wants); the fillers carry index -1.
    per_rank = -(-len(items) // dp)
    count = max(1, -(-per_rank // micro_batch_size))
    count = -(-count // pipeline) * pipeline
    mine = list(range(rank, len(items), dp))
    batches = _micro_batches(items, mine, seq_length, micro_batch_size, pad_id)
    while len(batches) < count:
        batches += _micro_batches(items, [-1] * micro_batch_size, seq_length, micro_batch_size, pad_id)
    for chunk in model_chunks:
        chunk.eval()
    iterators = [iter(batches) for _ in model_chunks]
    results = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, vocab_size),
        data_iterator=iterators if len(model_chunks) > 1 else iterators[0],
        model=model_chunks if len(model_chunks) > 1 else model_chunks[0],
        num_microbatches=len(batches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=True,
    )
    for chunk in model_chunks:
        chunk.train()
    sums = np.zeros(len(items))
    for result in results or []:
        for index, value in zip(result["index"].tolist(), result["sums"].tolist()):
            if index >= 0:
                sums[index] = value
    # Last stage -> the pipeline group; data-parallel shares -> everyone (sums of disjoint rows).
    totals = torch.tensor(sums if parallel_state.is_pipeline_last_stage(ignore_virtual=True) else 0 * sums)
    totals = totals.to(next(model_chunks[0].parameters()).device)
    dist.all_reduce(totals, group=parallel_state.get_pipeline_model_parallel_group())
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    counts = np.array([len(item.targets) for item in items], dtype=np.float64)
    return totals.cpu().numpy() / counts
