"""The shape every job tool shares (preprocess_audio, preprocess_text, preprocess_sft, rerender): the job's
config with ``--json PATH`` added, the job run, its report printed as JSON, a failure as one line (exit 1).

The library's config stays free of the tool's own flags (``flags.base_config``), so ``--json`` never enters a
job's fingerprint.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Type

from megatron_soda.flags import FlagParser, base_config, flag
from megatron_soda.tool_json import check_json_path, write_json


def job_tool_parser(config_cls: Type, tool_file: str, description: Optional[str]) -> FlagParser:
    """The tool's parser: every field of ``config_cls`` as a flag, and ``--json PATH``."""

    @dataclass
    class JobTool(config_cls):
        json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
        """also write the report as one JSON object to PATH ("-": stdout only, printed once)."""

        def check(self) -> None:
            config_cls.check(self)
            check_json_path(self.json)

    return FlagParser(JobTool, prog=os.path.basename(tool_file), description=description, check=JobTool.check)


def run_job_tool(
    parser: FlagParser,
    config_cls: Type,
    run: Callable[[Any], Dict[str, Any]],
    argv=None,
    errors: Tuple[Type[BaseException], ...] = (ValueError, OSError),
) -> int:
    """Parses ``argv``, runs the job on the library's config and prints its report; ``errors``: one line, exit 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parser.parse(argv)
    name = os.path.splitext(parser.parser.prog)[0]
    try:
        report = run(base_config(config_cls, config))
    except errors as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 1
    if config.json != "-":
        print(json.dumps(report, indent=2))
    write_json(config.json, report)
    return 0
