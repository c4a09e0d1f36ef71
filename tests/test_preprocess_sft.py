"""Fine-tuning preprocessing: examples -> token shards whose loss flags cover exactly what is trained; bad
records rejected with reasons; kill and resume; the CLI end to end."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_soda.codec import CodecConfig
from megatron_soda.codec.tiny import TINY_MIMI
from megatron_soda.data.formats import Kind, parse
from megatron_soda.data.indexed_dataset import has_loss_mask, read_loss_mask, validate_dataset
from megatron_soda.data.sft_pipeline import SFTPreprocessConfig, preprocess_sft
from megatron_soda.tokenizer import build_soda_tokenizer, load_soda_tokenizer, save_soda_tokenizer, train_bpe
from tests.test_preprocess_audio import assert_same_outputs

ROOT = Path(__file__).resolve().parents[1]
RATE = 24_000  # Mimi's: 12.5 frames (100 tokens of 8 codebooks) per second

PAIRS = [
    ("fr", "le chat dort", "the cat sleeps"),
    ("de", "der hund bellt", "the dog barks"),
    ("es", "el pez nada", "the fish swims"),
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    texts = [t for _, source, target in PAIRS for t in (source, target)]
    texts += [f"<language>{code}</language>" for code in ("fr", "de", "es", "en")]
    path = tmp_path_factory.mktemp("sft_tok") / "soda"
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(texts * 4, vocab_size=300)), path)
    return str(path)


def write_wav(path: Path, seconds: float, pitch: float) -> str:
    t = np.arange(int(seconds * RATE)) / RATE
    sf.write(path, (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32), RATE)
    return path.name


def s2st_line(folder: Path, number: int, seconds: float = 0.48, **changes) -> str:
    """One CVSS-style record of pair ``number`` with its two wavs written beside the JSONL (relative paths)."""
    language, source, target = PAIRS[number % len(PAIRS)]
    record = {
        "id": f"ex{number}",
        "source_audio": write_wav(folder / f"src{number}.wav", seconds, 200 + 40 * number),
        "source_language": language,
        "source_text": source,
        "target_text": target,
        "target_audio": write_wav(folder / f"tgt{number}.wav", 0.48, 500 + 40 * number),
    }
    record.update(changes)
    return json.dumps({k: v for k, v in record.items() if v is not None})


def write_jsonl(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def config(inputs, output_dir, tokenizer_dir, **overrides):
    options = dict(
        seq_length=200,
        codec=CodecConfig(random_init=True, config_overrides=TINY_MIMI),
        documents_per_shard=10,
        workers=0,
        progress=False,
    )
    options.update(overrides)
    return SFTPreprocessConfig(
        inputs=[str(p) for p in inputs], output_dir=str(output_dir), tokenizer=tokenizer_dir, **options
    )


def stored(output_dir, shard=0):
    """(token sequences, their loss flags split the same way) of one shard."""
    prefix = str(Path(output_dir) / "shards" / f"tokens_{shard:05d}")
    assert has_loss_mask(prefix)
    sequences = [np.asarray(s, np.int64) for s in IndexedDataset(prefix)]
    flags = np.split(read_loss_mask(prefix).astype(bool), np.cumsum([len(s) for s in sequences])[:-1])
    return sequences, flags


@pytest.fixture(scope="module")
def clean_s2st(tokenizer_dir, tmp_path_factory):
    """The three S2ST pairs preprocessed with --variant sft (the default): no rejects."""
    root = tmp_path_factory.mktemp("clean")
    examples = write_jsonl(root / "examples.jsonl", [s2st_line(root, k) for k in range(len(PAIRS))])
    report = preprocess_sft(config([examples], root / "out", tokenizer_dir, format="s2st"))
    return root, report


def test_s2st_sft_variant_flags_exactly_the_target_text_target_audio_and_end_of_text(clean_s2st, tokenizer_dir):
    root, report = clean_s2st
    assert (report["examples"], report["shards"], report["rejects"]) == (3, 1, {})
    tokenizer = load_soda_tokenizer(tokenizer_dir)
    layout = tokenizer.layout
    assert validate_dataset(root / "out" / "shards" / "tokens_00000", layout.vocab_size).ok
    sequences, flags = stored(root / "out")
    for (language, source, target), ids, mask in zip(PAIRS, sequences, flags):
        segments = parse(ids, layout).segments
        assert [s.kind for s in segments] == [Kind.AUDIO, Kind.TEXT, Kind.TEXT, Kind.AUDIO]
        source_audio, target_audio = (tokenizer.ids_to_string(segments[k].ids) for k in (0, 3))
        assert tokenizer.ids_to_string(ids[~mask]) == (
            f"<|begin_of_text|><|audio_start|>{source_audio}<|audio_end|>"
            f"<|text_start|><language>{language}</language>{source}<|text_end|>"
        )
        assert tokenizer.ids_to_string(ids[mask]) == (
            f"<|text_start|><language>en</language>{target}<|text_end|>"
            f"<|audio_start|>{target_audio}<|audio_end|><|end_of_text|>"
        )
    meta = [json.loads(line) for line in open(root / "out" / "shards" / "meta_00000.jsonl", encoding="utf-8")]
    assert [m["id"] for m in meta] == ["ex0", "ex1", "ex2"] and meta[0]["source"].endswith("examples.jsonl:1")
    assert [m["trained_tokens"] for m in meta] == [int(m.sum()) for m in flags]


def test_s2st_lm_variant_flags_every_token_after_begin_of_text(clean_s2st, tokenizer_dir):
    root, _ = clean_s2st
    report = preprocess_sft(config([root / "examples.jsonl"], root / "lm", tokenizer_dir, format="s2st", variant="lm"))
    assert report["trained_tokens"] == report["tokens"] - report["examples"]  # all but each <|begin_of_text|>
    (sft_ids, _), (lm_ids, lm_flags) = stored(root / "out"), stored(root / "lm")
    for a, b, mask in zip(sft_ids, lm_ids, lm_flags):
        np.testing.assert_array_equal(a, b)  # the same sequence, other flags
        assert not mask[0] and mask[1:].all()


def test_a_generic_example_stores_each_segments_flag_on_its_tokens_and_markers(tmp_path, tokenizer_dir):
    segments = [
        {"audio": write_wav(tmp_path / "question.wav", 0.4, 300), "loss": False},
        {"text": "the cat sleeps", "loss": False},
        {"text": "the dog barks", "loss": True},
        {"audio": write_wav(tmp_path / "answer.wav", 0.56, 600), "loss": True, "start": 0.08},
        {"text": "the fish swims", "loss": False},
    ]
    examples = write_jsonl(tmp_path / "generic.jsonl", [json.dumps({"id": "g", "segments": segments})])
    report = preprocess_sft(config([examples], tmp_path / "out", tokenizer_dir, seq_length=4096))
    assert (report["examples"], report["rejects"]) == (1, {})
    layout = load_soda_tokenizer(tokenizer_dir).layout
    (ids,), (mask,) = stored(tmp_path / "out")
    parsed = parse(ids, layout).segments
    assert [s.kind for s in parsed] == [Kind.AUDIO, Kind.TEXT, Kind.TEXT, Kind.AUDIO, Kind.TEXT]
    assert len(parsed[3].ids) == 6 * layout.num_codebooks  # 0.48 s from start=0.08: 6 frames
    expected = [False]  # <|begin_of_text|>
    for segment, spec in zip(parsed, segments):
        expected += [spec["loss"]] * (len(segment.ids) + 2)  # its markers carry its flag
    expected.append(segments[-1]["loss"])  # <|end_of_text|> takes the last segment's
    assert mask.tolist() == expected


def test_bad_records_are_rejected_with_reasons_and_the_good_ones_of_the_shard_are_stored_intact(
    clean_s2st, tokenizer_dir
):
    root, _ = clean_s2st
    folder = root / "bad"
    folder.mkdir()
    lines = [
        s2st_line(folder, 0),
        s2st_line(folder, 3, target_audio="missing.wav"),  # no such file
        s2st_line(folder, 1),
        s2st_line(folder, 4, source_language="xx"),
        '{"id": "broken", "source_audio": ',  # a malformed line
        s2st_line(folder, 5, seconds=2.4),  # 30 source frames: 240 tokens, over --seq-length 200
        s2st_line(folder, 6, target_text=None),
        s2st_line(folder, 2),
    ]
    examples = write_jsonl(folder / "examples.jsonl", lines)
    report = preprocess_sft(config([examples], folder / "out", tokenizer_dir, format="s2st"))
    assert report["examples"] == 3 and report["shards"] == 1
    assert report["rejects"] == {
        "unreadable": 1,
        "unknown_language": 1,
        "bad_json": 1,
        "over_seq_length": 1,
        "missing_field": 1,
    }
    rejects = {
        json.loads(line)["reason"]: json.loads(line)
        for name in ("rejects_input.jsonl", "shards/rejects_00000.jsonl")
        for line in open(folder / "out" / name, encoding="utf-8")
    }
    where = str(examples)
    assert (
        rejects["unreadable"]["message"].startswith(f"{where}:2: ")
        and "missing.wav" in rejects["unreadable"]["message"]
    )
    assert rejects["unknown_language"]["message"].startswith(f"{where}:4: source_language 'xx'")
    assert rejects["bad_json"]["source"] == f"{where}:5"
    assert (
        rejects["over_seq_length"]["source"] == f"{where}:6"
        and "--seq-length 200" in rejects["over_seq_length"]["message"]
    )
    assert rejects["missing_field"]["message"] == f"{where}:7: missing field 'target_text'"
    # The good records of the shard are stored exactly as a run without the bad ones stores them.
    (good_ids, good_flags), (clean_ids, clean_flags) = stored(folder / "out"), stored(root / "out")
    assert len(good_ids) == len(clean_ids) == 3
    for a, b, fa, fb in zip(good_ids, clean_ids, good_flags, clean_flags):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(fa, fb)


CHILD = """
import os, sys
from megatron_soda.codec import CodecConfig
from megatron_soda.data import jobs
from megatron_soda.data.sft_pipeline import SFTPreprocessConfig, preprocess_sft

commit = jobs.ShardedJob.commit


def commit_then_arm_the_crash(self, index, report):  # the next shard dies as its first dataset lands
    commit(self, index, report)
    os.environ["MEGATRON_SODA_CRASH_AT"] = "idx_renamed"


jobs.ShardedJob.commit = commit_then_arm_the_crash
examples, output_dir, tokenizer = sys.argv[1:4]
preprocess_sft(SFTPreprocessConfig(
    inputs=[examples], output_dir=output_dir, tokenizer=tokenizer, seq_length=200, format="s2st",
    documents_per_shard=1, workers=0, progress=False, codec=CodecConfig(random_init=True, config_overrides=%r)))
""" % (TINY_MIMI,)


def test_a_killed_job_resumed_with_the_same_command_equals_an_uninterrupted_run(clean_s2st, tokenizer_dir):
    root, _ = clean_s2st
    examples = root / "examples.jsonl"
    options = dict(format="s2st", documents_per_shard=1)
    preprocess_sft(config([examples], root / "whole", tokenizer_dir, **options))

    # Killed (SIGKILL) in shard 1 once its loss flags have landed, before its tokens and its commit.
    killed = subprocess.run(
        [sys.executable, "-c", CHILD, str(examples), str(root / "resumed"), tokenizer_dir],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    shards = root / "resumed" / "shards"
    assert (shards / "shard_00000.json").exists() and not (shards / "shard_00001.json").exists()
    assert (shards / "tokens_00001.loss.idx").exists() and not (shards / "tokens_00001.idx").exists()
    committed = (shards / "tokens_00000.bin").stat().st_mtime_ns

    preprocess_sft(config([examples], root / "resumed", tokenizer_dir, **options))  # the same command
    assert (shards / "tokens_00000.bin").stat().st_mtime_ns == committed  # a committed shard is not redone
    assert_same_outputs(root / "whole", root / "resumed")
    assert sorted(p.name for p in shards.glob("*.loss.idx")) == [f"tokens_0000{i}.loss.idx" for i in range(3)]


def load_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("preprocess_sft_tool", ROOT / "tools" / "preprocess_sft.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_cli_writes_the_report_and_its_shards_merge_with_their_flags(clean_s2st, tokenizer_dir, tmp_path, capsys):
    from megatron_soda.data.indexed_dataset import merge_datasets

    tool = load_tool()
    with pytest.raises(SystemExit) as done:
        tool.main(["--help"])
    assert done.value.code == 0 and "--seq-length" in capsys.readouterr().out
    root, _ = clean_s2st
    common = ["--input", root / "examples.jsonl", "--tokenizer", tokenizer_dir, "--codec-random-init"]
    common += ["--codec-config", json.dumps(TINY_MIMI), "--workers", 0, "--no-progress"]
    with pytest.raises(SystemExit) as refused:  # generic examples carry their own flags
        tool.main(list(map(str, common + ["--output-dir", tmp_path / "x", "--seq-length", 200, "--variant", "lm"])))
    assert refused.value.code == 2 and "--variant applies to --format s2st" in capsys.readouterr().err

    argv = common + ["--output-dir", tmp_path / "cli", "--format", "s2st", "--seq-length", 200]
    argv += ["--documents-per-shard", 2, "--json", tmp_path / "report.json"]
    assert tool.main(list(map(str, argv))) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "report.json").read_text())
    assert printed == json.loads((tmp_path / "cli" / "report.json").read_text())
    assert (printed["examples"], printed["shards"], printed["rejects"]) == (3, 2, {}) and printed["hours"] > 0

    # Trained on as preprocess_audio's output is: the shards merged into one prefix, flags and all.
    shards = sorted(str(p)[:-4] for p in (tmp_path / "cli" / "shards").glob("tokens_?????.idx"))
    merge_datasets(tmp_path / "sft", shards)
    merged = read_loss_mask(tmp_path / "sft")
    np.testing.assert_array_equal(merged, np.concatenate([read_loss_mask(p) for p in shards]))
    np.testing.assert_array_equal(merged, np.concatenate(stored(root / "out")[1]).astype(np.uint8))
