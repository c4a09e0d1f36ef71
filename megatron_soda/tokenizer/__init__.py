"""SODA's unified vocabulary: base text BPE, 4 specials, then the audio tokens."""

from megatron_soda.tokenizer.layout import SODA_LAYOUT, VocabLayout

__all__ = ["SODA_LAYOUT", "VocabLayout"]
