#!/usr/bin/env python3
"""Text documents (JSONL or parquet) -> SODA text-only token datasets (sharded, resumable).

    python tools/preprocess_text.py --input data/demo_corpus/text.jsonl --output-dir data/text --tokenizer tokenizers/soda

Each document becomes <|begin_of_text|>text<|end_of_text|>, as SODA renders its text share
(Nemotron-CC). Bad lines go to shards/rejects_*.jsonl with their reason; a rerun resumes.
"""

import argparse
import json
import sys

from megatron_soda.data.text_pipeline import TextPreprocessConfig, preprocess_text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help=".jsonl and/or .parquet files")
    parser.add_argument("--output-dir", required=True, help="job directory")
    parser.add_argument("--tokenizer", required=True, help="SODA tokenizer directory")
    parser.add_argument("--text-key", default="text", help="field (JSONL) or column (parquet) holding the text")
    parser.add_argument("--documents-per-shard", type=int, default=100_000)
    parser.add_argument("--overwrite", action="store_true", help="discard an existing job in --output-dir")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = TextPreprocessConfig(
        inputs=args.input,
        output_dir=args.output_dir,
        tokenizer=args.tokenizer,
        text_key=args.text_key,
        documents_per_shard=args.documents_per_shard,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    try:
        report = preprocess_text(config)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"preprocess_text: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
