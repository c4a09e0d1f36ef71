"""Best-fit-decreasing packing: no overflow, no needless split, high fill, deterministic."""

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_soda.data.indexed_dataset import validate_dataset, write_dataset
from megatron_soda.data.packing import pack_dataset, plan_packing


def realistic_mix(seed, n=20_000):
    """Speech utterances of 1-30 s at 100 tokens/s (whole 8-token frames) plus 20% text documents."""
    rng = np.random.default_rng(seed)
    speech = (rng.uniform(1, 30, size=int(n * 0.8)) * 100 / 8).astype(np.int64) * 8
    text = rng.integers(50, 2000, size=n - len(speech))
    lengths = np.concatenate([speech, text])
    rng.shuffle(lengths)
    return lengths


def pieces_by_document(plan):
    pieces = {}
    for doc, start, length in zip(plan.piece_document, plan.piece_start, plan.piece_length):
        pieces.setdefault(int(doc), []).append((int(start), int(length)))
    return pieces


@pytest.mark.parametrize("row_length", [4096, 8192])
def test_realistic_mix_fills_at_least_97_percent(row_length):
    plan = plan_packing(realistic_mix(0), row_length, seed=0)
    assert plan.fill >= 0.97, plan.summary()


@pytest.mark.parametrize("seed", [0, 1])
def test_no_row_overflows_and_every_token_is_placed_once(seed):
    lengths = np.concatenate([realistic_mix(seed, 5000), [4096, 4097, 9000, 12288, 1]])
    plan = plan_packing(lengths, 4096, seed=seed)
    assert plan.row_lengths().max() <= 4096
    assert plan.row_lengths().min() > 0
    assert plan.num_tokens == lengths.sum() == plan.piece_length.sum()
    pieces = pieces_by_document(plan)
    assert sorted(pieces) == list(range(len(lengths)))
    for doc, parts in pieces.items():
        parts.sort()
        starts = [s for s, _ in parts]
        ends = [s + n for s, n in parts]
        assert starts[0] == 0 and ends[-1] == lengths[doc] and starts[1:] == ends[:-1], doc


def test_a_document_that_fits_is_never_split_and_longer_ones_are_cut_at_row_boundaries():
    lengths = np.array([4096, 4097, 9000, 12288, 3000, 100, 5])
    plan = plan_packing(lengths, 4096)
    pieces = pieces_by_document(plan)
    for doc in (0, 4, 5, 6):
        assert pieces[doc] == [(0, int(lengths[doc]))]
    assert sorted(pieces[1]) == [(0, 4096), (4096, 1)]
    assert sorted(pieces[2]) == [(0, 4096), (4096, 4096), (8192, 808)]
    assert sorted(pieces[3]) == [(0, 4096), (4096, 4096), (8192, 4096)]
    np.testing.assert_array_equal(plan.split_documents, [1, 2, 3])


def test_best_fit_fills_exact_complements():
    # Pairs that sum to the row length must end up as full rows.
    lengths = np.array([3000, 1096, 2500, 1596, 4000, 96, 2048, 2048])
    plan = plan_packing(lengths, 4096, seed=3)
    assert plan.num_rows == 4
    assert plan.fill == 1.0


def test_plan_is_a_pure_function_of_lengths_and_seed():
    lengths = realistic_mix(5, 3000)
    a, b, c = (
        plan_packing(lengths, 4096, seed=7),
        plan_packing(lengths, 4096, seed=7),
        plan_packing(lengths, 4096, seed=8),
    )
    for field in ("row_offsets", "piece_document", "piece_start", "piece_length"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.piece_document, c.piece_document)
    assert a.num_rows == c.num_rows


def test_empty_documents_are_skipped_and_counted_and_bad_row_lengths_refused():
    plan = plan_packing([0, 5, 0, 3], 8)
    assert (plan.num_empty_documents, plan.num_rows, plan.fill) == (2, 1, 1.0)
    with pytest.raises(ValueError, match="row length must be positive"):
        plan_packing([1], 0)
    with pytest.raises(ValueError, match="negative length"):
        plan_packing([1, -2], 8)


def test_packed_dataset_keeps_document_boundaries_readable_by_megatron(tmp_path):
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(1, 300, size=400), [700, 1024]])
    tokens = rng.integers(0, 144_644, size=lengths.sum())
    write_dataset(tmp_path / "src", tokens, lengths, 144_644)
    plan = pack_dataset(tmp_path / "src", tmp_path / "packed", 512, seed=1)

    assert validate_dataset(tmp_path / "packed", 144_644).ok
    packed = IndexedDataset(str(tmp_path / "packed"))
    np.testing.assert_array_equal(packed.document_indices, plan.row_offsets)  # one document per row
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for row in range(plan.num_rows):
        first, last = packed.document_indices[row], packed.document_indices[row + 1]
        assert packed.sequence_lengths[first:last].sum() <= 512
        for k in range(first, last):
            doc, start = plan.piece_document[k], plan.piece_start[k]
            src = tokens[starts[doc] + start : starts[doc] + start + plan.piece_length[k]]
            np.testing.assert_array_equal(packed[k], src)
    assert plan.fill > 0.95, plan.summary()


def test_packing_refuses_to_overwrite_its_source_or_a_complete_output(tmp_path):
    write_dataset(tmp_path / "src", np.arange(10), [4, 6], 100)
    with pytest.raises(ValueError, match="is the source"):
        pack_dataset(tmp_path / "src", tmp_path / "src", 8)
    pack_dataset(tmp_path / "src", tmp_path / "out", 8)
    with pytest.raises(FileExistsError):
        pack_dataset(tmp_path / "src", tmp_path / "out", 8)
    pack_dataset(tmp_path / "src", tmp_path / "out", 16, overwrite=True)
    out = IndexedDataset(str(tmp_path / "out"))
    assert out.document_indices.tolist() == [0, 2]
    with pytest.raises(ValueError, match="already packed"):
        pack_dataset(tmp_path / "out", tmp_path / "repacked", 16)


def test_packing_a_damaged_index_fails_cleanly_instead_of_reading_out_of_bounds(tmp_path):
    write_dataset(tmp_path / "src", np.arange(10), [4, 6], 100)
    raw = bytearray((tmp_path / "src.idx").read_bytes())
    raw[34 + 8 + 8 : 34 + 8 + 16] = (10**12).to_bytes(8, "little")  # pointer of sequence 1 far past the .bin
    (tmp_path / "src.idx").write_bytes(bytes(raw))
    plan = pack_dataset(tmp_path / "src", tmp_path / "out", 16)  # offsets come from the lengths
    packed = IndexedDataset(str(tmp_path / "out"))
    assert np.concatenate([packed[0], packed[1]]).tolist() in (
        [4, 5, 6, 7, 8, 9, 0, 1, 2, 3],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    )
    assert plan.num_tokens == 10
