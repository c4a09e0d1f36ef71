"""Packed rows as training samples: documents kept apart, padding masked, blended and split like GPTDataset."""

import numpy as np
import pytest
import torch

from megatron_soda.data.gpt_blend import BlendConfig, achieved_mix, build_gpt_datasets
from megatron_soda.data.indexed_dataset import write_dataset
from megatron_soda.data.packed_dataset import documents_after_eod, packed_sample
from megatron_soda.data.packing import pack_dataset
from megatron_soda.tokenizer import SODA_LAYOUT

ROW = 64
PAD = SODA_LAYOUT.vocab_size


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """Two packed datasets of documents whose tokens name them: document d holds ids d*100 .. d*100+len-1."""
    root = tmp_path_factory.mktemp("packed")
    prefixes = []
    for name, count, first in (("a", 300, 0), ("b", 200, 300)):
        rng = np.random.default_rng(first)
        lengths = rng.integers(3, 40, size=count)
        tokens = np.concatenate([(first + d) * 100 + np.arange(n) for d, n in enumerate(lengths)])
        write_dataset(root / f"{name}_docs", tokens, lengths, SODA_LAYOUT.vocab_size)
        pack_dataset(root / f"{name}_docs", root / name, ROW)
        prefixes.append(str(root / name))
    return prefixes


def _config(prefixes, weights=None, seq_length=ROW, **kwargs):
    return BlendConfig(prefixes, weights, seq_length=seq_length, split="90,10,0", packed_rows=True, **kwargs)


def test_a_row_is_its_documents_each_predicting_only_itself(packed):
    train, _, _ = build_gpt_datasets(_config(packed[:1]), (50, 0, 0))
    for i in range(50):
        sample = train[i]
        tokens, labels, mask, ids = (sample[k].numpy() for k in ("tokens", "labels", "loss_mask", "document_ids"))
        assert tokens.shape == labels.shape == mask.shape == ids.shape == (ROW,)
        for doc in np.unique(ids):
            where = np.flatnonzero(ids == doc)
            assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
            piece = tokens[where]
            if piece[0] == PAD:  # the padding: masked, last
                assert where[-1] == ROW - 1 and mask[where].sum() == 0 and (labels[where] == PAD).all()
                continue
            owner = piece // 100
            assert (owner == owner[0]).all() and np.array_equal(piece % 100, np.arange(len(piece)))
            # Each position predicts the next token of its own document; the last position nothing.
            assert np.array_equal(labels[where[:-1]], piece[1:]) and mask[where[:-1]].all()
            assert mask[where[-1]] == 0
            assert np.array_equal(sample["position_ids"].numpy()[where], np.arange(len(where)))


def test_an_epoch_reads_every_row_of_the_split_once_in_a_seeded_order(packed):
    train, _, _ = build_gpt_datasets(_config(packed[:1]), (10, 0, 0))
    rows = len(train.indices)
    train, _, _ = build_gpt_datasets(_config(packed[:1]), (3 * rows, 0, 0))
    documents = [tuple(np.unique(train[i]["tokens"].numpy() // 100)) for i in range(2 * rows)]
    first, second = documents[:rows], documents[rows:]
    assert len(set(first)) == rows and set(first) == set(second) and first != second  # reshuffled per epoch
    again, _, _ = build_gpt_datasets(_config(packed[:1]), (3 * rows, 0, 0))
    assert all(torch.equal(train[i]["tokens"], again[i]["tokens"]) for i in range(0, 2 * rows, 7))


def test_train_and_valid_rows_never_overlap(packed):
    train, valid, _ = build_gpt_datasets(_config(packed[:1]), (100, 10, 0))
    assert set(train.indices).isdisjoint(valid.indices)


def test_weighted_blend_of_packed_datasets_gives_the_asked_mix(packed):
    train, _, _ = build_gpt_datasets(_config(packed, [0.7, 0.3]), (2000, 0, 0))
    assert achieved_mix(train, 2000) == pytest.approx([0.7, 0.3], abs=0.01)
    for i in range(0, 200, 13):  # samples of dataset b hold only b's documents (ids 300+)
        owners = np.unique(train[i]["tokens"].numpy() // 100)
        owners = owners[owners < PAD // 100]
        assert (owners >= 300).all() == (train.dataset_index[i] == 1)


def test_rows_longer_than_the_sequence_are_refused_naming_the_dataset(packed):
    with pytest.raises(ValueError, match=rf"{packed[0]}: row \d+ holds \d+ tokens, more than --seq-length 32"):
        build_gpt_datasets(_config(packed[:1], seq_length=32), (10, 0, 0))


def test_shorter_rows_than_the_sequence_are_padded(packed):
    train, _, _ = build_gpt_datasets(_config(packed[:1], seq_length=ROW + 16), (5, 0, 0))
    for i in range(5):
        sample = train[i]
        assert (sample["tokens"][-16:] == PAD).all() and sample["loss_mask"][-16:].sum() == 0


def test_packed_sample_of_exactly_full_row_has_no_padding_piece():
    sample = packed_sample([np.arange(3), np.arange(10, 15)], 8, PAD)
    assert sample["document_ids"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert sample["loss_mask"].tolist() == [1, 1, 0, 1, 1, 1, 1, 0]


def test_documents_after_eod_start_a_new_document_after_each_eod():
    eod = SODA_LAYOUT.eos_id
    tokens = torch.tensor([[5, eod, 6, 7, eod, eod, 8], [eod, 1, 2, 3, 4, 5, 6]])
    assert documents_after_eod(tokens, eod).tolist() == [[0, 0, 1, 1, 1, 2, 3], [0, 1, 1, 1, 1, 1, 1]]
