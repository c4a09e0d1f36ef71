"""Our datasets sampled by megatron-core's GPTDataset through BlendedMegatronDatasetBuilder."""

import numpy as np
import pytest

from megatron_soda.data.gpt_blend import BlendConfig, GPTTokenIds, build_gpt_datasets, parse_data_path
from megatron_soda.data.indexed_dataset import write_dataset
from megatron_soda.data.synthetic import speech_documents, text_documents
from megatron_soda.tokenizer import SODA_LAYOUT


@pytest.fixture(scope="module")
def speech_and_text(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    rng = np.random.default_rng(0)
    write_dataset(root / "speech", *speech_documents(rng, 300, SODA_LAYOUT), SODA_LAYOUT.vocab_size)
    write_dataset(root / "text", *text_documents(rng, 600, SODA_LAYOUT), SODA_LAYOUT.vocab_size)
    return str(root / "speech"), str(root / "text")


def test_two_dataset_weighted_blend_is_sampled_in_proportion(speech_and_text):
    config = BlendConfig(list(speech_and_text), [0.8, 0.2], seq_length=128, split="90,10,0")
    train, valid, test = build_gpt_datasets(config, (2000, 100, 0))
    assert test is None and len(train) >= 2000 and len(valid) >= 100
    share = np.bincount(train.dataset_index[:2000], minlength=2) / 2000
    np.testing.assert_allclose(share, [0.8, 0.2], atol=0.01)

    layout = SODA_LAYOUT
    for i in range(50):
        sample = train[i]
        tokens, labels = sample["tokens"].numpy(), sample["labels"].numpy()
        assert tokens.shape == labels.shape == (128,)
        np.testing.assert_array_equal(tokens[1:], labels[:-1])
        assert tokens.max() < layout.vocab_size
        if train.dataset_index[i] == 1:  # text-only samples hold no audio or audio markers
            assert not layout.is_audio(tokens).any()
            assert not np.isin(tokens, [layout.audio_start_id, layout.audio_end_id]).any()
        # End of document is a real label, never masked as pad.
        eod = labels == layout.eos_id
        assert (sample["loss_mask"].numpy()[eod] == 1).all()


def test_pad_is_outside_the_vocabulary_and_eod_is_end_of_text():
    ids = GPTTokenIds.from_layout(SODA_LAYOUT)
    assert (ids.eod, ids.pad, ids.vocab_size) == (128_001, 144_644, 144_644)


def test_a_split_without_documents_is_refused_instead_of_hanging(speech_and_text):
    config = BlendConfig(list(speech_and_text), [0.5, 0.5], seq_length=64, split="969,30,1")
    with pytest.raises(ValueError, match="test split none of its 300 documents"):
        build_gpt_datasets(config, (10, 10, 10))


@pytest.mark.timeout(60)
def test_a_split_without_documents_that_asks_for_no_samples_is_not_built(speech_and_text):
    """The default --split 969,30,1 on a few hundred documents: the empty test split must not hang the run."""
    config = BlendConfig(list(speech_and_text), [0.5, 0.5], seq_length=64, split="969,30,1")
    train, valid, test = build_gpt_datasets(config, (10, 4, 0))
    assert len(train) >= 10 and len(valid) >= 4 and test is None


def test_index_cache_needs_a_process_group(speech_and_text, tmp_path):
    config = BlendConfig(list(speech_and_text), seq_length=64, split="90,10,0", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="process group"):
        build_gpt_datasets(config, (10, 0, 0))


def test_missing_dataset_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        build_gpt_datasets(BlendConfig([str(tmp_path / "nothere")]), (1, 0, 0))


@pytest.mark.parametrize(
    "values, expected",
    [
        (["0.95", "speech", "0.05", "text"], (["speech", "text"], [0.95, 0.05])),
        (["a", "b"], (["a", "b"], None)),
    ],
)
def test_data_path_parses_weights_and_prefixes(values, expected):
    assert parse_data_path(values) == expected


@pytest.mark.parametrize("values", [["0.5", "a", "0.5"], ["0.5", "a", "x", "b"], ["-1", "a"], []])
def test_malformed_data_path_is_refused(values):
    with pytest.raises(ValueError):
        parse_data_path(values)


def test_a_blend_without_weights_is_weighted_by_size_and_gives_every_sample_asked(speech_and_text):
    train, _, _ = build_gpt_datasets(BlendConfig(list(speech_and_text), seq_length=128, split="90,10,0"), (3000, 0, 0))
    assert len(train) >= 3000
