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

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from megatron_soda.data.rerender import RerenderConfig
from megatron_soda.flags import FlagParser, base_config, flag
from megatron_soda.tool_json import check_json_path, write_json


@dataclass
class RerenderTool(RerenderConfig):
    json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
    """also write the report as one JSON object to PATH ("-": stdout only, printed once)."""

    def check(self) -> None:
        RerenderConfig.check(self)
        check_json_path(self.json)


def build_parser() -> FlagParser:
    return FlagParser(RerenderTool, prog=os.path.basename(__file__), description=__doc__, check=RerenderTool.check)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = build_parser().parse(argv)
    from megatron_soda.data.rerender import rerender

    try:
        report = rerender(base_config(RerenderConfig, config))
    except (ValueError, OSError) as error:
        print(f"rerender: {error}", file=sys.stderr)
        return 1
    if config.json != "-":
        print(json.dumps(report, indent=2))
    write_json(config.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
