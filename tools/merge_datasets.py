#!/usr/bin/env python3
"""Merge dataset shards into one megatron-core IndexedDataset (byte-identical to a one-go build).

    python tools/merge_datasets.py --output data/speech data/shards/speech_*.idx
"""

import argparse
import sys

from megatron_soda.data.indexed_dataset import find_datasets, merge_datasets, validate_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="shard prefixes, .idx files or directories (merged in sorted order)")
    parser.add_argument("--output", required=True, help="output prefix (no .bin/.idx)")
    parser.add_argument("--overwrite", action="store_true", help="replace a complete dataset already at --output")
    args = parser.parse_args(argv)

    inputs = find_datasets(args.inputs)
    if not inputs:
        parser.error(f"no datasets found under {' '.join(args.inputs)}")
    try:
        merge_datasets(args.output, inputs, overwrite=args.overwrite, progress=True)
    except (OSError, ValueError) as error:
        print(f"merge failed: {error}", file=sys.stderr)
        return 1
    print(validate_dataset(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
