"""Synthetic token documents shaped like SODA data, for the demo, tests and benchmarks.

Rendered through ``formats`` like real data; the ids are random, so they exercise sizes, ids and
markers, not content.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from megatron_soda.data.formats import Order, Utterance, render, speech_document, text_document
from megatron_soda.tokenizer.layout import VocabLayout

MIMI_FRAME_RATE = 12.5  # frames/s; x 8 codebooks = 100 tokens per second of speech


def _text_ids(rng: np.random.Generator, n: int, layout: VocabLayout) -> np.ndarray:
    # Base ids below both begin/end-of-text, so a document holds them only where the format puts them.
    return rng.integers(0, min(layout.bos_id, layout.eos_id), size=n, dtype=np.int64)


def speech_documents(
    rng: np.random.Generator,
    num_documents: int,
    layout: VocabLayout,
    utterances: Tuple[int, int] = (1, 4),
    seconds: Tuple[float, float] = (1.0, 10.0),
    text_tokens_per_second: float = 3.0,
    frame_rate: float = MIMI_FRAME_RATE,
    order: Order = Order.TEXT_FIRST,
) -> Tuple[np.ndarray, np.ndarray]:
    """Flat tokens and per-document lengths of interleaved speech documents (random codes and text)."""
    docs = []
    for _ in range(num_documents):
        utts = []
        for _ in range(rng.integers(utterances[0], utterances[1] + 1)):
            duration = rng.uniform(*seconds)
            frames = max(1, int(duration * frame_rate))
            codes = rng.integers(0, layout.codebook_size, size=(layout.num_codebooks, frames), dtype=np.int64)
            utts.append(Utterance(_text_ids(rng, max(1, int(duration * text_tokens_per_second)), layout), codes))
        docs.append(render(speech_document(utts, order, layout), layout).ids)
    return np.concatenate(docs), np.array([len(d) for d in docs], dtype=np.int64)


def text_documents(
    rng: np.random.Generator, num_documents: int, layout: VocabLayout, length: Tuple[int, int] = (50, 400)
) -> Tuple[np.ndarray, np.ndarray]:
    """Flat tokens and lengths of text-only documents (total lengths, begin/end-of-text included)."""
    lengths = rng.integers(length[0], length[1] + 1, size=num_documents, dtype=np.int64)
    docs = [render(text_document(_text_ids(rng, int(n) - 2, layout)), layout).ids for n in lengths]
    return np.concatenate(docs), lengths


def random_documents(
    rng: np.random.Generator, num_documents: int, length: Tuple[int, int], vocab_size: int, dtype=np.int32
) -> Tuple[np.ndarray, np.ndarray]:
    """Uniformly random ids in documents of uniformly random length (benchmarks)."""
    lengths = rng.integers(length[0], length[1] + 1, size=num_documents, dtype=np.int64)
    return rng.integers(0, vocab_size, size=int(lengths.sum()), dtype=dtype), lengths
