"""The string form of audio: audio index i (= codebook * C + code) <-> the character ``chr(0xE000 + i)``.

SODA writes interleaved speech and text as one plain string, one character per audio token
(``codes[k] += 0xE000 + k*2048`` in its data preparation). Only indices 0 .. 6399 fall in the Private
Use Area: the rest run through CJK compatibility ideographs (which NFC/NFKC rewrite), U+FEFF (the byte
order mark, which ``utf-8-sig`` readers strip), the noncharacters U+FFFE/U+FFFF and on into the
supplementary planes (U+11FFF for SODA's 16,384). So these strings must never be normalized, and files
holding them must be read as plain ``utf-8``.
"""

from __future__ import annotations

import numpy as np

from megatron_soda.tokenizer.layout import SODA_LAYOUT

AUDIO_UNICODE_OFFSET = 0xE000
"""Code point of audio index 0 (codebook 0, code 0)."""


def audio_indices_to_string(indices, num_audio_tokens: int = SODA_LAYOUT.num_audio_tokens) -> str:
    """Audio indices (0 .. num_audio_tokens-1, any integer array-like) -> their characters, in order."""
    indices = np.asarray(indices)
    if indices.size == 0:
        return ""
    if indices.ndim != 1 or indices.dtype.kind not in "iu":
        raise ValueError(f"audio indices must be a 1-D integer sequence, got shape {indices.shape} {indices.dtype}")
    bad = (indices < 0) | (indices >= num_audio_tokens)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise ValueError(f"audio index {indices[pos]} at position {pos} is outside [0, {num_audio_tokens})")
    return (indices.astype(np.uint32) + AUDIO_UNICODE_OFFSET).astype("<u4").tobytes().decode("utf-32-le")


def string_to_audio_indices(s: str, num_audio_tokens: int = SODA_LAYOUT.num_audio_tokens) -> np.ndarray:
    """A string of audio characters -> their audio indices (int64); refuses any other character."""
    # surrogatepass: a lone surrogate (U+D800..U+DFFF) is reported as a non-audio character, not a codec error
    indices = np.frombuffer(s.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64) - AUDIO_UNICODE_OFFSET
    bad = (indices < 0) | (indices >= num_audio_tokens)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        last = AUDIO_UNICODE_OFFSET + num_audio_tokens - 1
        raise ValueError(
            f"character {pos} (U+{ord(s[pos]):04X}) is not an audio character "
            f"(audio characters are U+{AUDIO_UNICODE_OFFSET:04X} .. U+{last:04X})"
        )
    return indices
