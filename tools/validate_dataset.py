#!/usr/bin/env python3
"""Check megatron-core IndexedDataset prefixes; exit 1 if any is damaged (2: a usage error).

python tools/validate_dataset.py --input data/speech_00000 data/speech_00001 --vocab-size 144644
python tools/validate_dataset.py --input data/            # every complete dataset under a directory

A prefix is the dataset whose .idx it names, whatever sits beside it (megatron-core's index cache makes a
<prefix>/cache/ folder). The vocabulary a dataset records (<prefix>.vocab.json, written by preprocessing,
merging and packing) is shown with it. --json writes every report as one JSON object.
"""

import os
import sys
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from megatron_soda.checks import check_at_least
from megatron_soda.data.indexed_dataset import describe_vocab, find_datasets, read_vocab_record, validate_dataset
from megatron_soda.flags import FlagParser, flag
from megatron_soda.tool_json import check_json_path, write_json


@dataclass
class ValidateConfig:
    inputs: List[str] = field(metadata=flag("--input", nargs="+"))
    """dataset prefixes (no .bin/.idx), .idx files or directories."""
    vocab_size: Optional[int] = None
    """also check that every token id is below this (reads all of .bin)."""
    progress: bool = True
    """show a progress bar while --vocab-size reads the token files."""
    json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
    """also write the reports as one JSON object to PATH ("-": to stdout, in place of the text)."""

    def check(self) -> None:
        for path in self.inputs:
            if path.endswith(".bin"):
                raise ValueError(f"--input {path}: give the dataset prefix or its .idx file, not the .bin")
            if not any(os.path.exists(path + suffix) for suffix in ("", ".idx", ".bin")):
                raise ValueError(f"--input {path}: no such dataset, .idx file or directory")
        if not find_datasets(self.inputs):
            raise ValueError(f"--input {' '.join(self.inputs)}: no datasets found")
        check_at_least("--vocab-size", self.vocab_size, 1)
        check_json_path(self.json)


def build_parser() -> FlagParser:
    return FlagParser(ValidateConfig, prog=os.path.basename(__file__), description=__doc__, check=ValidateConfig.check)


def _size(path: str) -> int:
    return os.path.getsize(path) if os.path.isfile(path) else 0


def main(argv=None) -> int:
    from tqdm import tqdm

    config = build_parser().parse(argv)
    prefixes = find_datasets(config.inputs)
    text = config.json != "-"
    scanning = config.vocab_size is not None and config.progress
    reports = []
    damaged = 0
    with tqdm(
        total=sum(_size(prefix + ".bin") for prefix in prefixes) if scanning else 0,
        unit="B",
        unit_scale=True,
        desc="scanning token ids",
        disable=not scanning,
    ) as bar:
        for prefix in prefixes:
            report = validate_dataset(prefix, config.vocab_size)
            bar.update(_size(prefix + ".bin"))
            record, problem = None, None
            if report.ok:
                try:
                    record = read_vocab_record(prefix, report)
                except ValueError as error:
                    problem = str(error)
            damaged += not report.ok or problem is not None
            fields = {k: (str(v) if k == "dtype" else v) for k, v in asdict(report).items()}
            if problem:
                fields.update(ok=False, error=problem)
            reports.append({**fields, "vocabulary": record})
            if problem:
                tqdm.write(f"DAMAGED {problem}", file=sys.stderr)
            elif not report.ok:
                tqdm.write(f"DAMAGED {report}", file=sys.stderr)
            elif text:
                tqdm.write(f"{report}; made with {describe_vocab(record)}" if record else str(report))
    if len(prefixes) > 1 and text:
        print(f"{len(prefixes) - damaged} of {len(prefixes)} datasets OK")
    write_json(config.json, {"datasets": reports, "ok": len(prefixes) - damaged, "damaged": damaged})
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
