#!/usr/bin/env python3
"""A speech preprocessing job's stored codes -> SODA token datasets of another composition, without re-encoding.

    python tools/rerender.py --input data/speech --output-dir data/speech_k1 --tokenizer tokenizers/soda \\
        --num-codebooks 1            # semantic codebook only; its compact tokenizer goes to data/speech_k1/tokenizer
    python tools/rerender.py --input data/speech --output-dir data/speech_k8_audio --tokenizer tokenizers/soda \\
        --audio-only                 # no transcripts

--input is a tools/preprocess_audio.py --output-dir (its codes_*, meta_*.jsonl and transcripts). Keeps the
first --num-codebooks codebooks of each frame, interleaves the transcripts in both orders (or one drawn per
document with --text-first-probability, or none with --audio-only), and keeps the source's documents. Below
the source's 8 codebooks the vocabulary is compact (the same ids, the audio block cut after codebook K-1):
train with the tokenizer the report names. Sharded and resumable like preprocessing; a source shard whose
codes and metadata disagree is skipped and reported. The report (also <output-dir>/report.json) is printed
as JSON; --json writes it to a file too.
"""

import sys

from megatron_soda.data.rerender import RerenderConfig, rerender
from megatron_soda.flags import FlagParser
from megatron_soda.job_tool import job_tool_parser, run_job_tool


def build_parser() -> FlagParser:
    return job_tool_parser(RerenderConfig, __file__, __doc__)


def main(argv=None) -> int:
    return run_job_tool(build_parser(), RerenderConfig, rerender, argv)


if __name__ == "__main__":
    sys.exit(main())
