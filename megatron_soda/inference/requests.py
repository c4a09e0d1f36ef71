"""What to generate from: a JSONL manifest of requests (or one request from flags), read into prompts.

One JSON object per line: ``id`` (optional), ``audio`` (the prompt speech of asr / continue, a path
relative to the manifest), ``text`` (what tts speaks, or the text to continue), ``reference_audio`` and
``reference_text`` (tts's voice prompt, both or neither). A line that is not JSON, misses what its task
needs, or names audio that does not load is reported with its file and line and skipped; the rest run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from megatron_soda.data.manifest import Reject, read_jsonl
from megatron_soda.inference.prompts import Task, build_prompt

FIELDS = ("id", "audio", "text", "reference_audio", "reference_text")
NEEDS = {Task.ASR: ("audio",), Task.CONTINUE: ("audio",), Task.TTS: ("text",), Task.TEXT: ("text",)}


@dataclass
class Request:
    id: str
    source: str
    """where it came from (``file:line`` or ``flags``), for messages."""
    audio: Optional[str] = None
    text: Optional[str] = None
    reference_audio: Optional[str] = None
    reference_text: Optional[str] = None


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
        unknown = sorted(set(obj) - set(FIELDS))
        values = {k: obj.get(k) for k in FIELDS[1:]}
        bad = [k for k, v in values.items() if v is not None and not isinstance(v, str)]
        if unknown or bad:
            what = f"unknown fields {unknown} (known: {', '.join(FIELDS)})" if unknown else f"{bad} must be strings"
            rejects.append(Reject(source, "bad_field", f"{source}: {what}"))
            continue
        for name in ("audio", "reference_audio"):
            if values[name]:
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
    paths = sorted({p for r in requests for p in (r.audio, r.reference_audio) if p})
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
        broken = [failed[p] for p in (request.audio, request.reference_audio) if p in failed]
        if broken:
            rejects.append(Reject(request.source, broken[0].reason, f"{request.source}: {broken[0]}", request.id))
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
