"""SODA's unified vocabulary: base text BPE, 4 specials, then the audio tokens.

``layout`` (the ids) and ``pua`` (audio <-> characters) need numpy only; the tokenizer itself needs
``transformers``, imported on first use so that data code asking for ``SODA_LAYOUT`` stays light.
"""

from importlib import import_module

from megatron_soda.tokenizer.layout import SODA_LAYOUT, VocabLayout
from megatron_soda.tokenizer.pua import AUDIO_UNICODE_OFFSET, audio_indices_to_string, string_to_audio_indices

_LAZY = {
    "SodaTokenizer": "megatron_soda.tokenizer.soda_tokenizer",
    "build_soda_tokenizer": "megatron_soda.tokenizer.builder",
    "save_soda_tokenizer": "megatron_soda.tokenizer.builder",
    "load_soda_tokenizer": "megatron_soda.tokenizer.builder",
    "layout_from_tokenizer": "megatron_soda.tokenizer.builder",
    "train_bpe": "megatron_soda.tokenizer.bpe",
}

__all__ = [
    "SODA_LAYOUT",
    "VocabLayout",
    "AUDIO_UNICODE_OFFSET",
    "audio_indices_to_string",
    "string_to_audio_indices",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
