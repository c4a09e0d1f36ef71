"""Text-only preprocessing (JSONL and parquet), detokenizing back to text and audio, and the CLIs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_soda.codec import CodecConfig, load_codec
from megatron_soda.codec.tiny import TINY_MIMI
from megatron_soda.data.detokenize import detokenize, write_detokenized
from megatron_soda.data.formats import Order, Utterance, render, speech_document
from megatron_soda.data.indexed_dataset import validate_dataset
from megatron_soda.data.text_pipeline import TextPreprocessConfig, preprocess_text
from megatron_soda.tokenizer import load_soda_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "demo_corpus"


def run_tool(name, *args):
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "soda"
    result = run_tool(
        "build_tokenizer.py",
        "--input",
        CORPUS / "text.jsonl",
        CORPUS / "manifest.jsonl",
        "--bpe-vocab-size",
        500,
        "--output",
        path,
    )
    assert result.returncode == 0, result.stderr
    assert "<|text_start|> 502" in result.stdout  # 500 BPE tokens + begin/end-of-text added
    return str(path)


def test_text_documents_are_plain_text_between_begin_and_end(tmp_path, tokenizer_dir):
    lines = [
        json.dumps({"text": "the harbour was quiet"}).encode(),
        b"not json",
        b'{"text": "caf\xe9"}',
        json.dumps({"body": "wrong key"}).encode(),
        json.dumps({"text": "  "}).encode(),
        json.dumps({"text": "second document"}).encode(),
    ]
    (tmp_path / "docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report = preprocess_text(
        TextPreprocessConfig(
            [str(tmp_path / "docs.jsonl")], str(tmp_path / "out"), tokenizer_dir, documents_per_shard=4, progress=False
        )
    )
    assert report["documents"] == 2 and report["shards"] == 2
    assert report["rejects"] == {"bad_json": 1, "non_utf8": 1, "missing_field": 1, "empty_text": 1}
    tokenizer = load_soda_tokenizer(tokenizer_dir)
    layout = tokenizer.layout
    dataset = IndexedDataset(str(tmp_path / "out" / "shards" / "tokens_00000"))
    first = dataset[0]
    assert first[0] == layout.bos_id and first[-1] == layout.eos_id
    assert tokenizer.decode(first[1:-1]) == "the harbour was quiet"
    assert validate_dataset(tmp_path / "out" / "shards" / "tokens_00001", layout.vocab_size).ok


def test_parquet_input_gives_the_same_tokens_as_jsonl(tmp_path, tokenizer_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [json.loads(line)["text"] for line in open(CORPUS / "text.jsonl", encoding="utf-8")][:50]
    pq.write_table(pa.table({"content": texts}), tmp_path / "docs.parquet")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in texts), encoding="utf-8")
    for name in ("docs.parquet", "docs.jsonl"):
        result = run_tool(
            "preprocess_text.py",
            "--input",
            tmp_path / name,
            "--output-dir",
            tmp_path / name.replace(".", "_"),
            "--tokenizer",
            tokenizer_dir,
            "--text-key",
            "content",
            "--no-progress",
        )
        assert result.returncode == 0, result.stderr
    a = (tmp_path / "docs_parquet" / "shards" / "tokens_00000.bin").read_bytes()
    assert a == (tmp_path / "docs_jsonl" / "shards" / "tokens_00000.bin").read_bytes() and len(a) > 0


def test_text_job_resumes_and_refuses_a_changed_input(tmp_path, tokenizer_dir):
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(10)), encoding="utf-8")
    config = TextPreprocessConfig(
        [str(source)], str(tmp_path / "out"), tokenizer_dir, documents_per_shard=3, progress=False
    )
    preprocess_text(config)
    (tmp_path / "out" / "shards" / "shard_00002.json").unlink()  # as if killed before shard 2 committed
    assert preprocess_text(config)["documents"] == 10
    source.write_text(source.read_text() + json.dumps({"text": "more"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="different job"):
        preprocess_text(config)


def test_detokenize_gives_back_transcripts_and_one_clip_per_audio_segment(tmp_path, tokenizer_dir):
    tokenizer = load_soda_tokenizer(tokenizer_dir)
    layout = tokenizer.layout
    codec = load_codec(CodecConfig(random_init=True, config_overrides=TINY_MIMI))
    rng = np.random.default_rng(0)
    utterances = [
        Utterance(tokenizer.encode_text(text), rng.integers(0, 2048, size=(8, frames)))
        for text, frames in (("hello there", 5), ("good morning", 3))
    ]
    ids = render(speech_document(utterances, Order.AUDIO_FIRST, layout), layout).ids
    result = detokenize(ids, tokenizer, codec)
    assert result.texts == ["hello there", "good morning"]
    assert [len(c) for c in result.clips] == [5 * codec.samples_per_frame, 3 * codec.samples_per_frame]
    paths = write_detokenized(result, tmp_path, "seq")
    wave, rate = sf.read(paths[1])
    assert rate == 24_000 and len(wave) == 5 * codec.samples_per_frame
    assert "[audio 0.40 s, 5 frames -> clip 0]" in Path(paths[0]).read_text(encoding="utf-8")


def test_detokenize_cli_reads_strings_and_reports_malformed_ones(tmp_path, tokenizer_dir):
    tokenizer = load_soda_tokenizer(tokenizer_dir)
    layout = tokenizer.layout
    good = render(
        speech_document(
            [Utterance(tokenizer.encode_text("in the kitchen"), np.zeros((8, 2), int))], Order.TEXT_FIRST, layout
        ),
        layout,
    ).ids
    opened = int(np.flatnonzero(good == layout.audio_start_id)[0])
    bad = good[: opened + 2]  # <|audio_start|> and one audio token, never closed
    (tmp_path / "seqs.txt").write_text(
        tokenizer.ids_to_string(good) + "\n" + tokenizer.ids_to_string(bad) + "\n", encoding="utf-8", newline="\n"
    )
    result = run_tool(
        "detokenize.py",
        "--tokenizer",
        tokenizer_dir,
        "--input",
        tmp_path / "seqs.txt",
        "--input-format",
        "strings",
        "--no-audio",
        "--output-dir",
        tmp_path / "out",
    )
    assert result.returncode == 1  # one malformed sequence
    assert f"line1: audio segment opened at position {opened} is not closed" in result.stderr
    assert "[text] in the kitchen" in (tmp_path / "out" / "line0.txt").read_text(encoding="utf-8")


def test_preprocess_audio_cli_runs_a_job_and_names_a_missing_codec(tmp_path, tokenizer_dir):
    manifest = tmp_path / "m.jsonl"
    first = json.loads(open(CORPUS / "manifest.jsonl", encoding="utf-8").readline())
    first["audio"] = str(CORPUS / first["audio"])
    manifest.write_text(json.dumps(first) + "\n", encoding="utf-8")
    result = run_tool(
        "preprocess_audio.py",
        "--input",
        manifest,
        "--output-dir",
        tmp_path / "out",
        "--tokenizer",
        tokenizer_dir,
        "--no-progress",
    )
    assert result.returncode == 2 and "--codec-path" in result.stderr
    assert not (tmp_path / "out").exists()  # a run refused for its flags claims no directory
    result = run_tool(
        "preprocess_audio.py",
        "--input",
        manifest,
        "--output-dir",
        tmp_path / "out",
        "--tokenizer",
        tokenizer_dir,
        "--codec-random-init",
        "--codec-config",
        json.dumps(TINY_MIMI),
        "--workers",
        "0",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "RANDOM-INIT" in result.stderr
    assert json.loads((tmp_path / "out" / "report.json").read_text())["utterances"] == 1
