#!/usr/bin/env python3
"""Check megatron-core IndexedDataset prefixes; exit non-zero on the first damaged one.

    python tools/validate_dataset.py data/speech_00000 data/speech_00001 --vocab-size 144644
    python tools/validate_dataset.py data/            # every complete dataset under a directory
"""

import argparse
import json
import sys

from megatron_soda.data.indexed_dataset import find_datasets, validate_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="dataset prefixes (no .bin/.idx), .idx files or directories")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="also check that every token id is below this (reads all of .bin)")
    parser.add_argument("--json", action="store_true", help="print one JSON report per dataset")
    args = parser.parse_args(argv)

    prefixes = find_datasets(args.paths)
    if not prefixes:
        print(f"no datasets found under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    damaged = 0
    for prefix in prefixes:
        report = validate_dataset(prefix, args.vocab_size)
        damaged += not report.ok
        if args.json:
            fields = {k: (str(v) if k == "dtype" else v) for k, v in report.__dict__.items()}
            print(json.dumps(fields))
        else:
            print(report if report.ok else f"DAMAGED {report}", file=sys.stdout if report.ok else sys.stderr)
    if len(prefixes) > 1 and not args.json:
        print(f"{len(prefixes) - damaged} of {len(prefixes)} datasets OK")
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
