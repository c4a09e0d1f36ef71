"""What every benchmark records about where it ran (so a figure can be read without the machine), and
the device synchronisation its timers need. The benchmarks import it as a sibling module."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Dict

import torch

from megatron_soda.device import device_info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = time.perf_counter()
"""When the benchmark's process began (this module's import): log lines and totals count from here."""


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s] {message}", flush=True)


def error_line(error: Exception) -> str:
    """An engine's failure in one line of a results table."""
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def write_section(path: str, section: str, heading: str, begin_marker: str, end_marker: str, intro: str) -> None:
    """Replaces a benchmark's generated block in ``path`` (between its markers), or appends it with its
    ``intro`` (which starts with ``heading``) when the file has neither; the file is replaced whole."""
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    block = f"{begin_marker}\n{section.rstrip()}\n{end_marker}\n"
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin >= 0 and end > begin:
        rest = text[end + len(end_marker) :].lstrip("\n")
        text = text[:begin] + block + ("\n" + rest if rest else "")
    else:
        prefix = "" if heading in text else intro + "\n"
        text = (text.rstrip("\n") + "\n\n" if text else "") + prefix + block
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    if device_info().cuda:
        out["cuda"] = str(torch.version.cuda)
    for package in ("megatron-core", "transformers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "missing"
    return out


def git_commit() -> str:
    """The commit measured, and whether the working tree differed from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain"], capture_output=True, text=True).stdout
        return commit + (" (working tree has uncommitted changes)" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def threads() -> str:
    n = torch.get_num_threads()
    return f"{n} torch thread{'s' if n > 1 else ''}"


def synchronize() -> None:
    """Waits for queued GPU work, so a timer stops when the work is done (nothing to wait for on a CPU)."""
    if device_info().cuda:
        torch.cuda.synchronize()
