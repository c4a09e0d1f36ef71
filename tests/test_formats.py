"""Sequence formats: SODA's exact token order, and tokens -> segments -> tokens identity."""

import numpy as np
import pytest

from megatron_soda.data.formats import (
    Document,
    Kind,
    Order,
    Segment,
    Utterance,
    audio_segment,
    document_orders,
    parse,
    render,
    speech_document,
    split_documents,
    text_document,
    text_segment,
)
from megatron_soda.tokenizer import SODA_LAYOUT, VocabLayout

L = SODA_LAYOUT
BOS, EOS, TS, TE, AS, AE = L.bos_id, L.eos_id, L.text_start_id, L.text_end_id, L.audio_start_id, L.audio_end_id


def _utterances(seed=0, n=3, frames=(1, 6)):
    rng = np.random.default_rng(seed)
    return [
        Utterance(
            rng.integers(0, 1000, size=rng.integers(1, 5)), rng.integers(0, 2048, size=(8, rng.integers(*frames)))
        )
        for _ in range(n)
    ]


def test_text_first_is_sodas_exact_order():
    u1, u2 = _utterances(n=2)
    ids = render(speech_document([u1, u2], Order.TEXT_FIRST, L), L).ids
    expected = np.concatenate(
        [
            [BOS, TS],
            u1.text_ids,
            [TE, AS],
            L.codes_to_ids(u1.codes),
            [AE],
            [TS],
            u2.text_ids,
            [TE, AS],
            L.codes_to_ids(u2.codes),
            [AE, EOS],
        ]
    )
    np.testing.assert_array_equal(ids, expected)


def test_audio_first_is_sodas_exact_order():
    (u1,) = _utterances(n=1)
    ids = render(speech_document([u1], Order.AUDIO_FIRST, L), L).ids
    expected = np.concatenate([[BOS, AS], L.codes_to_ids(u1.codes), [AE, TS], u1.text_ids, [TE, EOS]])
    np.testing.assert_array_equal(ids, expected)


def test_text_only_document_is_plain_text_between_begin_and_end():
    np.testing.assert_array_equal(render(text_document([5, 6, 7]), L).ids, [BOS, 5, 6, 7, EOS])


DOCUMENTS = {
    "text-first": speech_document(_utterances(1), Order.TEXT_FIRST, L),
    "audio-first": speech_document(_utterances(2), Order.AUDIO_FIRST, L),
    "audio-only": speech_document([Utterance(codes=u.codes) for u in _utterances(3)], Order.TEXT_FIRST, L),
    "text-only": text_document(np.arange(1, 50)),
    "transcripts-only": speech_document([Utterance(text_ids=u.text_ids) for u in _utterances(4)], Order.AUDIO_FIRST, L),
    "no-bos": Document(speech_document(_utterances(5), Order.TEXT_FIRST, L).segments, bos=False),
    "no-eos": Document(speech_document(_utterances(6), Order.TEXT_FIRST, L).segments, eos=False),
    "empty-segments": Document([text_segment([]), Segment(Kind.AUDIO, np.zeros(0, np.int64))]),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_tokens_to_segments_to_tokens_is_the_identity(name):
    document = DOCUMENTS[name]
    ids = render(document, L).ids
    parsed = parse(ids, L)
    assert parsed == document
    np.testing.assert_array_equal(render(parsed, L).ids, ids)


def test_parsed_audio_gives_back_the_codes():
    utterances = _utterances(7)
    parsed = parse(render(speech_document(utterances, Order.AUDIO_FIRST, L), L).ids, L)
    audio = [s for s in parsed.segments if s.kind is Kind.AUDIO]
    for segment, utterance in zip(audio, utterances):
        np.testing.assert_array_equal(L.ids_to_codes(segment.ids), utterance.codes)


def test_small_codec_vocabulary_round_trips():
    layout = VocabLayout(base_size=300, num_codebooks=2, codebook_size=16, bos_id=1, eos_id=2)
    doc = speech_document([Utterance(np.array([5, 6]), np.array([[1, 2, 3], [4, 5, 15]]))], Order.TEXT_FIRST, layout)
    assert parse(render(doc, layout).ids, layout) == doc


@pytest.mark.parametrize(
    "ids, message",
    [
        ([BOS, AS] + list(L.codes_to_ids(np.zeros((8, 2), int)))[:13] + [AE, EOS], "not whole frames"),
        ([BOS, AS] + list(L.codes_to_ids(np.zeros((8, 2), int)))[1:9] + [AE, EOS], "not an audio token of codebook 0"),
        ([BOS, TS, 5, 6, EOS], "text segment opened at position 1 is not closed"),
        ([BOS, AS, L.audio_offset, TE, EOS], "audio segment opened at position 1 is not closed .*position 3"),
        ([BOS, 5, TE, EOS], "closing marker id 128257 at position 2"),
        ([BOS, TS, 5, L.audio_offset, TE, EOS], "not a text token"),
        ([BOS, 5, L.audio_offset + 3, EOS], "unmarked text at position 1"),
        ([BOS, TS, 5, BOS, TE, EOS], "not a text token"),
    ],
    ids=[
        "partial-frame",
        "codebook-order",
        "unclosed-text",
        "wrong-closer",
        "stray-closer",
        "audio-in-text",
        "audio-outside-segment",
        "bos-inside",
    ],
)
def test_malformed_sequence_is_refused_naming_the_problem(ids, message):
    with pytest.raises(ValueError, match=message):
        parse(ids, L)


def test_render_refuses_segments_that_could_not_be_parsed_back():
    with pytest.raises(ValueError, match="not a text token"):
        render(Document([text_segment([L.audio_offset])]), L)
    with pytest.raises(ValueError, match="needs a transcript, audio, or both"):
        speech_document([Utterance()], Order.TEXT_FIRST, L)


def test_loss_mask_follows_segment_flags_for_fine_tuning():
    source = audio_segment(np.zeros((8, 1), int), L, loss=False)
    target = text_segment([7, 8], loss=True)
    rendered = render(Document([source, target]), L)
    # BOS | <as> 8 audio <ae> (no loss) | <ts> 7 8 <te> EOS (loss)
    assert rendered.loss_mask.tolist() == [False] + [False] * 10 + [True] * 4 + [True]


def test_rows_of_concatenated_documents_split_after_each_end_of_text():
    a = render(text_document([4, 5]), L).ids
    b = render(DOCUMENTS["text-first"], L).ids
    parts = list(split_documents(np.concatenate([a, b, a[:2]]), L))
    assert [len(p) for p in parts] == [len(a), len(b), 2]
    assert parse(parts[1], L) == DOCUMENTS["text-first"]


def test_every_document_in_both_orders_by_default_or_one_order_by_probability():
    assert document_orders(2) == [[Order.TEXT_FIRST, Order.AUDIO_FIRST]] * 2
    draws = document_orders(10_000, text_first_probability=0.3, seed=1)
    share = sum(o == [Order.TEXT_FIRST] for o in draws) / len(draws)
    assert abs(share - 0.3) < 0.02
    assert draws == document_orders(10_000, text_first_probability=0.3, seed=1)
    with pytest.raises(ValueError):
        document_orders(1, text_first_probability=1.5)
