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

import argparse
import json
import logging
import sys

from megatron_soda.codec.cli import add_codec_arguments, codec_config_from_args


def parse_args(argv=None):
    from megatron_soda.data.audio_pipeline import AudioPreprocessConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="manifests (.jsonl) and/or audio directories")
    parser.add_argument("--output-dir", required=True, help="job directory (shards, rejects, report)")
    parser.add_argument("--tokenizer", required=True, help="SODA tokenizer directory (tools/build_tokenizer.py)")
    add_codec_arguments(parser)
    parser.add_argument("--documents-per-shard", type=int, default=1000, help="documents per output shard")
    parser.add_argument("--workers", type=int, default=2, help="audio decoding processes (0: in this process)")
    parser.add_argument("--text-first-probability", type=float, default=None,
                        help="render each document once, text-first with this probability (default: both orders)")
    parser.add_argument("--min-seconds", type=float, default=0.1, help="reject shorter utterances")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="reject longer utterances")
    parser.add_argument("--max-document-seconds", type=float, default=60.0, help="split longer documents (0: never)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="discard an existing job in --output-dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    return AudioPreprocessConfig(
        inputs=args.input,
        output_dir=args.output_dir,
        tokenizer=args.tokenizer,
        codec=codec_config_from_args(args),
        documents_per_shard=args.documents_per_shard,
        workers=args.workers,
        text_first_probability=args.text_first_probability,
        seed=args.seed,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        max_document_seconds=args.max_document_seconds or None,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    # Imported here, not at the top: spawned decode workers re-import this module and must stay torch-free.
    from megatron_soda.data.audio_pipeline import preprocess_audio

    try:
        report = preprocess_audio(config)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"preprocess_audio: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
