#!/usr/bin/env python3
"""Text documents (JSONL or parquet) -> SODA text-only token datasets (sharded, resumable).

    python tools/preprocess_text.py --input data/demo_corpus/text.jsonl --output-dir data/text \\
        --tokenizer tokenizers/soda

Each document becomes <|begin_of_text|>text<|end_of_text|>, as SODA renders its text share
(Nemotron-CC). Bad lines go to shards/rejects_*.jsonl with their reason; a rerun resumes.
"""

import json
import os
import sys

from megatron_soda.data.text_pipeline import TextPreprocessConfig, preprocess_text
from megatron_soda.flags import FlagParser


def main(argv=None) -> int:
    config = FlagParser(
        TextPreprocessConfig, prog=os.path.basename(__file__), description=__doc__, check=TextPreprocessConfig.check
    ).parse(argv)
    try:
        report = preprocess_text(config)
    except (ValueError, OSError, ImportError) as error:
        print(f"preprocess_text: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
