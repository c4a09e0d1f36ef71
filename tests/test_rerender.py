"""Re-rendering stored codes: the source's tokens byte for byte, K codebooks, audio-only, orders, resume,
disagreeing shards, and the compact vocabulary through training and checkpoints."""

import filecmp
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_soda.data.audio_pipeline import preprocess_audio
from megatron_soda.data.formats import Kind, Order, document_orders, parse
from megatron_soda.data.indexed_dataset import DatasetWriter, merge_datasets, read_vocab_record, vocab_record
from megatron_soda.data.rerender import RerenderConfig, rerender
from megatron_soda.tokenizer import build_soda_tokenizer, load_soda_tokenizer, save_soda_tokenizer, train_bpe
from tests.test_preprocess_audio import CORPUS, config, corpus_subset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Four recordings of the demo corpus preprocessed (tiny random Mimi, both orders) in shards of 2 documents."""
    root = tmp_path_factory.mktemp("rerender")
    texts = [json.loads(line)["text"] for line in open(CORPUS / "manifest.jsonl", encoding="utf-8")]
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(texts, vocab_size=300)), root / "tok")
    manifest, _, _ = corpus_subset(root, recordings=4)
    report = preprocess_audio(config([manifest], root / "job", str(root / "tok")))
    assert report["shards"] == 2 and report["rejects"] == {}
    return root


@pytest.fixture(scope="module")
def soda(source):
    """The source's tokenizer, loaded once (each load takes seconds)."""
    return load_soda_tokenizer(source / "tok")


def run(source_dir, out, tok, **settings) -> dict:
    return rerender(
        RerenderConfig(input=str(source_dir), output_dir=str(out), tokenizer=str(tok), progress=False, **settings)
    )


def tokens(job, index=0):
    """A shard's sequences, copied out of the memory map (a view would outlive its dataset)."""
    dataset = IndexedDataset(str(Path(job) / "shards" / f"tokens_{index:05d}"))
    return [np.array(dataset[i]) for i in range(len(dataset))]


def same_files(a, b, names):
    return all(filecmp.cmp(Path(a) / name, Path(b) / name, shallow=False) for name in names)


def token_files(job):
    return sorted(p.name for p in (Path(job) / "shards").iterdir() if p.name.startswith("tokens_"))


def test_the_original_settings_give_the_tokens_preprocessing_wrote_byte_for_byte(source, tmp_path):
    report = run(source / "job", tmp_path / "k8", source / "tok")
    assert token_files(tmp_path / "k8") == token_files(source / "job")  # .bin, .idx and .vocab.json
    assert same_files(source / "job" / "shards", tmp_path / "k8" / "shards", token_files(source / "job"))
    original = json.loads((source / "job" / "report.json").read_text())
    for key in ("shards", "documents", "sequences", "utterances", "tokens", "audio_tokens"):
        assert report[key] == original[key], key
    assert report["tokenizer"] == str(source / "tok") and not (tmp_path / "k8" / "tokenizer").exists()
    # One order per document: preprocessing's draw for the same probability and seed (4 documents, 2 per shard).
    run(source / "job", tmp_path / "drawn", source / "tok", text_first_probability=0.5, seed=3)
    orders = [o for (o,) in document_orders(4, 0.5, 3)]
    assert set(orders) == {Order.TEXT_FIRST, Order.AUDIO_FIRST}
    for document, order in enumerate(orders):
        shard, j = divmod(document, 2)
        both = tokens(source / "job", shard)[2 * j + (order is Order.AUDIO_FIRST)]
        np.testing.assert_array_equal(tokens(tmp_path / "drawn", shard)[j], both)


def test_one_codebook_keeps_codebook_0_one_id_per_frame_and_the_transcripts(source, soda, tmp_path):
    report = run(source / "job", tmp_path / "k1", source / "tok", num_codebooks=1)
    full = soda.layout
    compact = load_soda_tokenizer(report["tokenizer"]).layout
    assert report["tokenizer"] == str(tmp_path / "k1" / "tokenizer")
    assert (compact.num_codebooks, compact.vocab_size) == (1, full.audio_offset + 2048)
    assert (compact.base_size, compact.audio_offset, compact.bos_id) == (full.base_size, full.audio_offset, full.bos_id)
    record = read_vocab_record(tmp_path / "k1" / "shards" / "tokens_00000")
    assert (record["vocab_size"], record["num_codebooks"]) == (compact.vocab_size, 1)
    for shard in range(report["shards"]):
        ours, theirs = tokens(tmp_path / "k1", shard), tokens(source / "job", shard)
        codes = IndexedDataset(str(source / "job" / "shards" / f"codes_{shard:05d}"))  # kept while its views are
        assert len(ours) == len(theirs)
        for i in range(len(ours)):
            mine, original = parse(ours[i], compact), parse(theirs[i], full)
            text = [s.ids for s in mine.segments if s.kind is Kind.TEXT]
            assert len(text) > 0 and all(
                map(np.array_equal, text, [s.ids for s in original.segments if s.kind is Kind.TEXT])
            )
            audio = [s.ids for s in mine.segments if s.kind is Kind.AUDIO]
            first = codes.document_indices[i // 2]  # documents render twice: text-first, then audio-first
            for k, ids in enumerate(audio):
                stored = codes[first + k]
                assert len(ids) == len(stored) // 8  # one id per frame
                np.testing.assert_array_equal(ids - compact.audio_offset, stored[::8])  # codebook 0's codes
                assert ((ids >= compact.audio_offset) & (ids < compact.audio_offset + 2048)).all()


def test_audio_only_drops_every_text_segment(source, soda, tmp_path):
    from tests.test_tool_style import load_tool

    argv = ["--input", source / "job", "--output-dir", tmp_path / "audio", "--tokenizer", source / "tok"]
    assert load_tool("rerender").main(list(map(str, argv + ["--audio-only", "--no-progress", "--json", "-"]))) == 0
    layout = soda.layout
    ours, theirs = tokens(tmp_path / "audio"), tokens(source / "job")
    assert len(ours) == len(theirs) // 2  # one sequence per document
    for i in range(len(ours)):
        segments = parse(ours[i], layout).segments
        assert {s.kind for s in segments} == {Kind.AUDIO}
        original = [s.ids for s in parse(theirs[2 * i], layout).segments if s.kind is Kind.AUDIO]
        assert all(map(np.array_equal, [s.ids for s in segments], original))


# ---- hand-built sources: one recording of two utterances, shards that disagree ----------------------------


def write_source(root: Path, soda, tok: Path, shards, per_shard=1) -> Path:
    """A source job as preprocessing leaves one: per shard a list of documents of (text, codes [8, T]); a
    shard's ``meta`` rows can be edited through ``edit(meta)`` in place (``(documents, edit)`` pairs)."""
    layout = soda.layout
    codes_vocab = vocab_record(layout, tok, content="codes")
    (root / "shards").mkdir(parents=True)
    for index, shard in enumerate(shards):
        documents, edit = shard if isinstance(shard, tuple) else (shard, None)
        prefix = root / "shards" / f"codes_{index:05d}"
        utterances = [u for document in documents for u in document]
        flat = [(codes + np.arange(8)[:, None] * 2048).T.reshape(-1) for _, codes in utterances]
        with DatasetWriter(prefix, layout.num_audio_tokens, overwrite=True, vocab=codes_vocab) as writer:
            writer.add_documents(np.concatenate(flat), [len(f) for f in flat], [len(d) for d in documents])
        meta = [
            {
                "id": f"u{index}.{n}",
                "text": text,
                "document": d,
                "frames": codes.shape[1],
                "seconds": codes.shape[1] / 12.5,
            }
            for d, document in enumerate(documents)
            for n, (text, codes) in enumerate(document)
        ]
        if edit:
            edit(meta)
        (root / "shards" / f"meta_{index:05d}.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
        (root / "shards" / f"shard_{index:05d}.json").write_text(json.dumps({"utterances": len(meta)}))
    (root / "job.json").write_text(json.dumps({"job": {"documents_per_shard": per_shard}}))
    (root / "report.json").write_text(json.dumps({"shards": len(shards)}))
    return root


def recording_of_two(seed=0):
    rng = np.random.default_rng(seed)
    return [("hello there", rng.integers(0, 2048, (8, 2))), ("general kenobi", rng.integers(0, 2048, (8, 3)))]


def test_each_order_is_right_on_a_hand_built_recording_of_two_utterances(source, soda, tmp_path):
    utterances = recording_of_two()
    src = write_source(tmp_path / "src", soda, source / "tok", [[utterances]])
    cases = {
        "both": ({}, ["text-first", "audio-first"]),
        "drawn": ({"text_first_probability": 0.0}, ["audio-first"]),
        "audio": ({"audio_only": True}, ["audio"]),
        "k2": ({"num_codebooks": 2, "text_first_probability": 1.0}, ["text-first"]),
    }
    for case, (settings, orders) in cases.items():
        report = run(src, tmp_path / case, source / "tok", **settings)
        layout = replace(soda.layout, num_codebooks=settings.get("num_codebooks", 8))
        assert read_vocab_record(tmp_path / case / "shards" / "tokens_00000")["vocab_size"] == layout.vocab_size
        K = layout.num_codebooks

        def text(t):
            return [layout.text_start_id, *soda.encode_text(t), layout.text_end_id]

        def audio(codes):
            ids = (codes[:K] + layout.audio_offset + np.arange(K)[:, None] * 2048).T.reshape(-1)
            return [layout.audio_start_id, *ids, layout.audio_end_id]

        (t1, a1), (t2, a2) = utterances
        parts = {
            "text-first": [*text(t1), *audio(a1), *text(t2), *audio(a2)],
            "audio-first": [*audio(a1), *text(t1), *audio(a2), *text(t2)],
            "audio": [*audio(a1), *audio(a2)],
        }
        ours = tokens(tmp_path / case)
        expected = [[layout.bos_id, *parts[order], layout.eos_id] for order in orders]
        assert [ours[i].tolist() for i in range(len(ours))] == expected, case
        assert report["sequences"] == len(orders)


def test_a_shard_whose_codes_and_metadata_disagree_is_reported_and_skipped(source, soda, tmp_path):
    def drop_one(meta):
        del meta[1]

    def one_frame_more(meta):
        meta[0]["frames"] += 1

    doc = recording_of_two()
    src = write_source(
        tmp_path / "src", soda, source / "tok", [[doc], ([doc], drop_one), ([doc], one_frame_more), [doc]]
    )
    report = run(src, tmp_path / "out", source / "tok")
    assert report["rejects"] == {"missing_utterance": 1, "frame_mismatch": 1} and report["skipped_shards"] == 2
    assert (report["shards"], report["documents"], report["utterances"]) == (4, 2, 4)
    assert token_files(tmp_path / "out") == [
        f"tokens_{i:05d}{ext}" for i in (0, 3) for ext in (".bin", ".idx", ".vocab.json")
    ]
    rejects = [
        json.loads(line) for i in (1, 2) for line in open(tmp_path / "out" / "shards" / f"rejects_{i:05d}.jsonl")
    ]
    assert [r["reason"] for r in rejects] == ["missing_utterance", "frame_mismatch"]
    assert (
        "meta_00001.jsonl lists 1 utterances" in rejects[0]["message"]
        and "holds the codes of 2" in rejects[0]["message"]
    )
    assert "'u2.0'" in rejects[1]["message"] and "has 3 frames there" in rejects[1]["message"]
    assert "16 ids (2 frames of 8 codebooks)" in rejects[1]["message"]


CHILD = """
import sys
from megatron_soda.data.rerender import RerenderConfig, rerender
rerender(RerenderConfig(input=sys.argv[1], output_dir=sys.argv[2], tokenizer=sys.argv[3], num_codebooks=2,
                        text_first_probability=0.5, seed=7, progress=False))
"""


def test_a_killed_rerender_resumes_to_the_same_bytes(source, tmp_path):
    settings = dict(num_codebooks=2, text_first_probability=0.5, seed=7)
    whole = run(source / "job", tmp_path / "whole", source / "tok", **settings)
    env = {**os.environ, "MEGATRON_SODA_CRASH_AT": "idx_renamed"}  # killed after shard 0's tokens, before its commit
    args = [sys.executable, "-c", CHILD, str(source / "job"), str(tmp_path / "resumed"), str(source / "tok")]
    killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "resumed" / "shards" / "shard_00000.json").exists()
    resumed = run(source / "job", tmp_path / "resumed", source / "tok", **settings)
    assert {k: v for k, v in resumed.items() if k != "tokenizer"} == {
        k: v for k, v in whole.items() if k != "tokenizer"
    }
    names = [
        n for n in token_files(tmp_path / "whole") if not n.endswith(".vocab.json")
    ]  # the record names its tokenizer
    assert names == [n for n in token_files(tmp_path / "resumed") if not n.endswith(".vocab.json")]
    assert same_files(tmp_path / "whole" / "shards", tmp_path / "resumed" / "shards", names)
    assert same_files(tmp_path / "whole" / "tokenizer", tmp_path / "resumed" / "tokenizer", ["tokenizer.json"])
    with pytest.raises(ValueError, match="different job"):
        run(source / "job", tmp_path / "resumed", source / "tok", num_codebooks=1)


# ---- the compact vocabulary through training and checkpoints ------------------------------------------


def train(tok, data, steps, save=None):
    """`python -m megatron_soda.pretrain` of the tiny model, started (not waited for)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    args = ["--model", "tiny", "--tokenizer", tok, "--data-path", data, "--split", "100,0,0", "--seq-length", 64]
    args += ["--micro-batch-size", 2, "--global-batch-size", 2, "--train-iters", steps, "--lr-decay-style", "constant"]
    args += ["--metrics-file", f"{data}.metrics.jsonl"] + (["--save", save] if save else [])
    command = [sys.executable, "-m", "megatron_soda.pretrain", *map(str, args)]
    return subprocess.Popen(
        command,
        env={**env, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.timeout(400)
def test_a_k1_dataset_trains_with_its_vocabulary_and_a_k8_checkpoint_refuses_the_k1_tokenizer(source, tmp_path):
    from megatron_soda.training.logger import iteration_records
    from megatron_soda.training.plan import parse_train_config, plan_run

    k1 = run(source / "job", tmp_path / "k1", source / "tok", num_codebooks=1)
    tok1, tok8 = k1["tokenizer"], str(source / "tok")
    for name, job in (("k1", tmp_path / "k1"), ("k8", source / "job")):
        merge_datasets(tmp_path / name, sorted(str(p)[:-4] for p in (job / "shards").glob("tokens_*.idx")))
    runs = [train(tok1, tmp_path / "k1", 2), train(tok8, tmp_path / "k8", 1, save=tmp_path / "ckpt8")]
    logs = [proc.communicate(timeout=360)[0] for proc in runs]
    assert [proc.returncode for proc in runs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert [line["iteration"] for line in iteration_records(tmp_path / "k1.metrics.jsonl")] == [1, 2]

    def plan(*argv):
        return plan_run(parse_train_config([*map(str, argv), "--train-iters", "2"]), 1)

    with pytest.raises(
        ValueError, match=f"--data-path {tmp_path / 'k1'} was made with a 2,354-id vocabulary"
    ) as refused:
        plan("--tokenizer", tok8, "--data-path", tmp_path / "k1")
    assert f"pass --tokenizer {tok1}" in str(refused.value)
    with pytest.raises(
        ValueError,
        match=f"--load {tmp_path / 'ckpt8'} was trained with a vocabulary of 16690 ids, the tokenizer has 2354",
    ):
        plan("--tokenizer", tok1, "--load", tmp_path / "ckpt8", "--data-path", tmp_path / "k1")


def test_the_ablation_script_dry_run_passes_and_a_missing_variable_is_named(source):
    script = ROOT / "examples" / "ablations_token_composition.sh"
    env = {**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1", "TOKENIZER": str(source / "tok")}
    missing = subprocess.run(["bash", script], env=env, capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode != 0 and "SPEECH_JOB" in missing.stderr
    env.update(SPEECH_JOB=str(source / "job"), TEXT_DATA="data/text_all", CODEC_PATH="mimi", EVAL_INPUTS="swuggy=x")
    planned = subprocess.run(["bash", script], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "memory per GPU" in planned.stdout


def test_drawn_orders_stay_preprocessings_where_a_whole_document_was_rejected(source, tmp_path):
    """The first recording's audio is missing: shard 0 keeps only document 1, which still gets draw 1."""
    seed = next(s for s in range(100) if len(set(o for (o,) in document_orders(4, 0.5, s)[:2])) == 2)
    manifest, _, _ = corpus_subset(tmp_path, recordings=4)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    first = lines[0]["recording"]
    for line in lines:
        if line["recording"] == first:
            line["audio"] = str(tmp_path / "missing.flac")
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    settings = dict(text_first_probability=0.5, seed=seed)
    report = preprocess_audio(config([manifest], tmp_path / "job", str(source / "tok"), **settings))
    rejected = sum(line["recording"] == first for line in lines)
    assert report["documents"] == 3 and sum(report["rejects"].values()) == rejected
    run(tmp_path / "job", tmp_path / "again", source / "tok", **settings)
    assert same_files(tmp_path / "job" / "shards", tmp_path / "again" / "shards", token_files(tmp_path / "job"))
