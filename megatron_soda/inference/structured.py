"""Structured decoding: sampling constrained to well-formed SODA sequences (an option, off by default).

A random or undertrained model puts text ids inside audio, codebooks out of order, or stops a frame
half-way; the codec cannot decode that. ``StructuredDecoding`` is a logits processor (transformers'
protocol, so the same object serves our decode loop and ``generate(logits_processor=...)``) that
forbids, per row, every id that would make the sequence malformed, judged from the last boundary
(marker or end-of-text) in the history:

- inside audio (``n`` tokens since ``<|audio_start|>``): only audio ids of codebook ``n % K``, and
  ``<|audio_end|>`` only on a frame boundary (``n % K == 0``);
- inside text (after ``<|text_start|>``): text ids and ``<|text_end|>`` only;
- outside any segment (nothing yet, a closing marker, or end-of-text): text ids, the opening markers
  and end-of-text; ``<|begin_of_text|>`` only right after end-of-text (a new document).

Begin- and end-of-text are forbidden inside a segment as well: ``parse`` refuses a segment that holds
them or that end-of-text leaves unclosed. Ids at or past the layout's vocabulary (padding rows of the
output layer) are never sampled. Every state's allowed ids are one row of a table built once per
(device, width), so a step costs one search over the history and one masked fill.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from megatron_soda.tokenizer.layout import VocabLayout

OUTSIDE, DOCUMENT_START, TEXT, AUDIO = 0, 1, 2, 3
"""Rows of the allowed-ids table: outside a segment, right after end-of-text (begin-of-text allowed too),
inside text, and inside audio expecting codebook k (row ``AUDIO + k``)."""


class StructuredDecoding:
    """Logits processor ``(input_ids [b, t], scores [b, V]) -> scores`` that sets every id that would make
    the row malformed to -inf. ``vocab_size`` is the width of the scores it will see (the padded
    vocabulary) when known, so the table is built up front; otherwise it is built at the first call.

    Stateless: each call reads the whole history (as transformers passes it), so the same object serves
    any number of batches and generations.
    """

    def __init__(self, layout: VocabLayout, vocab_size: Optional[int] = None):
        if vocab_size is not None and vocab_size < layout.vocab_size:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the layout's {layout.vocab_size} ids")
        self.layout = layout
        self.vocab_size = vocab_size
        self._tables: Dict[Tuple[torch.device, int], torch.Tensor] = {}
        if vocab_size is not None:
            self.allowed_table(vocab_size, torch.device("cpu"))

    def allowed_table(self, width: int, device: torch.device) -> torch.Tensor:
        """``[AUDIO + K, width]`` bool: which ids each state may sample."""
        key = (torch.device(device), width)
        if key not in self._tables:
            self._tables[key] = self._build_table(width).to(device)
        return self._tables[key]

    def _build_table(self, width: int) -> torch.Tensor:
        layout, K, C = self.layout, self.layout.num_codebooks, self.layout.codebook_size
        table = torch.zeros(AUDIO + K, width, dtype=torch.bool)
        text = torch.zeros(width, dtype=torch.bool)
        text[: layout.base_size] = True
        text[[layout.bos_id, layout.eos_id]] = False
        table[TEXT] = text
        table[TEXT, layout.text_end_id] = True
        table[OUTSIDE] = text
        table[OUTSIDE, [layout.text_start_id, layout.audio_start_id, layout.eos_id]] = True
        table[DOCUMENT_START] = table[OUTSIDE]
        table[DOCUMENT_START, layout.bos_id] = True
        for k in range(K):
            first = layout.audio_offset + k * C
            table[AUDIO + k, first : first + C] = True
        table[AUDIO, layout.audio_end_id] = True  # codebook 0 expected: a frame boundary
        return table

    def states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[b]`` row of the allowed-ids table for each row's next token."""
        layout = self.layout
        batch, length = input_ids.shape
        if length == 0:
            return torch.full((batch,), DOCUMENT_START, dtype=torch.long, device=input_ids.device)
        boundary = (input_ids >= layout.text_start_id) & (input_ids <= layout.audio_end_id)
        boundary |= input_ids == layout.eos_id
        positions = torch.arange(length, device=input_ids.device).expand(batch, -1)
        last = torch.where(boundary, positions, torch.full_like(positions, -1)).max(-1).values
        marker = torch.where(
            last >= 0, input_ids.gather(1, last.clamp(min=0)[:, None])[:, 0], torch.full_like(last, -1)
        )
        since = length - 1 - last  # tokens after the boundary
        state = torch.full_like(last, OUTSIDE)
        state = torch.where(input_ids[:, -1] == layout.eos_id, torch.full_like(state, DOCUMENT_START), state)
        state = torch.where(marker == layout.text_start_id, torch.full_like(state, TEXT), state)
        return torch.where(marker == layout.audio_start_id, AUDIO + since % layout.num_codebooks, state)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[-1] < self.layout.vocab_size:
            raise ValueError(f"scores have {scores.shape[-1]} ids, fewer than the layout's {self.layout.vocab_size}")
        allowed = self.allowed_table(scores.shape[-1], scores.device)[self.states(input_ids.to(scores.device))]
        return scores.masked_fill(~allowed, float("-inf"))
