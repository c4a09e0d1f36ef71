"""Pretraining end to end on CPU: the loss falls on the demo data; stop-and-resume is bitwise."""

import json

import numpy as np
import pytest

from megatron_soda.codec import CodecConfig
from megatron_soda.codec.tiny import TINY_MIMI
from megatron_soda.data.audio_pipeline import AudioPreprocessConfig, preprocess_audio
from megatron_soda.data.indexed_dataset import merge_datasets, write_dataset
from megatron_soda.data.packing import pack_dataset
from megatron_soda.data.synthetic import text_documents
from megatron_soda.device import device_info
from megatron_soda.models.presets import get_preset
from megatron_soda.tokenizer import build_soda_tokenizer, load_soda_tokenizer, save_soda_tokenizer, train_bpe
from megatron_soda.training.logger import iteration_records, read_metrics
from megatron_soda.training.plan import parse_train_config, plan_run
from tests.dist import launch
from tests.test_preprocess_audio import CORPUS


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The demo corpus preprocessed (tiny random codec), merged into one dataset, and its tokenizer."""
    root = tmp_path_factory.mktemp("pretrain_data")
    texts = [json.loads(line)["text"] for line in open(CORPUS / "manifest.jsonl", encoding="utf-8")]
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(texts, vocab_size=300)), root / "tok")
    report = preprocess_audio(
        AudioPreprocessConfig(
            inputs=[str(CORPUS / "manifest.jsonl")],
            output_dir=str(root / "job"),
            tokenizer=str(root / "tok"),
            codec=CodecConfig(random_init=True, config_overrides=TINY_MIMI),
            documents_per_shard=100,
            workers=0,
            progress=False,
        )
    )
    merge_datasets(root / "speech", [root / "job" / "shards" / f"tokens_{i:05d}" for i in range(report["shards"])])
    return root


def pretrain_process(*args):
    """`python -m megatron_soda.pretrain` as a plain process (no launcher variables), with its output."""
    import os
    import subprocess
    import sys

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    result = subprocess.run(
        [sys.executable, "-m", "megatron_soda.pretrain", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def small_text_dataset(root):
    """60 text-only documents beside the speech: with the default split, a test share of none."""
    if not (root / "text_small.idx").exists():
        layout = load_soda_tokenizer(root / "tok").layout
        documents = text_documents(np.random.default_rng(1), 60, layout, (20, 120))
        write_dataset(root / "text_small", *documents, layout.vocab_size)
    return root / "text_small"


def pretrain(root, run, *args, world=1, model="tiny"):
    metrics = root / f"{run}.jsonl"
    launch(
        "pretrain_entry.py",
        world,
        *(["--model", model] if model else []),
        "--tokenizer",
        root / "tok",
        "--data-path",
        root / "speech",
        "--split",
        "100,0,0",
        "--seq-length",
        128,
        "--micro-batch-size",
        2,
        "--global-batch-size",
        4,
        "--lr",
        3e-3,
        "--lr-warmup-iters",
        2,
        "--lr-decay-style",
        "wsd",
        "--lr-decay-fraction",
        0.2,
        "--clip-grad",
        1.0,
        "--z-loss-weight",
        1e-4,
        "--metrics-file",
        metrics,
        "--skip-data-validation",
        *args,
    )
    return iteration_records(metrics)


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


@pytest.fixture(scope="module")
def whole6(demo_data):
    """Six iterations uninterrupted: the run the stop-and-resume tests compare with."""
    return pretrain(demo_data, "whole6", "--train-iters", 6)


@pytest.fixture(scope="module")
def stopped_at_3(demo_data, tmp_path_factory):
    """The same run stopped by --exit-interval 3: its records and its checkpoint (copy it before saving to it)."""
    ckpt = tmp_path_factory.mktemp("stopped_at_3") / "ckpt"
    return pretrain(demo_data, "first3", "--train-iters", 6, "--exit-interval", 3, "--save", ckpt), ckpt


@pytest.mark.timeout(600)
def test_stop_and_resume_equals_the_uninterrupted_run_bitwise(demo_data, whole6, stopped_at_3, tmp_path):
    import shutil

    whole, (first, stopped) = whole6, stopped_at_3
    shutil.copytree(stopped, tmp_path / "ckpt")
    # saving every iteration, keeping the newest and multiples of 4: the resume is unaffected
    keep = ("--save-interval", 1, "--save-keep-latest", 1, "--save-keep-interval", 4)
    second = pretrain(
        demo_data, "second", "--train-iters", 6, "--load", tmp_path / "ckpt", "--save", tmp_path / "ckpt", *keep
    )
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "iter_0000004",
        "iter_0000006",
        "latest_checkpointed_iteration.txt",
    ]
    assert [line["iteration"] for line in first + second] == list(range(1, 7))
    for key in ("lm loss", "grad norm", "learning rate", "consumed samples"):
        assert [line[key] for line in first + second] == [line[key] for line in whole], key


@pytest.mark.timeout(600)
def test_metrics_file_describes_the_run_and_a_resume_keeps_one_record_per_iteration(demo_data, whole6, tmp_path):
    """A run that wrote iterations 4-6 past its checkpoint at 3, resumed from 3 into the same file."""
    whole = whole6
    ckpt = tmp_path / "ckpt"
    pretrain(demo_data, "resumed", "--train-iters", 6, "--save", ckpt, "--save-interval", 3)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("3\n")  # as if killed after iteration 6's log line
    resumed = pretrain(demo_data, "resumed", "--train-iters", 6, "--load", ckpt, "--save", ckpt)
    assert [line["iteration"] for line in resumed] == list(range(1, 7))
    assert [line["lm loss"] for line in resumed] == [line["lm loss"] for line in whole]
    records = read_metrics(demo_data / "resumed.jsonl")
    run = records[0]["run"]
    tiny = get_preset("tiny", vocab_size=load_soda_tokenizer(demo_data / "tok").layout.vocab_size)
    assert run["model"] == "tiny" and run["parameters"] == tiny.num_parameters()
    assert run["non_embedding_parameters"] == tiny.num_non_embedding_parameters()
    assert run["tokens_per_iteration"] == 4 * 128 and run["flops_per_token"] > run["six_n_flops_per_token"] > 0
    assert run["layout"]["tensor"] == 1 and run["layout"]["data"] == 1 and run["recipe"] is None
    assert [r["resume"]["iteration"] for r in records if "resume" in r] == [3]
    # Resuming with another schedule is refused unless asked for, as Megatron-LM's flag says.
    with pytest.raises(RuntimeError, match="LR schedule differs from the checkpoint's .*total_steps 6 -> 8"):
        pretrain(demo_data, "longer", "--train-iters", 8, "--load", ckpt)
    longer = pretrain(demo_data, "longer", "--train-iters", 8, "--load", ckpt, "--override-opt_param-scheduler")
    assert [line["iteration"] for line in longer] == [7, 8]


@pytest.mark.timeout(600)
def test_no_load_optim_continues_the_run_with_the_weights_and_a_fresh_optimizer(demo_data, whole6, stopped_at_3):
    whole, (_, ckpt) = whole6, stopped_at_3
    fresh = pretrain(demo_data, "fresh_nlo", "--train-iters", 6, "--load", ckpt, "--no-load-optim")
    assert [line["iteration"] for line in fresh] == [4, 5, 6] and fresh[0]["consumed samples"] == 16
    assert fresh[0]["lm loss"] == whole[3]["lm loss"]  # the same weights and batch: the loss before the step
    assert fresh[1]["lm loss"] != whole[4]["lm loss"]  # then fresh Adam moments take another step


@pytest.mark.timeout(600)
def test_validation_reads_the_same_sequences_whatever_the_batch(demo_data):
    """Untrained weights (lr 0), two batch layouts: the fixed validation set gives one per-token loss."""
    args = [
        "--train-iters",
        1,
        "--lr",
        0.0,
        "--lr-warmup-iters",
        0,
        "--lr-decay-style",
        "constant",
        "--split",
        "80,20,0",
        "--eval-interval",
        1,
        "--eval-samples",
        6,
    ]
    pretrain(demo_data, "valid_a", *args, "--micro-batch-size", 2, "--global-batch-size", 4)
    pretrain(demo_data, "valid_b", *args, "--micro-batch-size", 4, "--global-batch-size", 8)
    a, b = ([r for r in read_metrics(demo_data / f"valid_{k}.jsonl") if "validation lm loss" in r] for k in "ab")
    assert len(a) == len(b) == 1 and "validation audio loss" in a[0]
    for key in ("validation lm loss", "validation audio loss"):
        assert a[0][key] == pytest.approx(b[0][key], rel=1e-6), key


def _checkpoint_tensors(path):
    """A dist checkpoint's model tensors, read without a model or process group."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = path.parent / (path.name + ".pt")
    dcp_to_torch_save(str(path), str(out))
    state = torch.load(out, weights_only=False)
    return {
        k: v
        for k, v in state.items()
        if torch.is_tensor(v) and not k.startswith(("optimizer", "rng_state")) and "_extra_state" not in k
    }


@pytest.mark.timeout(600)
def test_finetune_starts_iteration_schedule_data_and_optimizer_fresh_from_the_weights(demo_data, tmp_path):
    pretrain(demo_data, "pre10", "--train-iters", 10, "--save", tmp_path / "pre")
    # lr 0 and no decay: the one fine-tuning step leaves the weights as loaded.
    tuned = pretrain(
        demo_data,
        "ft",
        "--train-iters",
        2,
        "--finetune",
        "--load",
        tmp_path / "pre",
        "--save",
        tmp_path / "ft",
        "--lr",
        0.0,
        "--weight-decay",
        0.0,
        "--lr-decay-style",
        "constant",
    )
    assert [(r["iteration"], r["consumed samples"]) for r in tuned] == [(1, 4), (2, 8)]
    from megatron_soda.training.checkpointing import read_checkpoint_info

    info = read_checkpoint_info(tmp_path / "ft")
    assert (
        info["iteration"] == 2
        and info["consumed_samples"] == 8
        and info["scheduler_state"]["schedule"]["total_steps"] == 2
    )
    before = _checkpoint_tensors(tmp_path / "pre" / "iter_0000010")
    after = _checkpoint_tensors(tmp_path / "ft" / "iter_0000002")
    assert before.keys() == after.keys() and len(before) > 10
    assert all(before[k].equal(after[k]) for k in before)
    # The data starts at sample 0: the first fine-tuning loss is the pretrained model's on batch 0, which
    # differs from its loss on batch 11 (where a resume would continue).
    warm = pretrain(
        demo_data,
        "ft_lr",
        "--train-iters",
        4,
        "--finetune",
        "--load",
        tmp_path / "pre",
        "--lr",
        1e-3,
        "--lr-warmup-iters",
        2,
        "--lr-decay-style",
        "constant",
    )
    assert warm[0]["learning rate"] == pytest.approx(5e-4) and warm[0]["lm loss"] == tuned[0]["lm loss"]
    assert read_metrics(demo_data / "ft_lr.jsonl")[0]["run"]["finetune"] is True


@pytest.mark.timeout(600)
def test_a_shape_from_flags_trains_checkpoints_exports_and_converts_back(demo_data, tmp_path):
    import subprocess
    import sys

    from megatron_soda.training.checkpointing import read_checkpoint_info

    shape_flags = [
        "--num-layers",
        2,
        "--hidden-size",
        48,
        "--num-attention-heads",
        4,
        "--num-query-groups",
        2,
        "--ffn-hidden-size",
        96,
        "--max-position-embeddings",
        256,
    ]
    lines = pretrain(
        demo_data,
        "custom",
        "--train-iters",
        3,
        "--save",
        tmp_path / "ckpt",
        *shape_flags,
        "--lr-decay-style",
        "constant",
        model=None,
    )
    assert len(lines) == 3 and all(np.isfinite(line["lm loss"]) for line in lines)
    record = read_checkpoint_info(tmp_path / "ckpt")["extra"]["model"]
    assert isinstance(record, dict) and (record["num_layers"], record["hidden_size"], record["kv_channels"]) == (
        2,
        48,
        12,
    )
    assert record["tie_embeddings"] is True  # Megatron-LM's default without --untie-embeddings-and-output-weights
    tool = [sys.executable, "tools/convert_checkpoint.py"]
    for args in (
        ["export", "--load", tmp_path / "ckpt", "--output", tmp_path / "hf", "--tokenizer", demo_data / "tok"],
        ["import", "--hf", tmp_path / "hf", "--save", tmp_path / "back"],
    ):
        result = subprocess.run([*tool, *map(str, args), "--no-progress"], capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stderr[-2000:]
    trained, back = (
        _checkpoint_tensors(tmp_path / "ckpt" / "iter_0000003"),
        _checkpoint_tensors(tmp_path / "back" / "iter_0000000"),
    )
    vocab = load_soda_tokenizer(demo_data / "tok").layout.vocab_size
    assert trained.keys() == back.keys()
    # Hugging Face holds the real vocabulary only: the embedding's padding rows do not travel.
    differ = [
        k
        for k in trained
        if not (
            trained[k][:vocab].equal(back[k][:vocab])
            if "word_embeddings" in k or "output_layer" in k
            else trained[k].equal(back[k])
        )
    ]
    assert not differ, differ
    # The imported model continues without --model or shape flags: its checkpoint records the shape.
    more = pretrain(
        demo_data,
        "custom_more",
        "--train-iters",
        3,
        "--load",
        tmp_path / "back",
        "--lr-decay-style",
        "constant",
        model=None,
    )
    assert len(more) == 3 and np.isfinite(more[0]["lm loss"])


def test_dry_run_prints_model_layout_run_and_memory_without_touching_data(capsys):
    from megatron_soda.pretrain import main
    from megatron_soda.training.memory import estimate_memory

    assert (
        main(["--model", "soda-600m", "--dry-run", "--micro-batch-size", "4", "--bf16", "--data-path", "nowhere"]) == 0
    )
    out = capsys.readouterr().out
    shape = get_preset("soda-600m")
    assert (
        f"{shape.num_parameters():,} total" in out and f"{shape.num_non_embedding_parameters():,} non-embedding" in out
    )
    assert "TP=1 x PP=1 x DP=1" in out and "238,419 iterations x 512 sequences x 4096 tokens" in out
    assert "recipe: soda (soda-600m)" in out
    estimate = estimate_memory(
        shape,
        tensor_parallel=1,
        pipeline_parallel=1,
        data_parallel=1,
        micro_batch_size=4,
        seq_length=4096,
        bf16=True,
        distributed_optimizer=False,
    )
    assert f"{estimate.total / 2**30:.2f} GiB" in out


@pytest.mark.timeout(600)
def test_cautious_training_at_tp2_takes_the_tp1_steps(demo_data):
    """The cautious rescale is per whole tensor, so splitting the tensors over two ranks changes nothing."""
    args = ["--train-iters", 3, "--optimizer", "cautious", "--lr-decay-style", "constant", "--micro-batch-size", 4]
    one = pretrain(demo_data, "cautious_tp1", *args)
    two = pretrain(demo_data, "cautious_tp2", *args, "--tensor-model-parallel-size", 2, world=2)
    # Losses to fp32 rounding. The reported grad norm (megatron's fp32 norm reduction over TP ranks)
    # agrees to ~5e-5 relative while every parameter's gradient agrees to 1e-6: a reporting detail.
    assert [line["lm loss"] for line in two] == pytest.approx([line["lm loss"] for line in one], rel=1e-6, abs=0)
    assert [line["grad norm"] for line in two] == pytest.approx([line["grad norm"] for line in one], rel=2e-4)
    assert len({line["lm loss"] for line in one}) == 3


@pytest.mark.timeout(300)
def test_the_readme_blend_with_the_default_split_trains_instead_of_hanging(demo_data):
    """A few hundred documents give the default 969,30,1 split an empty test share: it must not hang."""
    small_text_dataset(demo_data)
    lines = pretrain(
        demo_data,
        "default_split",
        "--train-iters",
        2,
        "--split",
        "969,30,1",
        "--lr-decay-style",
        "constant",
        "--data-path",
        0.95,
        demo_data / "speech",
        0.05,
        demo_data / "text_small",
    )
    assert [line["iteration"] for line in lines] == [1, 2]


@pytest.mark.timeout(300)
def test_a_run_logs_what_a_person_reads_and_names_tensorboard_curves_by_dataset(demo_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    small_text_dataset(demo_data)
    result = pretrain_process(
        "--model",
        "tiny",
        "--tokenizer",
        str(demo_data / "tok"),
        "--data-path",
        "0.8",
        str(demo_data / "speech"),
        "0.2",
        str(demo_data / "text_small"),
        "--split",
        "100,0,0",
        "--seq-length",
        "64",
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "2",
        "--train-iters",
        "4",
        "--lr-decay-style",
        "constant",
        "--log-interval",
        "2",
        "--save",
        str(tmp_path / "ckpt"),
        "--tensorboard-dir",
        str(tmp_path / "tb"),
        "--skip-data-validation",
    )
    out, err = result.stdout, result.stderr
    assert "model: tiny: 2 layers" in err and "recipe: none" in err and "memory per GPU" in err
    assert "saved checkpoint at iteration 4 to" in err and " GB, " in err
    assert "Apex is not installed" not in err and "TransformerConfig" not in err  # megatron's notices: --verbose
    console = [line for line in out.splitlines() if line.startswith("iteration")]
    assert [line.split("|")[0].split()[1] for line in console] == ["2/", "4/"]  # one line per --log-interval
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0}).Reload()
    scalars = events.Tags()["scalars"]
    assert "data mix/speech" in scalars and "data mix/text_small" in scalars and "lm loss" in scalars
    assert any("arguments" in tag for tag in events.Tags()["tensors"])


@pytest.mark.timeout(600)
def test_prefetching_threads_change_no_number(demo_data):
    args = ["--train-iters", 3, "--lr-decay-style", "constant"]
    plain = pretrain(demo_data, "plain", *args, "--num-workers", 0)
    threads = pretrain(demo_data, "threads", *args, "--num-workers", 3)
    assert [(r["lm loss"], r["consumed samples"]) for r in threads] == [
        (r["lm loss"], r["consumed samples"]) for r in plain
    ]


@pytest.mark.skipif(device_info().cuda, reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize(
    "flags",
    [
        ["--recompute-activations"],
        ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"],
    ],
)
def test_recomputation_is_refused_without_cuda_but_planned(flags):
    config = parse_train_config(["--data-path", "x", "--train-iters", "10", *flags])
    with pytest.raises(ValueError, match="needs CUDA: megatron-core's activation checkpointing"):
        plan_run(config, 1, check_data=False)
    planned = plan_run(parse_train_config(["--dry-run", "--train-iters", "10", *flags]), 1)
    assert planned.config.training.recompute in ("selective", "full")


@pytest.mark.timeout(600)
def test_packed_rows_train_at_tp2(demo_data):
    pack_dataset(demo_data / "speech", demo_data / "speech_packed", 128, overwrite=True)
    lines = pretrain(
        demo_data,
        "packed",
        "--train-iters",
        12,
        "--data-path",
        demo_data / "speech_packed",
        "--packed-data",
        "--tensor-model-parallel-size",
        2,
        world=2,
    )
    losses = [line["lm loss"] for line in lines]
    assert len(losses) == 12 and all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses


@pytest.mark.timeout(600)
def test_document_masked_blend_logs_the_achieved_mix(demo_data):
    layout = load_soda_tokenizer(demo_data / "tok").layout
    write_dataset(
        demo_data / "text",
        *text_documents(np.random.default_rng(0), 200, layout, (20, 120)),
        layout.vocab_size,
        overwrite=True,
    )
    pretrain(
        demo_data,
        "blend",
        "--train-iters",
        8,
        "--reset-attention-mask",
        "--split",
        "80,20,0",
        "--data-cache-path",
        demo_data / "index_cache",
        "--eval-interval",
        4,
        "--eval-samples",
        8,
        "--data-path",
        0.7,
        demo_data / "speech",
        0.3,
        demo_data / "text",
    )
    lines = [json.loads(line) for line in open(demo_data / "blend.jsonl")]
    train = [line for line in lines if "lm loss" in line]
    assert len(train) == 8 and all(np.isfinite(line["lm loss"]) for line in train)
    assert train[-1]["data mix"] == pytest.approx({"speech": 0.7, "text": 0.3}, abs=0.03)
    assert any((demo_data / "index_cache").glob("*-GPTDataset-train-shuffle_index.npy"))  # megatron cached them there
    validation = [line for line in lines if "validation lm loss" in line]
    assert [line["iteration"] for line in validation] == [4, 8] and all(
        np.isfinite(line["validation lm loss"]) for line in validation
    )


def test_soda_presets_bring_sodas_recipe_and_flags_override_it():
    config = parse_train_config(
        ["--model", "soda-600m", "--data-path", "0.95", "speech", "0.05", "text", "--lr", "1e-3"]
    )
    assert parse_train_config(["--model", "soda-600m", "--train-samples", "1024"]).training.num_iterations() == 2
    t, o = config.training, config.optimizer
    assert (t.global_batch_size, t.seq_length, t.train_iters) == (512, 4096, 238_419)
    assert (o.adam_beta1, o.adam_beta2, o.adam_eps, o.weight_decay) == (0.98, 0.98, 1e-16, 0.033)
    assert o.adamc and o.name == "cautious" and t.z_loss_weight == 1e-4 and o.lr == 1e-3
    assert config.recipe == "soda (soda-600m)"


@pytest.mark.parametrize(
    "argv, world, message",
    [
        (["--global-batch-size", "6", "--micro-batch-size", "4"], 1, "--global-batch-size 6 is not divisible"),
        (["--tensor-model-parallel-size", "3"], 4, "not divisible by --tensor-model-parallel-size 3"),
        (["--fp8-format", "hybrid"], 1, "needs transformer_engine"),
        (["--attention-backend", "xformers"], 1, "--attention-backend 'xformers': choose one of"),
        (["--num-layers", "3"], 1, "a custom shape needs --hidden-size, --num-attention-heads"),
        (["--model", "soda-9b"], 1, "--model: unknown model preset 'soda-9b'"),
        (["--finetune"], 1, "--finetune needs --load"),
        (["--exit-signal-handler"], 1, "--exit-signal-handler needs --save"),
        (["--normalization", "LayerNorm", "--no-swiglu"], 1, "--no-swiglu, --normalization LayerNorm: this trainer"),
        (["--position-embedding-type", "learned_absolute"], 1, "learned_absolute: this trainer builds Qwen3's"),
        (["--attention-dropout", "0.1"], 1, "--attention-dropout 0.1: .*no dropout"),
        (["--add-qkv-bias"], 1, "--add-qkv-bias: this trainer"),
        (["--eval-iters", "-1"], 1, "--eval-iters must be >= 0"),
        (["--save-keep-interval", "100"], 1, "--save-keep-interval says which checkpoints --save-keep-latest spares"),
        (["--save-keep-latest", "0"], 1, "--save-keep-latest must be >= 1"),
        (["--dataloader-type", "cyclic", "--rope-fusion"], 1, "cyclic, --rope-fusion: not offered by this trainer"),
        (["--make-vocab-size-divisible-by", "100"], 1, "padded to a multiple of 1,024 at every TP size"),
        (["--group-query-attention"], 1, "--group-query-attention without --num-query-groups"),
        (["--ddp-bucket-size", "1000"], 1, "--ddp-bucket-size applies to --overlap-grad-reduce"),
        (["--distributed-timeout-minutes", "inf"], 1, "--distributed-timeout-minutes must be a positive number"),
        (["--exit-duration-in-mins", "30"], 1, "--exit-duration-in-mins needs --save"),
        (["--exit-duration-in-mins", "0", "--save", "ckpt"], 1, "--exit-duration-in-mins must be > 0"),
        (["--fp16"], 1, "--fp16 is not supported"),
        (["--recompute-granularity", "full"], 1, "needs --recompute-method"),
        (["--recompute-method", "block"], 1, "apply to --recompute-granularity full"),
        (["--sequence-parallel"], 1, "needs --tensor-model-parallel-size > 1"),
        (["--eval-interval", "5", "--split", "100,0,0"], 1, "--eval-interval 5 needs validation data"),
        (["--train-samples", "8"], 1, "not --train-iters and --train-samples"),
        (["--lr-decay-style", "wsd", "--lr-decay-fraction", "0"], 1, "set --lr-decay-fraction or --lr-wsd-decay-iters"),
        (
            [
                "--model",
                "ablation-30m",
                "--pipeline-model-parallel-size",
                "4",
                "--num-layers-per-virtual-pipeline-stage",
                "1",
                "--global-batch-size",
                "6",
                "--micro-batch-size",
                "1",
            ],
            4,
            "needs a multiple of --pipeline-model-parallel-size 4 micro-batches per step",
        ),
        (["--packed-data", "--reset-attention-mask"], 1, "--reset-attention-mask is for GPTDataset rows"),
        (["--attention-backend", "local", "--packed-data"], 1, "--attention-backend local cannot keep documents apart"),
        (
            ["--train-iters", "3"],
            1,
            "--lr-decay-style wsd over 3 iterations .*--lr-decay-fraction 0.2.*needs a decay phase",
        ),
    ],
)
def test_impossible_settings_are_refused_naming_the_flag(argv, world, message):
    config = parse_train_config(["--data-path", "x", "--train-iters", "1", *argv])
    with pytest.raises((ValueError, ImportError), match=message):
        plan_run(config, world, check_data=False)


SMALL_QWEN3 = [
    *("--num-layers", "4", "--hidden-size", "256", "--num-attention-heads", "4", "--num-query-groups", "2"),
    *("--kv-channels", "64", "--ffn-hidden-size", "768", "--rotary-base", "1000000"),
    *("--untie-embeddings-and-output-weights", "--global-batch-size", "8", "--seq-length", "512"),
    *("--eval-interval", "100", "--data-path", "x", "--train-iters", "10"),
]
# What a Megatron-LM launch script adds to say the same model and settings this trainer fixes.
MEGATRON_LM_ARCHITECTURE = [
    *("--use-mcore-models", "--group-query-attention", "--swiglu", "--normalization", "RMSNorm"),
    *("--disable-bias-linear", "--position-embedding-type", "rope", "--qk-layernorm"),
    *("--attention-dropout", "0.0", "--hidden-dropout", "0.0", "--distributed-backend", "nccl"),
    *("--tokenizer-type", "HuggingFaceTokenizer", "--make-vocab-size-divisible-by", "128", "--ckpt-format"),
    *("torch_dist", "--dataloader-type", "single", "--log-throughput", "--attention-softmax-in-fp32"),
    *("--accumulate-allreduce-grads-in-fp32", "--no-masked-softmax-fusion", "--no-bias-swiglu-fusion"),
    *("--no-bias-dropout-fusion", "--no-gradient-accumulation-fusion", "--no-rope-fusion"),
]


def test_a_megatron_lm_qwen3_script_plans_the_run_our_own_flags_plan():
    ours = plan_run(parse_train_config([*SMALL_QWEN3, "--eval-samples", "80"]), 1, False)
    megatron = plan_run(parse_train_config([*SMALL_QWEN3, *MEGATRON_LM_ARCHITECTURE, "--eval-iters", "10"]), 1, False)
    assert megatron.shape == ours.shape
    assert (megatron.shape.num_query_groups, megatron.shape.tie_embeddings) == (2, False)
    assert megatron.config.validation_samples == ours.config.validation_samples == 80  # 10 batches of 8
    assert parse_train_config(["--tokenizer-model", "tok"]).data.tokenizer == "tok"  # Megatron-LM's name
    no_validation = parse_train_config([*SMALL_QWEN3, "--eval-iters", "0", "--split", "100,0,0"])
    assert no_validation.validation_interval is None  # Megatron-LM's --eval-iters 0: nothing to validate
    plan_run(no_validation, 1, False)


def test_pretrain_help_lists_every_flag_and_prints_nothing_else():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "megatron_soda.pretrain", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""
    for name in ("--exit-signal-handler", "--overlap-grad-reduce", "--swiglu", "--eval-iters", "--attention-backend"):
        assert name in result.stdout


@pytest.mark.skipif(device_info().cuda, reason="the refusal is for machines without CUDA")
def test_bf16_without_cuda_is_refused_up_front_but_may_be_planned():
    config = parse_train_config(["--data-path", "x", "--train-iters", "10", "--bf16"])
    with pytest.raises(ValueError, match="--bf16 needs CUDA"):
        plan_run(config, 1, check_data=False)
    assert plan_run(parse_train_config(["--bf16", "--dry-run", "--train-iters", "10"]), 1).config.training.bf16


def test_load_of_an_empty_directory_without_a_model_is_refused(demo_data, tmp_path):
    from megatron_soda.pretrain import pretrain as run

    config = parse_train_config(
        [
            "--data-path",
            str(demo_data / "speech"),
            "--tokenizer",
            str(demo_data / "tok"),
            "--train-iters",
            "10",
            "--load",
            str(tmp_path / "typo"),
        ]
    )
    with pytest.raises(ValueError, match=f"--load {tmp_path / 'typo'} holds no checkpoint, and no --model"):
        run(config)


@pytest.mark.timeout(300)
def test_plain_python_without_a_launcher_trains_as_one_process(demo_data, tmp_path):
    pretrain_process(
        "--model",
        "tiny",
        "--tokenizer",
        str(demo_data / "tok"),
        "--data-path",
        str(demo_data / "speech"),
        "--split",
        "100,0,0",
        "--seq-length",
        "64",
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "2",
        "--train-iters",
        "2",
        "--lr-decay-style",
        "constant",
        "--metrics-file",
        str(tmp_path / "m.jsonl"),
    )
    assert [line["iteration"] for line in iteration_records(tmp_path / "m.jsonl")] == [1, 2]


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


@pytest.mark.timeout(600)
def test_overlapping_the_gradient_reduction_with_backward_changes_no_number(demo_data):
    """DP=2, two micro-batches per rank, buckets small enough for several: the steps of reducing after backward."""
    args = ["--train-iters", 3, "--lr-decay-style", "constant", "--global-batch-size", 8, "--micro-batch-size", 2]
    plain = pretrain(demo_data, "reduce_after", *args, world=2)
    overlapped = pretrain(
        demo_data, "reduce_overlapped", *args, "--overlap-grad-reduce", "--ddp-bucket-size", 20000, world=2
    )
    for key in ("lm loss", "grad norm"):
        assert [line[key] for line in overlapped] == [line[key] for line in plain], key
    assert len({line["lm loss"] for line in plain}) == 3


@pytest.mark.timeout(600)
def test_a_fresh_run_trains_the_same_model_at_another_pipeline_layout(demo_data):
    """No checkpoint in common: each layer is drawn from its own seeded stream, whichever stage builds it."""
    args = ["--train-iters", 3, "--lr-decay-style", "constant"]
    one = pretrain(demo_data, "fresh_pp1", *args)
    # --use-cpu-initialization is how a GPU run draws as a CPU run does (always so here): the same numbers
    two = pretrain(
        demo_data, "fresh_pp2", *args, "--pipeline-model-parallel-size", 2, "--use-cpu-initialization", world=2
    )
    for key in ("lm loss", "grad norm"):
        assert [line[key] for line in two] == pytest.approx([line[key] for line in one], rel=1e-5), key
    assert len({line["lm loss"] for line in one}) == 3
