"""What a run reports: Megatron-like console lines, tensorboard scalars and a JSONL metrics file.

The metrics file starts with one ``{"run": ...}`` record describing the run (``RunPlan.record``).
Each iteration then writes one ``{"iteration": N, ...}`` record (validation records carry
``"validation lm loss"`` etc. for the same N). A resumed run keeps one record per iteration: records
after the iteration it resumed from (written by the interrupted run past its last checkpoint) are
dropped, and a ``{"resume": ...}`` record marks where the new process took over. So a reader can take
every record with an ``iteration`` at face value.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

_SCIENTIFIC = ("lm loss", "learning rate", "z loss", "audio loss", "text loss", "grad norm")


def read_metrics(path: str) -> List[Dict[str, Any]]:
    """Every record of a metrics file, in order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def iteration_records(path: str) -> List[Dict[str, Any]]:
    """The training records (those with an iteration and a training loss) of a metrics file."""
    return [r for r in read_metrics(path) if "iteration" in r and "lm loss" in r]


def _format(key: str, value: Any) -> str:
    if isinstance(value, float) and (key in _SCIENTIFIC or key.endswith("loss")):
        return f"{key}: {value:.6E}"
    if isinstance(value, float):
        return f"{key}: {value:.4g}"
    return f"{key}: {value}"


class RunLogger:
    """Console, tensorboard and metrics-file output on the one rank that reports (``active``)."""

    def __init__(
        self,
        *,
        active: bool,
        metrics_file: Optional[str] = None,
        tensorboard_dir: Optional[str] = None,
        run: Optional[Dict[str, Any]] = None,
        resumed_at: Optional[int] = None,
    ):
        self.active = active
        self.writer = None
        self.metrics = None
        if not active:
            return
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard_dir)
        if metrics_file:
            self.metrics = self._open_metrics(metrics_file, run or {}, resumed_at)

    @staticmethod
    def _open_metrics(path: str, run: Dict[str, Any], resumed_at: Optional[int]):
        kept: List[str] = []
        if resumed_at is not None and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        record = json.loads(line)
                        if record.get("iteration", 0) <= resumed_at:
                            kept.append(line if line.endswith("\n") else line + "\n")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            if not kept:
                f.write(json.dumps({"run": run}) + "\n")
            f.writelines(kept)
            if resumed_at is not None:
                f.write(json.dumps({"resume": {"iteration": resumed_at, "run": run}}) + "\n")
        os.replace(tmp, path)
        return open(path, "a", encoding="utf-8")

    def log(self, iteration: int, total: int, values: Dict[str, Any], console: bool) -> None:
        if not self.active:
            return
        if console:
            parts = [f"iteration {iteration:8d}/{total:8d}"] + [
                _format(k, v) for k, v in values.items() if not isinstance(v, (list, dict))
            ]
            print(" | ".join(parts), flush=True)
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, iteration)
                elif isinstance(value, dict):  # e.g. the data mix: one curve per dataset
                    for name, item in value.items():
                        self.writer.add_scalar(f"{key}/{name}", item, iteration)
        if self.metrics is not None:
            self.metrics.write(json.dumps({"iteration": iteration, **values}) + "\n")
            self.metrics.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.metrics is not None:
            self.metrics.close()
