"""Two traps of a first run: training on data made with another tokenizer, and a dataset prefix that
megatron-core's index cache (``<prefix>/cache/``) turned into a directory.

Datasets say which vocabulary made them (``<prefix>.vocab.json``, left by preprocessing, merging and
packing); training refuses a mismatch by name; validate/merge resolve a prefix whatever sits beside it.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from megatron_soda.codec import CodecConfig
from megatron_soda.codec.tiny import TINY_MIMI
from megatron_soda.data.audio_pipeline import AudioPreprocessConfig, preprocess_audio
from megatron_soda.data.indexed_dataset import (
    DatasetWriter,
    commit_with_vocab_record,
    find_datasets,
    merge_datasets,
    read_vocab_record,
    tokenizer_fingerprint,
    validate_dataset,
    vocab_path,
    vocab_record,
    write_dataset,
)
from megatron_soda.data.text_pipeline import TextPreprocessConfig, preprocess_text
from megatron_soda.tokenizer import (
    SODA_LAYOUT,
    VocabLayout,
    build_soda_tokenizer,
    load_soda_tokenizer,
    save_soda_tokenizer,
    train_bpe,
)
from megatron_soda.training.plan import check_datasets, parse_train_config, plan_run
from tests.test_preprocess_audio import CORPUS

ROOT = Path(__file__).resolve().parents[1]


def tool(name):
    """``tools/<name>.py`` as a module, run in this process through its ``main(argv)``."""
    spec = importlib.util.spec_from_file_location(f"_first_run_traps_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


merge_tool, pack_tool, validate_tool = (tool(n) for n in ("merge_datasets", "pack_dataset", "validate_dataset"))

SMALL = VocabLayout(base_size=96, num_codebooks=2, codebook_size=16, bos_id=0, eos_id=1)  # 132 ids
OTHER = VocabLayout(base_size=100, num_codebooks=2, codebook_size=16, bos_id=0, eos_id=1)  # 136 ids


def texts():
    return [json.loads(line)["text"] for line in open(CORPUS / "manifest.jsonl", encoding="utf-8")]


def audio_job(root):
    return AudioPreprocessConfig(
        inputs=[str(root / "manifest.jsonl")],
        output_dir=str(root / "job"),
        tokenizer=str(root / "tok"),
        codec=CodecConfig(random_init=True, config_overrides=TINY_MIMI),
        documents_per_shard=1,
        workers=0,
        progress=False,
    )


def text_job(root):
    return TextPreprocessConfig(
        inputs=[str(root / "texts.jsonl")],
        output_dir=str(root / "text_job"),
        tokenizer=str(root / "tok"),
        progress=False,
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A small tokenizer, two recordings of the demo corpus preprocessed with it (tiny random Mimi), a text job."""
    root = tmp_path_factory.mktemp("traps")
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(texts(), vocab_size=300)), root / "tok")
    keep, lines = set(), []
    for line in open(CORPUS / "manifest.jsonl", encoding="utf-8"):
        record = json.loads(line)
        if record["recording"] not in keep and len(keep) == 2:
            continue
        keep.add(record["recording"])
        lines.append(json.dumps({**record, "audio": str(CORPUS / record["audio"])}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = preprocess_audio(audio_job(root))
    (root / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts()[:20]))
    preprocess_text(text_job(root))
    return root, report["shards"]


def shards(root, kind, count):
    return [str(root / "job" / "shards" / f"{kind}_{i:05d}") for i in range(count)]


def without_binding(record):
    return {key: value for key, value in record.items() if key != "dataset"}


def test_preprocessing_leaves_a_vocabulary_record_beside_every_dataset(made):
    root, count = made
    layout = load_soda_tokenizer(root / "tok").layout
    assert count >= 2
    expected = vocab_record(layout, root / "tok")
    assert expected["tokenizer"] == {"path": str(root / "tok"), "vocab_sha256": tokenizer_fingerprint(root / "tok")}
    text_shard = str(root / "text_job" / "shards" / "tokens_00000")
    for prefix in [*shards(root, "tokens", count), text_shard]:
        record = read_vocab_record(prefix)
        assert without_binding(record) == expected, prefix
        report = validate_dataset(prefix, layout.vocab_size)
        assert report.ok and record["dataset"] == {
            "dtype": str(report.dtype),
            "tokens": report.num_tokens,
            "sequences": report.num_sequences,
            "documents": report.num_documents,
        }
    for prefix in shards(root, "codes", count):
        assert without_binding(read_vocab_record(prefix)) == {**expected, "content": "codes"}
    assert (expected["vocab_size"], expected["base_size"], expected["audio_offset"]) == (16690, 302, 306)
    assert expected["special_ids"]["begin_of_text"] == layout.bos_id


def test_a_resumed_job_adds_the_record_to_shards_committed_without_one(made):
    root, count = made
    prefixes = [*shards(root, "tokens", count), *shards(root, "codes", count)]
    text_shard = str(root / "text_job" / "shards" / "tokens_00000")
    before = {p: Path(vocab_path(p)).read_bytes() for p in [*prefixes, text_shard]}
    for prefix in before:
        os.remove(vocab_path(prefix))  # as code older than the records left them
    preprocess_audio(audio_job(root))
    preprocess_text(text_job(root))
    assert {p: Path(vocab_path(p)).read_bytes() for p in before} == before  # what a fresh run writes


def test_merge_and_pack_carry_the_record_and_validate_shows_it(made, tmp_path, capsys):
    root, count = made
    expected = without_binding(read_vocab_record(shards(root, "tokens", count)[0]))
    merged, packed = str(tmp_path / "speech"), str(tmp_path / "speech_packed")
    assert merge_tool.main(["--output", merged, "--no-progress", "--input", *shards(root, "tokens", count)]) == 0
    assert without_binding(read_vocab_record(merged)) == expected
    assert pack_tool.main(["--input", merged, "--output", packed, "--seq-length", "512"]) == 0
    assert without_binding(read_vocab_record(packed)) == expected
    assert read_vocab_record(packed)["dataset"]["tokens"] == validate_dataset(merged).num_tokens
    capsys.readouterr()
    assert validate_tool.main(["--input", packed]) == 0
    assert f"made with a 16,690-id vocabulary (base 302, audio from 306: 8 x 2,048 codes; tokenizer {root / 'tok'}" in (
        capsys.readouterr().out
    )
    merge_datasets(tmp_path / "lib", shards(root, "tokens", count))  # the library call carries it too
    assert without_binding(read_vocab_record(tmp_path / "lib")) == expected


def plan(*argv):
    return plan_run(parse_train_config(["--train-iters", "10", "--seq-length", "64", *map(str, argv)]), 1)


def test_training_refuses_data_of_another_vocabulary_naming_dataset_both_vocabularies_and_the_fix(made, tmp_path):
    root, count = made
    merged = str(tmp_path / "speech")
    merge_datasets(merged, shards(root, "tokens", count))
    with pytest.raises(ValueError) as refused:
        plan("--data-path", merged)  # no --tokenizer: SODA's 144,644 ids
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"--data-path {merged} was made with a 16,690-id vocabulary")
    assert "144,644-id vocabulary" in message and "as no --tokenizer was given" in message
    assert message.endswith(f"pass --tokenizer {root / 'tok'} (the tokenizer that made it)")

    assert plan("--data-path", merged, "--tokenizer", root / "tok").vocab.vocab_size == 16690

    # The same layout from another vocabulary (a BPE of the same size trained on other text) is refused too.
    save_soda_tokenizer(build_soda_tokenizer(train_bpe([t[::-1] for t in texts()], vocab_size=300)), tmp_path / "tok2")
    assert load_soda_tokenizer(tmp_path / "tok2").layout == load_soda_tokenizer(root / "tok").layout
    with pytest.raises(ValueError, match=f"--tokenizer {tmp_path / 'tok2'} gives a 16,690-id .*vocabulary sha256") as e:
        plan("--data-path", merged, "--tokenizer", tmp_path / "tok2")
    assert str(e.value).endswith(f"pass --tokenizer {root / 'tok'} (the tokenizer that made it)")

    # A preprocessing job's raw codes are not training data.
    with pytest.raises(ValueError, match="raw codec codes .* not token sequences"):
        plan("--data-path", shards(root, "codes", count)[0], "--tokenizer", root / "tok")


def test_a_dataset_without_a_record_is_checked_by_its_ids_alone(tmp_path):
    prefix = str(tmp_path / "old")
    write_dataset(prefix, np.arange(120), [50, 70], SMALL.vocab_size)  # as older code or megatron's tools
    assert read_vocab_record(prefix) is None
    check_datasets([prefix], SODA_LAYOUT, scan_tokens=True)
    check_datasets([prefix], SMALL, scan_tokens=True)
    with pytest.raises(ValueError, match=r"token id 116 .* outside the vocabulary \[0, 116\)"):
        check_datasets([prefix], VocabLayout(base_size=80, num_codebooks=2, codebook_size=16, bos_id=0, eos_id=1), True)


def test_merging_datasets_of_different_vocabularies_is_refused_naming_both(tmp_path, capsys):
    a, b, bare = (str(tmp_path / name) for name in ("a", "b", "bare"))
    write_dataset(a, np.arange(100), [40, 60], SMALL.vocab_size, vocab=vocab_record(SMALL))
    write_dataset(b, np.arange(100), [40, 60], OTHER.vocab_size, vocab=vocab_record(OTHER))
    write_dataset(bare, np.arange(100), [40, 60], SMALL.vocab_size)
    with pytest.raises(ValueError, match="different vocabularies") as refused:
        merge_datasets(tmp_path / "out", [a, b])
    assert f"{a}.vocab.json records a 132-id vocabulary" in str(refused.value)
    assert f"{b}.vocab.json records a 136-id vocabulary" in str(refused.value)
    with pytest.raises(ValueError, match=f"{bare} has no vocabulary record"):
        merge_datasets(tmp_path / "out", [a, bare])
    assert not list(tmp_path.glob("out*"))  # refused before anything was written
    assert merge_tool.main(["--output", str(tmp_path / "out"), "--no-progress", "--input", a, b]) == 1
    assert f"{a}.vocab.json" in capsys.readouterr().err
    merge_datasets(tmp_path / "aa", [a, a])  # one vocabulary: carried
    assert without_binding(read_vocab_record(tmp_path / "aa")) == vocab_record(SMALL)
    assert read_vocab_record(tmp_path / "aa")["dataset"]["tokens"] == 200


def test_the_record_never_vouches_for_a_dataset_it_was_not_written_with(tmp_path):
    prefix = str(tmp_path / "d")
    write_dataset(prefix, np.arange(100), [40, 60], SMALL.vocab_size, vocab=vocab_record(SMALL))
    record_text = Path(vocab_path(prefix)).read_text()

    def refused():
        raise OSError("disk full")

    # A commit that fails puts the old record back.
    with pytest.raises(OSError):
        commit_with_vocab_record(prefix, {**json.loads(record_text), "vocab_size": 1}, refused)
    assert Path(vocab_path(prefix)).read_text() == record_text

    # Overwritten without a vocabulary: the old record goes.
    write_dataset(prefix, np.arange(10), [10], SMALL.vocab_size, overwrite=True)
    assert not os.path.exists(vocab_path(prefix))

    # An overwrite killed after its record was written but before its .idx commit: the old dataset is
    # still there, and the new record, bound to other counts, is ignored rather than believed.
    write_dataset(prefix, np.arange(100), [40, 60], SMALL.vocab_size, vocab=vocab_record(SMALL), overwrite=True)
    child = textwrap.dedent(f"""
        import numpy as np
        from megatron_soda.data.indexed_dataset import vocab_record, write_dataset
        from megatron_soda.tokenizer import VocabLayout
        other = VocabLayout(**{OTHER.__dict__!r})
        write_dataset({prefix!r}, np.arange(30), [30], other.vocab_size, vocab=vocab_record(other), overwrite=True)
    """)
    env = {**os.environ, "MEGATRON_SODA_CRASH_AT": "idx_synced"}
    assert subprocess.run([sys.executable, "-c", child], env=env, timeout=120).returncode == -9
    assert validate_dataset(prefix).num_tokens == 100  # the old dataset
    assert json.loads(Path(vocab_path(prefix)).read_text())["vocab_size"] == OTHER.vocab_size  # the new record
    assert read_vocab_record(prefix) is None
    check_datasets([prefix], SMALL, scan_tokens=False)  # not refused for a vocabulary it does not have

    # A record beside no .idx (a first write killed before its commit) describes nothing.
    env["MEGATRON_SODA_CRASH_AT"] = "bin_renamed"
    child = child.replace(repr(prefix), repr(str(tmp_path / "fresh")))
    assert subprocess.run([sys.executable, "-c", child], env=env, timeout=120).returncode == -9
    assert os.path.exists(vocab_path(tmp_path / "fresh")) and not validate_dataset(tmp_path / "fresh").ok
    assert find_datasets([tmp_path]) == [prefix]


def test_an_unreadable_record_is_reported_not_ignored(tmp_path, capsys):
    prefix = str(tmp_path / "d")
    write_dataset(prefix, np.arange(100), [40, 60], SMALL.vocab_size, vocab=vocab_record(SMALL))
    Path(vocab_path(prefix)).write_text("{not json")
    with pytest.raises(ValueError, match=f"--data-path {prefix}: {prefix}.vocab.json: unreadable vocabulary record"):
        check_datasets([prefix], SMALL, scan_tokens=False)
    assert validate_tool.main(["--input", prefix]) == 1
    assert f"DAMAGED {prefix}.vocab.json: unreadable" in capsys.readouterr().err


def test_a_writer_refuses_a_record_of_another_id_range(tmp_path):
    with pytest.raises(ValueError, match="vocab_size 1000 does not fit a 132-id vocabulary"):
        DatasetWriter(tmp_path / "d", 1000, vocab=vocab_record(SMALL))
    DatasetWriter(tmp_path / "c", 32, vocab=vocab_record(SMALL, content="codes")).abort()


def with_index_cache(prefix):
    """What a training run leaves: megatron-core's GPTDataset index cache in ``<prefix>/cache/``."""
    cache = Path(f"{prefix}/cache/GPTDataset_indices")
    cache.mkdir(parents=True)
    for name in ("document_index", "sample_index", "shuffle_index"):
        np.save(cache / f"0123abcd-GPTDataset-train-{name}.npy", np.arange(4))


def test_validate_resolves_a_prefix_whatever_folder_sits_beside_it(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    speech, text = str(data / "speech_all"), str(data / "text_all")
    write_dataset(speech, np.arange(100), [40, 60], SMALL.vocab_size, vocab=vocab_record(SMALL))
    write_dataset(text, np.arange(50), [50], SMALL.vocab_size)
    with_index_cache(speech)
    os.makedirs(data / "cache")  # and a cache folder of its own beside the prefixes
    np.save(data / "cache" / "blend.npy", np.arange(3))

    assert find_datasets([speech]) == find_datasets([speech + "/"]) == [speech]
    assert validate_tool.main(["--input", speech]) == 0
    assert capsys.readouterr().out.startswith(f"{speech}: OK (2 documents")
    assert validate_tool.main(["--input", str(data)]) == 0  # a directory still finds its datasets
    assert "2 of 2 datasets OK" in capsys.readouterr().out
    assert find_datasets([data]) == [speech, text]
    # merge and pack take the prefix too
    assert merge_tool.main(["--output", str(tmp_path / "m"), "--no-progress", "--input", speech]) == 0
    assert pack_tool.main(["--input", speech, "--output", str(tmp_path / "p"), "--seq-length", "64"]) == 0
    # and an empty directory is still refused
    os.makedirs(tmp_path / "empty")
    with pytest.raises(SystemExit):
        validate_tool.main(["--input", str(tmp_path / "empty")])
    assert "no datasets found" in capsys.readouterr().err
