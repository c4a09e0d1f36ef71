#!/usr/bin/env python3
"""Pack a dataset's documents into fixed-length rows that keep document boundaries.

    python tools/pack_dataset.py --input data/speech --output data/speech_packed4096 --seq-length 4096

Best-fit decreasing: a document that fits in a row is never split; longer ones are cut at row
boundaries and counted. Each output document is one row; its sequences are the packed pieces.
"""

import os
import sys
from dataclasses import dataclass

from megatron_soda.data.indexed_dataset import dataset_exists, validate_dataset
from megatron_soda.data.packing import pack_dataset
from megatron_soda.flags import FlagParser, check_at_least, check_output_file


@dataclass
class PackConfig:
    input: str
    """source dataset prefix (no .bin/.idx; one sequence per document)."""
    output: str
    """output prefix for the packed rows."""
    seq_length: int = 4096
    """row length in tokens."""
    seed: int = 0
    """seed for tie order and row order."""
    overwrite: bool = False
    """replace a complete dataset already at --output."""

    def check(self) -> None:
        check_dataset_prefix("--input", self.input)
        check_output_file("--output", self.output, prefix_of=(".bin", ".idx"))
        if os.path.abspath(self.output) == os.path.abspath(self.input):
            raise ValueError(f"--output {self.output} is the --input dataset; give a new prefix")
        if dataset_exists(self.output) and not self.overwrite:
            raise ValueError(f"--output {self.output} already holds a dataset; pass --overwrite to replace it")
        check_at_least("--seq-length", self.seq_length, 1)


def check_dataset_prefix(flag_name: str, prefix: str) -> None:
    """A dataset prefix whose .idx and .bin exist (a path given with .bin/.idx is refused, naming the fix)."""
    if prefix.endswith((".bin", ".idx")):
        raise ValueError(f"{flag_name} {prefix}: give the dataset prefix, without .bin or .idx")
    missing = [prefix + suffix for suffix in (".idx", ".bin") if not os.path.isfile(prefix + suffix)]
    if missing:
        raise ValueError(f"{flag_name} {prefix}: no dataset there ({' and '.join(missing)} not found)")


def main(argv=None) -> int:
    config = FlagParser(PackConfig, prog=os.path.basename(__file__), description=__doc__, check=PackConfig.check).parse(
        argv
    )
    report = validate_dataset(config.input)
    if not report.ok:
        print(f"cannot pack a damaged dataset: {report}", file=sys.stderr)
        return 1
    try:
        plan = pack_dataset(
            config.input, config.output, config.seq_length, seed=config.seed, overwrite=config.overwrite
        )
    except (OSError, ValueError) as error:
        print(f"packing failed: {error}", file=sys.stderr)
        return 1
    print(plan.summary())
    print(validate_dataset(config.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
