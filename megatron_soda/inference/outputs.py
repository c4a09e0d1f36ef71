"""What a model generated, as a task's answer: text, audio codes -> wav, and a JSON record.

Generated tokens are decoded leniently (``formats.parse_lenient``): a truncated frame, a codebook out
of order or a missing end marker loses only what is invalid, and the record lists what was dropped.
The answer is the segment the prompt opened (the first one of the continuation); anything the model
wrote after it, before stopping, is reported and ignored.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from megatron_soda.data.formats import Kind, parse_lenient
from megatron_soda.inference.engine import Generation
from megatron_soda.inference.prompts import TASKS, Task


def answer_segment(kind: Kind, generation: Generation, layout):
    """``(segment or None, problems)``: the ``kind`` segment the model wrote, leniently parsed."""
    ids = generation.ids
    if generation.stop is not None and generation.stop != layout.eos_id:
        ids = np.append(ids, generation.stop)  # the closing marker that stopped it
    document, problems = parse_lenient(ids, layout, open_kind=None if kind is Kind.PLAIN else kind)
    segments = document.segments
    if not segments:
        return None, problems
    if len(segments) > 1:
        problems = problems + [f"{len(segments) - 1} more segments after the answer ignored"]
    if segments[0].kind is not kind:
        return None, problems + [f"the model wrote a {segments[0].kind.value} segment, not {kind.value}"]
    return segments[0], problems


def describe_prompt(ids, tokenizer) -> str:
    """A prompt in SODA's string form with each run of audio shown as its length, e.g.
    ``<|begin_of_text|><|audio_start|>[10 frames]<|audio_end|><|text_start|>``."""
    layout = tokenizer.layout
    ids = np.asarray(ids, dtype=np.int64)
    audio = layout.is_audio(ids)
    bounds = np.flatnonzero(np.diff(audio.astype(np.int8))) + 1
    parts = []
    for run in np.split(ids, bounds):
        if len(run) and layout.is_audio(run[0]):
            frames = len(run) / layout.num_codebooks
            parts.append(f"[{frames:g} frames]")
        elif len(run):
            parts.append(tokenizer.ids_to_string(run))
    return "".join(parts)


def finish(
    task: Task,
    generation: Generation,
    tokenizer,
    codec=None,
    output_dir: Optional[str] = None,
    name: str = "output",
    wave: Optional[np.ndarray] = None,
) -> dict:
    """The JSON record of one generation; an audio answer is decoded by ``codec`` into ``name.wav`` under
    ``output_dir`` (or given already decoded as ``wave``)."""
    return {
        "task": Task(task).value,
        "prompt": describe_prompt(generation.prompt, tokenizer),
        **answer_record(TASKS[Task(task)].output, generation, tokenizer, codec, output_dir, name, wave),
    }


def answer_record(
    kind: Kind,
    generation: Generation,
    tokenizer,
    codec=None,
    output_dir: Optional[str] = None,
    name: str = "output",
    wave: Optional[np.ndarray] = None,
) -> dict:
    """``finish``'s record of a generation that wrote a ``kind`` segment, less the task and the prompt."""
    layout = tokenizer.layout
    segment, problems = answer_segment(kind, generation, layout)
    record = {
        "prompt_tokens": int(len(generation.prompt)),
        "new_tokens": int(len(generation.ids)),
        "stop": None if generation.stop is None else tokenizer.ids_to_string([generation.stop]),
        "ids": generation.ids.tolist(),
        "generation_seconds": round(generation.seconds, 4),
        "tokens_per_second": round(generation.tokens_per_second, 2),
        "problems": problems,
    }
    if kind is Kind.AUDIO:
        codes = layout.ids_to_codes(segment.ids) if segment is not None else np.zeros((layout.num_codebooks, 0))
        record["frames"] = int(codes.shape[1])
        if codec is not None:
            record["audio_seconds"] = round(codes.shape[1] / codec.frame_rate, 3)
            if wave is None and codes.shape[1]:
                wave = codec.decode([codes])[0]
            if output_dir is not None and wave is not None:
                import soundfile

                os.makedirs(output_dir, exist_ok=True)
                record["wav"] = os.path.join(output_dir, f"{name}.wav")
                soundfile.write(record["wav"], np.asarray(wave, np.float32), codec.sample_rate)
    else:
        record["text"] = tokenizer.decode(segment.ids) if segment is not None else ""
    return record
