#!/usr/bin/env python3
"""Token sequences -> transcripts and wav files (one clip per audio segment).

    python tools/detokenize.py --tokenizer tokenizers/soda --dataset data/speech/shards/tokens_00000 --index 0 1 \\
        --codec mimi --codec-path kyutai/mimi --output-dir out/
    python tools/detokenize.py --tokenizer tokenizers/soda --strings generated.txt --no-audio

Sources: sequences of a dataset (--dataset with --index), lines of a file in the PUA string form
(--strings), or lines of a file of JSON id lists (--ids). Without a codec (--no-audio) only the
transcripts are written.
"""

import argparse
import json
import sys

from megatron_soda.codec.cli import add_codec_arguments, codec_config_from_args
from megatron_soda.codec.loading import load_codec
from megatron_soda.data.detokenize import detokenize, write_detokenized


def read_sequences(args, tokenizer):
    if args.dataset:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        dataset = IndexedDataset(args.dataset)
        for index in args.index or range(min(len(dataset), 10)):
            yield f"seq{index}", list(dataset[index])
    elif args.strings:
        with open(args.strings, encoding="utf-8", newline="\n") as f:
            for number, line in enumerate(f):
                if line.rstrip("\n"):
                    yield f"line{number}", tokenizer.string_to_ids(line.rstrip("\n"))
    else:
        with open(args.ids, encoding="utf-8") as f:
            for number, line in enumerate(f):
                if line.strip():
                    yield f"line{number}", json.loads(line)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="SODA tokenizer directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="dataset prefix (.bin/.idx)")
    source.add_argument("--strings", help="file of sequences in the PUA string form, one per line")
    source.add_argument("--ids", help="file of JSON lists of token ids, one per line")
    parser.add_argument("--index", type=int, nargs="*", help="sequence indices of --dataset (default: first 10)")
    parser.add_argument("--output-dir", default="detokenized", help="where .txt and .wav files go")
    parser.add_argument("--no-audio", action="store_true", help="transcripts only, no codec")
    add_codec_arguments(parser)
    args = parser.parse_args(argv)

    from megatron_soda.tokenizer import load_soda_tokenizer

    tokenizer = load_soda_tokenizer(args.tokenizer)
    codec = None
    if not args.no_audio:
        try:
            codec = load_codec(codec_config_from_args(args))
        except ValueError as error:
            parser.error(str(error))
    failures = 0
    for name, ids in read_sequences(args, tokenizer):
        try:
            result = detokenize(ids, tokenizer, codec)
        except ValueError as error:
            print(f"{name}: {error}", file=sys.stderr)
            failures += 1
            continue
        paths = write_detokenized(result, args.output_dir, name)
        print(f"{name}: {len(result.texts)} text and {len(result.clips)} audio segments -> {', '.join(paths)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
