"""SODA's sequence for voice-preserving speech-to-speech translation (fine-tuning on CVSS-style data)::

    <|begin_of_text|><|audio_start|>SRC_AUDIO<|audio_end|>
    <|text_start|><language>{src}</language>SRC_TEXT<|text_end|>
    <|text_start|><language>{tgt}</language>TGT_TEXT<|text_end|>
    <|audio_start|>TGT_AUDIO<|audio_end|><|end_of_text|>

(one line; the ``<language>`` tags are plain text). Two variants: ``lm`` trains every token; ``sft`` puts the
loss on the response only (target text segment, target audio segment and ``<|end_of_text|>``), through the
formats' per-segment loss flags. Without a source transcript the source segment holds its language tag
alone, so a model can translate from speech only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

import numpy as np

from megatron_soda.data.formats import Document, audio_segment, text_segment

LANGUAGE_TAG = "<language>{}</language>"
"""How a segment's language is written in its text (plain text, as SODA's fine-tuning data has it)."""


class Variant(str, enum.Enum):
    LM = "lm"
    """language modelling on the whole sequence."""
    SFT = "sft"
    """loss on the response only: target text, target audio and end-of-text."""


@dataclass(frozen=True)
class S2STExample:
    source_codes: np.ndarray
    """the source speech's codec codes ``[K, T]``."""
    source_language: str
    source_text: Optional[str] = None
    """the source transcript, if known."""
    target_text: Optional[str] = None
    target_codes: Optional[np.ndarray] = None
    """the target speech's codes; target text and codes are None in an inference request (the model writes them)."""
    target_language: str = "en"


def tagged(language: str, text: Optional[str], tokenizer) -> np.ndarray:
    """A text segment's content: the language tag's ids, then the text's. Tokenized apart, so the prompt
    that ends with the target's tag is a prefix of the training sequence id for id (tokenized together, a
    Llama-3-style pre-tokenizer would merge the tag's ``>`` into the first word)."""
    if not language or any(c in language for c in "<>"):
        raise ValueError(f"language code {language!r} is empty or holds a tag character")
    tag = tokenizer.encode_text(LANGUAGE_TAG.format(language))
    return np.concatenate([tag, tokenizer.encode_text(text)]) if text else tag


def s2st_document(example: S2STExample, tokenizer, variant: Variant = Variant.SFT) -> Document:
    """The example as SODA's S2ST training document, with the variant's loss flags."""
    if example.target_codes is None or not example.target_text:
        raise ValueError("a training example needs its target text and target audio")
    layout, prompt_loss = tokenizer.layout, Variant(variant) is Variant.LM
    return Document(
        [
            audio_segment(example.source_codes, layout, loss=prompt_loss),
            text_segment(tagged(example.source_language, example.source_text, tokenizer), loss=prompt_loss),
            text_segment(tagged(example.target_language, example.target_text, tokenizer)),
            audio_segment(example.target_codes, layout),
        ]
    )


def translation_prompt(example: S2STExample, tokenizer) -> Document:
    """The prompt of inference: the source segments, then the target text segment opened with its language
    tag (render it with ``open_end=True``): the model writes the translation, then its speech."""
    layout = tokenizer.layout
    return Document(
        [
            audio_segment(example.source_codes, layout),
            text_segment(tagged(example.source_language, example.source_text, tokenizer)),
            text_segment(tagged(example.target_language, None, tokenizer)),
        ],
        bos=True,
        eos=False,
    )
