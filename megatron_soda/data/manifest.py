"""Speech manifests: utterance records, the rejects they produce, and their grouping into documents.

JSONL fields (one utterance per line): ``audio`` (path, relative to the manifest), ``text``, and
optionally ``id``, ``speaker``, ``recording`` (the key that groups utterances into one document),
``start``/``end`` (seconds within the audio file, for segments of long recordings), ``index``
(order within a recording when utterances are separate files), ``duration``, ``language``. Unknown
fields are kept in ``extra``. A bad line is a reject with its reason, never a crash.

A directory of audio files with same-named ``.txt`` transcripts works too (each file one document).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from itertools import groupby
from typing import Callable, Dict, Iterator, List, Optional, Tuple, TypeVar, Union

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")
T = TypeVar("T")
KNOWN_FIELDS = {"audio", "text", "id", "speaker", "recording", "start", "end", "index", "duration", "language"}


@dataclass(frozen=True)
class UtteranceRecord:
    id: str
    audio: str  # absolute path
    text: str
    source: str  # "manifest.jsonl:12", for messages
    speaker: Optional[str] = None
    recording: Optional[str] = None
    start: Optional[float] = None
    end: Optional[float] = None
    index: Optional[int] = None
    duration: Optional[float] = None
    language: Optional[str] = None
    extra: Dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Reject:
    source: str
    reason: str  # a stable code: bad_json, missing_field, empty_text, non_utf8, bad_segment, unreadable, ...
    message: str
    id: Optional[str] = None

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "id": self.id, "reason": self.reason, "message": self.message})


def is_encodable(text: str) -> bool:
    """False for strings JSON allows but UTF-8 cannot hold (lone surrogates such as "\\ud800")."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _optional_number(value, name: str, source: str, kind=float):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{source}: field {name!r} must be a number, got {value!r}", "bad_segment")
    return kind(value)


def parse_span(obj: dict, source: str) -> Tuple[Optional[float], Optional[float]]:
    """A record's optional ``start``/``end`` seconds within its audio file (ValueError: ``bad_segment``)."""
    start = _optional_number(obj.get("start"), "start", source)
    end = _optional_number(obj.get("end"), "end", source)
    if start is not None and (start < 0 or (end is not None and end <= start)):
        raise ValueError(f"{source}: segment [{start}, {end}) is empty or negative", "bad_segment")
    return start, end


def parse_record(obj: dict, base_dir: str, source: str) -> UtteranceRecord:
    """One manifest object as a record; ValueError with a reason code in ``args[1]`` when invalid."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a JSON object", "bad_json")
    for name in ("audio", "text"):
        if name not in obj or obj[name] is None:
            raise ValueError(f"{source}: missing field {name!r}", "missing_field")
    text, audio = obj["text"], obj["audio"]
    if not isinstance(audio, str) or not audio:
        raise ValueError(f"{source}: field 'audio' must be a non-empty path", "missing_field")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{source}: empty transcript", "empty_text")
    if not is_encodable(text):
        raise ValueError(f"{source}: transcript is not valid Unicode (lone surrogate escape)", "non_utf8")
    start, end = parse_span(obj, source)
    index = _optional_number(obj.get("index"), "index", source, int)
    duration = _optional_number(obj.get("duration"), "duration", source)
    return UtteranceRecord(
        id=str(obj.get("id") or f"{os.path.basename(source)}"),
        audio=os.path.normpath(os.path.join(base_dir, audio)),
        text=text,
        source=source,
        speaker=None if obj.get("speaker") is None else str(obj["speaker"]),
        recording=None if obj.get("recording") is None else str(obj["recording"]),
        start=start,
        end=end,
        index=index,
        duration=duration,
        language=obj.get("language"),
        extra={k: v for k, v in obj.items() if k not in KNOWN_FIELDS},
    )


def read_jsonl(path: str) -> Iterator[Tuple[str, Union[object, Reject]]]:
    """(source, parsed object or Reject) per non-blank line; each line is decoded on its own, so one
    bad line (not UTF-8, not JSON) loses only itself."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            source = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                yield source, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                yield source, Reject(source, "non_utf8", f"{source}: not UTF-8 ({error.reason} at byte {error.start})")
            except json.JSONDecodeError as error:
                yield source, Reject(source, "bad_json", f"{source}: {error.msg} at column {error.colno}")


def read_records(path: str, parse: Callable[[object, str, str], T]) -> Tuple[List[T], List[Reject]]:
    """Records and rejects of a JSONL file: ``parse(obj, base_dir, source)`` per line, where ``base_dir``
    (the file's folder) resolves relative paths and a ``ValueError(message, reason)`` is a reject."""
    base_dir = os.path.dirname(os.path.abspath(path))
    records, rejects = [], []
    for source, obj in read_jsonl(path):
        if isinstance(obj, Reject):
            rejects.append(obj)
            continue
        try:
            records.append(parse(obj, base_dir, source))
        except ValueError as error:
            reason = error.args[1] if len(error.args) > 1 else "invalid"
            rejects.append(Reject(source, reason, error.args[0], obj.get("id") if isinstance(obj, dict) else None))
    return records, rejects


def read_manifest(path: str) -> Tuple[List[UtteranceRecord], List[Reject]]:
    """Records and rejects of a JSONL manifest."""
    return read_records(path, parse_record)


def rejects_jsonl(rejects) -> str:
    """A rejects file's text: one JSON object per reject."""
    return "".join(r.to_json() + "\n" for r in rejects)


def read_audio_directory(path: str) -> Tuple[List[UtteranceRecord], List[Reject]]:
    """Audio files under ``path`` with transcripts in same-named ``.txt`` files; each file is one document."""
    records, rejects = [], []
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in AUDIO_EXTENSIONS:
                continue
            audio = os.path.join(root, name)
            transcript = os.path.join(root, stem + ".txt")
            source = os.path.relpath(audio, path)
            try:
                with open(transcript, "rb") as f:
                    text = f.read().decode("utf-8").strip()
            except FileNotFoundError:
                rejects.append(Reject(source, "missing_field", f"{audio}: no transcript {transcript}", stem))
                continue
            except UnicodeDecodeError:
                rejects.append(Reject(source, "non_utf8", f"{transcript}: not UTF-8", stem))
                continue
            if not text:
                rejects.append(Reject(source, "empty_text", f"{transcript}: empty transcript", stem))
                continue
            records.append(UtteranceRecord(id=source, audio=audio, text=text, source=source))
    return records, rejects


def read_inputs(paths: List[str]) -> Tuple[List[UtteranceRecord], List[Reject]]:
    """Records from manifests (``.jsonl``) and audio directories, in the order given."""
    records, rejects = [], []
    for path in paths:
        if os.path.isdir(path):
            r, j = read_audio_directory(path)
        elif os.path.isfile(path):
            r, j = read_manifest(path)
        else:
            raise FileNotFoundError(f"input {path} is neither a manifest file nor a directory")
        records += r
        rejects += j
    return records, rejects


def group_documents(
    records: List[UtteranceRecord], max_document_seconds: Optional[float] = 60.0
) -> List[List[UtteranceRecord]]:
    """Utterances grouped into documents by ``recording`` (in first-appearance order), each in time order.

    An utterance without a recording key is a document of its own. Documents longer than
    ``max_document_seconds`` (known durations only) are split into consecutive chunks, as SODA's
    YODAS2 preparation caps them at 60 s.
    """
    order: Dict[str, int] = {}
    keyed = []
    for position, record in enumerate(records):
        key = record.recording if record.recording is not None else f"\0{position}"
        order.setdefault(key, len(order))
        keyed.append((order[key], record))
    keyed.sort(key=lambda item: (item[0], item[1].start or 0.0, item[1].index or 0))
    documents = []
    for _, group in groupby(keyed, key=lambda item: item[0]):
        documents += _split_long([record for _, record in group], max_document_seconds)
    return documents


def _seconds(record: UtteranceRecord) -> float:
    if record.start is not None and record.end is not None:
        return record.end - record.start
    return record.duration or 0.0


def _split_long(document: List[UtteranceRecord], cap: Optional[float]) -> List[List[UtteranceRecord]]:
    if cap is None:
        return [document]
    chunks, current, seconds = [], [], 0.0
    for record in document:
        if current and seconds + _seconds(record) > cap:
            chunks.append(current)
            current, seconds = [], 0.0
        current.append(record)
        seconds += _seconds(record)
    return chunks + [current] if current else chunks
