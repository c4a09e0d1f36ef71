#!/usr/bin/env python3
"""Pack a dataset's documents into fixed-length rows that keep document boundaries.

    python tools/pack_dataset.py --input data/speech --output data/speech_packed4096 --seq-length 4096

Best-fit decreasing: a document that fits in a row is never split; longer ones are cut at row
boundaries and counted. Each output document is one row; its sequences are the packed pieces. The
source's vocabulary record (<prefix>.vocab.json) goes with the rows.
"""

import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional

from megatron_soda.checks import check_at_least, check_output_file
from megatron_soda.data.indexed_dataset import (
    dataset_exists,
    validate_dataset,
)
from megatron_soda.data.packing import pack_dataset
from megatron_soda.flags import FlagParser, flag
from megatron_soda.tool_json import check_json_path, write_json


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
    progress: bool = True
    """show a progress bar over the steps (validate the input, pack, validate the output)."""
    json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
    """also write the summary as one JSON object to PATH ("-": to stdout, in place of the text)."""

    def check(self) -> None:
        check_dataset_prefix("--input", self.input)
        check_output_file("--output", self.output, prefix_of=(".bin", ".idx"))
        if os.path.abspath(self.output) == os.path.abspath(self.input):
            raise ValueError(f"--output {self.output} is the --input dataset; give a new prefix")
        if dataset_exists(self.output) and not self.overwrite:
            raise ValueError(f"--output {self.output} already holds a dataset; pass --overwrite to replace it")
        check_at_least("--seq-length", self.seq_length, 1)
        check_json_path(self.json)


def check_dataset_prefix(flag_name: str, prefix: str) -> None:
    """A dataset prefix whose .idx and .bin exist (a path given with .bin/.idx is refused, naming the fix)."""
    if prefix.endswith((".bin", ".idx")):
        raise ValueError(f"{flag_name} {prefix}: give the dataset prefix, without .bin or .idx")
    missing = [prefix + suffix for suffix in (".idx", ".bin") if not os.path.isfile(prefix + suffix)]
    if missing:
        raise ValueError(f"{flag_name} {prefix}: no dataset there ({' and '.join(missing)} not found)")


def report_dict(report) -> dict:
    """A ValidationReport as JSON-ready values."""
    return {k: (str(v) if k == "dtype" else v) for k, v in asdict(report).items()}


def build_parser() -> FlagParser:
    return FlagParser(PackConfig, prog=os.path.basename(__file__), description=__doc__, check=PackConfig.check)


def main(argv=None) -> int:
    from tqdm import tqdm

    config = build_parser().parse(argv)
    with tqdm(total=3, unit="step", desc=f"pack {config.input}", disable=not config.progress) as bar:
        bar.set_postfix_str("validating the input")
        report = validate_dataset(config.input)
        if not report.ok:
            bar.close()
            print(f"cannot pack a damaged dataset: {report}", file=sys.stderr)
            return 1
        bar.update()
        bar.set_postfix_str("packing")
        try:
            plan = pack_dataset(
                config.input, config.output, config.seq_length, seed=config.seed, overwrite=config.overwrite
            )
        except (OSError, ValueError) as error:
            bar.close()
            print(f"packing failed: {error}", file=sys.stderr)
            return 1
        bar.update()
        bar.set_postfix_str("validating the output")
        packed = validate_dataset(config.output)
        bar.update()
    if config.json != "-":
        print(plan.summary())
        print(packed)
    write_json(
        config.json,
        {
            "input": config.input,
            "output": config.output,
            "seq_length": plan.row_length,
            "rows": plan.num_rows,
            "tokens": plan.num_tokens,
            "fill": plan.fill,
            "split_documents": len(plan.split_documents),
            "empty_documents": plan.num_empty_documents,
            "validation": report_dict(packed),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
