#!/usr/bin/env python3
"""Speech + transcripts -> SODA token datasets (sharded, resumable), through a codec and the SODA tokenizer.

    python tools/preprocess_audio.py --input data/demo_corpus/manifest.jsonl --output-dir data/speech \\
        --tokenizer tokenizers/soda --codec mimi --codec-path kyutai/mimi

Inputs are JSONL manifests (audio, text, optional id, speaker, recording, start, end, index, duration,
language) or directories of audio with same-named .txt transcripts. Utterances of one `recording` form
a document, rendered text-first and audio-first (SODA). Bad records (unreadable, corrupt, empty,
NaN, absurd duration, missing transcript, non-UTF-8) go to rejects files with their reason. A killed
job rerun with the same command continues from the last committed shard.
"""

import json
import logging
import os
import sys

from megatron_soda.flags import FlagParser


def parse_args(argv=None):
    # Imported here, not at the top: spawned decode workers re-import this module and must stay lean.
    from megatron_soda.data.audio_pipeline import AudioPreprocessConfig

    return FlagParser(
        AudioPreprocessConfig, prog=os.path.basename(__file__), description=__doc__, check=AudioPreprocessConfig.check
    ).parse(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    from megatron_soda.data.audio_pipeline import preprocess_audio

    try:
        report = preprocess_audio(config)
    except (ValueError, OSError) as error:
        print(f"preprocess_audio: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
