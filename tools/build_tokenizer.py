#!/usr/bin/env python3
"""Build the unified SODA tokenizer: a base text tokenizer + 4 specials + the audio tokens.

    python tools/build_tokenizer.py --base /models/llama3/tokenizer.json --output tokenizers/soda
    python tools/build_tokenizer.py --input data/demo_corpus/text.jsonl data/demo_corpus/manifest.jsonl \\
        --bpe-vocab-size 1024 --output tokenizers/demo      # a small BPE trained on --input: offline demo, tests

With Llama 3's tokenizer (128,256 tokens) the ids are SODA's released ones: <|text_start|> 128256,
<|text_end|> 128257, <|audio_start|> 128258, <|audio_end|> 128259, audio (k, c) = 128260 + k*2048 + c,
144,644 in all. The output directory opens with transformers' AutoTokenizer; --json writes its layout too.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from megatron_soda.checks import check_at_least, check_file, check_output_dir
from megatron_soda.flags import FlagParser, flag
from megatron_soda.tokenizer import (
    SODA_LAYOUT,
    build_soda_tokenizer,
    load_soda_tokenizer,
    save_soda_tokenizer,
    train_bpe,
)
from megatron_soda.tool_json import check_json_path, write_json

BYTE_TOKENS = 256
"""A byte-level BPE needs at least its byte alphabet."""


@dataclass
class BuildTokenizerConfig:
    output: str
    """the tokenizer directory to write (what --tokenizer takes)."""
    base: Optional[str] = None
    """base tokenizer: a tokenizer.json or a Hugging Face tokenizer directory (or give --input)."""
    inputs: Optional[List[str]] = field(default=None, metadata=flag("--input", nargs="+", metavar="FILE"))
    """text to train a small byte-level BPE on instead of --base: .txt lines, or the "text" field of .jsonl
    lines (manifests and text documents)."""
    bpe_vocab_size: int = 1024
    """vocabulary of the trained BPE."""
    num_codebooks: int = SODA_LAYOUT.num_codebooks
    """codebooks per frame (8: Mimi as SODA)."""
    codebook_size: int = SODA_LAYOUT.codebook_size
    """codes per codebook (2048: Mimi)."""
    json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
    """also write the vocabulary layout as one JSON object to PATH ("-": to stdout, in place of the text)."""

    def check(self) -> None:
        if (self.base is None) == (self.inputs is None):
            raise ValueError("give exactly one of --base (an existing tokenizer) or --input (text to train a BPE on)")
        if self.base is not None:
            if os.path.isdir(self.base):
                check_file("--base", os.path.join(self.base, "tokenizer.json"), " (only fast tokenizers are supported)")
            else:
                check_file("--base", self.base, " (give a tokenizer.json or a directory holding one)")
        for path in self.inputs or ():
            check_file("--input", path)
        check_at_least("--bpe-vocab-size", self.bpe_vocab_size, BYTE_TOKENS)
        check_at_least("--num-codebooks", self.num_codebooks, 1)
        check_at_least("--codebook-size", self.codebook_size, 1)
        check_output_dir("--output", self.output)
        check_json_path(self.json)


def read_texts(paths):
    """Lines of .txt files, and the "text" field of .jsonl lines (manifests and text documents)."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if path.endswith((".jsonl", ".json")):
                    try:
                        text = json.loads(line).get("text") if line.strip() else None
                    except (json.JSONDecodeError, AttributeError):
                        raise ValueError(f"--input {path} line {number}: not a JSON object") from None
                else:
                    text = line.rstrip("\n")
                if text:
                    yield text


def build_parser() -> FlagParser:
    return FlagParser(
        BuildTokenizerConfig, prog=os.path.basename(__file__), description=__doc__, check=BuildTokenizerConfig.check
    )


def main(argv=None) -> int:
    parser = build_parser()
    config = parser.parse(argv)
    try:
        base_tokenizer = config.base or train_bpe(read_texts(config.inputs), vocab_size=config.bpe_vocab_size)
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
    if config.json != "-":
        print(
            f"{config.output}: {layout.vocab_size} tokens; base {layout.base_size} (bos {layout.bos_id}, "
            f"eos {layout.eos_id}), "
            f"<|text_start|> {layout.text_start_id} .. <|audio_end|> {layout.audio_end_id}, "
            f"audio {layout.audio_offset}..{layout.vocab_size - 1} ({layout.num_codebooks} x {layout.codebook_size})"
        )
    names = ("vocab_size", "base_size", "bos_id", "eos_id", "text_start_id", "text_end_id", "audio_start_id")
    names += ("audio_end_id", "audio_offset", "num_codebooks", "codebook_size")
    write_json(config.json, {"output": config.output, **{name: int(getattr(layout, name)) for name in names}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
