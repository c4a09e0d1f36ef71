"""What every benchmark records about where it ran (so a figure can be read without the machine), and
the device synchronisation its timers need. The benchmarks import it as a sibling module."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Dict

import torch

from megatron_soda.device import device_info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
