"""The shipped demo speech corpus (data/demo_corpus, made by tools/make_demo_corpus.py): complete, consistent,
small. Reads the files only; needs no espeak-ng."""

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "demo_corpus"
TOOL = REPO / "tools" / "make_demo_corpus.py"
MAX_BYTES = 5_000_000
FIELDS = {"id", "audio", "text", "speaker", "recording", "index", "start", "end", "duration", "language"}


def read_jsonl(path: Path) -> list:
    rows = []
    for number, line in enumerate(path.read_bytes().decode("utf-8").splitlines(), 1):  # strict UTF-8
        assert line.strip(), f"{path.name}:{number}: empty line"
        row = json.loads(line)
        assert isinstance(row, dict), f"{path.name}:{number}: not a JSON object"
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def manifest():
    return read_jsonl(CORPUS / "manifest.jsonl")


@pytest.fixture(scope="module")
def audio_info(manifest):
    """audio path -> (frames, sample rate), each file decoded once."""
    info = {}
    for path in sorted({row["audio"] for row in manifest}):
        data, sr = sf.read(CORPUS / path, dtype="int16")
        assert data.ndim == 1 and len(data) > 0, path
        assert abs(int(data.astype("int32").max())) > 1000, f"{path} is (nearly) silent"
        info[path] = (len(data), sr)
    return info


def test_files_present_and_small():
    for name in ("manifest.jsonl", "text.jsonl", "README.md"):
        assert (CORPUS / name).is_file(), name
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert total <= MAX_BYTES, f"demo corpus is {total} bytes, over {MAX_BYTES}"


def test_manifest_fields(manifest):
    assert len(manifest) >= 50
    ids = [row["id"] for row in manifest]
    assert len(set(ids)) == len(ids), "duplicate ids"
    for row in manifest:
        assert set(row) <= FIELDS, f"{row['id']}: unexpected fields {set(row) - FIELDS}"
        assert {"audio", "text", "speaker", "recording", "index", "duration", "language"} <= set(row), row
        assert isinstance(row["text"], str) and row["text"].strip() == row["text"] and row["text"], row
        assert 4 <= len(row["text"].split()) <= 20, row["text"]
        assert row["language"] == "en"
        assert isinstance(row["index"], int) and row["index"] >= 0
        assert ("start" in row) == ("end" in row), f"{row['id']}: start without end or end without start"
        audio = Path(row["audio"])
        assert not audio.is_absolute() and ".." not in audio.parts, row["audio"]
        assert 1.0 <= row["duration"] <= 8.0, row
    assert len({row["speaker"] for row in manifest}) >= 4


def test_audio_reads_back_with_stated_durations(manifest, audio_info):
    rates = {sr for _, sr in audio_info.values()}
    assert rates == {16000}, rates
    for row in manifest:
        frames, sr = audio_info[row["audio"]]
        seconds = frames / sr
        one_frame = 1.0 / sr
        if "start" in row:  # a segment of a long recording
            assert 0.0 <= row["start"] < row["end"] <= seconds + one_frame, (row, seconds)
            assert abs((row["end"] - row["start"]) - row["duration"]) <= one_frame, row
        else:  # the whole file
            assert abs(seconds - row["duration"]) <= one_frame, (row, seconds)


def test_recordings(manifest):
    recordings = defaultdict(list)
    for row in manifest:
        recordings[row["recording"]].append(row)
    assert len(recordings) >= 10
    long_recordings = 0
    for name, rows in recordings.items():
        assert len(rows) >= 2, f"recording {name} has {len(rows)} utterance(s)"
        assert sorted(row["index"] for row in rows) == list(range(len(rows))), name
        files = {row["audio"] for row in rows}
        segmented = ["start" in row for row in rows]
        assert all(segmented) or not any(segmented), f"{name} mixes segments and whole files"
        if all(segmented):  # one long file: segments in index order, not overlapping
            long_recordings += 1
            assert len(files) == 1, name
            ordered = sorted(rows, key=lambda row: row["start"])
            assert [row["index"] for row in ordered] == list(range(len(rows))), name
            for a, b in zip(ordered, ordered[1:]):
                assert a["end"] <= b["start"], (a["id"], b["id"])
        else:
            assert len(files) == len(rows), f"{name}: one file per utterance expected"
    assert long_recordings >= 1, "no long recording with segments"


def test_text_documents():
    docs = read_jsonl(CORPUS / "text.jsonl")
    assert len(docs) >= 50
    for doc in docs:
        assert isinstance(doc.get("text"), str) and doc["text"].strip(), doc


def test_generator_cli_without_espeak(tmp_path):
    """--help works anywhere; a missing espeak-ng is a clear error, not a traceback."""
    help_run = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "--output-dir" in help_run.stdout
    run = subprocess.run(
        [sys.executable, str(TOOL), "--output-dir", str(tmp_path / "out"), "--espeak", "no-such-espeak-ng-binary"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "espeak-ng not found" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
