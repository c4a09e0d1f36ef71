"""Atomic, durable finalize: a killed or failed writer never leaves an .idx that disagrees with its .bin.

Children are killed with the C++ test hook MEGATRON_SODA_CRASH_AT=<point> (SIGKILL at that point of
finalize) or from outside while they are still adding documents.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_soda.data.indexed_dataset import DatasetWriter, validate_dataset, write_dataset

VOCAB = 1000
BEFORE_COMMIT = ["bin_synced", "idx_synced", "bin_renamed"]

DATA_SOURCE = textwrap.dedent("""
    import numpy as np

    def make_data(seed, num_documents):
        rng = np.random.default_rng(seed)
        lengths = rng.integers(0, 40, num_documents)
        return rng.integers(0, 1000, int(lengths.sum())), lengths
""")
_namespace: dict = {}
exec(DATA_SOURCE, _namespace)
make_data = _namespace["make_data"]  # the same generator the children run

CHILD_WRITE = DATA_SOURCE + textwrap.dedent("""
    import sys
    from megatron_soda.data.indexed_dataset import write_dataset
    prefix, seed, num_documents, overwrite = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    tokens, lengths = make_data(seed, num_documents)
    write_dataset(prefix, tokens, lengths, 1000, overwrite=overwrite)
""")

CHILD_ENDLESS = DATA_SOURCE + textwrap.dedent("""
    import sys, time
    from megatron_soda.data.indexed_dataset import DatasetWriter
    tokens, lengths = make_data(0, 500)
    with DatasetWriter(sys.argv[1], 1000) as writer:
        for batch in range(100000):
            writer.add_documents(tokens, lengths)
            if batch == 0:
                print("first batch written", flush=True)
            time.sleep(0.001)
""")

A = (1, 3000)  # (seed, documents) of the datasets written below
B = (2, 2000)


def child_env(crash_at=None):
    env = {k: v for k, v in os.environ.items() if k != "MEGATRON_SODA_CRASH_AT"}
    if crash_at is not None:
        env["MEGATRON_SODA_CRASH_AT"] = crash_at
    return env


def write_in_child(prefix, data, overwrite=False, crash_at=None):
    """Runs write_dataset in a child process; returns (returncode, stderr)."""
    args = [sys.executable, "-c", CHILD_WRITE, str(prefix), str(data[0]), str(data[1]), "1" if overwrite else "0"]
    result = subprocess.run(args, env=child_env(crash_at), capture_output=True, text=True, timeout=60)
    return result.returncode, result.stderr


def expected(data):
    tokens, lengths = make_data(*data)
    return np.split(tokens, np.cumsum(lengths)[:-1]), lengths


def read_back(prefix):
    """All sequences and the document index, through megatron-core's reader (copied: its mmaps close with it)."""
    ds = IndexedDataset(str(prefix))
    return [np.array(ds[i]) for i in range(len(ds))], np.array(ds.document_indices)


def assert_holds_exactly(prefix, data):
    report = validate_dataset(prefix, VOCAB)
    assert report.ok, report
    sequences, document_indices = read_back(prefix)
    want, _ = expected(data)
    assert len(sequences) == len(want) == data[1]
    assert all(np.array_equal(got, w) for got, w in zip(sequences, want))
    assert np.array_equal(document_indices, np.arange(data[1] + 1))  # one sequence per document


def assert_not_complete(prefix):
    assert not os.path.exists(f"{prefix}.idx")
    with pytest.raises((AssertionError, OSError)):  # megatron-core asserts both files exist
        IndexedDataset(str(prefix))
    report = validate_dataset(prefix)
    assert not report.ok and "missing" in report.error


def temporaries(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


# ------------------------------------------------------------------ a fresh prefix


@pytest.mark.parametrize("point", BEFORE_COMMIT)
def test_kill_before_the_commit_point_leaves_no_complete_looking_prefix(tmp_path, point):
    prefix = tmp_path / "ds"
    rc, err = write_in_child(prefix, A, crash_at=point)
    assert rc == -signal.SIGKILL, err
    assert_not_complete(prefix)
    assert os.path.exists(f"{prefix}.bin") == (point == "bin_renamed")


def test_kill_right_after_the_commit_point_leaves_the_complete_dataset(tmp_path):
    prefix = tmp_path / "ds"
    rc, err = write_in_child(prefix, A, crash_at="idx_renamed")
    assert rc == -signal.SIGKILL, err
    assert_holds_exactly(prefix, A)
    assert temporaries(tmp_path) == []


def test_old_index_removed_is_not_reached_when_nothing_is_overwritten(tmp_path):
    prefix = tmp_path / "ds"
    rc, err = write_in_child(prefix, A, crash_at="old_index_removed")
    assert rc == 0, err
    assert_holds_exactly(prefix, A)


def test_kill_while_adding_documents_leaves_no_index(tmp_path):
    prefix = tmp_path / "ds"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_ENDLESS, str(prefix)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "first batch written", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()  # no-op when already dead; never leaves a stray child
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert_not_complete(prefix)
    assert not os.path.exists(f"{prefix}.bin")


def test_leftovers_of_a_killed_writer_do_not_block_a_rerun(tmp_path):
    prefix = tmp_path / "ds"
    assert write_in_child(prefix, B, crash_at="bin_renamed")[0] == -signal.SIGKILL
    rc, err = write_in_child(prefix, A)  # no overwrite needed: nothing complete was there
    assert rc == 0, err
    assert_holds_exactly(prefix, A)


# ------------------------------------------------------------------ overwriting a complete prefix


@pytest.fixture
def old_dataset(tmp_path):
    prefix = tmp_path / "ds"
    write_dataset(prefix, *make_data(*A), VOCAB)
    assert_holds_exactly(prefix, A)
    return prefix


@pytest.mark.parametrize(
    "point, left",
    [
        ("bin_synced", "A"),
        ("idx_synced", "A"),
        ("old_index_removed", None),
        ("bin_renamed", None),
        ("idx_renamed", "B"),
    ],
)
def test_kill_during_overwrite_leaves_the_old_dataset_or_the_new_one_or_nothing(old_dataset, point, left):
    rc, err = write_in_child(old_dataset, B, overwrite=True, crash_at=point)
    assert rc == -signal.SIGKILL, err
    if left is None:
        assert_not_complete(old_dataset)
    else:
        assert_holds_exactly(old_dataset, A if left == "A" else B)


def test_an_index_never_disagrees_with_its_data_at_any_kill_point(tmp_path):
    """Walks all points on one prefix, alternating A and B: whenever .idx exists it is A or B whole."""
    prefix = tmp_path / "ds"
    contents = {"A": A, "B": B}
    for point in ["bin_synced", "idx_synced", "old_index_removed", "bin_renamed", "idx_renamed"] * 2:
        if not os.path.exists(f"{prefix}.idx"):
            write_dataset(prefix, *make_data(*A), VOCAB)
        current = "A" if validate_dataset(prefix).num_sequences == A[1] else "B"
        other = "B" if current == "A" else "A"
        rc, err = write_in_child(prefix, contents[other], overwrite=True, crash_at=point)
        assert rc == -signal.SIGKILL, err
        if os.path.exists(f"{prefix}.idx"):
            report = validate_dataset(prefix, VOCAB)
            assert report.ok, (point, report)
            held = "A" if report.num_sequences == A[1] else "B"
            assert_holds_exactly(prefix, contents[held])


def test_complete_prefix_is_refused_without_overwrite_and_left_intact(old_dataset):
    before = {ext: open(f"{old_dataset}.{ext}", "rb").read() for ext in ("bin", "idx")}
    with pytest.raises(FileExistsError):
        DatasetWriter(old_dataset, VOCAB)  # refused up front, before any data is taken
    with pytest.raises(FileExistsError):
        write_dataset(old_dataset, *make_data(*B), VOCAB)
    rc, err = write_in_child(old_dataset, B)
    assert rc != 0 and "FileExistsError" in err
    assert {ext: open(f"{old_dataset}.{ext}", "rb").read() for ext in ("bin", "idx")} == before
    assert temporaries(old_dataset.parent) == []


def test_dataset_that_appears_while_writing_is_not_clobbered_without_overwrite(tmp_path):
    prefix = tmp_path / "ds"
    with pytest.raises(FileExistsError):
        with DatasetWriter(prefix, VOCAB) as writer:
            writer.add_documents(*make_data(*B))
            assert write_in_child(prefix, A)[0] == 0  # another job finishes first
    assert_holds_exactly(prefix, A)
    assert temporaries(tmp_path) == []


def test_second_writer_in_the_same_process_cannot_corrupt_a_committed_dataset(tmp_path):
    """BUG: temporaries are named .tmp-<pid>, so two writers of one prefix in one process share them."""
    prefix = tmp_path / "ds"
    with pytest.raises(FileExistsError):
        with DatasetWriter(prefix, VOCAB) as writer:
            writer.add_documents(*make_data(*B))
            write_dataset(prefix, *make_data(*A), VOCAB)  # commits first, through the same temporary name
    sequences, _ = read_back(prefix)
    assert all(np.array_equal(got, w) for got, w in zip(sequences, expected(A)[0])), (
        "the refused writer flushed its tokens into the committed dataset's .bin (shared .tmp-<pid> inode)"
    )


def test_retry_while_a_failed_writer_is_still_alive_succeeds(tmp_path):
    """BUG: the failed writer's abort (at its release) unlinks the retry's identically named temporary."""
    prefix = tmp_path / "ds"
    tokens, lengths = make_data(*A)
    writer = DatasetWriter(prefix, VOCAB)
    with pytest.raises(ValueError):
        writer.add_documents(tokens + VOCAB, lengths)
    writer = DatasetWriter(prefix, VOCAB)  # the old writer is released only after this one has opened its files
    writer.add_documents(tokens, lengths)
    try:
        writer.finalize()
    except FileNotFoundError as error:
        pytest.fail(f"retry could not commit, its temporary was deleted by the failed writer: {error}")
    assert_holds_exactly(prefix, A)


def test_complete_prefix_is_replaced_with_overwrite(old_dataset):
    write_dataset(old_dataset, *make_data(*B), VOCAB, overwrite=True)
    assert_holds_exactly(old_dataset, B)
    assert temporaries(old_dataset.parent) == []


# ------------------------------------------------------------------ temporaries


def test_successful_write_leaves_no_temporaries(tmp_path):
    write_dataset(tmp_path / "ds", *make_data(*A), VOCAB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds.bin", "ds.idx"]


def test_exception_inside_the_with_block_removes_temporaries_and_writes_no_index(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(tmp_path / "ds", VOCAB) as writer:
            writer.add_documents(*make_data(*A))
            assert temporaries(tmp_path) != []  # the data really was being written under a temporary name
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_out_of_range_token_aborts_cleanly(tmp_path):
    tokens, lengths = make_data(*A)
    tokens[len(tokens) // 2] = VOCAB
    with pytest.raises(ValueError, match="outside the vocabulary"):
        write_dataset(tmp_path / "ds", tokens, lengths, VOCAB)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_leaves_the_old_dataset_intact(old_dataset):
    with pytest.raises(RuntimeError):
        with DatasetWriter(old_dataset, VOCAB, overwrite=True) as writer:
            writer.add_documents(*make_data(*B))
            raise RuntimeError("job failed")
    assert_holds_exactly(old_dataset, A)
    assert temporaries(old_dataset.parent) == []
