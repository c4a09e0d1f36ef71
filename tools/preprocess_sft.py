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

import sys

from megatron_soda.flags import FlagParser
from megatron_soda.job_tool import job_tool_parser, run_job_tool


def build_parser() -> FlagParser:
    # Imported here, not at the top: spawned decode workers re-import this module and must stay lean.
    from megatron_soda.data.sft_pipeline import SFTPreprocessConfig

    return job_tool_parser(SFTPreprocessConfig, __file__, __doc__)


def main(argv=None) -> int:
    from megatron_soda.data.sft_pipeline import SFTPreprocessConfig, preprocess_sft

    return run_job_tool(build_parser(), SFTPreprocessConfig, preprocess_sft, argv)


if __name__ == "__main__":
    sys.exit(main())
