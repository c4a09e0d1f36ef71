"""The same generation through transformers' ``generate``, on a Hugging Face export of a SODA model.

Prompts are left-padded with ``<|end_of_text|>`` (the export's pad token: its embedding has no spare
row) under an attention mask, as transformers expects of decoder-only batches; the stop ids are passed
as ``eos_token_id`` (ASR stops at ``<|text_end|>``, TTS at ``<|audio_end|>``) and the logits processors
(structured decoding) as ``logits_processor``. Sampling uses torch's global generator, seeded per call.
"""

from __future__ import annotations

import time
from typing import List, Sequence

import numpy as np
import torch

from megatron_soda.inference.engine import Generation, LogitsProcessor, left_pad
from megatron_soda.inference.sampling import SamplingConfig
from megatron_soda.tokenizer.layout import VocabLayout


def load_hf_model(directory, dtype: torch.dtype = torch.float32, device=None):
    """A ``Qwen3ForCausalLM`` export, offline, in eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar for loading a few weight files says nothing
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, local_files_only=True)
    return model.to(device or "cpu").eval()


class HFGenerator:
    """``MegatronGenerator``'s interface over a transformers causal LM."""

    def __init__(self, model, layout: VocabLayout):
        self.model = model
        self.layout = layout
        self.device = next(model.parameters()).device
        if model.config.vocab_size != layout.vocab_size:
            raise ValueError(
                f"the Hugging Face model has a vocabulary of {model.config.vocab_size}, the tokenizer "
                f"{layout.vocab_size}: pass the tokenizer the model was trained with"
            )

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[np.ndarray],
        sampling: SamplingConfig,
        stop_ids: Sequence[int] = (),
        logits_processors: Sequence[LogitsProcessor] = (),
        on_step=None,
    ) -> List[Generation]:
        from transformers import LogitsProcessorList

        if on_step is not None:
            raise ValueError("on_step is a hook of our decode loop; transformers' generate has none")
        start = time.perf_counter()
        tokens, valid = left_pad(prompts, self.layout.eos_id, self.device)
        torch.manual_seed(sampling.seed)
        stops = sorted(set(stop_ids))
        out = self.model.generate(
            input_ids=tokens,
            attention_mask=valid.long(),
            max_new_tokens=sampling.max_new_tokens or 1,
            eos_token_id=stops or None,
            pad_token_id=self.layout.eos_id,
            logits_processor=LogitsProcessorList(logits_processors),
            **sampling.hf_kwargs(),
        )
        seconds = time.perf_counter() - start
        new = out[:, tokens.shape[1] :].cpu().numpy()
        results = []
        for row, prompt in enumerate(prompts):
            ids, stop = _until_stop(new[row], stops)
            results.append(Generation(np.asarray(prompt, dtype=np.int64), ids, stop, seconds))
        total = sum(len(r.ids) + (r.stop is not None) for r in results)
        for result in results:
            result.batch_new_tokens = total
        return results


def _until_stop(ids: np.ndarray, stops: Sequence[int]) -> tuple:
    """The ids before the first stop id, and that id (None when there is none)."""
    hits = np.flatnonzero(np.isin(ids, stops)) if len(stops) else np.zeros(0, int)
    if len(hits) == 0:
        return ids.astype(np.int64), None
    return ids[: hits[0]].astype(np.int64), int(ids[hits[0]])


def hf_generator(directory, layout: VocabLayout, dtype: torch.dtype = torch.float32, device=None) -> HFGenerator:
    return HFGenerator(load_hf_model(directory, dtype, device), layout)


__all__ = ["HFGenerator", "hf_generator", "load_hf_model"]
