"""A tool's ``--json PATH`` summary: one JSON object to a file (replaced whole) or to stdout (``-``)."""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, Optional

JSON_STDOUT = "-"
"""``--json -``: the summary goes to stdout, in place of the text."""


def check_json_path(path: Optional[str], flag_name: str = "--json") -> None:
    """``check=`` for ``--json PATH``: unset, ``-``, or a file that can be written."""
    if path is not None and path != JSON_STDOUT:
        from megatron_soda.checks import check_output_file

        check_output_file(flag_name, path)


def write_json(path: Optional[str], summary: Dict[str, Any]) -> None:
    """``--json PATH``: ``summary`` as one JSON object, to PATH (replaced whole) or stdout (``-``); None: nothing."""
    if path is None:
        return
    text = json.dumps(summary, indent=2, default=str) + "\n"
    if path == JSON_STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    import os

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
