#!/usr/bin/env python3
"""Merge dataset shards into one megatron-core IndexedDataset (byte-identical to a one-go build).

python tools/merge_datasets.py --output data/speech data/shards/speech_*.idx
"""

import os
import sys
from dataclasses import dataclass, field
from typing import List

from megatron_soda.data.indexed_dataset import dataset_exists, find_datasets, merge_datasets, validate_dataset
from megatron_soda.flags import FlagParser, check_output_file, flag


@dataclass
class MergeConfig:
    inputs: List[str] = field(metadata=flag("INPUT", positional=True))
    """shard prefixes, .idx files or directories (merged in sorted order)."""
    output: str
    """output prefix (no .bin/.idx)."""
    overwrite: bool = False
    """replace a complete dataset already at --output."""
    progress: bool = True
    """show a progress bar."""

    def check(self) -> None:
        for path in self.inputs:
            check_dataset_path(path)
        if not find_datasets(self.inputs):
            raise ValueError(f"no datasets found under {' '.join(self.inputs)}")
        check_output_file("--output", self.output, prefix_of=(".bin", ".idx"))
        if os.path.abspath(self.output) in {os.path.abspath(p) for p in find_datasets(self.inputs)}:
            raise ValueError(f"--output {self.output} is also an input; give a new prefix")
        if dataset_exists(self.output) and not self.overwrite:
            raise ValueError(f"--output {self.output} already holds a dataset; pass --overwrite to replace it")


def check_dataset_path(path: str) -> None:
    """An input: a directory, an .idx file, or a prefix whose .idx exists."""
    if os.path.isdir(path):
        return
    if path.endswith(".bin"):
        raise ValueError(f"{path}: give the dataset prefix or its .idx file, not the .bin")
    index = path if path.endswith(".idx") else path + ".idx"
    if not os.path.isfile(index):
        raise ValueError(f"{path}: no such dataset or directory ({index} not found)")


def main(argv=None) -> int:
    config = FlagParser(
        MergeConfig, prog=os.path.basename(__file__), description=__doc__, check=MergeConfig.check
    ).parse(argv)
    try:
        merge_datasets(
            config.output, find_datasets(config.inputs), overwrite=config.overwrite, progress=config.progress
        )
    except (OSError, ValueError) as error:
        print(f"merge failed: {error}", file=sys.stderr)
        return 1
    print(validate_dataset(config.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
