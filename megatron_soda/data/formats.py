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


def render(document: Document, layout: VocabLayout, open_end: bool = False) -> Rendered:
    """Token ids (and loss mask) of a document. BOS and EOS are written only where the document says.

    ``open_end`` renders a prompt for a model to continue: the last segment's closing marker (and
    end-of-text) left out, so an empty last segment is just its opening marker (``<|audio_start|>``).
    """
    if open_end and (document.eos or not document.segments):
        raise ValueError("an open-ended prompt needs segments and no end-of-text (Document(eos=False))")
    ids, mask = [], []
    if document.bos:
        ids.append(np.array([layout.bos_id]))
        mask.append(np.array([False]))
    for segment in document.segments:
        _check_content(segment, layout)
        start, end = _markers(segment.kind, layout)
        if open_end and segment is document.segments[-1]:
            end = []
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


# Lenient decoding: what a model generated is not always well-formed (a truncated last frame, codebooks out
# of order, a missing end marker). These keep what is valid and report what they dropped, where.


def _describe(token: int, layout: VocabLayout) -> str:
    """A token as a report names it: markers and begin/end-of-text by name, audio ids with their codebook."""
    from megatron_soda.tokenizer.layout import BEGIN_OF_TEXT, END_OF_TEXT, SPECIAL_TOKENS

    names = dict(zip(range(layout.text_start_id, layout.audio_offset), SPECIAL_TOKENS))
    names.update({layout.bos_id: BEGIN_OF_TEXT, layout.eos_id: END_OF_TEXT})
    if token in names:
        return f"{names[token]} (id {token})"
    if layout.is_audio(token):
        return f"audio id {token} (codebook {(token - layout.audio_offset) // layout.codebook_size})"
    return f"id {token}"


def whole_frames(ids, layout: VocabLayout, start: int = 0) -> tuple[np.ndarray, List[str]]:
    """Audio ids -> codes ``[K, T]`` of every whole frame whose codebooks come in order 0..K-1, and a report
    of what was dropped (positions count from ``start``, the position of ``ids[0]`` in the sequence).

    Left to right with one partial frame open: a token of the codebook it expects extends it; a codebook-0
    token drops it and starts a new one (the model skipped ahead to a new frame); any other token drops it
    and itself; a partial frame at the end is dropped. Linear time; a well-formed run takes a vectorized path.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    K = layout.num_codebooks
    codebook = np.where(layout.is_audio(ids), (ids - layout.audio_offset) // layout.codebook_size, -1)
    if len(ids) % K == 0 and np.array_equal(codebook, np.tile(np.arange(K), len(ids) // K)):
        return (ids - layout.audio_offset).reshape(-1, K).T % layout.codebook_size, []

    problems: List[str] = []
    frame_starts: List[int] = []
    expected, open_at = 0, -1  # the codebook the open frame needs next (0: none open), where it started

    def drop_open_frame():
        problems.append(f"incomplete frame at {start + open_at} ({expected} of {K} codebooks) dropped")

    for position, token_codebook in enumerate(codebook.tolist()):
        if token_codebook == expected:
            if expected == 0:
                open_at = position
            expected += 1
            if expected == K:
                frame_starts.append(open_at)
                expected = 0
        elif token_codebook == 0:
            drop_open_frame()
            open_at, expected = position, 1
        else:
            if expected:
                drop_open_frame()
            token = _describe(int(ids[position]), layout)
            problems.append(f"{token} at {start + position} is not an audio token of codebook {expected}: dropped")
            expected = 0
    if expected:
        drop_open_frame()
    if not frame_starts:
        return np.zeros((K, 0), np.int64), problems
    frames = ids[np.asarray(frame_starts)[:, None] + np.arange(K)]
    return (frames - layout.audio_offset).T % layout.codebook_size, problems


def _keep_text(ids, positions, where: str, layout: VocabLayout) -> tuple[np.ndarray, List[str]]:
    """The text tokens of ``ids`` (found at ``positions`` in the sequence), and one report per other token."""
    bad = (ids < 0) | (ids >= layout.base_size) | (ids == layout.bos_id) | (ids == layout.eos_id)
    problems = [f"{_describe(int(ids[i]), layout)} at {positions[i]} {where}: dropped" for i in np.flatnonzero(bad)]
    return ids[~bad], problems


def parse_lenient(ids, layout: VocabLayout, open_kind: Optional[Kind] = None) -> tuple[Document, List[str]]:
    """``parse`` for what a model generated: never raises on malformed content, keeps what is valid and
    reports what it dropped (one string per problem, with its position). On a well-formed sequence it
    returns ``parse``'s document and no problems.

    ``open_kind`` says the ids start inside a segment of that kind (a continuation of a prompt that ended
    inside it, e.g. after ``<|audio_start|>``), so the first segment has no opening marker. An unclosed
    last segment is kept (and reported); stray closing markers and markers inside the wrong segment are
    dropped; audio keeps its whole frames (``whole_frames``); text and plain text keep their text tokens.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = len(ids)
    open_kind = None if open_kind is None else Kind(open_kind)
    bos = bool(open_kind is None and n > 0 and ids[0] == layout.bos_id)
    eos = bool(n > (1 if bos else 0) and ids[-1] == layout.eos_id)
    i, end = (1 if bos else 0), n - (1 if eos else 0)
    body = ids[:end]
    openers = {layout.text_start_id: Kind.TEXT, layout.audio_start_id: Kind.AUDIO}
    closers = {Kind.TEXT: layout.text_end_id, Kind.AUDIO: layout.audio_end_id}
    # Marker positions, searched rather than rescanned, so the whole parse stays linear.
    opener_positions = np.flatnonzero(np.isin(body, list(openers)))
    closer_positions = {kind: np.flatnonzero(body == closer) for kind, closer in closers.items()}
    segments: List[Segment] = []
    problems: List[str] = []

    def next_position(positions: np.ndarray, start: int) -> int:
        """The first of ``positions`` at or after ``start``; ``end`` if none."""
        at = np.searchsorted(positions, start)
        return int(positions[at]) if at < len(positions) else end

    def add_segment(kind: Kind, content_start: int, opened: str) -> int:
        """Appends the segment whose content starts at ``content_start``; returns the position after it."""
        content_end = next_position(closer_positions[kind], content_start)
        content = ids[content_start:content_end]
        if kind is Kind.AUDIO:
            codes, dropped = whole_frames(content, layout, start=content_start)
            kept = layout.codes_to_ids(codes)
        else:
            positions = np.arange(content_start, content_end)
            kept, dropped = _keep_text(content, positions, f"inside the text segment {opened}", layout)
        segments.append(Segment(kind, kept))
        problems.extend(dropped)
        if content_end == end:
            problems.append(f"{kind.value} segment {opened} is not closed")
        return content_end + 1

    if open_kind in (Kind.TEXT, Kind.AUDIO):
        i = add_segment(open_kind, i, "open at the start")
    while i < end:
        token = int(ids[i])
        if token in openers:
            i = add_segment(openers[token], i + 1, f"opened at {i}")
            continue
        # Plain text up to the next opening marker; closing markers in it close nothing.
        stop = next_position(opener_positions, i)
        content = ids[i:stop]
        stray = np.isin(content, list(closers.values()))
        for at in np.flatnonzero(stray):
            problems.append(f"{_describe(int(content[at]), layout)} at {i + at} closes no segment: dropped")
        kept, dropped = _keep_text(content[~stray], i + np.flatnonzero(~stray), "in plain text", layout)
        problems.extend(dropped)
        if len(kept):
            segments.append(Segment(Kind.PLAIN, kept))
        i = stop
    return Document(segments, bos=bos, eos=eos), problems
