#!/usr/bin/env python3
"""Build the unified SODA tokenizer: a base text tokenizer + 4 specials + the audio tokens.

    python tools/build_tokenizer.py --base /models/llama3/tokenizer.json --output tokenizers/soda
    python tools/build_tokenizer.py --train-bpe data/demo_corpus/text.jsonl data/demo_corpus/manifest.jsonl \\
        --bpe-vocab-size 1024 --output tokenizers/demo      # offline demo and tests

With Llama 3's tokenizer (128,256 tokens) the ids are SODA's released ones: <|text_start|> 128256,
<|text_end|> 128257, <|audio_start|> 128258, <|audio_end|> 128259, audio (k, c) = 128260 + k*2048 + c,
144,644 in all. The output directory opens with transformers' AutoTokenizer.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from megatron_soda.flags import FlagParser, check_at_least, check_file, check_output_dir, flag
from megatron_soda.tokenizer import (
    SODA_LAYOUT,
    build_soda_tokenizer,
    load_soda_tokenizer,
    save_soda_tokenizer,
    train_bpe,
)

BYTE_TOKENS = 256
"""A byte-level BPE needs at least its byte alphabet."""


@dataclass
class BuildTokenizerConfig:
    output: str
    """directory to write."""
    base: Optional[str] = None
    """base tokenizer: a tokenizer.json or a Hugging Face tokenizer directory (or give --train-bpe)."""
    train_bpe: Optional[List[str]] = field(default=None, metadata=flag(metavar="FILE"))
    """train a small byte-level BPE on .txt/.jsonl files instead of --base."""
    bpe_vocab_size: int = 1024
    """vocabulary of the trained BPE."""
    num_codebooks: int = SODA_LAYOUT.num_codebooks
    """codebooks per frame (8: Mimi as SODA)."""
    codebook_size: int = SODA_LAYOUT.codebook_size
    """codes per codebook (2048: Mimi)."""

    def check(self) -> None:
        if (self.base is None) == (self.train_bpe is None):
            raise ValueError("give exactly one of --base (an existing tokenizer) or --train-bpe (text files)")
        if self.base is not None:
            if os.path.isdir(self.base):
                check_file("--base", os.path.join(self.base, "tokenizer.json"), " (only fast tokenizers are supported)")
            else:
                check_file("--base", self.base, " (give a tokenizer.json or a directory holding one)")
        for path in self.train_bpe or ():
            check_file("--train-bpe", path)
        check_at_least("--bpe-vocab-size", self.bpe_vocab_size, BYTE_TOKENS)
        check_at_least("--num-codebooks", self.num_codebooks, 1)
        check_at_least("--codebook-size", self.codebook_size, 1)
        check_output_dir("--output", self.output)


def read_texts(paths):
    """Lines of .txt files, and the "text" field of .jsonl lines (manifests and text documents)."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if path.endswith((".jsonl", ".json")):
                    try:
                        text = json.loads(line).get("text") if line.strip() else None
                    except (json.JSONDecodeError, AttributeError):
                        raise ValueError(f"--train-bpe {path} line {number}: not a JSON object") from None
                else:
                    text = line.rstrip("\n")
                if text:
                    yield text


def main(argv=None) -> int:
    parser = FlagParser(
        BuildTokenizerConfig, prog=os.path.basename(__file__), description=__doc__, check=BuildTokenizerConfig.check
    )
    config = parser.parse(argv)
    try:
        base_tokenizer = config.base or train_bpe(read_texts(config.train_bpe), vocab_size=config.bpe_vocab_size)
    except (ValueError, OSError, UnicodeDecodeError) as error:
        print(f"build_tokenizer: error: {error}", file=sys.stderr)
        return 1
    try:
        tokenizer = build_soda_tokenizer(
            base_tokenizer, num_codebooks=config.num_codebooks, codebook_size=config.codebook_size
        )
    except Exception as error:  # the tokenizers library's own errors name no file
        parser.error(f"--base {config.base}: not a usable base tokenizer ({error})" if config.base else str(error))
    save_soda_tokenizer(
        tokenizer, config.output, num_codebooks=config.num_codebooks, codebook_size=config.codebook_size
    )
    layout = load_soda_tokenizer(config.output).layout
    print(
        f"{config.output}: {layout.vocab_size} tokens; base {layout.base_size} (bos {layout.bos_id}, "
        f"eos {layout.eos_id}), "
        f"<|text_start|> {layout.text_start_id} .. <|audio_end|> {layout.audio_end_id}, "
        f"audio {layout.audio_offset}..{layout.vocab_size - 1} ({layout.num_codebooks} x {layout.codebook_size})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
