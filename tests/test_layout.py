"""SODA's vocabulary ids (docs/recipe.md "Vocabulary") and the synthetic documents built on them."""

import numpy as np
import pytest

from megatron_soda.data.synthetic import speech_documents, text_documents
from megatron_soda.tokenizer import SODA_LAYOUT, VocabLayout


def test_soda_released_vocabulary_ids():
    layout = SODA_LAYOUT
    assert (layout.bos_id, layout.eos_id) == (128_000, 128_001)
    assert (layout.text_start_id, layout.text_end_id, layout.audio_start_id, layout.audio_end_id) == (
        128_256,
        128_257,
        128_258,
        128_259,
    )
    assert layout.audio_id(0, 0) == 128_260
    assert layout.audio_id(7, 2047) == 144_643
    assert layout.vocab_size == 144_644


def test_any_base_size_gets_the_same_shape():
    layout = VocabLayout(base_size=1000, num_codebooks=4, codebook_size=1024, bos_id=1, eos_id=2)
    assert (layout.text_start_id, layout.audio_end_id, layout.audio_offset) == (1000, 1003, 1004)
    assert layout.vocab_size == 1004 + 4096
    assert layout.is_audio(np.array([1003, 1004, 5099, 5100])).tolist() == [False, True, True, False]


def test_begin_and_end_ids_must_lie_in_the_base():
    with pytest.raises(ValueError, match="eos_id"):
        VocabLayout(base_size=100, bos_id=1, eos_id=100)


def test_synthetic_speech_documents_are_frame_major_between_markers():
    layout = SODA_LAYOUT
    tokens, lengths = speech_documents(np.random.default_rng(0), 20, layout)
    assert lengths.sum() == len(tokens)
    for doc in np.split(tokens, np.cumsum(lengths)[:-1]):
        assert doc[0] == layout.bos_id and doc[-1] == layout.eos_id
        starts = np.flatnonzero(doc == layout.audio_start_id)
        ends = np.flatnonzero(doc == layout.audio_end_id)
        assert len(starts) == len(ends) > 0
        for s, e in zip(starts, ends):
            audio = doc[s + 1 : e]
            assert len(audio) % 8 == 0 and layout.is_audio(audio).all()
            codebooks = (audio - layout.audio_offset) // layout.codebook_size
            np.testing.assert_array_equal(codebooks, np.tile(np.arange(8), len(audio) // 8))
        assert layout.is_audio(doc).sum() == sum(e - s - 1 for s, e in zip(starts, ends))


def test_synthetic_text_documents_hold_no_audio():
    tokens, lengths = text_documents(np.random.default_rng(0), 50, SODA_LAYOUT)
    assert not SODA_LAYOUT.is_audio(tokens).any()
    assert (tokens == SODA_LAYOUT.bos_id).sum() == 50 == (tokens == SODA_LAYOUT.eos_id).sum()


def test_codes_flatten_frame_major_and_back():
    layout = SODA_LAYOUT
    codes = np.random.default_rng(0).integers(0, 2048, size=(8, 6))
    ids = layout.codes_to_ids(codes)
    assert ids[0] == 128_260 + codes[0, 0] and ids[1] == 128_260 + 2048 + codes[1, 0]
    assert ids[8] == 128_260 + codes[0, 1]  # frame 1 starts with codebook 0 again
    np.testing.assert_array_equal(layout.ids_to_codes(ids), codes)


@pytest.mark.parametrize("cut", [slice(1, 9), slice(0, 7)], ids=["codebook-order-broken", "partial-frame"])
def test_malformed_audio_ids_are_refused(cut):
    ids = SODA_LAYOUT.codes_to_ids(np.zeros((8, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="not an audio token of codebook|not whole frames"):
        SODA_LAYOUT.ids_to_codes(ids[cut])
    with pytest.raises(ValueError, match="shape"):
        SODA_LAYOUT.codes_to_ids(np.zeros((4, 2), dtype=np.int64))
