"""Loss flags beside a token dataset: written, validated, merged and packed with their tokens, never
standing beside tokens they were not written with."""

import os

import numpy as np
import pytest

from megatron_soda.data.indexed_dataset import (
    DatasetWriter,
    has_loss_mask,
    merge_datasets,
    read_loss_mask,
    validate_dataset,
    write_dataset,
)
from megatron_soda.data.loss_mask import index_arrays, mask_prefix
from megatron_soda.data.packing import pack_dataset, plan_packing


def flagged(prefix, documents, **kwargs):
    """Writes ``documents`` (lists of token ids) with flags 1 on their second half; returns the flags."""
    flags = [np.arange(len(d)) >= len(d) // 2 for d in documents]
    with DatasetWriter(prefix, 1000, loss_mask=True, **kwargs) as writer:
        writer.add_documents(np.concatenate(documents), [len(d) for d in documents], loss_mask=np.concatenate(flags))
    return np.concatenate(flags).astype(np.uint8)


def documents(rng, count, longest=40):
    return [rng.integers(0, 1000, rng.integers(2, longest)) for _ in range(count)]


def test_flags_are_written_validated_and_read_with_their_tokens(tmp_path):
    flags = flagged(tmp_path / "a", documents(np.random.default_rng(0), 5))
    report = validate_dataset(tmp_path / "a", 1000)
    assert report.ok and report.loss_mask and "with loss flags" in str(report)
    np.testing.assert_array_equal(read_loss_mask(tmp_path / "a"), flags)
    write_dataset(tmp_path / "plain", [1, 2, 3], [3], 1000)
    assert not validate_dataset(tmp_path / "plain").loss_mask and not has_loss_mask(tmp_path / "plain")
    np.testing.assert_array_equal(read_loss_mask(tmp_path / "plain"), [1, 1, 1])


def test_a_writer_refuses_flags_it_was_not_made_for_and_bad_flags(tmp_path):
    with pytest.raises(ValueError, match="made without loss_mask=True"):
        with DatasetWriter(tmp_path / "x", 10) as writer:
            writer.add_document([1, 2], loss_mask=[0, 1])
    with DatasetWriter(tmp_path / "y", 10, loss_mask=True) as writer:
        with pytest.raises(ValueError, match="needs loss_mask"):
            writer.add_document([1, 2])
        with pytest.raises(ValueError, match="3 loss flags for 2 tokens"):
            writer.add_document([1, 2], loss_mask=[0, 1, 1])
        with pytest.raises(ValueError, match="0 or 1"):
            writer.add_document([1, 2], loss_mask=[0, 2])
        writer.add_document([1, 2], loss_mask=[0, 1])
    np.testing.assert_array_equal(read_loss_mask(tmp_path / "y"), [0, 1])  # refused calls wrote nothing


def test_flags_that_do_not_match_their_tokens_are_reported_by_file(tmp_path):
    flagged(tmp_path / "a", [[1, 2, 3], [4, 5]])
    flagged(tmp_path / "b", [[1, 2], [3, 4, 5]])  # same counts, other lengths
    for suffix in (".bin", ".idx"):
        os.replace(mask_prefix(tmp_path / "b") + suffix, mask_prefix(tmp_path / "a") + suffix)
    report = validate_dataset(tmp_path / "a")
    assert not report.ok and "other sequence lengths" in report.error and report.file.endswith("a.loss.idx")
    with pytest.raises(ValueError, match="damaged"):
        merge_datasets(tmp_path / "m", [tmp_path / "a"])


def test_merging_carries_flags_and_refuses_a_mix_of_flagged_and_plain_inputs(tmp_path):
    rng = np.random.default_rng(1)
    flags = [flagged(tmp_path / f"s{i}", documents(rng, 4)) for i in range(3)]
    merge_datasets(tmp_path / "all", [tmp_path / f"s{i}" for i in range(3)])
    np.testing.assert_array_equal(read_loss_mask(tmp_path / "all"), np.concatenate(flags))
    assert validate_dataset(tmp_path / "all", 1000).loss_mask
    write_dataset(tmp_path / "plain", [1, 2, 3], [3], 1000)
    with pytest.raises(ValueError, match="with and without loss flags"):
        merge_datasets(tmp_path / "mixed", [tmp_path / "s0", tmp_path / "plain"])
    assert not os.path.exists(tmp_path / "mixed.idx")


def test_packing_moves_flags_with_their_tokens_and_refuses_to_cut_an_example(tmp_path):
    docs = documents(np.random.default_rng(2), 30)
    flags = flagged(tmp_path / "sft", docs)
    plan = pack_dataset(tmp_path / "sft", tmp_path / "packed", 64)
    assert validate_dataset(tmp_path / "packed").loss_mask
    lengths, _ = index_arrays(tmp_path / "packed")
    np.testing.assert_array_equal(lengths, plan.piece_length)
    # Each packed piece carries the flags of the document it came from.
    starts = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    expected = np.concatenate([flags[starts[d] : starts[d + 1]] for d in plan.piece_document])
    np.testing.assert_array_equal(read_loss_mask(tmp_path / "packed"), expected)
    np.testing.assert_array_equal(plan.piece_document, plan_packing([len(d) for d in docs], 64).piece_document)
    with pytest.raises(ValueError, match="longer than a row of 16 tokens.*orphan"):
        pack_dataset(tmp_path / "sft", tmp_path / "short", 16)
    assert not os.path.exists(tmp_path / "short.idx") and not has_loss_mask(tmp_path / "short")
    with pytest.raises(FileExistsError):
        pack_dataset(tmp_path / "sft", tmp_path / "packed", 64)


class FailingCommit:
    """A writer whose commit fails (a full disk), for the commit protocol's sake."""

    def __init__(self, inner):
        self.inner = inner

    def finalize(self):
        raise OSError("disk full")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_an_overwrite_never_leaves_tokens_beside_flags_of_another_write(tmp_path):
    flagged(tmp_path / "d", [[1, 2, 3]])
    write_dataset(tmp_path / "d", [4, 5, 6], [3], 1000, overwrite=True)  # plain over flagged: flags go
    assert validate_dataset(tmp_path / "d").ok and not has_loss_mask(tmp_path / "d")
    assert not os.path.exists(mask_prefix(tmp_path / "d") + ".bin")
    flagged(tmp_path / "d", [[7, 8]], overwrite=True)
    np.testing.assert_array_equal(read_loss_mask(tmp_path / "d"), [0, 1])

    # A write that fails at its commit leaves no dataset rather than old tokens beside new flags.
    writer = DatasetWriter(tmp_path / "d", 1000, loss_mask=True, overwrite=True)
    writer.add_document([9, 9, 9, 9], loss_mask=[0, 0, 1, 1])
    writer._writer = FailingCommit(writer._writer)
    with pytest.raises(OSError, match="disk full"):
        writer.finalize()
    writer.abort()
    assert not os.path.exists(tmp_path / "d.idx")


def test_a_finetune_recipe_sets_sodas_s2st_settings_and_epochs_count_the_data(tmp_path):
    from megatron_soda.training.plan import parse_train_config, plan_run

    config = parse_train_config(["--finetune-recipe", "soda-s2st-sft", "--data-path", "x"])
    o, s, t = config.optimizer, config.schedule, config.training
    assert (o.name, o.adamc, o.lr, o.min_lr, o.adam_beta2, o.adam_eps, o.weight_decay) == (
        "cautious",
        True,
        2e-5,
        pytest.approx(2e-6),
        0.999,
        1e-8,
        0.01,
    )
    assert (s.lr_decay_style, s.lr_warmup_fraction, t.seq_length, t.global_batch_size, t.train_epochs) == (
        "cosine",
        0.03,
        2048,
        64,
        5.0,
    )
    assert t.z_loss_weight == 1e-4 and config.recipe == "soda-s2st-sft (fine-tuning)"
    assert parse_train_config(["--finetune-recipe", "soda-s2st-lm"]).optimizer.min_lr == 0.0
    overridden = parse_train_config(["--finetune-recipe", "soda-s2st-lm", "--lr", "1e-4", "--train-iters", "7"])
    assert overridden.optimizer.lr == 1e-4 and overridden.training.train_iters == 7
    assert overridden.training.train_epochs is None

    # 2 epochs over 40 documents of 25 tokens (1,000 tokens) at seq 100: 20 samples, 5 steps of 4.
    write_dataset(tmp_path / "d", np.arange(1000) % 7, [25] * 40, 1000)
    args = ["--data-path", str(tmp_path / "d"), "--seq-length", "100", "--global-batch-size", "4", "--split", "100,0,0"]
    plan = plan_run(parse_train_config([*args, "--train-epochs", "2"]), 1, check_data=False)
    assert plan.train_iters == 5 and plan.config.training.train_samples == 20
    pack_dataset(tmp_path / "d", tmp_path / "rows", 100)  # 10 rows of 4 documents
    plan = plan_run(
        parse_train_config([*args, "--train-epochs", "2", "--packed-data", "--data-path", str(tmp_path / "rows")]),
        1,
        check_data=False,
    )
    assert plan.train_iters == 5
    with pytest.raises(ValueError, match="not --train-iters and --train-epochs"):
        plan_run(parse_train_config([*args, "--train-epochs", "2", "--train-iters", "3"]), 1, check_data=False)


def test_a_folder_of_flagged_shards_lists_the_shards_not_their_flags(tmp_path):
    from megatron_soda.data.indexed_dataset import find_datasets

    for name in ("tokens_00000", "tokens_00001"):
        flagged(tmp_path / name, [[1, 2, 3]])
    assert find_datasets([tmp_path]) == [str(tmp_path / "tokens_00000"), str(tmp_path / "tokens_00001")]
    listed = find_datasets([str(tmp_path / "tokens_00000.idx"), str(tmp_path / "tokens_00000.loss.idx")])
    assert listed == [str(tmp_path / "tokens_00000")]  # what a shell glob tokens_*.idx gives
