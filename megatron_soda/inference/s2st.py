"""Voice-preserving speech-to-speech translation with a model fine-tuned on SODA's S2ST sequence
(``data/s2st_format.py``): source speech (+ its transcript, optionally) -> target text -> target speech.

Two generations over one growing context: first the translation, from a prompt that ends with the target
text segment opened by its language tag, until ``<|text_end|>``; then, with the translation and
``<|text_end|><|audio_start|>`` appended, the speech, until ``<|audio_end|>``. The source speech stays in
context throughout: that is what carries the speaker's voice into the target speech.

The two parts sample apart: the speech as SODA's TTS (``--temperature``, ``--top-p``, ... of the tools), the
translation greedily unless told otherwise (``TranslationSampling``, the ``--text-*`` flags).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

import numpy as np

from megatron_soda.checks import check_at_least
from megatron_soda.data.formats import Kind, render
from megatron_soda.data.s2st_format import S2STExample, translation_prompt
from megatron_soda.inference.engine import Generation
from megatron_soda.inference.prompts import TASKS, Task, task_sampling
from megatron_soda.inference.sampling import SamplingConfig

TEXT_SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=200)
"""The translation: greedy by default (SODA states no setting for its S2ST inference)."""
SPEECH_SAMPLING = task_sampling(Task.S2ST, SamplingConfig())
"""The target speech: SODA's TTS sampling (T 0.9, top-p 0.8, up to 1500 tokens)."""


@dataclass
class TranslationSampling:
    """How s2st samples its translation text (the --text-* flags); the usual sampling flags sample its speech."""

    text_temperature: Optional[float] = None
    """s2st: temperature of the translation text (default 0: greedy). The usual sampling flags (--temperature,
    --top-p, --max-new-tokens, ...) sample the target speech (default SODA's TTS: 0.9, 0.8, 1500 tokens);
    --seed seeds both."""
    text_top_p: Optional[float] = None
    """s2st: nucleus of the translation text when --text-temperature > 0 (default 1: none)."""
    text_max_new_tokens: Optional[int] = None
    """s2st: new tokens of the translation text at most (default 200)."""

    @property
    def given(self) -> List[str]:
        """The flags set, for a tool that refuses them outside s2st."""
        return [f"--{name.replace('_', '-')}" for name, value in vars(self).items() if value is not None]

    def check(self) -> None:
        check_at_least("--text-temperature", self.text_temperature, 0)
        check_at_least("--text-max-new-tokens", self.text_max_new_tokens, 1)
        if self.text_top_p is not None and not 0 < self.text_top_p <= 1:
            raise ValueError(f"--text-top-p must be in (0, 1], got {self.text_top_p}")

    def sampling(self, seed: int) -> SamplingConfig:
        """``TEXT_SAMPLING`` with what was given, seeded as the speech is."""
        given = {"temperature": self.text_temperature, "top_p": self.text_top_p}
        given["max_new_tokens"] = self.text_max_new_tokens
        return replace(TEXT_SAMPLING, seed=seed, **{k: v for k, v in given.items() if v is not None})


@dataclass
class Translated:
    text: Generation
    """the translation's ids (stop: ``<|text_end|>`` when it closed its segment)."""
    speech: Generation
    """the target speech's ids (stop: ``<|audio_end|>`` when it closed its segment)."""


def translation_prompt_ids(example: S2STExample, tokenizer) -> np.ndarray:
    """The ids the model continues with the translation (ValueError for a language code a tag cannot hold)."""
    return render(translation_prompt(example, tokenizer), tokenizer.layout, open_end=True).ids


def translate_prompts(
    generator,
    prompts: Sequence[np.ndarray],
    layout,
    text_sampling: SamplingConfig = TEXT_SAMPLING,
    speech_sampling: SamplingConfig = SPEECH_SAMPLING,
    logits_processors=(),
) -> List[Translated]:
    """Translates a batch of ``translation_prompt_ids`` with ``generator`` (ours or transformers'): text
    first, then speech."""
    texts = generator.generate(prompts, text_sampling, (layout.text_end_id, layout.eos_id), logits_processors)
    follow = np.array([layout.text_end_id, layout.audio_start_id], dtype=np.int64)
    speech_prompts = [np.concatenate([prompt, text.ids, follow]) for prompt, text in zip(prompts, texts)]
    stops = TASKS[Task.S2ST].stop_ids(layout)
    speech = generator.generate(speech_prompts, speech_sampling, stops, logits_processors)
    return [Translated(text, spoken) for text, spoken in zip(texts, speech)]


def translate(
    generator,
    examples: Sequence[S2STExample],
    tokenizer,
    text_sampling: SamplingConfig = TEXT_SAMPLING,
    speech_sampling: SamplingConfig = SPEECH_SAMPLING,
    logits_processors=(),
) -> List[Translated]:
    """Translates a batch of requests with ``generator`` (ours or transformers'): text first, then speech."""
    prompts = [translation_prompt_ids(example, tokenizer) for example in examples]
    return translate_prompts(generator, prompts, tokenizer.layout, text_sampling, speech_sampling, logits_processors)


def finish_translation(
    translated: Translated,
    tokenizer,
    codec=None,
    output_dir: Optional[str] = None,
    name: str = "output",
    wave: Optional[np.ndarray] = None,
) -> dict:
    """The JSON record of one translation: its text and speech (wav, as ``outputs.finish`` writes it) on top,
    each generation's own record (ids, stop, timing, what was dropped) under ``translation`` and ``speech``."""
    from megatron_soda.inference.outputs import answer_record, describe_prompt

    text = answer_record(Kind.TEXT, translated.text, tokenizer)
    speech = answer_record(Kind.AUDIO, translated.speech, tokenizer, codec, output_dir, name, wave)
    spoken = {key: speech.pop(key) for key in ("frames", "audio_seconds", "wav") if key in speech}
    return {
        "task": Task.S2ST.value,
        "prompt": describe_prompt(translated.text.prompt, tokenizer),
        "text": text.pop("text"),
        **spoken,
        "translation": text,
        "speech": speech,
    }
