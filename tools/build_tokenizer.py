#!/usr/bin/env python3
"""Build the unified SODA tokenizer: a base text tokenizer + 4 specials + the audio tokens.

    python tools/build_tokenizer.py --base /models/llama3/tokenizer.json --output tokenizers/soda
    python tools/build_tokenizer.py --train-bpe data/demo_corpus/text.jsonl data/demo_corpus/manifest.jsonl \\
        --bpe-vocab-size 1024 --output tokenizers/demo      # offline demo and tests

With Llama 3's tokenizer (128,256 tokens) the ids are SODA's released ones: <|text_start|> 128256,
<|text_end|> 128257, <|audio_start|> 128258, <|audio_end|> 128259, audio (k, c) = 128260 + k*2048 + c,
144,644 in all. The output directory opens with transformers' AutoTokenizer.
"""

import argparse
import json
import sys

from megatron_soda.tokenizer import (
    SODA_LAYOUT,
    build_soda_tokenizer,
    load_soda_tokenizer,
    save_soda_tokenizer,
    train_bpe,
)


def read_texts(paths):
    """Lines of .txt files, and the "text" field of .jsonl lines (manifests and text documents)."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if path.endswith((".jsonl", ".json")):
                    text = json.loads(line).get("text") if line.strip() else None
                else:
                    text = line.rstrip("\n")
                if text:
                    yield text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    base = parser.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", help="base tokenizer: a tokenizer.json or a Hugging Face tokenizer directory")
    base.add_argument("--train-bpe", nargs="+", metavar="FILE", help="train a small byte-level BPE on .txt/.jsonl files")
    parser.add_argument("--bpe-vocab-size", type=int, default=1024, help="vocabulary of the trained BPE (default 1024)")
    parser.add_argument("--num-codebooks", type=int, default=SODA_LAYOUT.num_codebooks,
                        help=f"codebooks per frame (default {SODA_LAYOUT.num_codebooks}: Mimi as SODA)")
    parser.add_argument("--codebook-size", type=int, default=SODA_LAYOUT.codebook_size,
                        help=f"codes per codebook (default {SODA_LAYOUT.codebook_size}: Mimi)")
    parser.add_argument("--output", required=True, help="directory to write")
    args = parser.parse_args(argv)

    base_tokenizer = args.base or train_bpe(read_texts(args.train_bpe), vocab_size=args.bpe_vocab_size)
    tokenizer = build_soda_tokenizer(base_tokenizer, num_codebooks=args.num_codebooks, codebook_size=args.codebook_size)
    save_soda_tokenizer(tokenizer, args.output, num_codebooks=args.num_codebooks, codebook_size=args.codebook_size)
    layout = load_soda_tokenizer(args.output).layout
    print(f"{args.output}: {layout.vocab_size} tokens; base {layout.base_size} (bos {layout.bos_id}, eos {layout.eos_id}), "
          f"<|text_start|> {layout.text_start_id} .. <|audio_end|> {layout.audio_end_id}, "
          f"audio {layout.audio_offset}..{layout.vocab_size - 1} ({layout.num_codebooks} x {layout.codebook_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
