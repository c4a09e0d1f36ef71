"""SodaTokenizer: a Hugging Face tokenizer checked against a VocabLayout, with the two encodings SODA needs.

- ``encode_text``: a transcript -> text ids. Special-token strings and audio characters inside a
  transcript stay text (they are split into ordinary tokens), so no data can inject markers or audio.
- ``string_to_ids`` / ``ids_to_string``: the full string form of an interleaved sequence (specials as
  their literal strings, audio as ``chr(0xE000 + index)``), as SODA's data preparation writes it.

Neither adds ``<|begin_of_text|>`` on its own: a Llama 3 base's post-processor prepends it whenever a
caller asks Hugging Face for ``add_special_tokens=True`` (its default), so BOS belongs to the format code
(``VocabLayout.bos_id``) or to a literal ``<|begin_of_text|>`` in the string, never to a hidden default.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from megatron_soda.tokenizer.layout import BEGIN_OF_TEXT, END_OF_TEXT, SPECIAL_TOKENS, VocabLayout
from megatron_soda.tokenizer.pua import AUDIO_UNICODE_OFFSET, audio_indices_to_string

LAYOUT_FILE = "soda_vocab_layout.json"
"""Written beside the Hugging Face files by ``save``: the layout the saved vocabulary was checked against."""


class SodaTokenizer:
    """A Hugging Face fast tokenizer whose vocabulary has been checked against ``layout``."""

    def __init__(self, hf_tokenizer, layout: VocabLayout):
        self.hf = hf_tokenizer
        self.layout = layout
        # Private copies with fixed settings: Hugging Face flips ``encode_special_tokens`` on its backend per
        # call (``split_special_tokens``), and a copy cannot be changed under us by the caller.
        self._strings = _private_copy(hf_tokenizer.backend_tokenizer, encode_special_tokens=False)
        self._text = _private_copy(hf_tokenizer.backend_tokenizer, encode_special_tokens=True)
        check_vocabulary(self._strings, layout)

    @property
    def vocab_size(self) -> int:
        """Ids in the vocabulary (base + 4 specials + audio), before any padding for tensor parallelism."""
        return self.layout.vocab_size

    def encode_text(self, text: str) -> np.ndarray:
        """A transcript -> its text ids (int64), no BOS; markers or audio characters in it stay plain text."""
        return np.asarray(self._text.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def string_to_ids(self, s: str) -> np.ndarray:
        """The string form of a sequence -> ids (int64): literal specials and audio characters become their
        ids, the rest is text. Adds nothing (no BOS): the string carries its own ``<|begin_of_text|>``."""
        return np.asarray(self._strings.encode(s, add_special_tokens=False).ids, dtype=np.int64)

    def ids_to_string(self, ids) -> str:
        """Ids -> the string form that ``string_to_ids`` reads back. Specials and audio are written by the
        layout, not by the base's decoder, so a decoder that edits spaces cannot touch them."""
        ids = self._checked_ids(ids)
        parts = []
        for start, end in _runs(self._kinds(ids)):
            run = ids[start:end]
            if run[0] < self.layout.base_size:
                parts.append(self._strings.decode(run.tolist(), skip_special_tokens=False))
            elif run[0] < self.layout.audio_offset:
                parts.extend(SPECIAL_TOKENS[i - self.layout.base_size] for i in run)
            else:
                parts.append(audio_indices_to_string(run - self.layout.audio_offset, self.layout.num_audio_tokens))
        return "".join(parts)

    def decode(self, ids) -> str:
        """Ids -> text as Hugging Face decodes them, with specials kept (audio shows as its characters)."""
        ids = self._checked_ids(ids)
        return self.hf.decode(ids.tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def save(self, directory) -> None:
        """Write the Hugging Face files (``AutoTokenizer.from_pretrained(directory)`` reads them) and the layout."""
        directory = Path(directory)
        self.hf.save_pretrained(directory)
        (directory / LAYOUT_FILE).write_text(json.dumps(dataclasses.asdict(self.layout), indent=2) + "\n")

    def _checked_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = (ids < 0) | (ids >= self.layout.vocab_size)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ValueError(f"id {ids[pos]} at position {pos} is outside the vocabulary [0, {self.layout.vocab_size})")
        return ids

    def _kinds(self, ids: np.ndarray) -> np.ndarray:
        """0 for text, 1 + position for each special (each its own run), a shared 5 for audio."""
        specials = (ids >= self.layout.base_size) & ~self.layout.is_audio(ids)
        kinds = np.where(self.layout.is_audio(ids), 1 + len(SPECIAL_TOKENS), 0)
        kinds[specials] = 1 + ids[specials] - self.layout.base_size
        return kinds


def check_vocabulary(backend: Tokenizer, layout: VocabLayout) -> None:
    """Refuse a tokenizer whose ids differ from ``layout``, naming the first id that does.

    Checks the token at every id of the SODA block (specials, then audio in index order), that each is a
    special added token (so ``encode_text`` keeps them out of transcripts), that the whole block encodes
    back to its own ids (no normalizer or stripping interferes), and the begin/end-of-text ids.
    """
    size = backend.get_vocab_size(with_added_tokens=True)
    if size != layout.vocab_size:
        raise ValueError(f"the tokenizer has {size} tokens but the layout {layout} has {layout.vocab_size}")
    for name, token_id in ((BEGIN_OF_TEXT, layout.bos_id), (END_OF_TEXT, layout.eos_id)):
        if backend.id_to_token(token_id) != name:
            actual = _describe(backend.id_to_token(token_id))
            raise ValueError(f"id {token_id} is {actual}, but the layout expects {name} there")
    added = backend.get_added_tokens_decoder()
    expected = block_tokens(layout)
    for offset, token in enumerate(expected):
        token_id = layout.base_size + offset
        actual = backend.id_to_token(token_id)
        if actual != token:
            raise ValueError(
                f"id {token_id} is {_describe(actual)}, but the SODA layout ({_summary(layout)}) puts "
                f"{_describe(token)} there: the specials must come first, then audio in index order"
            )
        if token_id not in added or not added[token_id].special:
            raise ValueError(f"id {token_id} ({_describe(token)}) must be a special added token")
    ids = backend.encode("".join(expected), add_special_tokens=False).ids
    want = list(range(layout.base_size, layout.vocab_size))
    if ids != want:
        pos = next((i for i, (a, b) in enumerate(zip(ids, want)) if a != b), min(len(ids), len(want) - 1))
        raise ValueError(
            f"the string form of id {layout.base_size + pos} ({_describe(expected[pos])}) does not encode "
            f"back to it (got {ids[pos : pos + 3]}...): is a normalizer rewriting it?"
        )


def block_tokens(layout: VocabLayout) -> list:
    """The tokens of ids base_size .. vocab_size-1, in id order: the 4 specials, then the audio characters."""
    audio = audio_indices_to_string(np.arange(layout.num_audio_tokens), layout.num_audio_tokens)
    return list(SPECIAL_TOKENS) + list(audio)


def _private_copy(backend: Tokenizer, encode_special_tokens: bool) -> Tokenizer:
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    copy.encode_special_tokens = encode_special_tokens
    return copy


def _runs(kinds: np.ndarray):
    """(start, end) of each maximal run of equal kinds."""
    bounds = np.flatnonzero(np.diff(kinds)) + 1
    starts = np.concatenate([[0], bounds]) if len(kinds) else np.array([], dtype=np.int64)
    ends = np.concatenate([bounds, [len(kinds)]]) if len(kinds) else starts
    return zip(starts.tolist(), ends.tolist())


def _describe(token) -> str:
    if token is None:
        return "missing"
    if len(token) == 1 and ord(token) >= AUDIO_UNICODE_OFFSET:
        return f"U+{ord(token):04X} (audio index {ord(token) - AUDIO_UNICODE_OFFSET})"
    return repr(token)


def _summary(layout: VocabLayout) -> str:
    return (
        f"base {layout.base_size}, specials {layout.text_start_id}..{layout.audio_end_id}, "
        f"audio {layout.audio_offset}..{layout.vocab_size - 1} = {layout.num_codebooks} x {layout.codebook_size}"
    )
