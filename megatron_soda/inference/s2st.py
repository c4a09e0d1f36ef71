"""Voice-preserving speech-to-speech translation with a model fine-tuned on SODA's S2ST sequence
(``data/s2st_format.py``): source speech (+ its transcript, optionally) -> target text -> target speech.

Two generations over one growing context: first the translation, from a prompt that ends with the target
text segment opened by its language tag, until ``<|text_end|>``; then, with the translation and
``<|text_end|><|audio_start|>`` appended, the speech, until ``<|audio_end|>``. The source speech stays in
context throughout: that is what carries the speaker's voice into the target speech.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from megatron_soda.data.formats import render
from megatron_soda.data.s2st_format import S2STExample, translation_prompt
from megatron_soda.inference.engine import Generation
from megatron_soda.inference.prompts import Task, task_sampling
from megatron_soda.inference.sampling import SamplingConfig

TEXT_SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=200)
"""The translation: greedy by default (SODA states no setting for its S2ST inference)."""
SPEECH_SAMPLING = task_sampling(Task.TTS, SamplingConfig())
"""The target speech: SODA's TTS sampling (T 0.9, top-p 0.8, up to 1500 tokens)."""


@dataclass
class Translated:
    text: Generation
    """the translation's ids (stop: ``<|text_end|>`` when it closed its segment)."""
    speech: Generation
    """the target speech's ids (stop: ``<|audio_end|>`` when it closed its segment)."""


def translate(
    generator,
    examples: Sequence[S2STExample],
    tokenizer,
    text_sampling: SamplingConfig = TEXT_SAMPLING,
    speech_sampling: SamplingConfig = SPEECH_SAMPLING,
    logits_processors=(),
) -> List[Translated]:
    """Translates a batch with ``generator`` (ours or transformers'): text first, then speech."""
    layout = tokenizer.layout
    prompts = [render(translation_prompt(example, tokenizer), layout, open_end=True).ids for example in examples]
    texts = generator.generate(prompts, text_sampling, (layout.text_end_id, layout.eos_id), logits_processors)
    follow = np.array([layout.text_end_id, layout.audio_start_id], dtype=np.int64)
    speech_prompts = [np.concatenate([prompt, text.ids, follow]) for prompt, text in zip(prompts, texts)]
    speech = generator.generate(
        speech_prompts, speech_sampling, (layout.audio_end_id, layout.eos_id), logits_processors
    )
    return [Translated(text, spoken) for text, spoken in zip(texts, speech)]
