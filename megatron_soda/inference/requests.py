"""What to generate from: a JSONL manifest of requests (or one request from flags), read into prompts.

One JSON object per line: ``id`` (optional), ``audio`` (the prompt speech of asr / continue, a path
relative to the manifest), ``text`` (what tts speaks, or the text to continue), ``reference_audio`` and
``reference_text`` (tts's voice prompt, both or neither). An s2st line is a CVSS-style record instead:
``source_audio``, ``source_language`` (a code such as ``fr``), optional ``source_text`` (its transcript),
``target_language`` (default ``en``), and the references ``target_text`` / ``target_audio`` that the
evaluation scores against (generation carries them into its records). A line that is not JSON, misses
what its task needs, or names audio that does not load is reported with its file and line and skipped;
the rest run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from megatron_soda.data.manifest import Reject, read_jsonl
from megatron_soda.inference.prompts import Task, build_prompt

_PROMPTED = ("id", "audio", "text", "reference_audio", "reference_text")
_TRANSLATED = ("id", "source_audio", "source_language", "source_text", "target_language", "target_text", "target_audio")
FIELDS = {**{task: _PROMPTED for task in Task if task is not Task.S2ST}, Task.S2ST: _TRANSLATED}
"""The fields a manifest line of each task may hold (``Request``'s names)."""
NEEDS = {
    Task.ASR: ("audio",),
    Task.CONTINUE: ("audio",),
    Task.TTS: ("text",),
    Task.TEXT: ("text",),
    Task.S2ST: ("source_audio", "source_language"),
}
AUDIO_FIELDS = ("audio", "reference_audio", "source_audio", "target_audio")
"""paths, relative to the manifest."""


@dataclass
class Request:
    id: str
    source: str
    """where it came from (``file:line`` or ``flags``), for messages."""
    audio: Optional[str] = None
    text: Optional[str] = None
    reference_audio: Optional[str] = None
    reference_text: Optional[str] = None
    source_audio: Optional[str] = None
    """s2st: the speech to translate (its voice is kept)."""
    source_language: Optional[str] = None
    source_text: Optional[str] = None
    target_language: Optional[str] = None
    """s2st: the language to translate into (default: ``S2STExample``'s, en)."""
    target_text: Optional[str] = None
    """s2st: the reference translation (the evaluation's BLEU)."""
    target_audio: Optional[str] = None
    """s2st: the reference target speech (kept for listening; no metric reads it)."""

    def given(self, task: Task) -> dict:
        """The fields of ``task`` this request sets (for records)."""
        return {name: getattr(self, name) for name in FIELDS[Task(task)][1:] if getattr(self, name)}


def check_request(request: Request, task: Task) -> None:
    """ValueError naming the request's source when it lacks what ``task`` needs."""
    missing = [name for name in NEEDS[Task(task)] if not getattr(request, name)]
    if missing:
        raise ValueError(f"{request.source}: task {Task(task).value} needs {' and '.join(missing)}")
    if bool(request.reference_audio) != bool(request.reference_text):
        raise ValueError(f"{request.source}: a voice reference needs both reference_audio and reference_text")


def read_requests(path: str, task: Task) -> Tuple[List[Request], List[Reject]]:
    """The manifest's requests for ``task`` and its rejected lines."""
    base = os.path.dirname(os.path.abspath(path))
    requests, rejects = [], []
    for source, obj in read_jsonl(path):
        if isinstance(obj, Reject):
            rejects.append(obj)
            continue
        if not isinstance(obj, dict):
            rejects.append(Reject(source, "bad_json", f"{source}: expected a JSON object"))
            continue
        fields = FIELDS[Task(task)]
        unknown = sorted(set(obj) - set(fields))
        values = {k: obj.get(k) for k in fields[1:]}
        bad = [k for k, v in values.items() if v is not None and not isinstance(v, str)]
        if unknown or bad:
            known = f"known for {Task(task).value}: {', '.join(fields)}"
            what = f"unknown fields {unknown} ({known})" if unknown else f"{bad} must be strings"
            rejects.append(Reject(source, "bad_field", f"{source}: {what}"))
            continue
        for name in AUDIO_FIELDS:
            if values.get(name):
                values[name] = os.path.normpath(os.path.join(base, values[name]))
        request = Request(id=str(obj.get("id") or f"line{source.rsplit(':', 1)[1]}"), source=source, **values)
        try:
            check_request(request, task)
        except ValueError as error:
            rejects.append(Reject(source, "missing_field", str(error), request.id))
            continue
        requests.append(request)
    return requests, rejects


def load_clip(path: str, sample_rate: int) -> np.ndarray:
    """A file's audio as mono float32 at ``sample_rate`` (``AudioRejected`` names the file otherwise)."""
    from megatron_soda.codec.audio_io import check_waveform, load_audio, resample

    wave, rate = load_audio(path)
    wave = resample(wave, rate, sample_rate)
    check_waveform(wave, sample_rate, path)
    return wave


def build_prompts(
    requests: Sequence[Request], task: Task, tokenizer, codec=None
) -> Tuple[List[Tuple[Request, np.ndarray]], List[Reject]]:
    """``(request, prompt ids)`` for every request whose audio loads; the others as rejects.

    All audio of the batch is encoded in one ``codec.encode`` call (it batches by length itself).
    """
    from megatron_soda.codec.audio_io import AudioRejected

    layout = tokenizer.layout
    paths = sorted({p for r in requests for p in _prompt_audio(r) if p})
    if paths and codec is None:
        raise ValueError("these requests hold audio: a codec is needed (--codec-path or --codec-random-init)")
    waves, failed = {}, {}
    for path in paths:
        try:
            waves[path] = load_clip(path, codec.sample_rate)
        except AudioRejected as error:
            failed[path] = error
    codes = dict(zip(waves, codec.encode(list(waves.values())))) if waves else {}
    prompts, rejects = [], []
    for request in requests:
        broken = [failed[p] for p in _prompt_audio(request) if p in failed]
        if broken:
            rejects.append(Reject(request.source, broken[0].reason, f"{request.source}: {broken[0]}", request.id))
            continue
        if Task(task) is Task.S2ST:
            try:
                prompts.append((request, _translation_prompt(request, codes[request.source_audio], tokenizer)))
            except ValueError as error:  # a language code that a tag cannot hold
                rejects.append(Reject(request.source, "bad_field", f"{request.source}: {error}", request.id))
            continue
        text = tokenizer.encode_text(request.text) if request.text else None
        prompt = build_prompt(
            task,
            layout,
            text_ids=text,
            codes=codes.get(request.audio),
            reference_text_ids=tokenizer.encode_text(request.reference_text) if request.reference_text else None,
            reference_codes=codes.get(request.reference_audio),
        )
        prompts.append((request, prompt))
    return prompts, rejects


def _prompt_audio(request: Request) -> tuple:
    """The audio files a request's prompt holds (the target audio is a reference, never prompted)."""
    return (request.audio, request.reference_audio, request.source_audio)


def _translation_prompt(request: Request, codes: np.ndarray, tokenizer) -> np.ndarray:
    from megatron_soda.data.s2st_format import S2STExample
    from megatron_soda.inference.s2st import translation_prompt_ids

    example = S2STExample(
        source_codes=codes,
        source_language=request.source_language,
        source_text=request.source_text,
        target_language=request.target_language or S2STExample.target_language,
    )
    return translation_prompt_ids(example, tokenizer)
