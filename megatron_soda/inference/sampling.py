"""Choosing the next token from logits: temperature, top-k, top-p (nucleus), or greedy.

One function serves our decode loop; transformers' ``generate`` gets the same settings as its own
arguments (``SamplingConfig.hf_kwargs``), so both formats sample alike. Temperature 0 is greedy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

NUCLEUS_CANDIDATES = 1024
"""top-p first looks for its nucleus among this many most likely tokens (a partial sort), which saves
sorting the whole 144,644-id vocabulary and sampling over it at every step when the distribution is
peaked, as a trained model's is; a nucleus that needs more falls back to a full sort, with the same
result."""


@dataclass
class SamplingConfig:
    """How new tokens are drawn (the ``--temperature``, ``--top-k``, ... flags); a task fills the defaults."""

    temperature: Optional[float] = None
    """softmax temperature; 0 is greedy decoding (default: the task's, e.g. 0.5 for asr, 0.9 for tts)."""
    top_k: int = 0
    """sample among the k most likely tokens only (0: no limit)."""
    top_p: Optional[float] = None
    """nucleus sampling: the smallest set of tokens whose probability reaches p (default: the task's, 0.8)."""
    max_new_tokens: Optional[int] = None
    """tokens generated at most per prompt (default: the task's, e.g. 200 for asr, 1500 for tts)."""
    seed: int = 1234
    """seed of the sampling generator: the same prompts, batch and seed give the same tokens."""

    def check(self) -> None:
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0 (0: no limit), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return not self.temperature

    def hf_kwargs(self) -> dict:
        """The same settings as arguments of transformers' ``generate``."""
        if self.greedy:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p or 1.0, "top_k": self.top_k}


def candidates(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> tuple:
    """``(probs, ids)`` ``[b, n]``: the tokens sampling may choose, most likely first, with their
    (unnormalised) probabilities; zero for those outside the nucleus.

    top-k renormalises before the nucleus is taken, as transformers' warpers do in that order. The
    nucleus keeps the most likely tokens while the probability before each is below ``top_p`` (so the
    token that crosses it stays, and at least one). It is looked for among ``NUCLEUS_CANDIDATES``
    tokens (a partial sort) and over a full sort only when those do not reach ``top_p``.
    """
    vocab = logits.shape[-1]
    k = min(top_k or (NUCLEUS_CANDIDATES if top_p < 1.0 else vocab), vocab)
    values, ids = torch.topk(logits, k, dim=-1) if k < vocab else torch.sort(logits, dim=-1, descending=True)
    total = torch.logsumexp(values if top_k else logits, dim=-1, keepdim=True)
    probs = torch.exp(values - total)
    if top_p < 1.0 and not top_k and k < vocab and bool((probs.sum(-1) < top_p).any()):
        values, ids = torch.sort(logits, dim=-1, descending=True)
        probs = torch.exp(values - total)
    if top_p < 1.0:
        probs = probs * ((probs.cumsum(-1) - probs) < top_p)
    return probs, ids


def sample(logits: torch.Tensor, config: SamplingConfig, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One token per row of ``logits`` ``[b, V]`` (float32 math), as ``config`` says."""
    logits = logits.float()
    if config.greedy:
        return logits.argmax(-1)
    logits = logits / config.temperature
    top_p = config.top_p or 1.0
    if not config.top_k and top_p >= 1.0:
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)
    probs, ids = candidates(logits, config.top_k, top_p)
    choice = torch.multinomial(probs, 1, generator=generator)
    return ids.gather(-1, choice).squeeze(-1)
