"""Pretraining end to end on CPU: the loss falls on the demo data; stop-and-resume is bitwise."""

import json

import numpy as np
import pytest

from megatron_soda.codec import CodecConfig
from megatron_soda.data.audio_pipeline import AudioPreprocessConfig, preprocess_audio
from megatron_soda.data.indexed_dataset import merge_datasets, write_dataset
from megatron_soda.data.packing import pack_dataset
from megatron_soda.data.synthetic import text_documents
from megatron_soda.training.arguments import parse_args
from megatron_soda.tokenizer import build_soda_tokenizer, load_soda_tokenizer, save_soda_tokenizer, train_bpe
from tests.dist import launch
from tests.test_preprocess_audio import CORPUS, TINY_MIMI


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The demo corpus preprocessed (tiny random codec), merged into one dataset, and its tokenizer."""
    root = tmp_path_factory.mktemp("pretrain_data")
    texts = [json.loads(line)["text"] for line in open(CORPUS / "manifest.jsonl", encoding="utf-8")]
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(texts, vocab_size=300)), root / "tok")
    report = preprocess_audio(AudioPreprocessConfig(
        inputs=[str(CORPUS / "manifest.jsonl")], output_dir=str(root / "job"), tokenizer=str(root / "tok"),
        codec=CodecConfig(random_init=True, config_overrides=TINY_MIMI), documents_per_shard=100, workers=0, progress=False,
    ))
    merge_datasets(root / "speech", [root / "job" / "shards" / f"tokens_{i:05d}" for i in range(report["shards"])])
    return root


def pretrain(root, run, *args, world=1):
    metrics = root / f"{run}.jsonl"
    launch("pretrain_entry.py", world, "--model", "tiny", "--tokenizer", root / "tok", "--data-path", root / "speech",
           "--split", "100,0,0", "--seq-length", 128, "--micro-batch-size", 2, "--global-batch-size", 4,
           "--lr", 3e-3, "--lr-warmup-iters", 2, "--lr-decay-style", "wsd", "--lr-decay-fraction", 0.2,
           "--clip-grad", 1.0, "--z-loss-weight", 1e-4, "--metrics-file", metrics, "--skip-data-validation", *args)
    return [json.loads(line) for line in open(metrics)]


@pytest.mark.timeout(600)
def test_tiny_model_loss_falls_on_the_demo_data(demo_data):
    lines = pretrain(demo_data, "falls", "--train-iters", 30)
    losses = [line["lm loss"] for line in lines]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 1.0, losses
    # Per-modality losses are logged for the steps whose batches held that modality (128-token rows
    # of speech documents can be all audio: then no text loss, rather than a misleading 0).
    assert all(np.isfinite(line["audio loss"]) for line in lines)
    text = [line["text loss"] for line in lines if "text loss" in line]
    assert 10 <= len(text) < 30 and all(np.isfinite(text)) and np.mean(text[-3:]) < np.mean(text[:3])


@pytest.mark.timeout(600)
def test_stop_and_resume_equals_the_uninterrupted_run_bitwise(demo_data, tmp_path):
    whole = pretrain(demo_data, "whole", "--train-iters", 6)
    first = pretrain(demo_data, "first", "--train-iters", 6, "--exit-interval", 3, "--save", tmp_path / "ckpt")
    second = pretrain(demo_data, "second", "--train-iters", 6, "--load", tmp_path / "ckpt", "--save", tmp_path / "ckpt")
    assert [line["iteration"] for line in first + second] == list(range(1, 7))
    for key in ("lm loss", "grad norm", "learning rate", "consumed samples"):
        assert [line[key] for line in first + second] == [line[key] for line in whole], key


@pytest.mark.timeout(600)
def test_packed_rows_train_at_tp2(demo_data):
    pack_dataset(demo_data / "speech", demo_data / "speech_packed", 128, overwrite=True)
    lines = pretrain(demo_data, "packed", "--train-iters", 12, "--data-path", demo_data / "speech_packed", "--packed-data",
                     "--tensor-model-parallel-size", 2, world=2)
    losses = [line["lm loss"] for line in lines]
    assert len(losses) == 12 and all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses


@pytest.mark.timeout(600)
def test_document_masked_blend_logs_the_achieved_mix(demo_data):
    layout = load_soda_tokenizer(demo_data / "tok").layout
    write_dataset(demo_data / "text", *text_documents(np.random.default_rng(0), 200, layout, (20, 120)), layout.vocab_size,
                  overwrite=True)
    lines = pretrain(demo_data, "blend", "--train-iters", 8, "--reset-attention-mask", "--split", "80,20,0",
                     "--data-cache-path", demo_data / "index_cache",
                     "--eval-interval", 4, "--eval-iters", 1, "--data-path", 0.7, demo_data / "speech", 0.3, demo_data / "text")
    train = [line for line in lines if "lm loss" in line]
    assert len(train) == 8 and all(np.isfinite(line["lm loss"]) for line in train)
    assert train[-1]["data mix"] == pytest.approx([0.7, 0.3], abs=0.03)
    assert any((demo_data / "index_cache").glob("*-GPTDataset-train-shuffle_index.npy"))  # megatron cached them there
    validation = [line for line in lines if "validation lm loss" in line]
    assert [line["iteration"] for line in validation] == [4, 8] and all(np.isfinite(line["validation lm loss"]) for line in validation)


def test_soda_presets_bring_sodas_recipe_and_flags_override_it():
    config = parse_args(["--model", "soda-600m", "--data-path", "0.95", "speech", "0.05", "text", "--lr", "1e-3"])
    assert (config.global_batch_size, config.seq_length, config.train_iters) == (512, 4096, 238_419)
    assert (config.adam_beta1, config.adam_beta2, config.adam_eps, config.weight_decay) == (0.98, 0.98, 1e-16, 0.033)
    assert config.adamc and config.optimizer == "cautious" and config.z_loss_weight == 1e-4 and config.lr == 1e-3


@pytest.mark.parametrize(
    "argv, world, message",
    [
        (["--global-batch-size", "6", "--micro-batch-size", "4"], 1, "--global-batch-size 6 is not divisible"),
        (["--tensor-model-parallel-size", "3"], 4, "not divisible by --tensor-model-parallel-size 3"),
        (["--lr-decay-style", "step"], 1, "--lr-decay-style 'step'"),
        (["--fp8-format", "hybrid"], 1, "needs transformer_engine"),
        (["--attention-backend", "xformers"], 1, "--attention-backend 'xformers': choose one of"),
        (["--packed-data", "--reset-attention-mask"], 1, "--reset-attention-mask is for GPTDataset rows"),
        (["--attention-backend", "local", "--packed-data"], 1, "--attention-backend local cannot keep documents apart"),
        (["--train-iters", "3"], 1, "--lr-decay-style wsd over 3 iterations .*--lr-decay-fraction 0.2.*needs a decay phase"),
    ],
)
def test_impossible_settings_are_refused_naming_the_flag(argv, world, message):
    config = parse_args(["--data-path", "x", "--train-iters", "1", *argv])
    with pytest.raises((ValueError, ImportError), match=message):
        config.check(world)


def test_load_of_an_empty_directory_without_a_model_is_refused(demo_data, tmp_path):
    from megatron_soda.pretrain import pretrain as run

    config = parse_args(["--data-path", str(demo_data / "speech"), "--tokenizer", str(demo_data / "tok"), "--train-iters",
                         "10", "--load", str(tmp_path / "typo")])
    with pytest.raises(ValueError, match=f"--load {tmp_path / 'typo'} holds no checkpoint, and no --model"):
        run(config)


@pytest.mark.timeout(300)
def test_plain_python_without_a_launcher_trains_as_one_process(demo_data, tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    result = subprocess.run(
        [sys.executable, "-m", "megatron_soda.pretrain", "--model", "tiny", "--tokenizer", str(demo_data / "tok"),
         "--data-path", str(demo_data / "speech"), "--split", "100,0,0", "--seq-length", "64", "--micro-batch-size", "2",
         "--global-batch-size", "2", "--train-iters", "2", "--lr-decay-style", "constant",
         "--metrics-file", str(tmp_path / "m.jsonl")],
        env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [json.loads(line)["iteration"] for line in open(tmp_path / "m.jsonl")] == [1, 2]


@pytest.mark.timeout(600)
def test_data_parallel_ranks_split_the_global_batch_and_train_as_one(demo_data):
    """DP=2 (two ranks, one micro-batch each) takes the same steps as one rank with two micro-batches."""
    args = ["--train-iters", 4, "--lr-decay-style", "constant", "--global-batch-size", 4, "--micro-batch-size", 2]
    one = pretrain(demo_data, "dp1", *args)
    two = pretrain(demo_data, "dp2", *args, world=2)
    assert [line["consumed samples"] for line in two] == [4, 8, 12, 16]
    for key in ("lm loss", "grad norm"):
        assert [line[key] for line in two] == pytest.approx([line[key] for line in one], rel=1e-5), key
    assert len({line["lm loss"] for line in one}) == 4  # the steps differ: the comparison means something
