#!/usr/bin/env python3
"""Text documents (JSONL or parquet) -> SODA text-only token datasets (sharded, resumable).

    python tools/preprocess_text.py --input data/demo_corpus/text.jsonl --output-dir data/text \\
        --tokenizer tokenizers/soda

Each document becomes <|begin_of_text|>text<|end_of_text|>, as SODA renders its text share
(Nemotron-CC). Bad lines go to shards/rejects_*.jsonl with their reason; a rerun resumes. Workers share
a job by shards as tools/preprocess_audio.py's do (--num-workers-total, --worker-rank, --finalize, or a
SLURM array's variables). The report is printed as JSON; --json writes it to a file too.
"""

import sys

from megatron_soda.data.text_pipeline import TextPreprocessConfig, preprocess_text
from megatron_soda.flags import FlagParser
from megatron_soda.job_tool import job_tool_parser, run_job_tool


def build_parser() -> FlagParser:
    return job_tool_parser(TextPreprocessConfig, __file__, __doc__)


def main(argv=None) -> int:
    return run_job_tool(
        build_parser(), TextPreprocessConfig, preprocess_text, argv, errors=(ValueError, OSError, ImportError)
    )


if __name__ == "__main__":
    sys.exit(main())
