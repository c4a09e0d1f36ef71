#!/usr/bin/env python3
"""Pack a dataset's documents into fixed-length rows that keep document boundaries.

    python tools/pack_dataset.py --input data/speech --output data/speech_packed4096 --seq-length 4096

Best-fit decreasing: a document that fits in a row is never split; longer ones are cut at row
boundaries and counted. Each output document is one row; its sequences are the packed pieces.
"""

import argparse
import sys

from megatron_soda.data.indexed_dataset import validate_dataset
from megatron_soda.data.packing import pack_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="source dataset prefix (one sequence per document)")
    parser.add_argument("--output", required=True, help="output prefix for the packed rows")
    parser.add_argument("--seq-length", type=int, default=4096, help="row length in tokens (default 4096)")
    parser.add_argument("--seed", type=int, default=0, help="seed for tie order and row order (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a complete dataset already at --output")
    args = parser.parse_args(argv)

    report = validate_dataset(args.input)
    if not report.ok:
        print(f"cannot pack a damaged dataset: {report}", file=sys.stderr)
        return 1
    try:
        plan = pack_dataset(args.input, args.output, args.seq_length, seed=args.seed, overwrite=args.overwrite)
    except (OSError, ValueError) as error:
        print(f"packing failed: {error}", file=sys.stderr)
        return 1
    print(plan.summary())
    print(validate_dataset(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
