"""SODA's sequence formats: utterance-level interleaving of speech and text, and parsing back.

A document is a list of segments, rendered between ``<|begin_of_text|>`` and ``<|end_of_text|>``
with no separators:

- text-first:  ``<|text_start|>T1<|text_end|><|audio_start|>A1<|audio_end|><|text_start|>T2…``
- audio-first: ``<|audio_start|>A1<|audio_end|><|text_start|>T1<|text_end|>…``
- text-only:   plain text (no text markers), as SODA renders its text data
- audio-only:  ``<|audio_start|>A1<|audio_end|>…``

Audio is frame-major (frame t holds codebooks 0..K-1; ``VocabLayout.codes_to_ids``). Every segment
carries a loss flag, so fine-tuning can put the loss on the response only. ``parse`` inverts
``render`` exactly and refuses malformed sequences with the position of the problem.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import numpy as np

from megatron_soda.tokenizer.layout import VocabLayout


class Order(str, enum.Enum):
    TEXT_FIRST = "text-first"
    AUDIO_FIRST = "audio-first"


class Kind(str, enum.Enum):
    TEXT = "text"  # between <|text_start|> and <|text_end|>
    AUDIO = "audio"  # between <|audio_start|> and <|audio_end|>
    PLAIN = "plain"  # unmarked text (text-only documents)


@dataclass(frozen=True)
class Segment:
    kind: Kind
    ids: np.ndarray  # content token ids, markers excluded
    loss: bool = True  # whether training puts loss on this segment (markers included)

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Segment)
            and (self.kind, self.loss) == (other.kind, other.loss)
            and np.array_equal(self.ids, other.ids)
        )


@dataclass(frozen=True)
class Utterance:
    """One utterance: its transcript's token ids and/or its codec codes ``[K, T]``."""

    text_ids: Optional[np.ndarray] = None
    codes: Optional[np.ndarray] = None


@dataclass(frozen=True)
class Document:
    segments: List[Segment]
    bos: bool = True
    eos: bool = True


def text_segment(ids, loss: bool = True) -> Segment:
    return Segment(Kind.TEXT, np.asarray(ids, dtype=np.int64), loss)


def audio_segment(codes, layout: VocabLayout, loss: bool = True) -> Segment:
    return Segment(Kind.AUDIO, layout.codes_to_ids(codes), loss)


def utterance_segments(utterance: Utterance, order: Order, layout: VocabLayout) -> List[Segment]:
    """The segments of one utterance in the given order; a missing transcript or audio is left out."""
    text = [text_segment(utterance.text_ids)] if utterance.text_ids is not None else []
    audio = [audio_segment(utterance.codes, layout)] if utterance.codes is not None else []
    if not text and not audio:
        raise ValueError("an utterance needs a transcript, audio, or both")
    return text + audio if Order(order) is Order.TEXT_FIRST else audio + text


def speech_document(utterances: Sequence[Utterance], order: Order, layout: VocabLayout) -> Document:
    """Utterance-level interleaving: each utterance's segments in ``order``, utterances in sequence."""
    if not utterances:
        raise ValueError("a speech document needs at least one utterance")
    return Document([s for u in utterances for s in utterance_segments(u, order, layout)])


def text_document(text_ids) -> Document:
    """A text-only document: plain text between begin- and end-of-text."""
    return Document([Segment(Kind.PLAIN, np.asarray(text_ids, dtype=np.int64))])


def _markers(kind: Kind, layout: VocabLayout):
    if kind is Kind.TEXT:
        return [layout.text_start_id], [layout.text_end_id]
    if kind is Kind.AUDIO:
        return [layout.audio_start_id], [layout.audio_end_id]
    return [], []


@dataclass(frozen=True)
class Rendered:
    ids: np.ndarray  # int64 token ids
    loss_mask: np.ndarray  # bool, per token: whether its segment carries loss (BOS never; EOS with the last segment)


def render(document: Document, layout: VocabLayout) -> Rendered:
    """Token ids (and loss mask) of a document. BOS and EOS are written only where the document says."""
    ids, mask = [], []
    if document.bos:
        ids.append(np.array([layout.bos_id]))
        mask.append(np.array([False]))
    for segment in document.segments:
        _check_content(segment, layout)
        start, end = _markers(segment.kind, layout)
        part = np.concatenate([np.asarray(start, np.int64), segment.ids, np.asarray(end, np.int64)])
        ids.append(part)
        mask.append(np.full(len(part), segment.loss))
    if document.eos:
        ids.append(np.array([layout.eos_id]))
        mask.append(np.array([document.segments[-1].loss if document.segments else True]))
    if not ids:
        return Rendered(np.zeros(0, np.int64), np.zeros(0, bool))
    return Rendered(np.concatenate(ids).astype(np.int64), np.concatenate(mask).astype(bool))


def _check_content(segment: Segment, layout: VocabLayout) -> None:
    ids = segment.ids
    if ids.ndim != 1:
        raise ValueError(f"{segment.kind.value} segment ids must be 1-D")
    if segment.kind is Kind.AUDIO:
        layout.ids_to_codes(ids)  # whole frames, codebooks in order
    else:
        bad = (ids < 0) | (ids >= layout.base_size) | np.isin(ids, [layout.bos_id, layout.eos_id])
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{segment.kind.value} segment holds id {ids[at]} at {at}, which is not a text token")


def parse(ids, layout: VocabLayout) -> Document:
    """The document of a rendered sequence; raises ValueError naming the first malformed position.

    Loss flags are not part of the ids, so parsed segments carry ``loss=True``.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    segments = []
    bos = n > 0 and ids[0] == layout.bos_id
    eos = n > (1 if bos else 0) and ids[-1] == layout.eos_id
    i, end = (1 if bos else 0), n - (1 if eos else 0)
    openers = {
        layout.text_start_id: (Kind.TEXT, layout.text_end_id),
        layout.audio_start_id: (Kind.AUDIO, layout.audio_end_id),
    }
    markers = {layout.text_start_id, layout.text_end_id, layout.audio_start_id, layout.audio_end_id}
    while i < end:
        token = int(ids[i])
        if token in openers:
            kind, closer = openers[token]
            j = i + 1
            while j < end and int(ids[j]) not in markers:
                j += 1
            if j >= end or int(ids[j]) != closer:
                found = "the end of the sequence" if j >= end else f"id {ids[j]} at position {j}"
                raise ValueError(f"{kind.value} segment opened at position {i} is not closed (found {found})")
            segment = Segment(kind, ids[i + 1 : j].copy())
            try:
                _check_content(segment, layout)
            except ValueError as error:
                raise ValueError(f"{kind.value} segment at position {i}: {error}") from None
            segments.append(segment)
            i = j + 1
        elif token in markers:
            raise ValueError(f"closing marker id {token} at position {i} has no opening marker")
        else:
            j = i
            while j < end and int(ids[j]) not in markers:
                j += 1
            segment = Segment(Kind.PLAIN, ids[i:j].copy())
            try:
                _check_content(segment, layout)
            except ValueError as error:
                raise ValueError(f"unmarked text at position {i}: {error}") from None
            segments.append(segment)
            i = j
    return Document(segments, bos=bos, eos=eos)


def split_documents(ids, layout: VocabLayout) -> Iterator[np.ndarray]:
    """Splits a row of concatenated documents after each end-of-text (a trailing partial one included)."""
    ids = np.asarray(ids)
    cuts = np.flatnonzero(ids == layout.eos_id) + 1
    start = 0
    for cut in cuts:
        yield ids[start:cut]
        start = cut
    if start < len(ids):
        yield ids[start:]


def document_orders(
    num_documents: int, text_first_probability: Optional[float] = None, seed: int = 0
) -> List[List[Order]]:
    """The orders each speech document is rendered in.

    Default (None): both, text-first then audio-first, as SODA did. With a probability: one order
    per document, text-first with that probability, from a seeded generator (reproducible).
    """
    if text_first_probability is None:
        return [[Order.TEXT_FIRST, Order.AUDIO_FIRST] for _ in range(num_documents)]
    if not 0.0 <= text_first_probability <= 1.0:
        raise ValueError(f"text-first probability must be in [0, 1], got {text_first_probability}")
    draws = np.random.default_rng(seed).random(num_documents) < text_first_probability
    return [[Order.TEXT_FIRST] if d else [Order.AUDIO_FIRST] for d in draws]
