"""One forward/backward over a global batch through megatron-core's pipeline schedules.

The schedule (no pipelining, 1F1B, or interleaved 1F1B) comes from ``get_forward_backward_func`` and
the parallel layout; this module supplies the forward step: the model is called with
``labels=None``, so the last stage returns vocab-parallel logits ``[b, s, v/tp]``, and the loss is
``loss.lm_loss`` (cross-entropy + z-loss over the loss-masked positions, per-modality metrics) as
``LossSettings`` says.

**Per-token loss over the global batch.** The objective is the sum over every loss token of the
global batch (all micro-batches, all data-parallel ranks) of cross-entropy + z-loss, divided by the
number of those tokens: each token weighs the same whatever the micro-batch split, the data-parallel
size or the other rows' loss masks. This is megatron-core's own mechanism (Megatron-LM's
``--calculate-per-token-loss``), which needs ``TransformerConfig.calculate_per_token_loss`` (set by
``models.gpt.transformer_config``; checked here): ``lm_loss`` returns ``(loss_sum, num_tokens, metrics)``,
the schedule backpropagates each micro-batch's sum undivided and counts the tokens on the last stage,
and ``config.finalize_model_grads_func`` (megatron's ``finalize_model_grads``, which the trainer sets)
broadcasts the count over the pipeline group, all-reduces it over the data-parallel group and scales
the gradients by 1/count, after DDP has *summed* them over data-parallel ranks (DDP built from a
config with ``calculate_per_token_loss`` does not average). Without a ``finalize_model_grads_func``
(a bare module in a test) the gradients stay those of the token sum. The logged losses are the same
per-token means (``loss.combine_metrics``), in training and in forward-only evaluation, where
padded samples with an all-zero loss mask count for nothing.

Micro-batches with ``document_ids`` (packed rows, or rows split at EODs) go to the model in megatron's
packed ``thd`` format: the ``b`` rows flattened into one sequence of ``b * s`` tokens with
``cu_seqlens`` at every document and row start, so attention stays within documents and RoPE
restarts per document. The loss is unchanged: the same sum over the same masked positions.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Dict, Iterator, List, Optional

import torch

from megatron_soda.device import device_info
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
    cu_seqlens = torch.cat([torch.nonzero(starts).flatten(), torch.tensor([rows * seq], device=documents.device)]).to(
        torch.int32
    )
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    out = {key: batch[key].reshape(1, rows * seq) for key in ("tokens", "labels", "loss_mask", "position_ids")}
    out["packed_seq_params"] = PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_kv=cu_seqlens,
        max_seqlen_q=max_seqlen,
        max_seqlen_kv=max_seqlen,
    )
    return out


def _to_device(batch: Dict[str, object]) -> Dict[str, object]:
    if not device_info().cuda:
        return batch
    device = device_info().current()
    out = {key: value.to(device, non_blocking=True) for key, value in batch.items() if torch.is_tensor(value)}
    params = batch.get("packed_seq_params")
    if params is not None:
        cu_seqlens = params.cu_seqlens_q.to(device, non_blocking=True)
        out["packed_seq_params"] = dataclasses.replace(params, cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens)
    return out


def _forward_step(settings: LossSettings, data_iterator: Iterator[Dict[str, object]], model):
    batch = _to_device(next(data_iterator))
    logits = model(
        batch["tokens"], batch["position_ids"], None, labels=None, packed_seq_params=batch.get("packed_seq_params")
    )
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
    is ``lm_loss``'s metrics of one micro-batch as floats (``lm loss``, ``z loss``, ``audio loss``,
    ``text loss``: that micro-batch's per-token means; ``audio tokens``, ``text tokens``: its loss
    tokens); ranks off the last pipeline stage get an empty list. ``loss.combine_metrics`` makes the
    global batch's per-token means of them. The gradients (unless ``forward_only``) are those of the
    global batch's per-token mean loss once megatron's ``finalize_model_grads`` ran (module docstring).
    ``loss`` defaults to ``LossSettings()``: plain cross-entropy, no z-loss, every label text.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import get_model_config

    if not getattr(get_model_config(model_chunks[0]), "calculate_per_token_loss", False):
        raise ValueError(
            "forward_backward needs TransformerConfig.calculate_per_token_loss=True (models.gpt."
            "transformer_config sets it, before DDP is built): without it megatron divides each "
            "micro-batch's loss by its tokens and by the number of micro-batches, and DDP averages "
            "over data-parallel ranks, which weighs tokens unevenly"
        )
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
