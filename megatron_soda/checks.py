"""Checks of flag values and paths, shared by every CLI: each raises ValueError naming the flag.

A CLI runs them up front (``FlagParser(check=...)``), so a bad invocation ends in one line before any
data, device or process group is touched.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence


def check_at_least(flag_name: str, value: Optional[float], minimum: float) -> None:
    """A count or size no smaller than ``minimum`` (None passes: an unset optional setting)."""
    if value is not None and value < minimum:
        raise ValueError(f"{flag_name} must be >= {minimum}, got {value}")


def check_exists(flag_name: str, path: str, hint: str = "") -> None:
    """An input that must exist, a file or a directory."""
    if not os.path.exists(path):
        raise ValueError(f"{flag_name} {path}: no such file or directory{hint}")


def check_file(flag_name: str, path: str, hint: str = "") -> None:
    """An input file that must exist and be readable."""
    if not os.path.exists(path):
        raise ValueError(f"{flag_name} {path}: no such file{hint}")
    if os.path.isdir(path):
        raise ValueError(f"{flag_name} {path} is a directory; give a file{hint}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{flag_name} {path}: not readable (check its permissions)")


def check_dir(flag_name: str, path: str, holding: Sequence[str] = (), hint: str = "") -> None:
    """An input directory that must exist and hold the files ``holding`` names."""
    if not os.path.exists(path):
        raise ValueError(f"{flag_name} {path}: no such directory{hint}")
    if not os.path.isdir(path):
        raise ValueError(f"{flag_name} {path} is a file; give a directory{hint}")
    for name in holding:
        if not os.path.exists(os.path.join(path, name)):
            raise ValueError(f"{flag_name} {path} holds no {name}{hint}")


def _check_creatable(flag_name: str, path: str, directory: str) -> None:
    """``directory`` (where ``path`` goes) exists or can be made: its nearest existing parent is writable."""
    parent = os.path.abspath(directory)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag_name} {path}: cannot create it under {parent} (not a writable directory)")


def check_output_dir(flag_name: str, path: str) -> None:
    """A directory to write: not an existing file, and creatable (its nearest existing parent writable)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag_name} {path} is a file; give a directory")
    _check_creatable(flag_name, path, path)


def check_output_file(flag_name: str, path: str, prefix_of: Sequence[str] = ()) -> None:
    """A file to write, or with ``prefix_of`` (``(".bin", ".idx")``) the prefix of the files ``path + suffix``:
    a name, not a directory, in a directory that exists or can be made."""
    if not path or path.endswith(("/", os.sep)) or (not prefix_of and os.path.isdir(path)):
        raise ValueError(
            f"{flag_name} {path!r} is a directory; give a file name"
            + (" (a prefix such as out/speech)" if prefix_of else "")
        )
    if prefix_of and path.endswith(tuple(prefix_of)):
        raise ValueError(f"{flag_name} {path}: give the prefix, without {' or '.join(prefix_of)}")
    _check_creatable(flag_name, path, os.path.dirname(os.path.abspath(path)))
