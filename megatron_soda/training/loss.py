"""SODA's training loss on vocab-parallel logits: cross-entropy plus z-loss, with per-modality metrics.

For every position with a target (``loss_mask`` > 0)::

    lse    = log sum_v exp(logits_v)             over the whole (padded) vocabulary, across TP ranks
    ce     = lse - logits[label]
    loss   = (sum(ce) + z_loss_weight * sum(lse ** 2)) / N    sums over the loss-masked positions

where N is the number of loss tokens of the whole *global batch*: every micro-batch, every
data-parallel rank. This is Levanter's ``logsumexp_weight`` z-loss (docs/recipe.md: weight 1e-4), normalized
like the cross-entropy, and Megatron-LM's ``--calculate-per-token-loss``: every loss token weighs the
same however the global batch is split into micro-batches and ranks, and whatever the other rows'
masks (padded packed rows, EOD-masked tokens). ``loss_mask`` is megatron's 0/1 float mask; its values
multiply the per-position terms, but N counts them rounded to an integer (megatron's token counter is
an int), so only 0/1 masks give an exact mean.

**How N gets there: megatron-core's per-token mechanism.** ``lm_loss`` returns megatron's 3-tuple
``(loss_sum, num_tokens, metrics)`` for one micro-batch. With ``TransformerConfig.calculate_per_token_loss``
(``models/gpt.py`` sets it) megatron's schedule backpropagates ``loss_sum`` as it is (no division by the
micro-batch's tokens or by the number of micro-batches), adds up ``num_tokens`` over the micro-batches on
the last pipeline stage, and hands that count to ``finalize_model_grads`` (``config.finalize_model_grads_func``),
which broadcasts it over the pipeline group, all-reduces it over the data-parallel group and scales the
gradients by 1/N; DDP, built with the same config, sums gradients over data-parallel ranks instead of
averaging them. The logged losses follow the same rule: ``combine_metrics`` weighs each micro-batch by
its loss tokens across micro-batches and ranks.

**One pass, megatron's arithmetic.** The cross-entropy is megatron-core's vocab-parallel
cross-entropy, built from the very pieces ``tensor_parallel.vocab_parallel_cross_entropy`` uses
(``VocabParallelCrossEntropy``: max all-reduced over the TP group, shifted exp, sum-exp all-reduced,
softmax kept for backward); the values are identical (tests compare with it). The z-loss needs
exactly the ``lse`` that computation already has (``log(sum_exp) + max``), and its gradient is
``2 * w * lse * softmax``, the softmax it already keeps, so both come out of one autograd function.
Calling ``vocab_parallel_cross_entropy`` and a separate logsumexp instead would keep a second fp32
``[b, s, v/tp]`` tensor alive until backward (the largest activation of the step at SODA's vocabulary
of 144,644 ids), and with fp32 logits megatron's function overwrites its input in place, so a separate
z-loss would silently depend on running first. As in megatron, fp32 ``logits`` passed here are
overwritten (with the softmax); bf16/fp16 logits are converted to a new fp32 tensor and left alone.

**Layout.** Any ``[..., v/tp]`` logits with ``labels`` and ``loss_mask`` of the leading shape ``[...]``.
megatron-core 0.16's ``GPTModel.forward`` with ``labels=None`` returns ``[b, s, v/tp]`` (``_postprocess``
transposes the output layer's ``[s, b, v/tp]``: "[s b h] => [b s h]"), matching the dataset's ``[b, s]``
labels and mask. Without ``parallel_output=True`` the logits would be gathered to the full vocabulary;
our models keep them parallel.

**Per-modality losses.** A position counts as *audio* when its label is an audio token
(``audio_offset <= label < vocab_size``, ``VocabLayout.is_audio``) and as *text* otherwise: base text
tokens, the four SODA specials (``<|text_start|>`` ... ``<|audio_end|>``, which mark modality
switches and so belong to neither stream's content), and any label outside the real vocabulary
(none should carry loss: pad labels lie in the padding range and are loss-masked). Without a layout
(``audio_offset=None``) every position is text.

**Padding rows of the vocabulary** (ids ``vocab_size .. padded - 1``, present so the vocabulary splits
over TP ranks) are *not* masked by default: megatron never masks them either. They are never targets, so the
cross-entropy
gradient only pushes their logits down and their share of the probability mass becomes negligible
early in training. Converting to Hugging Face drops those rows; the converted model's log-probs then
differ from ours by ``-log(1 - P_pad)``, i.e. are consistent exactly as far as the padded rows never
take mass (a converted model should be checked on logits). ``mask_padded_vocab=True`` instead sets those
logits to -inf before the softmax (they then get neither mass nor gradient), making training's softmax
exactly the unpadded one; it is an option, off by default, to stay megatron's behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.distributed as dist

from megatron_soda.device import device_info
from megatron_soda.tokenizer.layout import VocabLayout

METRIC_KEYS = ("lm loss", "z loss", "audio loss", "text loss", "audio tokens", "text tokens")


@dataclass(frozen=True)
class LossSettings:
    """How the training loss is formed (``forward_backward``'s ``loss`` argument)."""

    z_loss_weight: float = 0.0
    """Weight of the per-token mean of logsumexp^2; SODA trained with 1e-4 (0 leaves plain cross-entropy)."""
    layout: Optional[VocabLayout] = None
    """Vocabulary layout for the audio/text split of the metrics; None counts every label as text."""
    mask_padded_vocab: bool = False
    """Give the vocabulary's padding rows -inf logits (needs ``layout``); off: megatron's behaviour."""

    def __post_init__(self):
        if self.z_loss_weight < 0:
            raise ValueError(f"z-loss weight must be >= 0, got {self.z_loss_weight}")
        if self.mask_padded_vocab and self.layout is None:
            raise ValueError("masking the padded vocabulary needs the vocabulary layout (its real size)")


def _default_tp_group():
    """megatron's tensor-parallel group when model parallelism is initialized, else None (one process)."""
    from megatron.core import parallel_state

    if dist.is_available() and dist.is_initialized() and parallel_state.model_parallel_is_initialized():
        return parallel_state.get_tensor_model_parallel_group()
    return None


class _CrossEntropyAndLogSumExp(torch.autograd.Function):
    """Vocab-parallel (cross-entropy, logsumexp) per position, sharing one softmax for backward."""

    @staticmethod
    def forward(ctx, logits, target, group, mask_from):
        from megatron.core.tensor_parallel.cross_entropy import VocabParallelCrossEntropy
        from megatron.core.tensor_parallel.utils import VocabUtility

        world = dist.get_world_size(group) if group is not None else 1
        rank = dist.get_rank(group) if group is not None else 0
        partition = logits.size(-1)
        start, end = VocabUtility.vocab_range_from_per_partition_vocab_size(partition, rank, world)

        logits = logits.float().contiguous()  # the same tensor when fp32 (overwritten below, as in megatron)
        if mask_from is not None and mask_from < end:
            logits[..., max(mask_from - start, 0) :] = float("-inf")
        # calculate_logits_max does .float() and max; with the masking above done first.
        logits, logits_max = VocabParallelCrossEntropy.calculate_logits_max(logits)
        if world > 1:
            dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        target_mask, masked_target_1d, predicted, sum_exp, exp_logits = (
            VocabParallelCrossEntropy.calculate_predicted_logits(logits, target, logits_max, start, end)
        )
        if world > 1:
            dist.all_reduce(predicted, op=dist.ReduceOp.SUM, group=group)
            dist.all_reduce(sum_exp, op=dist.ReduceOp.SUM, group=group)
        lse = torch.log(sum_exp) + logits_max
        softmax, ce = VocabParallelCrossEntropy.calculate_cross_entropy_loss(exp_logits, predicted, sum_exp)
        ctx.save_for_backward(softmax, target_mask, masked_target_1d)
        return ce, lse

    @staticmethod
    def backward(ctx, grad_ce, grad_lse):
        # d ce / d logits = softmax - onehot(target);  d lse / d logits = softmax.
        from megatron.core.tensor_parallel.cross_entropy import VocabParallelCrossEntropy

        softmax, target_mask, masked_target_1d = ctx.saved_tensors
        grad_2d, arange_1d, softmax_update, grad_input = (
            VocabParallelCrossEntropy.prepare_gradient_calculation_operands(softmax, target_mask)
        )
        grad_input.mul_((grad_ce + grad_lse).unsqueeze(-1))
        grad_2d[arange_1d, masked_target_1d] -= softmax_update * grad_ce.reshape(-1)
        return grad_input, None, None, None


def cross_entropy_and_logsumexp(
    logits: torch.Tensor, labels: torch.Tensor, *, tp_group=None, mask_from: Optional[int] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy and logsumexp (fp32, shape of ``labels``) of vocab-parallel logits.

    ``tp_group`` defaults to megatron's tensor-parallel group (no collectives without one).
    ``mask_from``: vocabulary ids from here on get -inf logits. Overwrites fp32 ``logits``.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {list(logits.shape)} and labels {list(labels.shape)} disagree: "
            "expected logits [..., vocab/tp] over labels [...]"
        )
    group = _default_tp_group() if tp_group is None else tp_group
    return _CrossEntropyAndLogSumExp.apply(logits, labels, group, mask_from)


def lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    z_loss_weight: float = 0.0,
    audio_offset: Optional[int] = None,
    vocab_size: Optional[int] = None,
    *,
    mask_padded_vocab: bool = False,
    tp_group=None,
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """SODA's loss for one micro-batch as megatron's per-token ``loss_func``: ``(loss_sum, num_tokens, metrics)``.

    ``logits`` ``[..., v/tp]`` (the model's vocab-parallel output; ``[b, s, v/tp]`` from GPTModel with
    ``labels=None``), ``labels`` and ``loss_mask`` ``[...]``. ``audio_offset``/``vocab_size``: the
    layout's first audio id and real vocabulary size (``VocabLayout.audio_offset``/``vocab_size``).

    ``loss_sum`` (fp32 scalar, with grad) = sum over the loss-masked positions of cross-entropy +
    ``z_loss_weight`` * logsumexp^2, *not* divided by anything: the division by the global batch's loss
    tokens happens in megatron (module docstring). ``num_tokens`` (int32 scalar) = the loss mask's sum,
    the count megatron adds up over micro-batches and ranks. A micro-batch without loss tokens gives
    ``(0, 0, ...)``, no NaN.

    ``metrics`` holds detached fp32 scalars for this micro-batch alone: ``lm loss`` (its per-token mean
    cross-entropy), ``z loss`` (its per-token mean of the weighted term), ``audio loss``/``text loss``
    (mean cross-entropy over positions whose label is audio / not audio) and ``audio tokens``/``text
    tokens`` (their loss-mask weight; the two add up to the micro-batch's loss tokens). Means over no
    tokens are 0. ``combine_metrics`` turns them into the global batch's per-token means.
    """
    if loss_mask.shape != labels.shape:
        raise ValueError(f"loss_mask {list(loss_mask.shape)} and labels {list(labels.shape)} disagree")
    if mask_padded_vocab and vocab_size is None:
        raise ValueError("mask_padded_vocab needs vocab_size")
    ce, lse = cross_entropy_and_logsumexp(
        logits, labels, tp_group=tp_group, mask_from=vocab_size if mask_padded_vocab else None
    )
    mask = loss_mask.float()
    selected = mask > 0
    # where, not a product: a masked position may hold an infinite ce (a pad label with masked rows).
    ce = torch.where(selected, ce, 0.0)
    ce_sum = (ce * mask).sum()
    loss_sum = ce_sum
    z_sum = torch.zeros((), device=ce.device)
    if z_loss_weight:
        z_sum = z_loss_weight * (torch.where(selected, lse, 0.0).square() * mask).sum()
        loss_sum = loss_sum + z_sum
    with torch.no_grad():
        count = mask.sum()
        # megatron accumulates the count in a torch.int tensor (schedules.forward_backward_*): int32 here too.
        num_tokens = count.round().to(torch.int)
        denominator = torch.where(count > 0, count, 1.0)
        if audio_offset is None:
            is_audio = torch.zeros_like(selected)
        else:
            is_audio = labels >= audio_offset
            if vocab_size is not None:
                is_audio &= labels < vocab_size
        audio_weight = mask * is_audio
        text_weight = mask - audio_weight
        audio_tokens, text_tokens = audio_weight.sum(), text_weight.sum()
        # New tensors, none sharing storage with loss_sum: a schedule without per-token loss divides the
        # returned loss in place, which must not reach the metrics.
        metrics = {
            "lm loss": ce_sum.detach() / denominator,
            "z loss": z_sum.detach() / denominator,
            "audio loss": (ce * audio_weight).sum() / audio_tokens.clamp(min=1),
            "text loss": (ce * text_weight).sum() / text_tokens.clamp(min=1),
            "audio tokens": audio_tokens,
            "text tokens": text_tokens,
        }
    return loss_sum, num_tokens, metrics


def loss_for_settings(settings: LossSettings, logits, labels, loss_mask):
    """``lm_loss`` with the z-loss weight, layout and padding choice of ``settings``."""
    layout = settings.layout
    return lm_loss(
        logits,
        labels,
        loss_mask,
        settings.z_loss_weight,
        audio_offset=layout.audio_offset if layout else None,
        vocab_size=layout.vocab_size if layout else None,
        mask_padded_vocab=settings.mask_padded_vocab,
    )


def combine_metrics(per_microbatch: Iterable[Dict[str, float]], group=None) -> Dict[str, float]:
    """One step's metrics from its micro-batches (and data-parallel ranks, over ``group`` if given).

    Every value is a per-token mean over the whole global batch: ``lm loss`` and ``z loss`` are the sums
    of their token terms over every micro-batch and rank divided by the loss tokens of all of them (a
    micro-batch's loss tokens are its ``audio tokens`` + ``text tokens``), exactly the objective megatron
    differentiates; ``audio loss``/``text loss`` the same over their own tokens; token counts are summed.
    Micro-batches without loss tokens (eval padding) count for nothing. Every rank of ``group`` must call this.
    """
    rows = list(per_microbatch)
    totals = torch.zeros(6, dtype=torch.float64)
    for row in rows:
        tokens = row["audio tokens"] + row["text tokens"]
        totals += torch.tensor(
            [
                row["lm loss"] * tokens,
                row["z loss"] * tokens,
                row["audio loss"] * row["audio tokens"],
                row["text loss"] * row["text tokens"],
                row["audio tokens"],
                row["text tokens"],
            ],
            dtype=torch.float64,
        )
    if group is not None and dist.get_world_size(group) > 1:
        # On the group's device: NCCL reduces CUDA tensors only (cpu_compat makes this the CPU on CPU).
        both = totals.to(device_info().current())
        dist.all_reduce(both, group=group)
        totals = both.cpu()
    audio_tokens, text_tokens = totals[4].item(), totals[5].item()
    tokens = max(audio_tokens + text_tokens, 1.0)
    return {
        "lm loss": totals[0].item() / tokens,
        "z loss": totals[1].item() / tokens,
        "audio loss": totals[2].item() / max(audio_tokens, 1.0),
        "text loss": totals[3].item() / max(text_tokens, 1.0),
        "audio tokens": audio_tokens,
        "text tokens": text_tokens,
    }
