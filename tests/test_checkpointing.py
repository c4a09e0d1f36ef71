"""Checkpoints: a resumed run is the uninterrupted run bit for bit, a checkpoint reshards to another
TP, a save killed midway never replaces the last good checkpoint, and bad pointers say what is wrong.

The multi-process cases run ``tests/dist/checkpoint_worker.py`` (real megatron DDP, optimizer and
dist checkpoints on gloo, the ``tiny`` preset with SODA's full vocabulary).
"""

import json
import re
import shutil

import pytest
import torch

from megatron_soda.training import checkpointing
from megatron_soda.training.checkpointing import (
    LATEST_FILE,
    latest_iteration,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from tests.dist import launch

UPDATES, SAVED_AT = 6, 3


def run_worker(world, out, *args, **kwargs):
    launch("checkpoint_worker.py", world, *args, "--out", out, **kwargs)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An uninterrupted TP=2 run of 6 updates that saved before the first and after the third update:
    its checkpoint directory and losses."""
    root = tmp_path_factory.mktemp("checkpointing")
    result = run_worker(
        2, root / "straight.json", "--tp", 2, "--dir", root / "run", "--until", UPDATES, "--save-at", 0, SAVED_AT
    )
    assert sorted(result["losses"]) == [str(s) for s in range(1, UPDATES + 1)]
    assert len({loss for losses in result["losses"].values() for loss in losses}) == 2 * UPDATES  # training moves
    (root / "rng.json").write_text(json.dumps(result["rng"][str(SAVED_AT)]))
    return root / "run", result["losses"]


def straight_rng(trained):
    """The RNG draws the uninterrupted run made right after saving."""
    return json.loads((trained[0].parent / "rng.json").read_text())


def after_save(losses):
    return {step: value for step, value in losses.items() if int(step) > SAVED_AT}


@pytest.mark.timeout(240)
def test_resumed_run_gives_the_uninterrupted_losses_bitwise(trained, tmp_path):
    run_dir, straight = trained
    resumed = run_worker(2, tmp_path / "resumed.json", "--tp", 2, "--dir", run_dir, "--resume", "--until", UPDATES)
    assert resumed["start"] == SAVED_AT
    assert resumed["losses"] == after_save(straight)  # exact float equality, every micro-batch
    # Python, numpy and torch RNGs continue from where the saving run left them (same layout).
    assert resumed["info"]["rng_restored"] and resumed["rng"][str(SAVED_AT)] == straight_rng(trained)


@pytest.mark.timeout(240)
def test_checkpoint_saved_before_the_first_update_resumes_like_a_fresh_start(trained, tmp_path):
    run_dir, straight = trained
    resumed = run_worker(
        2, tmp_path / "from0.json", "--tp", 2, "--dir", run_dir, "--resume", "--iteration", 0, "--until", 2
    )
    assert resumed["start"] == 0 and resumed["losses"] == {s: straight[s] for s in ("1", "2")}


@pytest.mark.parametrize("layout", [(1, 1), (1, 2)], ids=["tp1", "pp2"])
@pytest.mark.timeout(240)
def test_checkpoint_saved_at_tp2_loads_at_another_layout_with_the_same_loss_and_its_optimizer_state(
    trained, tmp_path, layout
):
    run_dir, straight = trained
    tp, pp = layout
    args = ["--tp", tp, "--pp", pp, "--dir", run_dir, "--resume", "--until", SAVED_AT + 2]
    other = run_worker(tp * pp, tmp_path / "other.json", *args)
    assert other["start"] == SAVED_AT and not other["info"]["rng_restored"]  # other layout: RNG skipped
    first, second = str(SAVED_AT + 1), str(SAVED_AT + 2)
    # Update 4's losses are the forward pass of the loaded weights.
    assert other["losses"][first] == pytest.approx(straight[first], abs=1e-5)
    # Update 5 follows one optimizer step from the resharded moments; fresh moments miss by ~3e-3.
    assert other["losses"][second] == pytest.approx(straight[second], abs=1e-4)
    if layout == (1, 1):
        fresh = run_worker(1, tmp_path / "fresh.json", *args, "--no-load-optimizer")
        assert fresh["losses"][second] != pytest.approx(straight[second], abs=1e-4)


def test_checkpoint_info_is_readable_without_a_model_or_process_group(trained):
    run_dir, _ = trained
    info = read_checkpoint_info(run_dir)
    assert (info["iteration"], info["consumed_samples"], info["scheduler_state"]) == (3, 12, {"step": 3})
    assert info["extra"]["padded_vocab_size"] == 145408
    assert info["layout"] == {"world_size": 2, "tensor": 2, "pipeline": 1, "virtual_pipeline": None, "data": 1}
    assert info["path"] == checkpointing.checkpoint_dir(run_dir, 3)


@pytest.mark.timeout(300)
def test_save_killed_after_its_shards_are_written_leaves_the_previous_checkpoint_latest_and_loadable(
    trained, tmp_path, monkeypatch
):
    run_dir, straight = trained
    shutil.copytree(run_dir, tmp_path / "run")
    run_dir = tmp_path / "run"
    args = ["--tp", 2, "--dir", run_dir, "--resume", "--until", UPDATES, "--save-at", UPDATES]
    with monkeypatch.context() as env:
        env.setenv("SODA_TEST_KILL_AFTER_SHARDS", str(UPDATES))  # every rank SIGKILLs itself before publishing
        with pytest.raises(RuntimeError, match="failed"):
            run_worker(2, tmp_path / "killed.json", *args)
    partial = run_dir / f".iter_{UPDATES:07d}.incomplete"
    assert any(partial.glob("*.distcp"))  # the shards were written ...
    assert not checkpointing.checkpoint_dir(run_dir, UPDATES).exists()  # ... but never published
    assert latest_iteration(run_dir) == SAVED_AT

    again = run_worker(2, tmp_path / "again.json", *args)
    assert again["start"] == SAVED_AT and again["losses"] == after_save(straight)
    assert latest_iteration(run_dir) == UPDATES and not partial.exists()  # published; the debris removed
    assert read_checkpoint_info(run_dir)["iteration"] == UPDATES
    assert read_checkpoint_info(run_dir, SAVED_AT)["iteration"] == SAVED_AT  # older checkpoints stay


@pytest.mark.parametrize(
    "change, message",
    [
        (["--ffn", 256], r"does not fit this model: Global shape mismatch .* decoder\.layers\.mlp\.linear_fc1\.weight"),
        (["--tied"], r"tensors of the checkpoint are not in the model: .*output_layer\.weight"),
    ],
)
@pytest.mark.timeout(240)
def test_checkpoint_of_another_model_shape_is_refused_naming_the_tensor(trained, tmp_path, change, message):
    run_dir, _ = trained
    result = run_worker(1, tmp_path / "error.json", "--dir", run_dir, "--resume", "--expect-error", *change)
    assert result["error"].startswith("CheckpointMismatchError")
    assert str(checkpointing.checkpoint_dir(run_dir, SAVED_AT)) in result["error"]
    assert re.search(message, result["error"]), result["error"]


def test_missing_or_broken_latest_pointer_errors_name_the_directory(tmp_path):
    # No directory at all.
    with pytest.raises(FileNotFoundError, match=re.escape(f"no checkpoint directory {tmp_path / 'nowhere'}")):
        load_checkpoint(tmp_path / "nowhere", [], None)
    # A directory without a latest file: nothing was ever published there.
    assert latest_iteration(tmp_path) is None
    missing = f"no checkpoint in {tmp_path}: {LATEST_FILE} is missing; no checkpoint was ever completed"
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_checkpoint(tmp_path, [], None)
    # ... but complete-looking iteration directories are offered.
    (tmp_path / "iter_0000005").mkdir()
    (tmp_path / ".iter_0000009.incomplete").mkdir()
    with pytest.raises(FileNotFoundError, match="it holds iter_0000005: pass iteration="):
        read_checkpoint_info(tmp_path)
    # A pointer to an iteration that is not there.
    (tmp_path / LATEST_FILE).write_text("7\n")
    assert latest_iteration(tmp_path) == 7
    absent = f"no checkpoint of iteration 7 in {tmp_path}: {tmp_path / 'iter_0000007'} does not exist"
    with pytest.raises(FileNotFoundError, match=re.escape(absent)):
        load_checkpoint(tmp_path, [], None)
    # A pointer that is not a number.
    (tmp_path / LATEST_FILE).write_text("release\n")
    garbage = f"{tmp_path / LATEST_FILE} should hold one iteration number, but holds 'release"
    with pytest.raises(ValueError, match=re.escape(garbage)):
        latest_iteration(tmp_path)
    # A directory that is not a finished dist checkpoint.
    with pytest.raises(FileNotFoundError, match="iter_0000005 is not a complete .*no metadata.json"):
        load_checkpoint(tmp_path, [], None, iteration=5)


def test_latest_pointer_is_replaced_atomically(tmp_path):
    checkpointing._write_latest(tmp_path, 12)
    checkpointing._write_latest(tmp_path, 13)
    assert latest_iteration(tmp_path) == 13
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST_FILE]  # no temporary file left behind


def test_saving_an_existing_iteration_again_replaces_it_whole(tmp_path):
    old, new = checkpointing.checkpoint_dir(tmp_path, 4), tmp_path / ".iter_0000004.incomplete"
    for directory, name in ((old, "old.distcp"), (new, "new.distcp")):
        directory.mkdir()
        (directory / name).write_text(name)
    checkpointing._publish(tmp_path, new, old, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000004", LATEST_FILE]
    assert [p.name for p in old.iterdir()] == ["new.distcp"] and latest_iteration(tmp_path) == 4


@pytest.mark.parametrize(
    "extra, where",
    [
        ({"args": object()}, r"extra\['args'\] is a object"),
        ({"shape": {1: 2}}, r"extra\['shape'\] has a non-string key 1"),
        ({"ok": [1, 2.0, "x", None, torch.zeros(2)], "bad": [{1.5j}]}, r"extra\['bad'\]\[0\] is a set"),
    ],
)
def test_save_refuses_state_that_a_checkpoint_cannot_read_back(tmp_path, extra, where):
    with pytest.raises(TypeError, match=where):
        save_checkpoint(tmp_path, 1, [], None, scheduler_state={}, consumed_samples=0, extra=extra)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_pruning_keeps_the_newest_the_latest_and_the_kept_interval_and_never_leaves_a_half_deleted_one(tmp_path):
    from megatron_soda.training.checkpointing import _write_latest, checkpoint_dir, prune_checkpoints

    for iteration in range(1, 7):
        (checkpoint_dir(tmp_path, iteration) / "shard").mkdir(parents=True)
    _write_latest(tmp_path, 2)  # a run resumed from an older checkpoint: its latest stays
    (tmp_path / ".iter_0000009.deleting").mkdir()  # left by a deletion killed half-way
    assert prune_checkpoints(tmp_path, keep_latest=2, keep_interval=3) == [1, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "iter_0000002",
        "iter_0000003",
        "iter_0000005",
        "iter_0000006",
        "latest_checkpointed_iteration.txt",
    ]
    with pytest.raises(ValueError, match="keep_latest must be >= 1"):
        prune_checkpoints(tmp_path, keep_latest=0)
