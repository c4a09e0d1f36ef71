"""The ``--codec*`` command-line flags, shared by every tool that loads a codec."""

from __future__ import annotations

import argparse
import json

from megatron_soda.codec.config import CodecConfig


def add_codec_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("codec")
    group.add_argument("--codec", choices=["mimi", "encodec"], default="mimi", help="codec family (default mimi, as SODA)")
    group.add_argument("--codec-path", help="local directory or hub id of the codec weights (e.g. kyutai/mimi)")
    group.add_argument("--codec-random-init", action="store_true",
                       help="random codec weights (tests and offline demos only: the tokens mean nothing)")
    group.add_argument("--codec-config", type=json.loads, default={},
                       help='JSON fields changed in a random-init codec\'s config, e.g. \'{"num_hidden_layers": 2}\'')
    group.add_argument("--codec-seed", type=int, default=0, help="seed of a random-init codec")
    group.add_argument("--num-codebooks", type=int, default=None, help="Mimi codebooks kept (default 8, as SODA)")
    group.add_argument("--bandwidth", type=float, default=None, help="EnCodec bandwidth in kbps (default 6.0)")
    group.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    group.add_argument("--codec-batch-seconds", type=float, default=120.0,
                       help="padded audio per encoder call (default 120; on a CPU ~5 runs about 2x faster, "
                            "see bench/RESULTS.md)")


def codec_config_from_args(args: argparse.Namespace) -> CodecConfig:
    return CodecConfig(
        name=args.codec,
        path=args.codec_path,
        random_init=args.codec_random_init,
        config_overrides=args.codec_config,
        seed=args.codec_seed,
        num_codebooks=args.num_codebooks,
        bandwidth=args.bandwidth,
        device=args.device,
        max_batch_seconds=args.codec_batch_seconds,
    )
