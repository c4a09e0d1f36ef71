"""A tiny byte-level BPE trained on the spot, standing in for Llama 3's tokenizer where nothing can be
downloaded (tests, the offline demo).

Byte-level like Llama 3's (any text encodes, nothing is unknown) and, like it, without a normalizer.
It has no special tokens: ``build_soda_tokenizer`` adds ``<|begin_of_text|>``/``<|end_of_text|>`` and
SODA's specials after it.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def train_bpe(texts: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    """Train a byte-level BPE of at most ``vocab_size`` tokens (fewer if the texts run out of merges)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet):
        raise ValueError(f"vocab_size={vocab_size} is below the {len(alphabet)} byte tokens a byte-level BPE needs")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, special_tokens=[], show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer
