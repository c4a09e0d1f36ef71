#!/usr/bin/env python3
"""Fine-tuning examples (text and speech segments) -> SODA token datasets with per-token loss flags.

    python tools/preprocess_sft.py --input cvss/train.jsonl --output-dir data/sft --format s2st \\
        --seq-length 4096 --tokenizer tokenizers/soda --codec mimi --codec-path kyutai/mimi

--format generic (default): {"id": ..., "segments": [{"audio": "q.wav", "loss": false}, {"text": "...",
"loss": true}]}, segments rendered in order with their loss flags. --format s2st: CVSS-style records
(source_audio, source_language, source_text, target_text, target_audio, target_language), SODA's S2ST
sequence; --variant sft trains the response only, lm every token. Audio paths are relative to the JSONL
file. Bad records (missing field or audio, unknown language, longer than --seq-length) go to rejects files
with their reason and file:line. The job is sharded, resumable and shared by workers as preprocess_audio's is
(--num-workers-total, --worker-rank, --finalize); train with --data-path <output-dir>/tokens, the merged
shards (the loss flags come along). The report (also <output-dir>/report.json) is printed as JSON;
--json writes it to a file too.
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from megatron_soda.flags import FlagParser, base_config, flag
from megatron_soda.tool_json import check_json_path, write_json


def build_parser() -> FlagParser:
    # Imported here, not at the top: spawned decode workers re-import this module and must stay lean.
    from megatron_soda.data.sft_pipeline import SFTPreprocessConfig

    @dataclass
    class SFTPreprocessTool(SFTPreprocessConfig):
        json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
        """also write the report as one JSON object to PATH ("-": stdout only, printed once)."""

        def check(self) -> None:
            SFTPreprocessConfig.check(self)
            check_json_path(self.json)

    return FlagParser(
        SFTPreprocessTool, prog=os.path.basename(__file__), description=__doc__, check=SFTPreprocessTool.check
    )


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = build_parser().parse(argv)
    from megatron_soda.data.sft_pipeline import SFTPreprocessConfig, preprocess_sft

    try:
        report = preprocess_sft(base_config(SFTPreprocessConfig, config))
    except (ValueError, OSError) as error:
        print(f"preprocess_sft: {error}", file=sys.stderr)
        return 1
    if config.json != "-":
        print(json.dumps(report, indent=2))
    write_json(config.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
