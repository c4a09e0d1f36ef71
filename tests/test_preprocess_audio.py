"""Speech preprocessing end to end: demo corpus -> shards; bad input rejected; kill and resume."""

import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_soda.codec import CodecConfig
from megatron_soda.codec.tiny import TINY_MIMI
from megatron_soda.data.audio_pipeline import AudioPreprocessConfig, preprocess_audio
from megatron_soda.data.formats import Kind, parse
from megatron_soda.data.indexed_dataset import validate_dataset
from megatron_soda.tokenizer import build_soda_tokenizer, save_soda_tokenizer, train_bpe

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "demo_corpus"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    texts = [json.loads(line)["text"] for line in open(CORPUS / "manifest.jsonl", encoding="utf-8")]
    path = tmp_path_factory.mktemp("tok") / "soda"
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(texts, vocab_size=400)), path)
    return str(path)


def corpus_subset(tmp_path, recordings=6):
    """The first recordings of the demo corpus, as a manifest with absolute audio paths."""
    keep, lines = set(), []
    for line in open(CORPUS / "manifest.jsonl", encoding="utf-8"):
        record = json.loads(line)
        if record["recording"] not in keep and len(keep) == recordings:
            continue
        keep.add(record["recording"])
        record["audio"] = str(CORPUS / record["audio"])
        lines.append(json.dumps(record))
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, len(lines), len(keep)


def config(inputs, output_dir, tokenizer_dir, **overrides):
    options = dict(
        codec=CodecConfig(random_init=True, config_overrides=TINY_MIMI),
        documents_per_shard=2,
        workers=0,
        progress=False,
    )
    options.update(overrides)
    return AudioPreprocessConfig(
        inputs=[str(p) for p in inputs], output_dir=str(output_dir), tokenizer=tokenizer_dir, **options
    )


def shard_files(output_dir):
    shards = Path(output_dir) / "shards"
    return sorted(p.name for p in shards.iterdir() if ".tmp-" not in p.name)


def test_demo_corpus_becomes_valid_sequences_in_both_orders(tmp_path, tokenizer_dir):
    from megatron_soda.tokenizer import load_soda_tokenizer

    manifest, utterances, recordings = corpus_subset(tmp_path)
    report = preprocess_audio(config([manifest], tmp_path / "out", tokenizer_dir, workers=2))
    assert (report["utterances"], report["documents"], report["sequences"]) == (utterances, recordings, 2 * recordings)
    assert report["rejects"] == {} and report["shards"] == 3 and report["hours"] > 0

    layout = load_soda_tokenizer(tokenizer_dir).layout
    tokens = IndexedDataset(str(tmp_path / "out" / "shards" / "tokens_00000"))
    codes = IndexedDataset(str(tmp_path / "out" / "shards" / "codes_00000"))
    assert validate_dataset(tmp_path / "out" / "shards" / "tokens_00000", layout.vocab_size).ok
    first, second = parse(tokens[0], layout), parse(tokens[1], layout)  # document 0, text-first then audio-first
    assert [s.kind for s in first.segments[:2]] == [Kind.TEXT, Kind.AUDIO]
    assert [s.kind for s in second.segments[:2]] == [Kind.AUDIO, Kind.TEXT]
    # The raw codes of document 0 are exactly the audio of its rendered sequence.
    audio = [s.ids for s in first.segments if s.kind is Kind.AUDIO]
    n = codes.document_indices[1]
    assert len(audio) == n
    for k in range(n):
        np.testing.assert_array_equal(audio[k] - layout.audio_offset, codes[k])
    meta = [json.loads(line) for line in open(tmp_path / "out" / "shards" / "meta_00000.jsonl", encoding="utf-8")]
    assert len(meta) == codes.document_indices[-1] and all(m["frames"] * 8 == len(c) for m, c in zip(meta, codes))


def write_bad_inputs(tmp_path):
    """A manifest with two good utterances and one record of each kind of bad input."""
    rate = 16_000
    good = [0.2 * np.sin(np.linspace(0, 400, rate * 2)).astype(np.float32) for _ in range(2)]
    for i, wave in enumerate(good):
        sf.write(tmp_path / f"good{i}.wav", wave, rate)
    (tmp_path / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    sf.write(tmp_path / "truncated.wav", good[0], rate)
    data = (tmp_path / "truncated.wav").read_bytes()
    (tmp_path / "truncated.wav").write_bytes(data[: len(data) // 2])
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), rate)
    nan = good[0].copy()
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, rate, subtype="FLOAT")
    sf.write(tmp_path / "long.wav", np.zeros(rate * 8, np.float32) + 0.1, rate)
    sf.write(tmp_path / "short.wav", np.zeros(rate // 100, np.float32) + 0.1, rate)
    records = [
        {"audio": "good0.wav", "text": "first good one", "recording": "a"},
        {"audio": "garbage.wav", "text": "random bytes", "recording": "a"},
        {"audio": "truncated.wav", "text": "cut in half", "recording": "a"},
        {"audio": "empty.wav", "text": "no samples", "recording": "b"},
        {"audio": "nan.wav", "text": "not a number", "recording": "b"},
        {"audio": "long.wav", "text": "too long", "recording": "b"},
        {"audio": "short.wav", "text": "too short", "recording": "b"},
        {"audio": "missing.wav", "text": "no such file", "recording": "b"},
        {"audio": "good1.wav", "recording": "b"},
        {"audio": "good1.wav", "text": "   ", "recording": "b"},
        {"audio": "good1.wav", "text": "second good one", "recording": "b"},
    ]
    lines = [json.dumps(r).encode() for r in records]
    lines.insert(3, b'{"audio": "good1.wav", "text": "caf\xe9 latin-1"}')
    lines.insert(4, b'{"audio": "good1.wav", "text": ')
    (tmp_path / "manifest.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return tmp_path / "manifest.jsonl"


def test_each_kind_of_bad_input_is_rejected_with_its_reason_and_the_rest_survives(tmp_path, tokenizer_dir):
    manifest = write_bad_inputs(tmp_path)
    report = preprocess_audio(config([manifest], tmp_path / "out", tokenizer_dir, max_seconds=5.0, min_seconds=0.1))
    expected = {
        "unreadable": 3,
        "empty": 1,
        "non_finite": 1,
        "too_long": 1,
        "too_short": 1,
        "missing_field": 1,
        "empty_text": 1,
        "non_utf8": 1,
        "bad_json": 1,
    }
    assert report["rejects"] == expected
    assert report["utterances"] == 2 and report["documents"] == 2
    rejects = [json.loads(line) for p in sorted((tmp_path / "out").rglob("rejects*.jsonl")) for line in open(p)]
    by_reason = {r["reason"]: r["message"] for r in rejects}
    assert "missing.wav" in by_reason["unreadable"] or any("missing.wav" in r["message"] for r in rejects)
    assert "nan.wav" in by_reason["non_finite"] and "long.wav" in by_reason["too_long"]
    assert "manifest.jsonl:4" in by_reason["non_utf8"] and "manifest.jsonl:5" in by_reason["bad_json"]
    meta = [json.loads(line) for p in sorted((tmp_path / "out" / "shards").glob("meta_*.jsonl")) for line in open(p)]
    assert [m["text"] for m in meta] == ["first good one", "second good one"]


CHILD = """
import sys
from megatron_soda.codec import CodecConfig
from megatron_soda.data.audio_pipeline import AudioPreprocessConfig, preprocess_audio
manifest, output_dir, tokenizer = sys.argv[1:4]
preprocess_audio(AudioPreprocessConfig(
    inputs=[manifest], output_dir=output_dir, tokenizer=tokenizer, documents_per_shard=1, workers=0, progress=False,
    codec=CodecConfig(random_init=True, config_overrides=%r)))
""" % (TINY_MIMI,)


def run_child(manifest, output_dir, tokenizer_dir, env=None, wait=True):
    args = [sys.executable, "-c", CHILD, str(manifest), str(output_dir), tokenizer_dir]
    if wait:
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def assert_same_outputs(a, b):
    names = shard_files(a)
    assert names == shard_files(b)
    for name in names:
        assert filecmp.cmp(Path(a) / "shards" / name, Path(b) / "shards" / name, shallow=False), name
    assert json.loads((Path(a) / "report.json").read_text()) == json.loads((Path(b) / "report.json").read_text())


def test_killed_job_resumed_with_the_same_command_equals_an_uninterrupted_run(tmp_path, tokenizer_dir):
    manifest, _, _ = corpus_subset(tmp_path, recordings=4)
    assert run_child(manifest, tmp_path / "whole", tokenizer_dir).returncode == 0

    # 1. Killed inside shard 0, right after its token dataset committed but before the shard did.
    env = {**os.environ, "MEGATRON_SODA_CRASH_AT": "idx_renamed"}
    assert run_child(manifest, tmp_path / "resumed", tokenizer_dir, env=env).returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed" / "shards" / "shard_00000.json").exists()
    # 2. Resumed, then killed from outside once two shards have committed.
    child = run_child(manifest, tmp_path / "resumed", tokenizer_dir, wait=False)
    deadline = time.time() + 200
    while not (tmp_path / "resumed" / "shards" / "shard_00001.json").exists() and child.poll() is None:
        assert time.time() < deadline
        time.sleep(0.02)
    child.kill()
    child.wait()
    # 3. Resumed to the end.
    result = run_child(manifest, tmp_path / "resumed", tokenizer_dir)
    assert result.returncode == 0, result.stderr
    assert_same_outputs(tmp_path / "whole", tmp_path / "resumed")


def test_a_changed_job_is_not_mixed_with_old_shards(tmp_path, tokenizer_dir):
    manifest, _, _ = corpus_subset(tmp_path, recordings=2)
    preprocess_audio(config([manifest], tmp_path / "out", tokenizer_dir))
    with pytest.raises(ValueError, match="different job"):
        preprocess_audio(config([manifest], tmp_path / "out", tokenizer_dir, documents_per_shard=1))
    report = preprocess_audio(
        config([manifest], tmp_path / "out", tokenizer_dir, documents_per_shard=1, overwrite=True)
    )
    assert report["shards"] == 2 and "shard_00001.json" in shard_files(tmp_path / "out")


def test_a_directory_of_audio_with_transcripts_is_an_input(tmp_path, tokenizer_dir):
    audio_dir = tmp_path / "clips"
    audio_dir.mkdir()
    for i in range(3):
        sf.write(
            audio_dir / f"clip{i}.wav",
            0.1 * np.random.default_rng(i).standard_normal(24_000).astype(np.float32),
            24_000,
        )
        if i < 2:
            (audio_dir / f"clip{i}.txt").write_text(f"clip number {i}", encoding="utf-8")
    report = preprocess_audio(config([audio_dir], tmp_path / "out", tokenizer_dir))
    assert (report["utterances"], report["documents"], report["rejects"]) == (2, 2, {"missing_field": 1})


def test_one_order_per_document_by_probability(tmp_path, tokenizer_dir):
    from megatron_soda.tokenizer import load_soda_tokenizer

    manifest, _, recordings = corpus_subset(tmp_path, recordings=4)
    report = preprocess_audio(config([manifest], tmp_path / "out", tokenizer_dir, text_first_probability=0.0))
    assert report["sequences"] == recordings
    layout = load_soda_tokenizer(tokenizer_dir).layout
    tokens = IndexedDataset(str(tmp_path / "out" / "shards" / "tokens_00000"))
    assert all(parse(tokens[i], layout).segments[0].kind is Kind.AUDIO for i in range(len(tokens)))


def test_a_transcript_that_is_not_valid_unicode_is_a_reject_not_a_crash(tmp_path, tokenizer_dir):
    manifest, _, _ = corpus_subset(tmp_path, recordings=1)
    lines = manifest.read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[0])
    bad["text"] = "broken \ud800 text"
    lines.append(json.dumps(bad))  # json escapes the lone surrogate as \\ud800
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = preprocess_audio(config([manifest], tmp_path / "out", tokenizer_dir))
    assert report["rejects"] == {"non_utf8": 1} and report["utterances"] == len(lines) - 1


def test_a_file_added_to_an_input_directory_makes_a_new_job(tmp_path, tokenizer_dir):
    audio_dir = tmp_path / "clips" / "sub"
    audio_dir.mkdir(parents=True)
    for name in ("b", "c"):
        sf.write(audio_dir / f"{name}.wav", 0.1 * np.ones(24_000, np.float32), 24_000)
        (audio_dir / f"{name}.txt").write_text(name, encoding="utf-8")
    preprocess_audio(config([tmp_path / "clips"], tmp_path / "out", tokenizer_dir, documents_per_shard=1))
    sf.write(audio_dir / "a.wav", 0.1 * np.ones(24_000, np.float32), 24_000)
    (audio_dir / "a.txt").write_text("a", encoding="utf-8")
    with pytest.raises(ValueError, match="different job"):
        preprocess_audio(config([tmp_path / "clips"], tmp_path / "out", tokenizer_dir, documents_per_shard=1))


def test_overwrite_removes_only_what_the_job_wrote(tmp_path, tokenizer_dir):
    manifest, _, _ = corpus_subset(tmp_path, recordings=1)
    out = tmp_path  # the job shares its directory with its input and an unrelated file
    (tmp_path / "settings.json").write_text("{}")
    preprocess_audio(config([manifest], out, tokenizer_dir))
    preprocess_audio(config([manifest], out, tokenizer_dir, overwrite=True))
    assert manifest.exists() and (tmp_path / "settings.json").exists()


def test_a_too_long_file_is_rejected_from_its_header_without_decoding(tmp_path, monkeypatch):
    from megatron_soda.data import audio_decode

    sf.write(tmp_path / "long.wav", np.zeros(16_000 * 8, np.float32), 16_000)
    monkeypatch.setattr(audio_decode, "load_audio", lambda *a: pytest.fail("decoded a file its header already refused"))
    result = audio_decode.decode(audio_decode.DecodeTask(str(tmp_path / "long.wav"), None, None, 24_000, 0.1, 5.0))
    assert (result.wave, result.reason) == (None, "too_long") and "8.0 s" in result.message
    segment = audio_decode.decode(audio_decode.DecodeTask(str(tmp_path / "long.wav"), 1.0, 7.5, 24_000, 0.1, 5.0))
    assert segment.reason == "too_long" and "6.5 s" in segment.message
