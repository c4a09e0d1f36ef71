"""Our decode loop over a megatron-core GPTModel, with megatron's static KV cache.

megatron's ``StaticInferenceContext`` keeps each layer's keys and values in preallocated buffers and
one shared write position (``sequence_len_offset``), and its RoPE slices positions by that offset, so a
batch shares positions. Prompts of different lengths are therefore **left-padded**: every row ends at
the same position, pad keys are masked out of attention (pad queries attend to themselves only, so
nothing becomes NaN), and because RoPE scores depend only on the distance between positions, a
padded row attends exactly as it would alone (up to float rounding). Only the last position's logits
are computed (megatron's ``materialize_only_last_token_logits``).

megatron's own text-generation controller needs CUDA events and has no logits hook, hence this loop:
prefill the prompts in one forward, then one token per step for every row still running, through the
logits processors (structured decoding) and ``sampling.sample``; rows stop at a stop id or at
``max_new_tokens``. Tensor parallelism is not supported here (TP=1; a checkpoint saved at any layout
reshards on load, and TP=1 holds every SODA size on one GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from megatron_soda.inference.sampling import SamplingConfig, sample
from megatron_soda.tokenizer.layout import VocabLayout

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""transformers' protocol: ``(input_ids [b, t], scores [b, V]) -> scores``."""


@dataclass
class Generation:
    """What one prompt produced."""

    prompt: np.ndarray
    """the prompt's ids."""
    ids: np.ndarray
    """the new ids, the stop id excluded."""
    stop: Optional[int] = None
    """the stop id that ended it; None when it ran to ``max_new_tokens``."""
    seconds: float = 0.0
    """wall time of the batch it was generated in (prefill included)."""
    batch_new_tokens: int = 0
    """new tokens of the whole batch (for tokens/s)."""
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.batch_new_tokens / self.seconds if self.seconds else 0.0


def left_pad(prompts: Sequence[np.ndarray], pad_id: int, device) -> tuple:
    """``(tokens [b, L], valid [b, L])``: each prompt right-aligned, pads on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    length = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    valid = torch.zeros((len(prompts), length), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens[row, length - len(prompt) :] = torch.as_tensor(np.asarray(prompt, dtype=np.int64))
        valid[row, length - len(prompt) :] = True
    return tokens.to(device), valid.to(device)


def prefill_mask(valid: torch.Tensor) -> torch.Tensor:
    """megatron's attention mask (True = masked out) ``[b, 1, L, L]`` for left-padded prompts: causal,
    pad keys hidden, and each pad query sees itself (a row of nothing but -inf would give NaN)."""
    length = valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    keep = causal & valid[:, None, None, :]
    keep |= torch.eye(length, dtype=torch.bool, device=valid.device)
    return ~keep


class MegatronGenerator:
    """Generation from one megatron-core ``GPTModel`` (TP=1, PP=1) with a static KV cache.

    ``vocab_size`` is the real vocabulary: the padded rows of the output layer are never sampled.
    """

    def __init__(self, model: torch.nn.Module, layout: VocabLayout, vocab_size: Optional[int] = None):
        self.model = model.eval()
        self.layout = layout
        self.vocab_size = vocab_size or layout.vocab_size
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[np.ndarray],
        sampling: SamplingConfig,
        stop_ids: Sequence[int] = (),
        logits_processors: Sequence[LogitsProcessor] = (),
        on_step: Optional[Callable[[torch.Tensor], None]] = None,
    ) -> List[Generation]:
        """New tokens for every prompt (one batch). ``on_step`` sees each step's last-position logits
        ``[b, V]`` before processing (tests compare them with a recomputation)."""
        from megatron.core.inference.contexts import StaticInferenceContext

        max_new = sampling.max_new_tokens or 1
        start = time.perf_counter()
        tokens, valid = left_pad(prompts, self.layout.eos_id, self.device)
        batch, length = tokens.shape
        context = StaticInferenceContext(batch, length + max_new)
        generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=self.device)
        history = tokens  # prompt + new tokens: what logits processors read
        running = torch.ones(batch, dtype=torch.bool, device=self.device)
        stopped_by = torch.full((batch,), -1, dtype=torch.long, device=self.device)
        lengths = torch.zeros(batch, dtype=torch.long, device=self.device)
        new = []

        step_tokens, mask = tokens, prefill_mask(valid)
        positions = torch.arange(length, device=self.device).expand(batch, -1)
        for step in range(max_new):
            logits = self.model(step_tokens, positions, mask, inference_context=context, runtime_gather_output=True)
            context.sequence_len_offset += step_tokens.shape[1]
            logits = logits[:, -1, : self.vocab_size].float()
            if on_step is not None:
                on_step(logits)
            for processor in logits_processors:
                logits = processor(history, logits)
            choice = sample(logits, sampling, generator)
            choice = torch.where(running, choice, torch.full_like(choice, self.layout.eos_id))
            hit = running & torch.isin(choice, stops)
            stopped_by = torch.where(hit, choice, stopped_by)
            lengths += (running & ~hit).long()
            running &= ~hit
            new.append(choice)
            history = torch.cat([history, choice[:, None]], dim=1)
            if not bool(running.any()) or step + 1 == max_new:
                break
            if step == 0:
                context.enable_decode_mode()
            step_tokens = choice[:, None]
            positions = torch.full((batch, 1), length + step, device=self.device)
            # One query per row against every cached key but the left pads.
            mask = ~torch.cat([valid, torch.ones(batch, step + 1, dtype=torch.bool, device=self.device)], 1)
            mask = mask[:, None, None, :]

        seconds = time.perf_counter() - start
        generated = torch.stack(new, 1).cpu().numpy() if new else np.zeros((batch, 0), np.int64)
        lengths, stopped_by = lengths.cpu().tolist(), stopped_by.cpu().tolist()
        total = int(sum(lengths) + sum(s >= 0 for s in stopped_by))
        return [
            Generation(
                prompt=np.asarray(prompts[row], dtype=np.int64),
                ids=generated[row, : lengths[row]].astype(np.int64),
                stop=stopped_by[row] if stopped_by[row] >= 0 else None,
                seconds=seconds,
                batch_new_tokens=total,
            )
            for row in range(batch)
        ]
