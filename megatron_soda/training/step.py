"""One forward/backward over a global batch through megatron-core's pipeline schedules.

The schedule (no pipelining, 1F1B, or interleaved 1F1B) comes from ``get_forward_backward_func`` and
the parallel layout; this module supplies the forward step: the model is called with
``labels=None``, so the last stage returns vocab-parallel logits ``[b, s, v/tp]``, and the loss is
``loss.lm_loss`` (cross-entropy + z-loss over the loss-masked positions, per-modality metrics) as
``LossSettings`` says. megatron divides each micro-batch's loss by the number of micro-batches and
DDP averages over data-parallel ranks, so the gradient is that of the mean of the micro-batch means.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, Iterator, List, Optional

import torch

from megatron_soda.training.loss import METRIC_KEYS, LossSettings, loss_for_settings


def _loss(settings: LossSettings, labels: torch.Tensor, loss_mask: torch.Tensor, logits: torch.Tensor):
    return loss_for_settings(settings, logits, labels, loss_mask)


def _forward_step(settings: LossSettings, data_iterator: Iterator[Dict[str, torch.Tensor]], model):
    batch = next(data_iterator)
    logits = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=None)
    return logits, partial(_loss, settings, batch["labels"], batch["loss_mask"])


def forward_backward(
    model_chunks: List[torch.nn.Module],
    batches: List[Dict[str, torch.Tensor]],
    *,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
    loss: Optional[LossSettings] = None,
) -> List[Dict[str, float]]:
    """Runs every micro-batch of ``batches`` through the schedule; returns their metrics (last stage only).

    Every rank passes the same list of micro-batches; stages read what they need from it. Each result
    is ``lm_loss``'s metrics as floats (``lm loss``, ``z loss``, ``audio loss``, ``text loss``,
    ``audio tokens``, ``text tokens``); ranks off the last pipeline stage get an empty list.
    ``loss`` defaults to ``LossSettings()``: plain cross-entropy, no z-loss, every label text.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    settings = loss if loss is not None else LossSettings()
    iterators = [iter(batches) for _ in model_chunks]
    results = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, settings),
        data_iterator=iterators if len(model_chunks) > 1 else iterators[0],
        model=model_chunks if len(model_chunks) > 1 else model_chunks[0],
        num_microbatches=len(batches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    if not results:
        return []
    # One host transfer for all of them (each float() of a device scalar would synchronize).
    values = torch.stack([torch.stack([r[key].float() for key in METRIC_KEYS]) for r in results]).tolist()
    return [dict(zip(METRIC_KEYS, row)) for row in values]
