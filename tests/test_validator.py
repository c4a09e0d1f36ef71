"""validate_dataset and tools/validate_dataset.py: accept what megatron-core writes, name every kind of damage."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_soda.data.indexed_dataset import validate_dataset

CLI = Path(__file__).resolve().parents[1] / "tools" / "validate_dataset.py"
HEADER = 34


def run_cli(*args):
    return subprocess.run([sys.executable, str(CLI), *map(str, args)], capture_output=True, text=True, timeout=60)


def build(prefix, dtype, documents):
    """Writes `documents` (each a list of sequences) with megatron-core's own builder."""
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for i, doc in enumerate(documents):
        if i % 2 == 0:  # both of megatron's ways of writing a document
            flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in doc]) if doc else np.zeros(0, np.int64)
            builder.add_document(torch.from_numpy(flat), [len(s) for s in doc])
        else:
            for seq in doc:
                builder.add_item(torch.tensor(seq, dtype=torch.int64))
            builder.end_document()
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


# ------------------------------------------------------------------ valid datasets


@pytest.mark.parametrize(
    "dtype, max_id",
    [
        (np.uint8, 255),
        (np.int8, 127),
        (np.int16, 32767),
        (np.uint16, 65535),
        (np.int32, 2**31 - 1),
        (np.int64, 2**40 + 7),
    ],
)
def test_accepts_every_megatron_integer_dtype_with_multi_sequence_and_empty_sequences(tmp_path, dtype, max_id):
    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(0, max_id, n).tolist()  # noqa: E731
    documents = [
        [ids(5), [], ids(3)],  # several sequences, one empty
        [ids(4), [max_id]],  # the largest id the dtype holds
        [[]],  # a document of one empty sequence
        [ids(7)],
        [ids(2), ids(2), ids(1)],
    ]
    prefix = build(tmp_path / "ds", dtype, documents)
    report = validate_dataset(prefix, vocab_size=max_id + 1)
    assert report.ok, report
    assert report.error == ""
    assert report.dtype == np.dtype(dtype)
    assert report.num_documents == 5
    assert report.num_sequences == sum(len(d) for d in documents) == 10
    assert report.num_tokens == sum(len(s) for d in documents for s in d) == 25
    assert report.max_token == max_id
    ds = IndexedDataset(prefix)  # the counts agree with megatron-core's own reader
    assert len(ds) == report.num_sequences and len(ds.document_indices) - 1 == report.num_documents


def test_accepts_a_dataset_with_zero_documents(tmp_path):
    prefix = build(tmp_path / "empty", np.int32, [])
    assert os.path.getsize(f"{prefix}.bin") == 0
    for vocab in (None, 10):
        report = validate_dataset(prefix, vocab_size=vocab)
        assert report.ok, report
        assert (report.num_documents, report.num_sequences, report.num_tokens) == (0, 0, 0)
    assert run_cli("--input", prefix).returncode == 0


# ------------------------------------------------------------------ damage

VOCAB = 100
LENGTHS = [3, 0, 5, 2, 4, 1]  # sequences; documents group them as [2, 1, 3]
DOCS = [0, 2, 3, 6]
N, D = len(LENGTHS), len(DOCS)
LENGTHS_AT, POINTERS_AT, DOCS_AT = HEADER, HEADER + 4 * N, HEADER + 12 * N
NEED = 4 * sum(LENGTHS)  # int32 tokens


@pytest.fixture
def valid(tmp_path):
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, VOCAB, n).tolist() for n in LENGTHS]
    documents = [seqs[DOCS[i] : DOCS[i + 1]] for i in range(D - 1)]
    prefix = build(tmp_path / "ds", np.int32, documents)
    assert validate_dataset(prefix, VOCAB).ok
    assert os.path.getsize(f"{prefix}.idx") == HEADER + 12 * N + 8 * D
    return prefix


def patch(path, offset, fmt, value):
    data = bytearray(Path(path).read_bytes())
    struct.pack_into("<" + fmt, data, offset, value)
    Path(path).write_bytes(bytes(data))


def resize(path, delta):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) + delta] if delta < 0 else data + b"\x07" * delta)


# (id, damage(prefix), words the error must contain, file suffix, offset or set of acceptable offsets)
DAMAGE = [
    ("bin_truncated", lambda p: resize(f"{p}.bin", -4), ["truncated"], ".bin", NEED - 4),
    ("bin_trailing_bytes", lambda p: resize(f"{p}.bin", +3), ["beyond"], ".bin", NEED),
    ("wrong_magic", lambda p: patch(f"{p}.idx", 0, "B", ord("X")), ["magic"], ".idx", 0),
    ("wrong_version", lambda p: patch(f"{p}.idx", 9, "Q", 2), ["version", "2"], ".idx", 9),
    ("dtype_code_9", lambda p: patch(f"{p}.idx", 17, "B", 9), ["dtype code 9"], ".idx", 17),
    ("dtype_code_0", lambda p: patch(f"{p}.idx", 17, "B", 0), ["dtype code 0"], ".idx", 17),
    ("idx_truncated", lambda p: resize(f"{p}.idx", -8), ["bytes", "N=6", "D=4"], ".idx", 18),
    ("idx_trailing_bytes", lambda p: resize(f"{p}.idx", +5), ["bytes", "N=6"], ".idx", 18),
    ("idx_cut_inside_header", lambda p: resize(f"{p}.idx", -(12 * N + 8 * D + 10)), ["header"], ".idx", 0),
    ("sequence_count_too_large", lambda p: patch(f"{p}.idx", 18, "Q", N + 1), ["N=7"], ".idx", 18),
    ("sequence_count_absurd", lambda p: patch(f"{p}.idx", 18, "Q", 2**62), ["larger than the file"], ".idx", 18),
    (
        "pointers_not_monotone",
        lambda p: patch(f"{p}.idx", POINTERS_AT + 8 * 3, "q", 0),
        ["not monotone", "pointer 3"],
        ".idx",
        POINTERS_AT + 8 * 3,
    ),
    (
        "first_pointer_not_zero",
        lambda p: patch(f"{p}.idx", POINTERS_AT, "q", 4),
        ["first pointer"],
        ".idx",
        POINTERS_AT,
    ),
    (
        "length_disagrees_with_pointers",
        lambda p: patch(f"{p}.idx", LENGTHS_AT + 4 * 2, "i", 6),
        ["length of sequence 2", "pointer 3"],
        ".idx",
        {LENGTHS_AT + 4 * 2, POINTERS_AT + 8 * 3},
    ),
    (
        "negative_length",
        lambda p: patch(f"{p}.idx", LENGTHS_AT + 4 * 2, "i", -1),
        ["sequence 2", "negative"],
        ".idx",
        LENGTHS_AT + 4 * 2,
    ),
    (
        "document_index_not_starting_at_0",
        lambda p: patch(f"{p}.idx", DOCS_AT, "q", 1),
        ["starts at 1"],
        ".idx",
        DOCS_AT,
    ),
    (
        "document_index_ending_below_N",
        lambda p: patch(f"{p}.idx", DOCS_AT + 8 * (D - 1), "q", N - 1),
        ["ends at 5"],
        ".idx",
        DOCS_AT + 8 * (D - 1),
    ),
    (
        "document_index_ending_beyond_N",
        lambda p: patch(f"{p}.idx", DOCS_AT + 8 * (D - 1), "q", N + 1),
        ["beyond the sequence count"],
        ".idx",
        DOCS_AT + 8 * (D - 1),
    ),
    (
        "document_index_decreasing",
        lambda p: patch(f"{p}.idx", DOCS_AT + 8 * 2, "q", 1),
        ["decreases", "entry 2"],
        ".idx",
        DOCS_AT + 8 * 2,
    ),
    ("missing_idx", lambda p: os.remove(f"{p}.idx"), ["index file is missing"], ".idx", -1),
    ("missing_bin", lambda p: os.remove(f"{p}.bin"), ["data file is missing"], ".bin", -1),
]


@pytest.mark.parametrize("damage, words, suffix, offset", [c[1:] for c in DAMAGE], ids=[c[0] for c in DAMAGE])
def test_damage_is_reported_with_its_file_and_offset_and_fails_the_cli(valid, damage, words, suffix, offset):
    damage(valid)
    for vocab in (None, VOCAB):
        report = validate_dataset(valid, vocab)
        assert report.ok is False
        for word in words:
            assert word in report.error, report
        assert report.file == valid + suffix
        assert report.offset in (offset if isinstance(offset, set) else {offset}), report
        assert suffix in str(report)
    result = run_cli("--input", valid, "--vocab-size", VOCAB)
    assert result.returncode != 0
    assert "DAMAGED" in result.stderr and words[0] in result.stderr


@pytest.mark.parametrize("position, value", [(0, VOCAB), (3, VOCAB + 1), (7, VOCAB + 12345), (12, -1)])
def test_token_id_outside_vocabulary_is_caught_only_when_vocab_size_is_given(valid, position, value):
    bin_path = f"{valid}.bin"
    patch(bin_path, 4 * position, "i", value)
    report = validate_dataset(valid, vocab_size=VOCAB)
    assert report.ok is False
    assert f"token id {value}" in report.error and "vocabulary" in report.error
    sequence = int(np.searchsorted(np.cumsum(LENGTHS), position, side="right"))
    assert f"sequence {sequence} " in report.error
    assert (report.file, report.offset) == (bin_path, 4 * position)
    assert run_cli("--input", valid, "--vocab-size", VOCAB).returncode != 0
    if value >= 0:  # structurally the dataset is fine: without a vocabulary there is nothing to refuse
        assert validate_dataset(valid).ok
        assert run_cli("--input", valid).returncode == 0


def test_cli_passes_a_valid_dataset_and_prints_a_json_report(valid):
    result = run_cli("--input", valid, "--vocab-size", VOCAB, "--json", "-")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["ok"], summary["damaged"]) == (1, 0)
    (report,) = summary["datasets"]
    assert report["ok"] is True and report["prefix"] == valid
    assert (report["num_documents"], report["num_sequences"], report["num_tokens"]) == (D - 1, N, sum(LENGTHS))
    assert report["dtype"] == "int32"


def test_cli_fails_when_one_of_several_datasets_is_damaged(valid, tmp_path):
    other = build(tmp_path / "other", np.int32, [[[1, 2, 3]]])
    assert run_cli("--input", valid, other).returncode == 0
    resize(f"{other}.bin", -4)
    result = run_cli("--input", valid, other)
    assert result.returncode != 0
    assert "1 of 2 datasets OK" in result.stdout
