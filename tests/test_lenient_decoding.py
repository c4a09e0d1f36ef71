"""Lenient decoding of generated sequences: keep what is valid, report what was dropped and where."""

import numpy as np
import pytest

from megatron_soda.data.formats import (
    Document,
    Kind,
    Order,
    Segment,
    Utterance,
    audio_segment,
    parse,
    parse_lenient,
    render,
    speech_document,
    text_document,
    text_segment,
    whole_frames,
)
from megatron_soda.inference.prompts import build_prompt
from megatron_soda.tokenizer import SODA_LAYOUT, VocabLayout

L = VocabLayout(base_size=300, bos_id=0, eos_id=1)
K = L.num_codebooks
BOS, EOS, TS, TE, AS, AE = L.bos_id, L.eos_id, L.text_start_id, L.text_end_id, L.audio_start_id, L.audio_end_id


def codes(frames, seed=0):
    return np.random.default_rng(seed).integers(0, L.codebook_size, size=(K, frames))


def frames_ids(frames, seed=0):
    return L.codes_to_ids(codes(frames, seed))


def ids(*parts):
    return np.concatenate([np.atleast_1d(np.asarray(p, dtype=np.int64)) for p in parts])


def assert_documents_equal(actual: Document, expected: Document):
    assert (actual.bos, actual.eos) == (expected.bos, expected.eos)
    assert actual.segments == expected.segments


def _well_formed_documents(layout):
    rng = np.random.default_rng(0)
    utterances = [
        Utterance(rng.integers(2, 300, size=rng.integers(1, 6)), rng.integers(0, 2048, size=(8, rng.integers(1, 5))))
        for _ in range(3)
    ]
    return [
        speech_document(utterances, Order.TEXT_FIRST, layout),
        speech_document(utterances, Order.AUDIO_FIRST, layout),
        speech_document([Utterance(codes=utterances[0].codes)], Order.TEXT_FIRST, layout),
        text_document([5, 6, 7]),
        Document([text_segment([]), Segment(Kind.AUDIO, np.zeros(0, np.int64))]),
        Document([audio_segment(utterances[1].codes, layout), text_segment([9])], bos=False, eos=False),
        Document([], bos=True, eos=True),
        Document([], bos=False, eos=False),
    ]


@pytest.mark.parametrize("layout", [L, SODA_LAYOUT], ids=["base-300", "soda"])
def test_a_well_formed_sequence_parses_leniently_exactly_as_parse_does_with_no_problems(layout):
    for document in _well_formed_documents(layout):
        rendered = render(document, layout).ids
        parsed, problems = parse_lenient(rendered, layout)
        assert problems == []
        assert_documents_equal(parsed, parse(rendered, layout))
        assert_documents_equal(parsed, document)


def test_whole_frames_of_well_formed_audio_are_its_codes():
    expected = codes(5)
    got, problems = whole_frames(L.codes_to_ids(expected), L)
    np.testing.assert_array_equal(got, expected)
    assert problems == [] and got.dtype == np.int64
    empty, problems = whole_frames([], L)
    assert empty.shape == (K, 0) and problems == []


def test_whole_frames_drops_a_truncated_last_frame_and_says_where():
    audio = ids(frames_ids(2), frames_ids(1, seed=1)[:3])
    got, problems = whole_frames(audio, L)
    np.testing.assert_array_equal(got, codes(2))
    assert problems == ["incomplete frame at 16 (3 of 8 codebooks) dropped"]


def test_whole_frames_positions_count_from_start():
    _, problems = whole_frames(frames_ids(1)[:3], L, start=40)
    assert problems == ["incomplete frame at 40 (3 of 8 codebooks) dropped"]


def test_a_codebook_out_of_order_drops_its_partial_frame_and_itself():
    first, second = frames_ids(1, seed=1), frames_ids(1, seed=2)
    wrong = L.audio_id(5, 7)  # codebook 5 where codebook 2 is due
    got, problems = whole_frames(ids(first, second[:2], wrong, first), L)
    np.testing.assert_array_equal(got, L.ids_to_codes(ids(first, first)))
    assert problems == [
        "incomplete frame at 8 (2 of 8 codebooks) dropped",
        f"audio id {wrong} (codebook 5) at 10 is not an audio token of codebook 2: dropped",
    ]


def test_a_codebook_0_token_inside_a_frame_starts_a_new_frame():
    first, second = frames_ids(1, seed=1), frames_ids(1, seed=2)
    got, problems = whole_frames(ids(first[:4], second), L)
    np.testing.assert_array_equal(got, L.ids_to_codes(second))
    assert problems == ["incomplete frame at 0 (4 of 8 codebooks) dropped"]


def test_a_text_id_or_marker_inside_audio_is_dropped_with_the_frame_it_interrupts():
    frame = frames_ids(1)
    got, problems = whole_frames(ids(frame, 12, frame[:3], TE, frame), L)
    np.testing.assert_array_equal(got, L.ids_to_codes(ids(frame, frame)))
    assert problems == [
        "id 12 at 8 is not an audio token of codebook 0: dropped",
        "incomplete frame at 9 (3 of 8 codebooks) dropped",
        f"<|text_end|> (id {TE}) at 12 is not an audio token of codebook 3: dropped",
    ]


def test_an_unclosed_last_segment_is_kept_and_reported():
    audio = frames_ids(2)
    document, problems = parse_lenient(ids(BOS, TS, 7, 8, TE, AS, audio), L)
    assert_documents_equal(document, Document([text_segment([7, 8]), Segment(Kind.AUDIO, audio)], eos=False))
    assert problems == ["audio segment opened at 5 is not closed"]

    document, problems = parse_lenient(ids(BOS, TS, 7, 8, EOS), L)
    assert_documents_equal(document, Document([text_segment([7, 8])], bos=True, eos=True))
    assert problems == ["text segment opened at 1 is not closed"]


def test_a_stray_closing_marker_is_dropped_and_the_text_around_it_kept():
    document, problems = parse_lenient(ids(BOS, 5, AE, 6, TE, EOS), L)
    assert_documents_equal(document, text_document([5, 6]))
    assert problems == [
        f"<|audio_end|> (id {AE}) at 2 closes no segment: dropped",
        f"<|text_end|> (id {TE}) at 4 closes no segment: dropped",
    ]


def test_a_marker_inside_the_wrong_segment_is_dropped_and_the_segment_goes_on():
    frame = frames_ids(1)
    sequence = ids(BOS, TS, 5, AS, 6, AE, TE, AS, frame, TS, frame, AE, EOS)
    document, problems = parse_lenient(sequence, L)
    expected = Document([text_segment([5, 6]), Segment(Kind.AUDIO, ids(frame, frame))])
    assert_documents_equal(document, expected)
    assert problems == [
        f"<|audio_start|> (id {AS}) at 3 inside the text segment opened at 1: dropped",
        f"<|audio_end|> (id {AE}) at 5 inside the text segment opened at 1: dropped",
        f"<|text_start|> (id {TS}) at 16 is not an audio token of codebook 0: dropped",
    ]


def test_text_and_plain_text_drop_audio_ids_and_begin_and_end_of_text():
    audio_id = L.audio_id(3, 9)
    document, problems = parse_lenient(ids(BOS, 5, audio_id, BOS, 6, TS, 7, EOS, audio_id, 8, TE, EOS), L)
    assert_documents_equal(document, Document([Segment(Kind.PLAIN, np.array([5, 6])), text_segment([7, 8])]))
    assert problems == [
        f"audio id {audio_id} (codebook 3) at 2 in plain text: dropped",
        "<|begin_of_text|> (id 0) at 3 in plain text: dropped",
        "<|end_of_text|> (id 1) at 7 inside the text segment opened at 5: dropped",
        f"audio id {audio_id} (codebook 3) at 8 inside the text segment opened at 5: dropped",
    ]


def test_plain_text_with_nothing_valid_left_makes_no_segment():
    document, problems = parse_lenient(ids(BOS, AE, L.audio_id(0, 0), EOS), L)
    assert_documents_equal(document, Document([]))
    assert len(problems) == 2


def test_a_generated_tts_continuation_keeps_its_whole_frames_without_an_end_marker():
    prompt = build_prompt("tts", L, text_ids=[10, 11, 12])
    generated = ids(frames_ids(3), frames_ids(1, seed=1)[:3])  # ran out of tokens mid-frame, no <|audio_end|>

    document, problems = parse_lenient(generated, L, open_kind=Kind.AUDIO)
    assert_documents_equal(document, Document([Segment(Kind.AUDIO, frames_ids(3))], bos=False, eos=False))
    assert problems == [
        "incomplete frame at 24 (3 of 8 codebooks) dropped",
        "audio segment open at the start is not closed",
    ]
    np.testing.assert_array_equal(L.ids_to_codes(document.segments[0].ids), codes(3))

    whole, problems = parse_lenient(ids(prompt, generated), L)
    assert_documents_equal(whole, Document([text_segment([10, 11, 12]), Segment(Kind.AUDIO, frames_ids(3))], eos=False))
    at = len(prompt) + 24
    assert problems == [
        f"incomplete frame at {at} (3 of 8 codebooks) dropped",
        f"audio segment opened at {len(prompt) - 1} is not closed",
    ]


def test_a_generated_transcript_continues_the_open_text_segment():
    document, problems = parse_lenient(ids(20, 21, TE, AS), L, open_kind=Kind.TEXT)
    assert_documents_equal(
        document, Document([text_segment([20, 21]), Segment(Kind.AUDIO, np.zeros(0, np.int64))], False, False)
    )
    assert problems == ["audio segment opened at 3 is not closed"]
    # A continuation does not begin a document: a leading begin-of-text is content, and not text content.
    document, problems = parse_lenient(ids(BOS, 20, TE), L, open_kind=Kind.TEXT)
    assert_documents_equal(document, Document([text_segment([20])], bos=False, eos=False))
    assert problems == ["<|begin_of_text|> (id 0) at 0 inside the text segment open at the start: dropped"]


def test_lenient_parsing_never_raises_and_keeps_only_valid_content_of_random_sequences():
    rng = np.random.default_rng(0)
    special = np.array([BOS, EOS, TS, TE, AS, AE])
    for trial in range(200):
        n = int(rng.integers(0, 300))
        # Mostly audio in order, with text and markers sprinkled in: every kind of damage, often.
        sequence = L.codes_to_ids(codes(n // K + 1, seed=trial))[:n]
        noise = rng.random(n) < 0.1
        sequence[noise] = rng.choice(np.concatenate([special, rng.integers(0, L.vocab_size, 20)]), noise.sum())
        for open_kind in (None, Kind.AUDIO, Kind.TEXT):
            document, problems = parse_lenient(sequence, L, open_kind=open_kind)
            for segment in document.segments:
                if segment.kind is Kind.AUDIO:
                    L.ids_to_codes(segment.ids)  # whole frames, codebooks in order
                else:
                    assert ((segment.ids >= 2) & (segment.ids < L.base_size)).all()
            assert all(isinstance(p, str) and " at " in p for p in problems)
