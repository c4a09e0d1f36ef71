"""SODA's likelihood benchmarks on tiny copies of their public data: a model trained on the positive items
ranks every pair right on every task, an untrained one is at chance; the codebook option, malformed rows,
the audio code cache, and batched scoring."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from megatron_soda.codec import CodecConfig
from megatron_soda.codec.audio_io import resample
from megatron_soda.codec.tiny import TINY_MIMI
from megatron_soda.data.formats import Document, Kind, Segment, render
from megatron_soda.data.indexed_dataset import vocab_record, write_dataset
from megatron_soda.evaluation import likelihood_tasks
from megatron_soda.evaluation.audio import AudioEncoder, codec_identity
from megatron_soda.evaluation.base import REGISTRY, EvalContext, EvalSettings
from megatron_soda.evaluation.datasets import count_rows, decode_audio, read_rows, select_files
from megatron_soda.evaluation.scoring import MegatronScorer, Scorer, likelihood_item, mean_log_probs
from megatron_soda.tokenizer import build_soda_tokenizer, load_soda_tokenizer, save_soda_tokenizer, train_bpe
from tests.test_pretrain import pretrain_process

SOURCE_RATE = 16_000  # the benchmarks' rate: every clip is resampled to the codec's 24 kHz
WUGGY = [("brick", "blick"), ("garden", "garbon"), ("window", "wintow"), ("river", "rivol")]
BLIMP = [
    ("anaphor_agreement_001", "The girl saw herself.", "The girl saw himself."),
    ("anaphor_agreement_002", "Many dogs hurt themselves.", "Many dogs hurt itself."),
    ("island_effects_001", "What did you see after lunch?", "What did you see lunch after?"),
    ("island_effects_002", "Who has she met?", "Who has she met him?"),
]
SALMON = [(0, "speaker_consistency"), (1, "speaker_consistency"), (2, "bg_alignment"), (3, "bg_alignment")]
HELLASWAG = [
    # (row, the context lm-evaluation-harness builds from it)
    (
        dict(activity_label="Cooking", ctx_a="A man stands in a kitchen.", ctx_b="he picks up a knife", label=2),
        "Cooking: A man stands in a kitchen. He picks up a knife",
    ),
    (
        dict(activity_label="Home [title] Clean a rug", ctx_a="[step] Roll it up.", ctx_b="then you", label="0"),
        "Home. Clean a rug: Roll it up. Then you",
    ),
    (dict(activity_label="Sports", ctx="a girl runs on a track", label=3), "Sports: a girl runs on a track"),
    (
        dict(activity_label="Music", ctx_a="Two men play guitars.", ctx_b="they", label=1),
        "Music: Two men play guitars. They",
    ),
]
ENDINGS = [
    ["sings loudly.", "drives away.", "cuts the onions.", "reads a book."],
    ["shake it outside.", "paint the wall.", "eat the cake.", "open the door."],
    ["and swims.", "and sleeps.", "and cooks.", "and wins the race."],
    ["sleep.", "sing a song together.", "dig a hole.", "buy a car."],
]
AUDIO = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def sound(seed: int, seconds: float = 0.6) -> np.ndarray:
    """A distinct synthetic clip: three random partials under a random tremolo."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SOURCE_RATE)) / SOURCE_RATE
    wave = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in rng.uniform(120, 3000, 3))
    wave *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 9) * t)
    return (0.1 * wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def audio_cell(wave, fmt="FLAC"):
    buffer = io.BytesIO()
    sf.write(buffer, wave, SOURCE_RATE, format=fmt)
    return {"bytes": buffer.getvalue(), "path": f"clip.{fmt.lower()}"}


def table(columns: dict) -> pa.Table:
    """Audio columns as datasets stores them: structs of the encoded file's bytes and a path."""
    is_audio = lambda name: name in ("positive", "negative") or name.endswith("_audio")  # noqa: E731
    return pa.table({k: pa.array(v, AUDIO if is_audio(k) else None) for k, v in columns.items()})


def write_parquet(path, columns: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table(columns), path, row_group_size=3)  # several row groups


def write_save_to_disk(root, columns: dict, split="train"):
    """What ``DatasetDict.save_to_disk`` writes: a split folder of Arrow IPC *stream* files and state."""
    folder = root / split
    folder.mkdir(parents=True)
    data = table(columns)
    schema = data.schema.with_metadata({"huggingface": json.dumps({"info": {"features": {}}})})
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, schema) as writer:
            for batch in data.to_batches(max_chunksize=3):
                writer.write_batch(batch)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (folder / "dataset_info.json").write_text("{}")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": [split]}))


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def hellaswag_rows():
    return [{**row, "ind": i, "endings": ENDINGS[i]} for i, (row, _) in enumerate(HELLASWAG)]


def build_data(root):
    """The tiny datasets in their public schemas: sWUGGY a parquet snapshot, sBLIMP a save_to_disk folder,
    SALMon a snapshot with two configs, HellaSwag JSONL. Returns the paths and the positives' audio."""
    seeds = iter(range(1000))
    clips = {
        task: [(sound(next(seeds), 0.5 + 0.1 * i), sound(next(seeds), 0.55 + 0.1 * i)) for i in range(4)]
        for task in ("swuggy", "sblimp", "salmon")
    }
    cells = {t: [(audio_cell(p, "FLAC"), audio_cell(n, "WAV")) for p, n in pairs] for t, pairs in clips.items()}
    write_parquet(
        root / "swuggy" / "data" / "train-00000-of-00001.parquet",
        dict(
            id=[f"w{i}" for i in range(4)],
            positive=[p for p, _ in cells["swuggy"]],
            negative=[n for _, n in cells["swuggy"]],
            positive_word=[p for p, _ in WUGGY],
            negative_word=[n for _, n in WUGGY],
        ),
    )
    write_save_to_disk(
        root / "sblimp",
        dict(
            id=[i for i, _, _ in BLIMP],
            positive=[p for p, _ in cells["sblimp"]],
            negative=[n for _, n in cells["sblimp"]],
            positive_transcription=[p for _, p, _ in BLIMP],
            negative_transcription=[n for _, _, n in BLIMP],
        ),
    )
    salmon = dict(
        positive_audio=[p for p, _ in cells["salmon"]],
        negative_audio=[n for _, n in cells["salmon"]],
        task=[t for _, t in SALMON],
        ind=[i for i, _ in SALMON],
    )
    write_parquet(root / "salmon" / "all" / "train-00000-of-00001.parquet", salmon)
    write_parquet(root / "salmon" / "bg_alignment" / "train-00000-of-00001.parquet", salmon)  # a 2nd config
    write_jsonl(root / "hellaswag.jsonl", hellaswag_rows())
    paths = {k: str(root / k) for k in ("swuggy", "sblimp", "salmon")}
    return {**paths, "hellaswag": str(root / "hellaswag.jsonl")}, cells


def tiny_codec(seed=0):
    from megatron_soda.codec.loading import load_codec

    config = CodecConfig(random_init=True, seed=seed, config_overrides=TINY_MIMI)
    return config, load_codec(config)


def context_for(world, scorer, audio=None, **settings):
    return EvalContext(world["tokenizer"], EvalSettings(progress=False, **settings), scorer=scorer, audio=audio)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The data, a tokenizer, the tiny codec, and a tiny model trained on every positive item as the
    scorer renders it (never on a negative), loaded for scoring in a world of one."""
    from megatron_soda.convert.solo import one_process_group
    from megatron_soda.inference.loading import load_megatron_model

    root = tmp_path_factory.mktemp("eval_likelihood")
    paths, cells = build_data(root)
    texts = [w for pair in WUGGY for w in pair] + [s.lower() for _, *pair in BLIMP for s in pair]
    texts += [c for _, c in HELLASWAG] + [e for row in ENDINGS for e in row]
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(texts * 3, vocab_size=300)), root / "tok")
    tokenizer = load_soda_tokenizer(root / "tok")
    layout = tokenizer.layout
    codec_config, codec = tiny_codec()

    def positive_codes(cell):  # decoded and resampled independently of the code under test
        wave, rate = sf.read(io.BytesIO(cell["bytes"]), dtype="float32")
        return codec.encode([resample(wave, rate, codec.sample_rate)])[0]

    segments = [Segment(Kind.AUDIO, layout.codes_to_ids(positive_codes(p))) for t in cells.values() for p, _ in t]
    segments += [Segment(Kind.TEXT, tokenizer.encode_text(p)) for p, _ in WUGGY]
    segments += [Segment(Kind.TEXT, tokenizer.encode_text(p.lower())) for _, p, _ in BLIMP]
    segments += [
        Segment(Kind.PLAIN, tokenizer.encode_text(f"{query} {ENDINGS[i][int(row['label'])]}"))
        for i, (row, query) in enumerate(HELLASWAG)
    ]
    documents = [render(Document([s]), layout).ids for s in segments]
    assert max(len(d) for d in documents) <= 128
    write_dataset(
        root / "positives",
        np.concatenate(documents * 60),
        np.array([len(d) for d in documents] * 60),
        layout.vocab_size,
        vocab=vocab_record(layout, root / "tok"),
    )
    pretrain_process(
        *("--model", "tiny", "--tokenizer", root / "tok", "--data-path", root / "positives", "--split", "100,0,0"),
        *("--seq-length", 128, "--micro-batch-size", 4, "--global-batch-size", 4, "--train-iters", 100),
        *("--lr", 1e-2, "--lr-warmup-iters", 5, "--save", root / "ckpt", "--skip-data-validation"),
    )
    with one_process_group(megatron_parallel=True, purpose="scoring"):
        model, _, _ = load_megatron_model(root / "ckpt", layout.vocab_size)
        yield {
            "root": root,
            "paths": paths,
            "tokenizer": tokenizer,
            "layout": layout,
            "codec": codec,
            "codec_config": codec_config,
            "scorer": MegatronScorer(model, layout.vocab_size),
        }


class TokenScorer(Scorer):
    """Known log-probabilities: token id i has log-probability ``value(i)`` wherever it stands."""

    def __init__(self):
        super().__init__(vocab_size=1 << 30, device="cpu")

    @staticmethod
    def value(ids):
        return -((np.asarray(ids) * 7919) % 101) / 10.0 - 0.05

    def logits(self, tokens, lengths):
        raise AssertionError("TokenScorer answers token_log_probs itself; no model runs")

    def token_log_probs(self, sequences):
        return [self.value(np.asarray(s)[1:]).astype(np.float64) for s in sequences]


class CountingCodec:
    """A codec that counts the clips it encodes."""

    def __init__(self, codec):
        self.codec, self.clips = codec, 0
        self.sample_rate, self.num_codebooks = codec.sample_rate, codec.num_codebooks

    def encode(self, waves):
        self.clips += len(waves)
        return self.codec.encode(waves)


# ---- the tasks, end to end ----------------------------------------------------------------------


def test_a_model_trained_on_the_positives_ranks_every_pair_of_every_task_right(world, tmp_path):
    audio = AudioEncoder(world["codec"], codec_identity(world["codec_config"], world["codec"]), str(tmp_path))
    context = context_for(world, world["scorer"], audio)
    results = {}
    for name, spec in likelihood_tasks_specs().items():
        results[name] = spec.run(world["paths"][spec.dataset], context)
        assert results[name].n == 4 and not results[name].skipped, name
        assert results[name].metrics[results[name].primary] == 1.0, (name, results[name].items)
    assert results["hellaswag"].metrics == {"accuracy": 1.0, "accuracy_norm": 1.0}
    assert results["hellaswag"].primary == "accuracy_norm"
    assert any("acc_norm); SODA's paper does not state it" in n for n in results["hellaswag"].notes)
    assert results["salmon"].breakdown == {
        "bg_alignment": {"accuracy": 1.0, "n": 2},
        "speaker_consistency": {"accuracy": 1.0, "n": 2},
    }
    assert set(results["sblimp"].breakdown) == {"anaphor_agreement", "island_effects"}
    first = results["swuggy"].items[0]
    assert first["id"] == "w0" and first["positive_word"] == "brick" and first["right"] is True
    assert first["source"].endswith("train-00000-of-00001.parquet:0") and len(first["scores"]) == 2
    assert [r["context"] for r in results["hellaswag"].items] == [c for _, c in HELLASWAG]


def likelihood_tasks_specs():
    return {n: s for n, s in REGISTRY.items() if s.run.__module__ == likelihood_tasks.__name__}


def test_the_registry_names_each_task_and_its_data():
    specs = likelihood_tasks_specs()
    assert {n: s.dataset for n, s in specs.items()} == {
        "swuggy": "swuggy",
        "sblimp": "sblimp",
        "salmon": "salmon",
        "twuggy": "swuggy",
        "tblimp": "sblimp",
        "hellaswag": "hellaswag",
    }
    assert {s.kind for s in specs.values()} == {"likelihood"}


def test_an_untrained_model_is_at_chance_on_forty_pairs(world, tmp_path):
    from megatron_soda.models.gpt import build_gpt_model, transformer_config
    from megatron_soda.models.presets import get_preset

    rng = np.random.default_rng(5)
    words = ["".join(rng.choice(list("abcdefghijklmnoprstuw"), rng.integers(3, 8))) for _ in range(80)]
    write_parquet(
        tmp_path / "data" / "train-00000-of-00001.parquet",
        dict(
            id=[str(i) for i in range(40)],
            positive=[audio_cell(sound(5000 + i, 0.3)) for i in range(40)],
            negative=[audio_cell(sound(6000 + i, 0.3)) for i in range(40)],
            positive_word=words[:40],
            negative_word=words[40:],
        ),
    )
    shape = get_preset("tiny", vocab_size=world["layout"].vocab_size)
    torch.manual_seed(0)
    model = build_gpt_model(shape, transformer_config(shape, init_method_std=0.02)).eval()
    audio = AudioEncoder(world["codec"], {"test": "chance"})
    context = context_for(world, MegatronScorer(model, world["layout"].vocab_size), audio)
    for task in ("swuggy", "twuggy"):
        result = REGISTRY[task].run(str(tmp_path), context)
        assert result.n == 40
        # a fair coin leaves [0.25, 0.75] over 40 pairs once in ~1000 seeds; this seed is fixed
        assert 0.25 <= result.metrics["accuracy"] <= 0.75, (task, result.metrics)
        assert all(r["scores"][0] != r["scores"][1] for r in result.items)


# ---- the codebook option ------------------------------------------------------------------------


class FixedAudio:
    """An encoder giving every positive codes A and every negative codes B (pairs come positive first)."""

    def __init__(self, layout):
        rng = np.random.default_rng(0)
        self.num_codebooks = layout.num_codebooks
        self.codes = [rng.integers(0, layout.codebook_size, (layout.num_codebooks, n)) for n in (5, 7)]

    def encode(self, clips):
        return [self.codes[i % 2] for i in range(len(clips))]


@pytest.mark.parametrize("codebooks", [None, [0], [1, 3], [7]])
def test_the_codebook_subset_scores_exactly_those_codebooks_tokens(world, codebooks):
    layout, audio = world["layout"], FixedAudio(world["layout"])
    context = context_for(world, TokenScorer(), audio, codebooks=codebooks)
    result = REGISTRY["swuggy"].run(world["paths"]["swuggy"], context)
    keep = range(layout.num_codebooks) if codebooks is None else codebooks
    expected = [
        np.mean([TokenScorer.value(layout.audio_id(k, codes[k, t])) for t in range(codes.shape[1]) for k in keep])
        for codes in audio.codes
    ]
    for record in result.items:
        np.testing.assert_allclose(record["scores"], expected, rtol=1e-12)
    # hand-built: frame-major ids, codebook k at content positions k, k + K, ...
    ids = layout.codes_to_ids(audio.codes[0])
    item = likelihood_item(Kind.AUDIO, ids, layout, codebooks)
    assert [ids[t - 2] for t in item.targets] == [
        layout.audio_id(k, audio.codes[0][k, f]) for f in range(5) for k in sorted(keep)
    ]


def test_text_tasks_ignore_the_codebook_option_and_say_so(world):
    plain = REGISTRY["tblimp"].run(world["paths"]["sblimp"], context_for(world, TokenScorer()))
    subset = REGISTRY["tblimp"].run(world["paths"]["sblimp"], context_for(world, TokenScorer(), codebooks=[0]))
    assert [r["scores"] for r in plain.items] == [r["scores"] for r in subset.items]
    assert any("codebooks [0] ignored" in note for note in subset.notes)
    assert not any("ignored" in note for note in plain.notes)


# ---- malformed data -----------------------------------------------------------------------------


def test_malformed_rows_are_skipped_and_reported_by_source(world, tmp_path):
    good = audio_cell(sound(1))
    words = dict(positive_word=["brick", "a", "b", "c", "", "d"], negative_word=["blick", "e", "f", "g", "h", None])
    parquet = tmp_path / "parquet" / "train-00000-of-00001.parquet"
    write_parquet(
        parquet,
        dict(
            id=[str(i) for i in range(6)],
            positive=[good, None, {"bytes": b"not audio", "path": "x.flac"}, {"bytes": None, "path": "lost.wav"}]
            + [good, good],
            negative=[good] * 6,
            **words,
        ),
    )
    audio = AudioEncoder(world["codec"], {"test": "malformed"})
    result = REGISTRY["swuggy"].run(str(parquet), context_for(world, TokenScorer(), audio))
    assert result.n == 3 and [r["id"] for r in result.items] == ["0", "4", "5"]
    assert [(s.source, s.reason) for s in result.skipped] == [
        (f"{parquet}:1", "missing_field"),
        (f"{parquet}:2", "unreadable"),
        (f"{parquet}:3", "unreadable"),
    ]
    assert "lost.wav" in result.skipped[2].message and "positive" in result.skipped[1].message
    text = REGISTRY["twuggy"].run(str(parquet), context_for(world, TokenScorer()))
    assert text.n == 4  # the text task reads no audio
    assert [(s.source, s.reason) for s in text.skipped] == [
        (f"{parquet}:4", "empty_text"),
        (f"{parquet}:5", "missing_field"),
    ]

    sf.write(tmp_path / "clip.wav", sound(2), SOURCE_RATE)
    array = {"array": sound(3).tolist(), "sampling_rate": SOURCE_RATE}
    jsonl = tmp_path / "swuggy.jsonl"
    rows = [
        {"id": "ok", "positive": "clip.wav", "negative": array},
        {"id": "nan", "positive": {"array": [0.1, float("nan")], "sampling_rate": SOURCE_RATE}, "negative": array},
        {"id": "schema", "audio_a": "clip.wav", "audio_b": "clip.wav"},
        "{not json",
        "[1, 2]",
    ]
    write_jsonl(jsonl, rows)
    result = REGISTRY["swuggy"].run(str(jsonl), context_for(world, TokenScorer(), audio))
    assert result.n == 1 and result.items[0]["id"] == "ok"
    assert [(s.source, s.reason) for s in result.skipped] == [
        (f"{jsonl}:2", "non_finite"),
        (f"{jsonl}:3", "missing_field"),
        (f"{jsonl}:4", "bad_json"),
        (f"{jsonl}:5", "bad_json"),
    ]
    write_jsonl(jsonl, rows[1:])
    with pytest.raises(ValueError, match=r"swuggy: no item of .* could be scored \(4 skipped, e.g. "):
        REGISTRY["swuggy"].run(str(jsonl), context_for(world, TokenScorer(), audio))

    bad = hellaswag_rows()
    del bad[0]["ctx_a"], bad[0]["ctx_b"]  # and no ctx: nothing to continue
    bad[1]["endings"] = "one ending"
    bad[2]["label"] = 9
    bad[3]["endings"] = ["[title]", "b", "c", "d"]  # nothing left of the first ending
    write_jsonl(tmp_path / "hellaswag.jsonl", bad + [hellaswag_rows()[0]])
    hella = REGISTRY["hellaswag"].run(str(tmp_path / "hellaswag.jsonl"), context_for(world, TokenScorer()))
    assert hella.n == 1
    assert [(s.source.rsplit(":", 1)[1], s.reason) for s in hella.skipped] == [
        ("1", "missing_field"),
        ("2", "bad_field"),
        ("3", "bad_field"),
        ("4", "empty_text"),
    ]


# ---- reading the data ---------------------------------------------------------------------------


def test_every_layout_reads_the_same_rows(tmp_path):
    columns = dict(
        id=["a", "b", "c", "d"], positive_word=["w", "x", "y", "z"], positive=[audio_cell(sound(i)) for i in range(4)]
    )
    write_parquet(tmp_path / "snapshot" / "data" / "train-00000-of-00001.parquet", columns)
    write_parquet(tmp_path / "refs" / "default" / "train" / "0000.parquet", columns)
    write_save_to_disk(tmp_path / "disk", columns)
    (tmp_path / "disk" / "train" / "cache-0123abcd.arrow").write_bytes(b"a map's cache: not data")
    write_jsonl(
        tmp_path / "rows.jsonl",
        [{"id": i, "positive_word": w} for i, w in zip(columns["id"], columns["positive_word"])],
    )
    expected = [{"id": i, "positive_word": w} for i, w in zip(columns["id"], columns["positive_word"])]
    for path in ("snapshot", "refs", "disk", "disk/train", "snapshot/data/train-00000-of-00001.parquet", "rows.jsonl"):
        rows = list(read_rows(str(tmp_path / path), columns=["id", "positive_word"]))
        assert [r for _, r in rows] == expected, path
        assert count_rows(str(tmp_path / path)) == 4
    sources = [s for s, _ in read_rows(str(tmp_path / "disk"), columns=["id"])]
    assert sources == [f"{tmp_path}/disk/train/data-00000-of-00001.arrow:{i}" for i in range(4)]
    (source, row), *_ = read_rows(str(tmp_path / "disk"))
    wave, rate = decode_audio(row["positive"], str(tmp_path), source)
    assert rate == SOURCE_RATE and wave.dtype == np.float32 and np.abs(wave - sound(0)).max() < 1e-3  # 16-bit FLAC


def test_splits_and_configs_are_chosen_or_named(world, tmp_path):
    (tmp_path / "hs").mkdir()
    for split in ("train", "validation", "test"):
        write_jsonl(tmp_path / "hs" / f"{split}.jsonl", [{"split": split}])
    files, split, _ = select_files(str(tmp_path / "hs"), split="validation")
    assert split == "validation" and [f.path.rsplit("/", 1)[1] for f in files] == ["validation.jsonl"]
    with pytest.raises(ValueError, match=r"several splits \(test, train, validation\)"):
        select_files(str(tmp_path / "hs"), split="dev_other")
    _, _, config = select_files(world["paths"]["salmon"], config="all")
    assert config == "all"
    with pytest.raises(ValueError, match=r"several configs \(all, bg_alignment\)"):
        select_files(world["paths"]["salmon"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("nothing")
    with pytest.raises(ValueError, match="no dataset files .* it holds README.md"):
        list(read_rows(str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="no such file"):
        list(read_rows(str(tmp_path / "nowhere")))


# ---- the audio cache ----------------------------------------------------------------------------


def test_a_second_evaluation_reads_the_codes_and_another_codec_does_not(world, tmp_path):
    context = lambda encoder: context_for(world, TokenScorer(), encoder)  # noqa: E731
    path = world["paths"]["swuggy"]
    identity = codec_identity(world["codec_config"], world["codec"])
    assert identity["random_init"] and identity["seed"] == 0 and identity["num_codebooks"] == 8
    first_codec = CountingCodec(world["codec"])
    first = REGISTRY["swuggy"].run(path, context(AudioEncoder(first_codec, identity, str(tmp_path))))
    assert first_codec.clips == 8
    again = CountingCodec(world["codec"])
    encoder = AudioEncoder(again, identity, str(tmp_path))
    second = REGISTRY["swuggy"].run(path, context(encoder))
    assert again.clips == 0 and encoder.loaded == 8
    assert [r["scores"] for r in second.items] == [r["scores"] for r in first.items]

    other_config, other_codec = tiny_codec(seed=1)
    other_identity = codec_identity(other_config, other_codec)
    counting = CountingCodec(other_codec)
    REGISTRY["swuggy"].run(path, context(AudioEncoder(counting, other_identity, str(tmp_path))))
    assert counting.clips == 8
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and all((tmp_path / f / "identity.json").exists() for f in folders)
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]

    memory = CountingCodec(world["codec"])
    encoder = AudioEncoder(memory, identity)  # no cache dir: in memory only, and a repeated clip once
    wave = sound(3)
    a, b = encoder.encode([("k1", wave, SOURCE_RATE), ("k1", wave, SOURCE_RATE)])
    (c,) = encoder.encode([("k1", wave, SOURCE_RATE)])
    assert memory.clips == 1 and np.array_equal(a, b) and np.array_equal(a, c)


# ---- batching -----------------------------------------------------------------------------------


def test_batched_scores_equal_one_by_one_scores(world):
    tokenizer, layout = world["tokenizer"], world["layout"]
    rng = np.random.default_rng(2)
    items = [likelihood_item(Kind.TEXT, tokenizer.encode_text(t), layout) for t in ("brick", "the girl saw herself.")]
    items += [
        likelihood_item(Kind.AUDIO, layout.codes_to_ids(rng.integers(0, layout.codebook_size, (8, n))), layout)
        for n in (1, 3, 6, 9, 12)
    ]
    batches = []
    # One batch, however much padding: the short items are padded to the longest.
    batched = mean_log_probs(world["scorer"], items, 4096, on_batch=batches.append, max_padding=float("inf"))
    assert batches == [len(items)]
    alone = np.array([mean_log_probs(world["scorer"], [item])[0] for item in items])
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5)


def test_the_evaluate_tool_scores_the_checkpoint_and_its_export_alike_and_compares_the_reports(world, tmp_path):
    """Every likelihood task through tools/evaluate.py, on our checkpoint and on its Hugging Face export:
    the same per-item scores (fp32 rounding apart), both right on every pair; --compare lines them up."""
    from tests.learned import run_tool

    root, paths = world["root"], world["paths"]
    run_tool(
        "convert_checkpoint", "export", "--load", root / "ckpt", "--tokenizer", root / "tok", "--output", root / "hf"
    )
    tasks = ["swuggy", "sblimp", "salmon", "twuggy", "tblimp", "hellaswag"]
    common = [
        *("--tasks", *tasks, "--input", *(f"{key}={path}" for key, path in paths.items())),
        *("--codec-random-init", "--codec-config", json.dumps(TINY_MIMI), "--audio-cache", tmp_path / "codes"),
        "--no-progress",
    ]
    run_tool(
        "evaluate", "--load", root / "ckpt", "--tokenizer", root / "tok", "--output-dir", tmp_path / "ours", *common
    )
    run_tool("evaluate", "--hf", root / "hf", "--output-dir", tmp_path / "export", "--max-tokens", 64, *common)
    reports = {name: json.loads((tmp_path / name / "report.json").read_text()) for name in ("ours", "export")}
    assert reports["ours"]["model"]["form"] == "megatron" and reports["export"]["model"]["form"] == "hf"
    for task in tasks:
        ours, theirs = (reports[name]["tasks"][task] for name in ("ours", "export"))
        assert ours["value"] == theirs["value"] == 1.0 and ours["n"] == theirs["n"] > 0, task
        scores = [
            [item["scores"] for item in map(json.loads, open(report["tasks"][task]["items_file"]))]
            for report in (reports["ours"], reports["export"])
        ]
        np.testing.assert_allclose(*scores, rtol=1e-5, atol=1e-6, err_msg=task)
    compared = run_tool("evaluate", "--compare", tmp_path / "ours", tmp_path / "export").stdout
    assert all(task in compared for task in tasks) and "+0.0000" in compared


def test_benchmarks_during_training_at_tp2_pp2_give_the_offline_accuracies(world, tmp_path):
    """tools/evaluate.py --prepare once, then pretrain --eval-tasks-data at TP=2 x PP=2 from the same
    checkpoint (learning rate 0: the weights stay those evaluated offline) logs the offline accuracies."""
    from megatron_soda.training.logger import read_metrics
    from tests.dist import launch
    from tests.learned import run_tool

    root, paths = world["root"], world["paths"]
    tasks = ["swuggy", "twuggy", "hellaswag"]
    inputs = ("--input", f"swuggy={paths['swuggy']}", f"hellaswag={paths['hellaswag']}")
    codec = ("--codec-random-init", "--codec-config", json.dumps(TINY_MIMI), "--no-progress")
    run_tool("evaluate", "--prepare", "--tokenizer", root / "tok", "--tasks", *tasks, *inputs, *codec,
             "--output-dir", tmp_path / "prepared")  # fmt: skip
    run_tool("evaluate", "--load", root / "ckpt", "--tokenizer", root / "tok", "--tasks", *tasks, *inputs, *codec,
             "--output-dir", tmp_path / "offline")  # fmt: skip
    offline = json.loads((tmp_path / "offline" / "report.json").read_text())["tasks"]
    launch(
        "pretrain_entry.py", 4, "--load", root / "ckpt", "--finetune", "--tokenizer", root / "tok",
        "--data-path", root / "positives", "--split", "100,0,0", "--seq-length", 128, "--micro-batch-size", 2,
        "--global-batch-size", 4, "--train-iters", 1, "--lr", 0.0, "--min-lr", 0.0, "--lr-decay-style", "constant",
        "--tensor-model-parallel-size", 2, "--pipeline-model-parallel-size", 2, "--skip-data-validation",
        "--eval-tasks-data", tmp_path / "prepared" / "prepared.pkl", "--eval-tasks", *tasks,
        "--metrics-file", tmp_path / "metrics.jsonl",
    )  # fmt: skip
    logged = {}
    for record in read_metrics(tmp_path / "metrics.jsonl"):
        logged.update({k: v for k, v in record.items() if k.startswith("eval ")})
    expected = {f"eval {task} {offline[task]['metric']}": offline[task]["value"] for task in tasks}
    assert logged == expected and set(expected.values()) == {1.0}
