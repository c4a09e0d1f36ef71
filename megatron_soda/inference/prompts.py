"""Prompts for SODA's tasks, built from the vocabulary layout and the sequence formats, and each task's
default sampling (SODA's for ASR and TTS).

Every prompt starts with ``<|begin_of_text|>``, as every training document does, and ends inside the
segment the model is to continue (``formats.render(..., open_end=True)``):

- ``asr``:      ``<|audio_start|>A<|audio_end|><|text_start|>`` -> the transcript, until ``<|text_end|>``
- ``tts``:      ``[<|text_start|>ref_text<|text_end|><|audio_start|>ref_audio<|audio_end|>]``
  ``<|text_start|>text<|text_end|><|audio_start|>`` -> speech in the reference voice, until ``<|audio_end|>``
- ``continue``: ``<|audio_start|>A`` -> more of the same speech, until ``<|audio_end|>``
- ``text``:     plain text (as SODA's text-only data) -> more text, until ``<|end_of_text|>``
- ``s2st``:     SODA's S2ST sequence up to the target's language tag (``data/s2st_format.py``; built with
  the tokenizer by ``inference.s2st``) -> the translation, then its speech (two generations)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

import numpy as np

from megatron_soda.data.formats import Document, Kind, Segment, audio_segment, render, text_segment
from megatron_soda.inference.sampling import SamplingConfig
from megatron_soda.tokenizer.layout import VocabLayout


class Task(str, enum.Enum):
    ASR = "asr"
    TTS = "tts"
    CONTINUE = "continue"
    TEXT = "text"
    S2ST = "s2st"


@dataclass(frozen=True)
class TaskSpec:
    """What a task produces, where it stops, and how it samples by default."""

    output: Kind
    """the kind of segment the model writes: AUDIO (decoded to wav) or TEXT/PLAIN (decoded to text)."""
    temperature: float
    top_p: float
    max_new_tokens: int
    source: str
    """where the defaults come from."""

    def stop_ids(self, layout: VocabLayout) -> tuple:
        """The ids that end generation: the open segment's closing marker, and end-of-text."""
        closer = {Kind.AUDIO: layout.audio_end_id, Kind.TEXT: layout.text_end_id}.get(self.output)
        return (closer, layout.eos_id) if closer is not None else (layout.eos_id,)


TASKS = {
    Task.ASR: TaskSpec(Kind.TEXT, 0.5, 0.8, 200, "SODA's ASR evaluation"),
    Task.TTS: TaskSpec(Kind.AUDIO, 0.9, 0.8, 1500, "SODA's TTS evaluation (1500 tokens: 15 s of Mimi audio)"),
    Task.CONTINUE: TaskSpec(Kind.AUDIO, 0.9, 0.8, 1000, "ours (TTS's sampling; 1000 tokens: 10 s of Mimi audio)"),
    Task.TEXT: TaskSpec(Kind.PLAIN, 0.7, 0.9, 200, "ours"),
    # The answer is the target speech; the translation written before it samples apart (s2st.TEXT_SAMPLING).
    Task.S2ST: TaskSpec(Kind.AUDIO, 0.9, 0.8, 1500, "SODA's TTS sampling, for the target speech"),
}


def task_sampling(task: Task, given: SamplingConfig) -> SamplingConfig:
    """``given`` with the task's defaults where it left a value unset."""
    spec = TASKS[Task(task)]
    return replace(
        given,
        temperature=spec.temperature if given.temperature is None else given.temperature,
        top_p=spec.top_p if given.top_p is None else given.top_p,
        max_new_tokens=spec.max_new_tokens if given.max_new_tokens is None else given.max_new_tokens,
    )


def _prompt(segments, layout: VocabLayout) -> np.ndarray:
    return render(Document(segments, bos=True, eos=False), layout, open_end=True).ids


def asr_prompt(codes, layout: VocabLayout) -> np.ndarray:
    """Speech ``codes [K, T]`` -> a prompt whose continuation is its transcript."""
    return _prompt([audio_segment(codes, layout), text_segment([])], layout)


def tts_prompt(
    text_ids,
    layout: VocabLayout,
    reference_text_ids=None,
    reference_codes=None,
) -> np.ndarray:
    """Text ids -> a prompt whose continuation is its speech; with a reference (its transcript and
    codes), in the reference's voice (SODA's Seed-TTS prompt)."""
    if (reference_text_ids is None) != (reference_codes is None):
        raise ValueError("a TTS voice reference needs both its transcript and its audio")
    reference = []
    if reference_codes is not None:
        reference = [text_segment(reference_text_ids), audio_segment(reference_codes, layout)]
    return _prompt(reference + [text_segment(text_ids), Segment(Kind.AUDIO, np.zeros(0, np.int64))], layout)


def continuation_prompt(codes, layout: VocabLayout) -> np.ndarray:
    """Speech ``codes [K, T]`` -> a prompt inside that audio segment: the model continues the speech."""
    return _prompt([audio_segment(codes, layout)], layout)


def text_prompt(text_ids, layout: VocabLayout) -> np.ndarray:
    """Text ids -> plain text after begin-of-text, as SODA's text-only documents are rendered."""
    return _prompt([Segment(Kind.PLAIN, np.asarray(text_ids, dtype=np.int64))], layout)


def build_prompt(
    task: Task,
    layout: VocabLayout,
    *,
    text_ids=None,
    codes=None,
    reference_text_ids=None,
    reference_codes=None,
) -> np.ndarray:
    """The prompt of ``task`` from what it needs (a ValueError names what is missing)."""
    task = Task(task)
    if task is Task.S2ST:
        raise ValueError("an s2st prompt holds language tags: build it with inference.s2st.translation_prompt_ids")
    needs = {Task.ASR: ("codes",), Task.CONTINUE: ("codes",), Task.TTS: ("text_ids",), Task.TEXT: ("text_ids",)}
    given = {"codes": codes, "text_ids": text_ids}
    missing = [name for name in needs[task] if given[name] is None]
    if missing:
        what = {"codes": "audio", "text_ids": "text"}
        raise ValueError(f"task {task.value} needs {', '.join(what[m] for m in missing)}")
    if task is Task.ASR:
        return asr_prompt(codes, layout)
    if task is Task.CONTINUE:
        return continuation_prompt(codes, layout)
    if task is Task.TTS:
        return tts_prompt(text_ids, layout, reference_text_ids, reference_codes)
    return text_prompt(text_ids, layout)
