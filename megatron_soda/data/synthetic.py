"""Synthetic token documents shaped like SODA data, for the demo, tests and benchmarks.

Speech documents follow the text-first utterance format with frame-major audio (frame t holds
codebooks 0..K-1 in order); ids are random, so they exercise sizes, ids and markers, not content.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from megatron_soda.tokenizer.layout import VocabLayout

MIMI_FRAME_RATE = 12.5  # frames/s; x 8 codebooks = 100 tokens per second of speech


def _text_ids(rng: np.random.Generator, n: int, layout: VocabLayout) -> np.ndarray:
    # Base ids below both begin/end-of-text, so a document holds them only where the format puts them.
    return rng.integers(0, min(layout.bos_id, layout.eos_id), size=n, dtype=np.int64)


def _audio_ids(rng: np.random.Generator, frames: int, layout: VocabLayout) -> np.ndarray:
    codes = rng.integers(0, layout.codebook_size, size=(frames, layout.num_codebooks), dtype=np.int64)
    return layout.audio_id(np.arange(layout.num_codebooks)[None, :], codes).reshape(-1)


def speech_documents(
    rng: np.random.Generator,
    num_documents: int,
    layout: VocabLayout,
    utterances: Tuple[int, int] = (1, 4),
    seconds: Tuple[float, float] = (1.0, 10.0),
    text_tokens_per_second: float = 3.0,
    frame_rate: float = MIMI_FRAME_RATE,
) -> Tuple[np.ndarray, np.ndarray]:
    """Flat tokens and per-document lengths of text-first interleaved speech documents."""
    docs = []
    for _ in range(num_documents):
        parts = [[layout.bos_id]]
        for _ in range(rng.integers(utterances[0], utterances[1] + 1)):
            duration = rng.uniform(*seconds)
            frames = max(1, int(duration * frame_rate))
            parts += [
                [layout.text_start_id],
                _text_ids(rng, max(1, int(duration * text_tokens_per_second)), layout),
                [layout.text_end_id, layout.audio_start_id],
                _audio_ids(rng, frames, layout),
                [layout.audio_end_id],
            ]
        parts.append([layout.eos_id])
        docs.append(np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]))
    return np.concatenate(docs), np.array([len(d) for d in docs], dtype=np.int64)


def text_documents(
    rng: np.random.Generator, num_documents: int, layout: VocabLayout, length: Tuple[int, int] = (50, 400)
) -> Tuple[np.ndarray, np.ndarray]:
    """Flat tokens and lengths of text-only documents: begin-of-text, text, end-of-text."""
    lengths = rng.integers(length[0], length[1] + 1, size=num_documents, dtype=np.int64)
    tokens = _text_ids(rng, int(lengths.sum()), layout)
    ends = np.cumsum(lengths)
    tokens[ends - lengths] = layout.bos_id
    tokens[ends - 1] = layout.eos_id
    return tokens, lengths


def random_documents(
    rng: np.random.Generator, num_documents: int, length: Tuple[int, int], vocab_size: int, dtype=np.int32
) -> Tuple[np.ndarray, np.ndarray]:
    """Uniformly random ids in documents of uniformly random length (benchmarks)."""
    lengths = rng.integers(length[0], length[1] + 1, size=num_documents, dtype=np.int64)
    return rng.integers(0, vocab_size, size=int(lengths.sum()), dtype=dtype), lengths
