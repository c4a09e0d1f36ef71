"""SODA's unified vocabulary layout: base text tokens, then 4 specials, then the audio block.

The one place that knows the ids. With Llama 3's 128,256-token base (SODA's released tokenizer):
``<|text_start|>`` 128256, ``<|text_end|>`` 128257, ``<|audio_start|>`` 128258, ``<|audio_end|>``
128259, audio (codebook k, code c) = 128260 + k * 2048 + c, 144,644 ids in all. Any base of size B
gives the same shape: specials B .. B+3, audio from B+4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPECIAL_TOKENS = ("<|text_start|>", "<|text_end|>", "<|audio_start|>", "<|audio_end|>")
BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"


@dataclass(frozen=True)
class VocabLayout:
    """Ids of a base vocabulary extended with SODA's specials and a K x C audio block."""

    base_size: int = 128_256
    """Size of the base text tokenizer, added tokens included (``len(tokenizer)``)."""
    num_codebooks: int = 8
    """Codebooks per audio frame (Mimi as SODA uses it: 1 semantic + 7 acoustic)."""
    codebook_size: int = 2048
    """Entries per codebook."""
    bos_id: int = 128_000
    """``<|begin_of_text|>`` in the base vocabulary."""
    eos_id: int = 128_001
    """``<|end_of_text|>`` in the base vocabulary; training's EOD."""

    def __post_init__(self):
        if self.base_size <= 0 or self.num_codebooks <= 0 or self.codebook_size <= 0:
            raise ValueError(f"invalid vocabulary layout {self}")
        for name in ("bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.base_size:
                raise ValueError(f"{name}={getattr(self, name)} is outside the base vocabulary [0, {self.base_size})")

    @property
    def text_start_id(self) -> int:
        return self.base_size

    @property
    def text_end_id(self) -> int:
        return self.base_size + 1

    @property
    def audio_start_id(self) -> int:
        return self.base_size + 2

    @property
    def audio_end_id(self) -> int:
        return self.base_size + 3

    @property
    def audio_offset(self) -> int:
        """Id of (codebook 0, code 0)."""
        return self.base_size + len(SPECIAL_TOKENS)

    @property
    def num_audio_tokens(self) -> int:
        return self.num_codebooks * self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.audio_offset + self.num_audio_tokens

    def audio_id(self, codebook, code):
        """Token id of (codebook, code); works elementwise on numpy arrays."""
        return self.audio_offset + codebook * self.codebook_size + code

    def codes_to_ids(self, codes) -> "np.ndarray":
        """Codec codes ``[K, T]`` -> token ids, frame-major (frame t: codebook 0 .. K-1), as SODA flattens."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks:
            raise ValueError(f"codes must have shape [{self.num_codebooks}, frames], got {list(codes.shape)}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{codes.min()}, {codes.max()}]")
        offsets = self.audio_offset + np.arange(self.num_codebooks, dtype=np.int64)[:, None] * self.codebook_size
        return (codes.astype(np.int64) + offsets).T.reshape(-1)

    def ids_to_codes(self, ids) -> "np.ndarray":
        """Audio token ids (whole frames, frame-major) -> codes ``[K, T]``; the inverse of ``codes_to_ids``."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or len(ids) % self.num_codebooks:
            raise ValueError(f"{len(ids)} audio tokens are not whole frames of {self.num_codebooks} codebooks")
        codebook_of_position = np.tile(np.arange(self.num_codebooks), len(ids) // self.num_codebooks)
        wrong = ~self.is_audio(ids) | ((ids - self.audio_offset) // self.codebook_size != codebook_of_position)
        if wrong.any():
            bad = int(np.flatnonzero(wrong)[0])
            raise ValueError(
                f"token {bad} (id {ids[bad]}) is not an audio token of codebook {bad % self.num_codebooks}"
            )
        return (ids - self.audio_offset).reshape(-1, self.num_codebooks).T % self.codebook_size

    def is_audio(self, token_id):
        """Whether ids are audio tokens; works elementwise on numpy arrays."""
        return (token_id >= self.audio_offset) & (token_id < self.vocab_size)


SODA_LAYOUT = VocabLayout()
"""SODA's released layout: Llama 3 base, Mimi with 8 codebooks of 2048 (144,644 ids)."""
