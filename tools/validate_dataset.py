#!/usr/bin/env python3
"""Check megatron-core IndexedDataset prefixes; exit 1 if any is damaged (2: a usage error).

python tools/validate_dataset.py data/speech_00000 data/speech_00001 --vocab-size 144644
python tools/validate_dataset.py data/            # every complete dataset under a directory
"""

import json
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from megatron_soda.data.indexed_dataset import find_datasets, validate_dataset
from megatron_soda.flags import FlagParser, check_at_least, flag


@dataclass
class ValidateConfig:
    paths: List[str] = field(metadata=flag("PATH", positional=True))
    """dataset prefixes (no .bin/.idx), .idx files or directories."""
    vocab_size: Optional[int] = None
    """also check that every token id is below this (reads all of .bin)."""
    json: bool = False
    """print one JSON report per dataset."""

    def check(self) -> None:
        for path in self.paths:
            if path.endswith(".bin"):
                raise ValueError(f"{path}: give the dataset prefix or its .idx file, not the .bin")
            if not any(os.path.exists(path + suffix) for suffix in ("", ".idx", ".bin")):
                raise ValueError(f"{path}: no such dataset, .idx file or directory")
        if not find_datasets(self.paths):
            raise ValueError(f"no datasets found under {' '.join(self.paths)}")
        check_at_least("--vocab-size", self.vocab_size, 1)


def main(argv=None) -> int:
    config = FlagParser(
        ValidateConfig, prog=os.path.basename(__file__), description=__doc__, check=ValidateConfig.check
    ).parse(argv)
    prefixes = find_datasets(config.paths)
    damaged = 0
    for prefix in prefixes:
        report = validate_dataset(prefix, config.vocab_size)
        damaged += not report.ok
        if config.json:
            fields = {k: (str(v) if k == "dtype" else v) for k, v in report.__dict__.items()}
            print(json.dumps(fields))
        else:
            print(report if report.ok else f"DAMAGED {report}", file=sys.stdout if report.ok else sys.stderr)
    if len(prefixes) > 1 and not config.json:
        print(f"{len(prefixes) - damaged} of {len(prefixes)} datasets OK")
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
