#!/usr/bin/env python3
"""Merge dataset shards into one megatron-core IndexedDataset (byte-identical to a one-go build).

python tools/merge_datasets.py --input data/shards/speech_*.idx --output data/speech
"""

import os
import sys
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from megatron_soda.checks import check_output_file
from megatron_soda.data.indexed_dataset import dataset_exists, find_datasets, merge_datasets, validate_dataset
from megatron_soda.flags import FlagParser, flag
from megatron_soda.tool_json import check_json_path, write_json


@dataclass
class MergeConfig:
    inputs: List[str] = field(metadata=flag("--input", nargs="+"))
    """shard prefixes, .idx files or directories (merged in sorted order)."""
    output: str
    """output prefix (no .bin/.idx)."""
    overwrite: bool = False
    """replace a complete dataset already at --output."""
    progress: bool = True
    """show a progress bar."""
    json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
    """also write the summary as one JSON object to PATH ("-": to stdout, in place of the text)."""

    def check(self) -> None:
        for path in self.inputs:
            check_dataset_path(path)
        if not find_datasets(self.inputs):
            raise ValueError(f"--input {' '.join(self.inputs)}: no datasets found")
        check_output_file("--output", self.output, prefix_of=(".bin", ".idx"))
        if os.path.abspath(self.output) in {os.path.abspath(p) for p in find_datasets(self.inputs)}:
            raise ValueError(f"--output {self.output} is also an input; give a new prefix")
        if dataset_exists(self.output) and not self.overwrite:
            raise ValueError(f"--output {self.output} already holds a dataset; pass --overwrite to replace it")
        check_json_path(self.json)


def check_dataset_path(path: str) -> None:
    """An input: a directory, an .idx file, or a prefix whose .idx exists."""
    if os.path.isdir(path):
        return
    if path.endswith(".bin"):
        raise ValueError(f"--input {path}: give the dataset prefix or its .idx file, not the .bin")
    index = path if path.endswith(".idx") else path + ".idx"
    if not os.path.isfile(index):
        raise ValueError(f"--input {path}: no such dataset or directory ({index} not found)")


def build_parser() -> FlagParser:
    return FlagParser(MergeConfig, prog=os.path.basename(__file__), description=__doc__, check=MergeConfig.check)


def main(argv=None) -> int:
    config = build_parser().parse(argv)
    inputs = find_datasets(config.inputs)
    try:
        merge_datasets(config.output, inputs, overwrite=config.overwrite, progress=config.progress)
    except (OSError, ValueError) as error:
        print(f"merge failed: {error}", file=sys.stderr)
        return 1
    report = validate_dataset(config.output)
    if config.json != "-":
        print(report)
    validation = {k: (str(v) if k == "dtype" else v) for k, v in asdict(report).items()}
    write_json(config.json, {"inputs": inputs, "output": config.output, "validation": validation})
    return 0


if __name__ == "__main__":
    sys.exit(main())
