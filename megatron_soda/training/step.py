"""One forward/backward over a global batch through megatron-core's pipeline schedules.

The schedule (no pipelining, 1F1B, or interleaved 1F1B) comes from ``get_forward_backward_func`` and
the parallel layout; this module supplies the forward step: the model is called with
``labels=None``, so the last stage returns vocab-parallel logits ``[b, s, v/tp]``, and the loss is
``loss.lm_loss`` (cross-entropy + z-loss over the loss-masked positions, per-modality metrics) as
``LossSettings`` says. megatron divides each micro-batch's loss by the number of micro-batches and
DDP averages over data-parallel ranks, so the gradient is that of the mean of the micro-batch means.

Micro-batches with ``document_ids`` (packed rows, or rows split at EODs) go to the model in megatron's
packed ``thd`` format: the ``b`` rows flattened into one sequence of ``b * s`` tokens with
``cu_seqlens`` at every document and row start, so attention stays within documents and RoPE
restarts per document. The loss is unchanged: the mean over the same masked positions.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Dict, Iterator, List, Optional

import torch

from megatron_soda.training.loss import METRIC_KEYS, LossSettings, loss_for_settings


def _loss(settings: LossSettings, labels: torch.Tensor, loss_mask: torch.Tensor, logits: torch.Tensor):
    return loss_for_settings(settings, logits, labels, loss_mask)


def packed_micro_batch(batch: Dict[str, torch.Tensor]) -> Dict[str, object]:
    """``batch`` in megatron's ``thd`` format: rows flattened to ``[1, b * s]`` plus ``PackedSeqParams``."""
    from megatron.core.packed_seq_params import PackedSeqParams

    documents = batch["document_ids"]
    rows, seq = documents.shape
    flat = documents.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::seq] = True
    cu_seqlens = torch.cat([torch.nonzero(starts).flatten(), torch.tensor([rows * seq], device=documents.device)]).to(torch.int32)
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    out = {key: batch[key].reshape(1, rows * seq) for key in ("tokens", "labels", "loss_mask", "position_ids")}
    out["packed_seq_params"] = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                                               max_seqlen_q=max_seqlen, max_seqlen_kv=max_seqlen)
    return out


def _to_device(batch: Dict[str, object]) -> Dict[str, object]:
    if not torch.cuda.is_available():
        return batch
    device = torch.cuda.current_device()
    out = {key: value.to(device, non_blocking=True) for key, value in batch.items() if torch.is_tensor(value)}
    params = batch.get("packed_seq_params")
    if params is not None:
        cu_seqlens = params.cu_seqlens_q.to(device, non_blocking=True)
        out["packed_seq_params"] = dataclasses.replace(params, cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens)
    return out


def _forward_step(settings: LossSettings, data_iterator: Iterator[Dict[str, object]], model):
    batch = _to_device(next(data_iterator))
    logits = model(batch["tokens"], batch["position_ids"], None, labels=None,
                   packed_seq_params=batch.get("packed_seq_params"))
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
    if batches and "document_ids" in batches[0]:
        batches = [packed_micro_batch(batch) for batch in batches]
        seq_length, micro_batch_size = seq_length * micro_batch_size, 1
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
