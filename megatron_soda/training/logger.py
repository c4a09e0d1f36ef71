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


def _averages(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Each key's mean over the records that have it (floats), or its last value (counts, mixes)."""
    out: Dict[str, Any] = {}
    for key in dict.fromkeys(k for r in records for k in r):
        values = [r[key] for r in records if key in r]
        out[key] = sum(values) / len(values) if all(isinstance(v, float) for v in values) else values[-1]
    return out


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
        arguments: Optional[Dict[str, Any]] = None,
        wandb: Optional[Dict[str, Optional[str]]] = None,
    ):
        self.active = active
        self.writer = None
        self.metrics = None
        self.wandb = None
        self.window: List[Dict[str, Any]] = []
        """Training records since the last console line (the console shows their averages)."""
        if not active:
            return
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard_dir)
            if arguments:
                table = "\n".join(f"| {k} | {v} |" for k, v in arguments.items())
                self.writer.add_text("arguments", "| setting | value |\n|---|---|\n" + table, 0)
        if metrics_file:
            self.metrics = self._open_metrics(metrics_file, run or {}, resumed_at)
        if wandb and wandb.get("project"):
            from megatron_soda import optional

            module = optional.require("wandb", "--wandb-project")
            if wandb.get("dir"):
                os.makedirs(wandb["dir"], exist_ok=True)
            self.wandb = module.init(
                project=wandb["project"],
                name=wandb.get("name"),
                dir=wandb.get("dir"),
                config={**(arguments or {}), "run": run or {}},
            )

    @staticmethod
    def _open_metrics(path: str, run: Dict[str, Any], resumed_at: Optional[int]):
        kept: List[str] = []
        if resumed_at is not None and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:  # blank, or the half-written last line of a killed run
                        continue
                    if record.get("iteration", 0) <= resumed_at:
                        kept.append(line if line.endswith("\n") else line + "\n")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            if not kept:
                f.write(json.dumps({"run": run}) + "\n")
            f.writelines(kept)
            if resumed_at is not None:
                f.write(json.dumps({"resume": {"iteration": resumed_at, "run": run}}) + "\n")
        os.replace(tmp, path)
        return open(path, "a", encoding="utf-8")

    def log(self, iteration: int, total: int, values: Dict[str, Any], console: bool, average: bool = False) -> None:
        """Writes one record; ``console`` prints a line, of the averages since the last one with ``average``
        (training records, as Megatron-LM prints them), else of ``values`` (validation)."""
        if not self.active:
            return
        if average:
            self.window.append(values)
        if console:
            shown = _averages(self.window) if average else values
            self.window = [] if average else self.window
            parts = [f"iteration {iteration:8d}/{total:8d}"] + [
                _format(k, v) for k, v in shown.items() if not isinstance(v, (list, dict))
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
        if self.wandb is not None:
            flat = {f"{k}/{name}": v for k, d in values.items() if isinstance(d, dict) for name, v in d.items()}
            flat.update({k: v for k, v in values.items() if isinstance(v, (int, float))})
            self.wandb.log(flat, step=iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.wandb is not None:
            self.wandb.finish()
