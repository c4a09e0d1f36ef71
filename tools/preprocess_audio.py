#!/usr/bin/env python3
"""Speech + transcripts -> SODA token datasets (sharded, resumable), through a codec and the SODA tokenizer.

    python tools/preprocess_audio.py --input data/demo_corpus/manifest.jsonl --output-dir data/speech \\
        --tokenizer tokenizers/soda --codec mimi --codec-path kyutai/mimi

Inputs are JSONL manifests (audio, text, optional id, speaker, recording, start, end, index, duration,
language) or directories of audio with same-named .txt transcripts. Utterances of one `recording` form
a document, rendered text-first and audio-first (SODA). Bad records (unreadable, corrupt, empty,
NaN, absurd duration, missing transcript, non-UTF-8) go to rejects files with their reason. A killed
job rerun with the same command continues from the last committed shard.

Spread over a cluster, W workers share one job by shards (worker r does shard i when i % W == r), with
--num-workers-total W --worker-rank r or, by default, a SLURM array's, srun's or torchrun's variables:

    sbatch --array=0-15 --wrap "python tools/preprocess_audio.py --input ... --output-dir data/speech ..."

The last worker to finish merges the shards (<output-dir>/tokens and codes) and writes the report;
--finalize does it by hand, naming any shard still missing and its worker. A cancelled task is rerun
with --worker-rank r --num-workers-total W. The report (also <output-dir>/report.json) is printed as
JSON; --json writes it to a file too.
"""

import sys

from megatron_soda.flags import FlagParser
from megatron_soda.job_tool import job_tool_parser, run_job_tool


def build_parser() -> FlagParser:
    # Imported here, not at the top: spawned decode workers re-import this module and must stay lean.
    from megatron_soda.data.audio_pipeline import AudioPreprocessConfig

    return job_tool_parser(AudioPreprocessConfig, __file__, __doc__)


def main(argv=None) -> int:
    from megatron_soda.data.audio_pipeline import AudioPreprocessConfig, preprocess_audio

    return run_job_tool(build_parser(), AudioPreprocessConfig, preprocess_audio, argv)


if __name__ == "__main__":
    sys.exit(main())
