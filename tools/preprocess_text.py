#!/usr/bin/env python3
"""Text documents (JSONL or parquet) -> SODA text-only token datasets (sharded, resumable).

    python tools/preprocess_text.py --input data/demo_corpus/text.jsonl --output-dir data/text \\
        --tokenizer tokenizers/soda

Each document becomes <|begin_of_text|>text<|end_of_text|>, as SODA renders its text share
(Nemotron-CC). Bad lines go to shards/rejects_*.jsonl with their reason; a rerun resumes. Workers share
a job by shards as tools/preprocess_audio.py's do (--num-workers-total, --worker-rank, --finalize, or a
SLURM array's variables). The report is printed as JSON; --json writes it to a file too.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from megatron_soda.data.text_pipeline import TextPreprocessConfig, preprocess_text
from megatron_soda.flags import FlagParser, base_config, flag
from megatron_soda.tool_json import check_json_path, write_json


@dataclass
class TextPreprocessTool(TextPreprocessConfig):
    json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
    """also write the report as one JSON object to PATH ("-": stdout only, printed once)."""

    def check(self) -> None:
        TextPreprocessConfig.check(self)
        check_json_path(self.json)


def build_parser() -> FlagParser:
    return FlagParser(
        TextPreprocessTool, prog=os.path.basename(__file__), description=__doc__, check=TextPreprocessTool.check
    )


def main(argv=None) -> int:
    config = build_parser().parse(argv)
    try:
        report = preprocess_text(base_config(TextPreprocessConfig, config))
    except (ValueError, OSError, ImportError) as error:
        print(f"preprocess_text: {error}", file=sys.stderr)
        return 1
    if config.json != "-":
        print(json.dumps(report, indent=2))
    write_json(config.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
