"""Fine-tuning examples as records, parsed and checked before any audio is read.

Two JSONL formats, one example per line (relative audio paths resolve against the JSONL file's folder):

- ``generic``: ``{"id": ..., "segments": [{"audio": "q.wav", "loss": false}, {"text": "...", "loss": true}]}``,
  an ordered list of text and audio segments, each with its loss flag (default true). An audio segment may
  give ``start``/``end`` seconds within its file.
- ``s2st``: CVSS-style ``{"id", "source_audio", "source_language", "source_text" (optional), "target_text",
  "target_audio", "target_language" (optional, default en)}``, rendered by ``s2st_format.s2st_document``.

A record knows the audio clips it needs (``clips``) and, given their codes, its document with loss flags
(``document``). A bad line is a ``ValueError(message, reason)`` naming file:line, as ``manifest`` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from megatron_soda.data.formats import Document, audio_segment, text_segment
from megatron_soda.data.manifest import is_encodable, parse_span
from megatron_soda.data.s2st_format import S2STExample, Variant, s2st_document

CVSS_LANGUAGES = (
    *("fr", "de", "es", "ca", "it", "ru", "zh-CN", "pt", "fa", "et", "mn"),
    *("nl", "tr", "ar", "sv-SE", "lv", "sl", "ta", "ja", "id", "cy", "en"),
)
"""CVSS's 21 source languages and English, its target: the language codes an S2ST record may use by default."""

SEGMENT_FIELDS = {"text", "audio", "loss", "start", "end"}


@dataclass(frozen=True)
class AudioClip:
    path: str  # absolute
    start: Optional[float] = None
    end: Optional[float] = None


def _invalid(source: str, message: str, reason: str) -> ValueError:
    return ValueError(f"{source}: {message}", reason)


def _text(obj: dict, name: str, source: str, required: bool = True) -> Optional[str]:
    """A text field: a non-empty string that UTF-8 can hold; None when optional and absent or empty."""
    value = obj.get(name)
    if not required and value in (None, ""):
        return None
    if value is None:
        raise _invalid(source, f"missing field {name!r}", "missing_field")
    if not isinstance(value, str) or not value.strip():
        raise _invalid(source, f"field {name!r} must be non-empty text, got {value!r}", "empty_text")
    if not is_encodable(value):
        raise _invalid(source, f"field {name!r} is not valid Unicode (lone surrogate escape)", "non_utf8")
    return value


def _audio(obj: dict, name: str, base_dir: str, source: str) -> str:
    path = obj.get(name)
    if path is None:
        raise _invalid(source, f"missing field {name!r}", "missing_field")
    if not isinstance(path, str) or not path:
        raise _invalid(source, f"field {name!r} must be a non-empty path, got {path!r}", "missing_field")
    return os.path.normpath(os.path.join(base_dir, path))


def _example_id(obj: dict, source: str) -> str:
    return str(obj.get("id") or os.path.basename(source))


@dataclass(frozen=True)
class SegmentRecord:
    """One segment of a generic example: ``text`` or ``audio``, and whether training puts loss on it."""

    loss: bool
    text: Optional[str] = None
    audio: Optional[AudioClip] = None


@dataclass(frozen=True)
class GenericRecord:
    id: str
    source: str  # "examples.jsonl:12", for messages
    segments: Tuple[SegmentRecord, ...]

    def clips(self) -> List[AudioClip]:
        return [s.audio for s in self.segments if s.audio is not None]

    def document(self, codes: Sequence[np.ndarray], tokenizer) -> Document:
        """The segments in order, audio from ``codes`` (one array per clip, in ``clips`` order)."""
        remaining = iter(codes)
        return Document(
            [
                audio_segment(next(remaining), tokenizer.layout, s.loss)
                if s.audio is not None
                else text_segment(tokenizer.encode_text(s.text), s.loss)
                for s in self.segments
            ]
        )


def _segment(obj, base_dir: str, source: str) -> SegmentRecord:
    if not isinstance(obj, dict):
        raise _invalid(source, f"a segment must be a JSON object, got {obj!r}", "bad_segment")
    unknown = sorted(set(obj) - SEGMENT_FIELDS)
    if unknown:
        raise _invalid(source, f"segment has unknown fields {unknown} (known: {sorted(SEGMENT_FIELDS)})", "bad_segment")
    if ("text" in obj) == ("audio" in obj):
        raise _invalid(source, "a segment holds exactly one of 'text' and 'audio'", "bad_segment")
    loss = obj.get("loss", True)
    if not isinstance(loss, bool):
        raise _invalid(source, f"segment field 'loss' must be true or false, got {loss!r}", "bad_segment")
    if "text" in obj:
        if "start" in obj or "end" in obj:
            raise _invalid(source, "'start'/'end' belong to audio segments", "bad_segment")
        return SegmentRecord(loss, text=_text(obj, "text", source))
    start, end = parse_span(obj, source)
    return SegmentRecord(loss, audio=AudioClip(_audio(obj, "audio", base_dir, source), start, end))


def parse_generic(obj, base_dir: str, source: str) -> GenericRecord:
    """A generic example line as a record; ValueError with a reason code in ``args[1]`` when invalid."""
    if not isinstance(obj, dict):
        raise _invalid(source, "expected a JSON object", "bad_json")
    segments = obj.get("segments")
    if not isinstance(segments, list) or not segments:
        raise _invalid(source, "field 'segments' must be a non-empty list of text and audio segments", "missing_field")
    parsed = []
    for number, segment in enumerate(segments):
        try:
            parsed.append(_segment(segment, base_dir, source))
        except ValueError as error:
            message = error.args[0].replace(f"{source}: ", f"{source}: segment {number}: ", 1)
            raise ValueError(message, error.args[1]) from None
    return GenericRecord(_example_id(obj, source), source, tuple(parsed))


@dataclass(frozen=True)
class S2STRecord:
    id: str
    source: str
    source_audio: AudioClip
    source_language: str
    source_text: Optional[str]
    target_text: str
    target_audio: AudioClip
    target_language: str
    variant: Variant

    def clips(self) -> List[AudioClip]:
        return [self.source_audio, self.target_audio]

    def document(self, codes: Sequence[np.ndarray], tokenizer) -> Document:
        source_codes, target_codes = codes
        example = S2STExample(
            source_codes, self.source_language, self.source_text, self.target_text, target_codes, self.target_language
        )
        return s2st_document(example, tokenizer, self.variant)


def _language(obj: dict, name: str, source: str, languages: Sequence[str], default: Optional[str] = None) -> str:
    code = obj.get(name, default)
    if code is None:
        raise _invalid(source, f"missing field {name!r}", "missing_field")
    if code not in languages:
        raise _invalid(
            source,
            f"{name} {code!r} is not a known language code ({' '.join(languages)}; --languages sets them)",
            "unknown_language",
        )
    return code


def s2st_parser(languages: Sequence[str], variant: Variant):
    """``parse(obj, base_dir, source) -> S2STRecord`` for CVSS-style lines in the given languages."""

    def parse_s2st(obj, base_dir: str, source: str) -> S2STRecord:
        if not isinstance(obj, dict):
            raise _invalid(source, "expected a JSON object", "bad_json")
        return S2STRecord(
            id=_example_id(obj, source),
            source=source,
            source_audio=AudioClip(_audio(obj, "source_audio", base_dir, source)),
            source_language=_language(obj, "source_language", source, languages),
            source_text=_text(obj, "source_text", source, required=False),
            target_text=_text(obj, "target_text", source),
            target_audio=AudioClip(_audio(obj, "target_audio", base_dir, source)),
            target_language=_language(obj, "target_language", source, languages, default="en"),
            variant=Variant(variant),
        )

    return parse_s2st
