"""One forward/backward over a global batch through megatron-core's pipeline schedules.

The schedule (no pipelining, 1F1B, or interleaved 1F1B) comes from ``get_forward_backward_func`` and
the parallel layout; this module supplies the forward step and the loss: mean cross-entropy over the
tokens whose ``loss_mask`` is set.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, Iterator, List

import torch


def _loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    mask = loss_mask.reshape(-1).float()
    loss = (per_token_loss.reshape(-1).float() * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"lm loss": loss.detach()}


def _forward_step(data_iterator: Iterator[Dict[str, torch.Tensor]], model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=batch["labels"])
    return output, partial(_loss, batch["loss_mask"])


def forward_backward(
    model_chunks: List[torch.nn.Module],
    batches: List[Dict[str, torch.Tensor]],
    *,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
) -> List[float]:
    """Runs every micro-batch of ``batches`` through the schedule; returns their losses (last stage only).

    Every rank passes the same list of micro-batches; stages read what they need from it.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    iterators = [iter(batches) for _ in model_chunks]
    results = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=iterators if len(model_chunks) > 1 else iterators[0],
        model=model_chunks if len(model_chunks) > 1 else model_chunks[0],
        num_microbatches=len(batches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    return [float(r["lm loss"]) for r in results]
