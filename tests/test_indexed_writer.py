"""The C++ writer against megatron-core's own IndexedDataset reader and builder."""

import filecmp

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_soda.data.indexed_dataset import (
    DatasetWriter,
    dtype_for_vocab,
    merge_datasets,
    validate_dataset,
    write_dataset,
)
from megatron_soda.data.synthetic import random_documents

SODA_VOCAB = 144_644


def _documents(seed, n=300, length=(0, 80), vocab=SODA_VOCAB):
    return random_documents(np.random.default_rng(seed), n, length, vocab, dtype=np.int64)


def _megatron_build(prefix, tokens, lengths, dtype):
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    start = 0
    for length in lengths:
        builder.add_item(torch.from_numpy(tokens[start : start + length]))
        builder.end_document()
        start += length
    builder.finalize(f"{prefix}.idx")


def _same_files(a, b):
    return all(filecmp.cmp(f"{a}.{ext}", f"{b}.{ext}", shallow=False) for ext in ("bin", "idx"))


def test_dtype_follows_the_vocabulary_not_the_ids():
    assert dtype_for_vocab(SODA_VOCAB) == np.int32
    assert dtype_for_vocab(65_536) == np.uint16
    assert dtype_for_vocab(65_537) == np.int32
    assert dtype_for_vocab(1_000) == np.uint16
    with pytest.raises(ValueError):
        dtype_for_vocab(0)


def test_dataset_written_by_our_writer_is_read_back_exactly_by_megatron(tmp_path):
    tokens, lengths = _documents(0)
    write_dataset(tmp_path / "ours", tokens, lengths, SODA_VOCAB)
    dataset = IndexedDataset(str(tmp_path / "ours"))
    assert len(dataset) == len(lengths)
    assert dataset.index.dtype == np.int32
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for i in range(len(lengths)):
        np.testing.assert_array_equal(dataset[i], tokens[starts[i] : starts[i + 1]])
    np.testing.assert_array_equal(dataset.document_indices, np.arange(len(lengths) + 1))


@pytest.mark.parametrize("vocab", [SODA_VOCAB, 32_000])
def test_our_writer_and_megatron_builder_write_byte_identical_files(tmp_path, vocab):
    tokens, lengths = _documents(1, vocab=vocab)
    write_dataset(tmp_path / "ours", tokens, lengths, vocab)
    _megatron_build(tmp_path / "theirs", tokens, lengths, dtype_for_vocab(vocab).type)
    assert _same_files(tmp_path / "ours", tmp_path / "theirs")


def test_many_small_calls_equal_one_large_call(tmp_path):
    tokens, lengths = _documents(2)
    write_dataset(tmp_path / "one", tokens, lengths, SODA_VOCAB)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    with DatasetWriter(tmp_path / "many", SODA_VOCAB, buffer_bytes=1 << 16) as writer:
        for i in range(0, len(lengths), 7):
            j = min(i + 7, len(lengths))
            writer.add_documents(tokens[starts[i] : starts[j]].astype(np.uint32), lengths[i:j])
    assert _same_files(tmp_path / "one", tmp_path / "many")


def test_grouped_sequences_become_multi_sequence_documents(tmp_path):
    tokens = np.arange(10, dtype=np.int32)
    write_dataset(tmp_path / "rows", tokens, [3, 2, 5], 100, sequences_per_document=[2, 1])
    dataset = IndexedDataset(str(tmp_path / "rows"))
    np.testing.assert_array_equal(dataset.document_indices, [0, 2, 3])
    np.testing.assert_array_equal(dataset.sequence_lengths, [3, 2, 5])


@pytest.mark.parametrize(
    "tokens, lengths, message",
    [
        (np.array([1, 2, 144_644]), [3], "token id 144644 at position 2 of sequence 1"),
        (np.array([1, -1, 2]), [1, 2], "token id -1 at position 0 of sequence 2"),
        (np.array([1, 2, 3]), [2], "lengths sum to 2 but 3 tokens"),
        (np.array([1, 2, 3]), [-1, 4], "length -1 of sequence 0"),
        (np.array([1.0, 2.0]), [2], "tokens must be integers"),
    ],
)
def test_a_refused_call_names_the_problem_in_dataset_numbering_and_writes_nothing(tmp_path, tokens, lengths, message):
    with DatasetWriter(tmp_path / "d", SODA_VOCAB) as writer:
        writer.add_document([5, 6])
        with pytest.raises(ValueError, match=message):
            writer.add_documents(tokens, lengths)
        writer.add_document([7])
    dataset = IndexedDataset(str(tmp_path / "d"))
    assert [list(dataset[i]) for i in range(len(dataset))] == [[5, 6], [7]]


def test_ids_that_do_not_fit_a_small_dtype_are_refused(tmp_path):
    with DatasetWriter(tmp_path / "d", 1000) as writer:
        assert writer.dtype == np.uint16
        with pytest.raises(ValueError, match="outside the vocabulary"):
            writer.add_document([70_000])
    with pytest.raises(ValueError, match="does not fit dtype"):
        DatasetWriter(tmp_path / "e", SODA_VOCAB, dtype=np.uint16)


def test_merging_shards_equals_building_in_one_go(tmp_path):
    tokens, lengths = _documents(3, n=500)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    cuts = [0, 120, 121, 300, 500]  # includes a one-document shard
    shards = []
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        shards.append(tmp_path / f"shard{k}")
        write_dataset(shards[-1], tokens[starts[a] : starts[b]], lengths[a:b], SODA_VOCAB)
    merge_datasets(tmp_path / "merged", shards)
    write_dataset(tmp_path / "whole", tokens, lengths, SODA_VOCAB)
    assert _same_files(tmp_path / "merged", tmp_path / "whole")


def test_merge_matches_megatron_add_index_with_multi_sequence_documents(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    write_dataset(a, np.arange(10), [3, 2, 5], 100, sequences_per_document=[2, 1])
    write_dataset(b, np.arange(4), [4], 100)
    merge_datasets(tmp_path / "ours", [a, b])
    builder = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.uint16)
    builder.add_index(str(a))
    builder.add_index(str(b))
    builder.finalize(str(tmp_path / "theirs.idx"))
    assert _same_files(tmp_path / "ours", tmp_path / "theirs")


def test_merge_refuses_mixed_dtypes_and_damaged_shards_before_writing(tmp_path):
    write_dataset(tmp_path / "small", [1, 2], [2], 1000)
    write_dataset(tmp_path / "large", [1, 2], [2], SODA_VOCAB)
    with pytest.raises(ValueError, match="dtype int32 differs"):
        merge_datasets(tmp_path / "out", [tmp_path / "small", tmp_path / "large"])
    with open(tmp_path / "large.bin", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="damaged"):
        merge_datasets(tmp_path / "out", [tmp_path / "large"])
    assert not list(tmp_path.glob("out*"))


def test_prefix_with_a_file_extension_is_refused(tmp_path):
    with pytest.raises(ValueError, match="without .bin or .idx"):
        write_dataset(tmp_path / "d.idx", [1], [1], 10)


def test_validator_reports_the_counts_and_largest_id(tmp_path):
    tokens, lengths = _documents(4)
    write_dataset(tmp_path / "d", tokens, lengths, SODA_VOCAB)
    report = validate_dataset(tmp_path / "d", SODA_VOCAB)
    assert report.ok, report
    assert (report.num_documents, report.num_tokens, report.max_token) == (len(lengths), len(tokens), tokens.max())


@pytest.mark.parametrize("dtype", [np.int32, np.int64], ids=["direct-write", "converted-through-buffer"])
def test_a_call_refused_after_writing_part_of_its_data_is_rolled_back(tmp_path, dtype):
    # 3M tokens span many 256 KiB chunks; the bad id sits near the end, after most are on disk.
    rng = np.random.default_rng(5)
    good = rng.integers(0, SODA_VOCAB, size=3_000_000).astype(dtype)
    bad = good.copy()
    bad[2_900_000] = SODA_VOCAB
    with DatasetWriter(tmp_path / "d", SODA_VOCAB, buffer_bytes=1 << 16) as writer:
        writer.add_document(good[:100])
        with pytest.raises(ValueError, match=f"token id {SODA_VOCAB} at position 1900000 of sequence 2"):
            writer.add_documents(bad, [1_000_000, 2_000_000])
        writer.add_document(good[100:200])
    write_dataset(tmp_path / "expected", good[:200], [100, 100], SODA_VOCAB)
    assert _same_files(tmp_path / "d", tmp_path / "expected")


def test_big_endian_tokens_are_stored_by_value(tmp_path):
    write_dataset(tmp_path / "d", np.array([256, 512], dtype=">i4"), [2], SODA_VOCAB)
    dataset = IndexedDataset(str(tmp_path / "d"))  # kept alive: its items are views of its mmap
    assert list(dataset[0]) == [256, 512]
