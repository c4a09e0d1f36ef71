"""Rows of a benchmark's public data from a local copy, without the ``datasets`` library.

A task's data may be:

- a ``datasets.save_to_disk`` directory: Arrow files in the IPC *stream* format beside ``state.json``
  (which lists them) and ``dataset_info.json``; a ``DatasetDict`` has one such folder per split and a
  ``dataset_dict.json``;
- a Hub snapshot: parquet files such as ``data/train-00000-of-00001.parquet``, possibly one folder per
  config (``all/train-00000-of-00001.parquet``) or per config and split (``all/train/0000.parquet``);
- a single parquet, Arrow or JSONL file; a directory of JSONL files.

Rows are read a batch at a time (audio columns hold whole encoded files: a table of them is never
materialised), and only the columns a task asks for (tWUGGY reads sWUGGY's data without its audio).
Where a folder holds several splits or configs, the task names the one it wants (``split``/``config``);
with one alone, that one is read whatever its name.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from megatron_soda.codec.audio_io import AudioRejected, check_waveform, load_audio
from megatron_soda.data.manifest import Reject, read_jsonl
from megatron_soda.evaluation.base import Skipped

BATCH_ROWS = 64
"""Rows decoded from Arrow/parquet at a time: 64 clips of a few seconds each, a few MB."""

_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "jsonl"}
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation"}
_SPLIT_ALIASES.update({"dev": "validation", "test": "test"})
_SPLIT_TOKEN = re.compile(r"(?:^|[-_.])(train|validation|valid|val|dev|test)(?=$|[-_.])")


@dataclass(frozen=True)
class DataFile:
    path: str
    format: str
    """``parquet``, ``arrow`` (IPC stream, or file) or ``jsonl``."""
    config: str
    """the folder between the root and the file, split folders and ``data`` left out (``default`` if none)."""
    split: Optional[str]
    """from the file's name (``train-00000-of-00001.parquet``, ``s_wuggy-train.arrow``) or its folder."""


def _split_of(name: str) -> Optional[str]:
    match = _SPLIT_TOKEN.search(name.lower())
    return _SPLIT_ALIASES[match.group(1)] if match else None


def data_files(path: str) -> List[DataFile]:
    """Every readable file at ``path`` (a file or a directory searched recursively; hidden folders such as
    a Hub snapshot's ``.cache`` are skipped), sorted by name. ValueError when there is none."""
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FORMATS:
            raise ValueError(f"{path}: not a dataset file (expected {', '.join(_FORMATS)}, or a directory of them)")
        return [DataFile(path, _FORMATS[ext], "default", _split_of(os.path.basename(path)))]
    if not os.path.isdir(path):
        raise ValueError(f"{path}: no such file or directory")
    found = []
    for directory, subdirs, names in os.walk(path):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        folders = [] if directory == path else os.path.relpath(directory, path).split(os.sep)
        for name in _data_names(directory, names):
            ext = os.path.splitext(name)[1].lower()
            if ext not in _FORMATS or name.startswith("."):
                continue
            split = _split_of(os.path.splitext(name)[0])
            if split is None and folders and folders[-1].lower() in _SPLIT_ALIASES:
                split = _SPLIT_ALIASES[folders[-1].lower()]
            config = "/".join(f for f in folders if f.lower() not in _SPLIT_ALIASES and f != "data") or "default"
            found.append(DataFile(os.path.join(directory, name), _FORMATS[ext], config, split))
    if not found:
        listing = ", ".join(sorted(os.listdir(path))[:10]) or "nothing"
        raise ValueError(
            f"{path}: no dataset files (parquet, arrow or jsonl) in this directory or below it; it holds {listing}. "
            "Pass a save_to_disk directory, a Hub snapshot of parquet files, or a parquet/arrow/jsonl file"
        )
    return found


def _data_names(directory: str, names: Sequence[str]) -> List[str]:
    """The data files among ``names``: a save_to_disk folder's are those ``state.json`` lists, in its order
    (``datasets`` may leave ``cache-*.arrow`` files of a ``map`` beside them); elsewhere all, sorted, less
    such caches."""
    names = sorted(names)
    if "state.json" in names:
        try:
            with open(os.path.join(directory, "state.json"), encoding="utf-8") as f:
                listed = [entry["filename"] for entry in json.load(f)["_data_files"]]
            return [n for n in listed if n in names]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not datasets' state file: read the folder as any other
    return [n for n in names if not n.startswith("cache-")]


def select_files(
    path: str, split: Optional[str] = None, config: Optional[str] = None
) -> Tuple[List[DataFile], Optional[str], str]:
    """The files of one config and one split at ``path``: ``(files, split, config)``.

    ``split``/``config`` are preferences: used when present, ignored when the data has only one; with
    several and no match, a ValueError names them (point ``path`` at the one wanted)."""
    files = data_files(path)

    def choose(values: List, wanted, what: str):
        if len(values) == 1:
            return values[0]
        if wanted in values:
            return wanted
        shown = ", ".join(str(v) for v in values)
        raise ValueError(
            f"{path} holds several {what}s ({shown}), none of them {wanted!r}: point the path at the one to read"
        )

    config = choose(sorted({f.config for f in files}), config, "config")
    files = [f for f in files if f.config == config]
    split = choose(sorted({f.split for f in files}, key=str), split, "split")
    return [f for f in files if f.split == split], split, config


Row = Union[dict, Skipped]


def read_rows(
    path: str,
    columns: Optional[Sequence[str]] = None,
    split: Optional[str] = None,
    config: Optional[str] = None,
) -> Iterator[Tuple[str, Row]]:
    """``(source, row)`` for every row of the dataset at ``path`` (see ``select_files``), in file order.

    ``source`` is ``file:N`` (the row's 0-based index in a parquet/Arrow file, the 1-based line of a JSONL
    file). ``columns`` keeps only those (from parquet/Arrow, only those are read; a column absent from
    the file is absent from its rows). A JSONL line that is not a JSON object comes as a ``Skipped``."""
    files, _, _ = select_files(path, split, config)
    for file in files:
        if file.format == "jsonl":
            yield from _jsonl_rows(file.path, columns)
        else:
            yield from _arrow_rows(file, columns)


def count_rows(path: str, split: Optional[str] = None, config: Optional[str] = None) -> int:
    """Rows ``read_rows`` will yield (a progress bar's total): parquet metadata, Arrow batch lengths (no
    column is read), non-blank JSONL lines."""
    total = 0
    for file in select_files(path, split, config)[0]:
        if file.format == "jsonl":
            with open(file.path, "rb") as f:
                total += sum(1 for line in f if line.strip())
        elif file.format == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(file.path).metadata.num_rows
        else:
            total += sum(batch.num_rows for batch in _record_batches(file, columns=[]))
    return total


def _jsonl_rows(path: str, columns) -> Iterator[Tuple[str, Row]]:
    for source, obj in read_jsonl(path):
        if isinstance(obj, Reject):
            yield source, Skipped(source, obj.reason, obj.message)
        elif not isinstance(obj, dict):
            yield source, Skipped(source, "bad_json", f"{source}: a {type(obj).__name__}, not a JSON object")
        else:
            yield source, obj if columns is None else {k: obj[k] for k in columns if k in obj}


def _arrow_rows(file: DataFile, columns) -> Iterator[Tuple[str, dict]]:
    row = 0
    for batch in _record_batches(file, columns):
        for start in range(0, batch.num_rows, BATCH_ROWS):
            for record in batch.slice(start, BATCH_ROWS).to_pylist():
                yield f"{file.path}:{row}", record
                row += 1


def _record_batches(file: DataFile, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if file.format == "parquet":
            reader = pq.ParquetFile(file.path)
            names = reader.schema_arrow.names
            wanted = None if columns is None else [c for c in columns if c in names]
            yield from reader.iter_batches(batch_size=BATCH_ROWS, columns=wanted)
            return
        source = pa.memory_map(file.path)
        try:
            reader = pa.ipc.open_stream(source)  # what datasets writes
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            reader = (reader.get_batch(i) for i in range(reader.num_record_batches))
        for batch in reader:
            if columns is not None:
                batch = batch.select([c for c in columns if c in batch.schema.names])
            yield batch
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as error:
        raise ValueError(f"{file.path}: not a readable {file.format} file ({error})") from error


def decode_audio(value, base_dir: str, source: str = "audio") -> Tuple[np.ndarray, int]:
    """``(wave, sample_rate)``: mono float32, non-empty and finite, from one audio cell.

    Accepts datasets' stored Audio struct ``{"bytes": <file bytes>, "path": ...}`` (bytes decoded with
    soundfile; without bytes, ``path`` is read, relative to ``base_dir``), a decoded
    ``{"array": [...], "sampling_rate": int}``, or a path string (JSONL). Raises ``AudioRejected`` naming
    ``source`` and the problem."""
    import soundfile as sf

    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        raise AudioRejected(
            "unreadable",
            f"{source}: audio is a {type(value).__name__}; expected a {{bytes, path}} or {{array, sampling_rate}} "
            "struct or a file path",
        )
    if value.get("bytes") is not None:
        try:
            data, rate = sf.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, TypeError) as error:
            raise AudioRejected("unreadable", f"{source}: cannot decode the audio bytes: {error}") from error
        return _checked(data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0], rate, source)
    if value.get("array") is not None:
        rate = value.get("sampling_rate")
        if not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise AudioRejected("unreadable", f"{source}: audio array without a valid sampling_rate ({rate!r})")
        try:
            wave = np.asarray(value["array"], dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise AudioRejected("unreadable", f"{source}: audio array is not numeric: {error}") from error
        if wave.ndim == 2:  # datasets' [channels, samples]
            wave = wave.mean(axis=0)
        if wave.ndim != 1:
            raise AudioRejected("unreadable", f"{source}: audio array of shape {list(wave.shape)}; expected 1-D")
        return _checked(wave, int(rate), source)
    if value.get("path"):
        try:
            return _checked(*load_audio(_resolve(value["path"], base_dir)), source)
        except AudioRejected as error:
            raise AudioRejected(error.reason, f"{source}: {error}") from error
    raise AudioRejected("unreadable", f"{source}: audio struct holds neither bytes, an array nor a path")


def _resolve(path: str, base_dir: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base_dir, path)


def _checked(wave: np.ndarray, rate: int, source: str) -> Tuple[np.ndarray, int]:
    """No clip is too short or long to score: only empty and non-finite audio is refused."""
    check_waveform(wave, rate, source, min_seconds=0.0, max_seconds=float("inf"))
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


def base_dir_of(path: str) -> str:
    """Where relative audio paths of the data at ``path`` start: its directory (or itself)."""
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def missing_fields(row: dict, fields: Sequence[str]) -> List[str]:
    """Fields a row lacks or holds null."""
    return [f for f in fields if row.get(f) is None]
