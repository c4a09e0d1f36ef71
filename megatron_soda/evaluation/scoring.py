"""Log-likelihood scoring as SODA's evaluation scripts do it, batched, on either model form.

An item is ``<|begin_of_text|>`` + one segment, ``<|audio_start|>A<|audio_end|>`` or
``<|text_start|>T<|text_end|>``; its score is the **mean** log-probability of the content tokens given
what precedes them (markers excluded). The codebook option scores only the audio tokens of chosen
codebooks, selected by position modulo K in the frame-major stream (SODA's public script reshapes the
frame-major tokens as if codebook-major before selecting, which mixes codebooks; this is the intended
selection). Log-probabilities are over the true vocabulary: the padding rows of our output layer are
left out of the softmax, so a checkpoint and its Hugging Face export (which has no such rows) score
alike.

Items are sorted by length and batched under a token budget and a padding bound, right-padded: in a
causal model padding after a sequence cannot change its scores (fp32 rounding of another batch shape
apart).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from megatron_soda.data.formats import Document, Kind, Segment, render
from megatron_soda.tokenizer.layout import VocabLayout


@dataclass(frozen=True)
class ScoringItem:
    """A sequence and which of its positions count."""

    ids: np.ndarray
    targets: np.ndarray
    """positions (>= 1) whose token's log-probability, given the tokens before it, is averaged."""


def likelihood_item(
    kind: Kind, content_ids, layout: VocabLayout, codebooks: Optional[Sequence[int]] = None
) -> ScoringItem:
    """SODA's scoring prompt for one text or audio segment; ``codebooks`` keeps only those codebooks'
    audio positions (e.g. ``[0]``: the semantic codebook alone)."""
    if kind not in (Kind.TEXT, Kind.AUDIO):
        raise ValueError(f"likelihood items are text or audio segments, not {kind}")
    content = np.asarray(content_ids, dtype=np.int64)
    ids = render(Document([Segment(kind, content)], bos=True, eos=False), layout).ids
    targets = np.arange(2, 2 + len(content))
    if codebooks is not None:
        if kind is not Kind.AUDIO:
            raise ValueError("a codebook subset applies to audio items only")
        bad = [k for k in codebooks if not 0 <= k < layout.num_codebooks]
        if bad or not len(codebooks):
            raise ValueError(f"codebooks must be a non-empty subset of 0..{layout.num_codebooks - 1}, got {codebooks}")
        targets = targets[np.isin((targets - 2) % layout.num_codebooks, list(codebooks))]
    if len(targets) == 0:
        raise ValueError("the item has no tokens to score")
    return ScoringItem(ids, targets)


class Scorer(abc.ABC):
    """Per-token log-probabilities of whole sequences from one model form."""

    def __init__(self, vocab_size: int, device):
        self.vocab_size = vocab_size
        self.device = device

    @abc.abstractmethod
    def logits(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[b, L]`` right-padded to ``lengths`` -> logits ``[b, L, >= vocab_size]``."""

    @torch.no_grad()
    def token_log_probs(self, sequences: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Per sequence of n ids, the n - 1 log-probabilities of ids[1:] given their prefixes (float64)."""
        lengths = torch.tensor([len(s) for s in sequences])
        tokens = torch.zeros(len(sequences), int(lengths.max()), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            tokens[row, : len(sequence)] = torch.as_tensor(np.asarray(sequence, dtype=np.int64))
        tokens = tokens.to(self.device)
        logits = self.logits(tokens, lengths.to(self.device))
        picked = []
        for row, length in enumerate(lengths.tolist()):  # one row at a time: [L, V] in fp32, not [b, L, V]
            log_probs = torch.log_softmax(logits[row, : length - 1, : self.vocab_size].float(), dim=-1)
            picked.append(log_probs.gather(-1, tokens[row, 1:length, None])[:, 0])
        flat = torch.cat(picked).double().cpu().numpy()  # one transfer for the batch
        return np.split(flat, np.cumsum([length - 1 for length in lengths.tolist()])[:-1])


class MegatronScorer(Scorer):
    """Our megatron-core ``GPTModel`` (TP=1, PP=1): a plain causal forward, all positions' logits."""

    def __init__(self, model, vocab_size: int):
        super().__init__(vocab_size, next(model.parameters()).device)
        self.model = model.eval()

    def logits(self, tokens, lengths):
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        return self.model(tokens, positions, None, runtime_gather_output=True)


class HFScorer(Scorer):
    """A transformers causal LM (a Hugging Face export)."""

    def __init__(self, model):
        super().__init__(model.config.vocab_size, next(model.parameters()).device)
        self.model = model.eval()

    def logits(self, tokens, lengths):
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        return self.model(input_ids=tokens, attention_mask=mask.long()).logits


MAX_PADDING = 0.25
"""A batch takes no item that would make its padding more than this share of its real tokens: on a device
that is busy anyway (a CPU, a big batch) padded tokens cost as much as real ones."""


def batches_by_tokens(lengths: Sequence[int], max_tokens: int, max_padding: float = MAX_PADDING) -> List[List[int]]:
    """Item indices grouped by length (sorted): each group's padded size ``len(group) * longest`` within
    ``max_tokens`` (an item longer than that goes alone) and its padding within ``max_padding`` of its
    real tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups, current, real = [], [], 0
    for index in order:
        padded = (len(current) + 1) * lengths[index]
        if current and (padded > max_tokens or padded > (1 + max_padding) * (real + lengths[index])):
            groups.append(current)
            current, real = [], 0
        current.append(index)
        real += lengths[index]
    if current:
        groups.append(current)
    return groups


def mean_log_probs(
    scorer: Scorer,
    items: Sequence[ScoringItem],
    max_tokens: int = 4096,
    on_batch: Optional[Callable[[int], None]] = None,
    max_padding: float = MAX_PADDING,
) -> np.ndarray:
    """Each item's score: the mean log-probability of its target tokens. ``on_batch(n)`` after each
    batch of n items (a progress bar's update)."""
    scores = np.zeros(len(items))
    for group in batches_by_tokens([len(item.ids) for item in items], max_tokens, max_padding):
        for index, log_probs in zip(group, scorer.token_log_probs([items[i].ids for i in group])):
            scores[index] = log_probs[items[index].targets - 1].mean()
        if on_batch is not None:
            on_batch(len(group))
    return scores
