"""The study directory: the one place that knows where each stage reads and writes.

study/
  plan.json, plan.csv          the run table (plan)
  configs/<run>.yaml           one trainer config per run (python -m megatron_soda.pretrain --config)
  runs/<run>/metrics.jsonl     the trainer's metrics file; checkpoint/ and train.log beside it (launch)
  slurm/isoflop.sbatch         the SLURM array script, and its logs (launch --slurm)
  results.json, results.csv    final losses of every run (collect)
  fit.json                     the fitted laws and predictions (fit)
  plots/*.png                  (plot)
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Dict, List


class Study:
    """Paths of one study directory."""

    def __init__(self, root: str):
        self.root = Path(root).resolve()

    plan_json = property(lambda self: self.root / "plan.json")
    plan_csv = property(lambda self: self.root / "plan.csv")
    results_json = property(lambda self: self.root / "results.json")
    results_csv = property(lambda self: self.root / "results.csv")
    fit_json = property(lambda self: self.root / "fit.json")
    plots = property(lambda self: self.root / "plots")
    slurm = property(lambda self: self.root / "slurm")

    def config(self, name: str) -> Path:
        return self.root / "configs" / f"{name}.yaml"

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def metrics(self, name: str) -> Path:
        return self.run_dir(name) / "metrics.jsonl"

    def checkpoint(self, name: str) -> Path:
        return self.run_dir(name) / "checkpoint"

    def log(self, name: str) -> Path:
        return self.run_dir(name) / "train.log"

    def read(self, path: Path, made_by: str) -> Dict[str, Any]:
        """A stage's JSON output; ValueError saying which stage makes it when it is missing."""
        if not path.exists():
            raise ValueError(f"{path}: not found; run `tools/isoflop.py {made_by} --output-dir {self.root}` first")
        return json.loads(path.read_text(encoding="utf-8"))

    def load_plan(self) -> Dict[str, Any]:
        return self.read(self.plan_json, "plan")


def write_table(json_path: Path, csv_path: Path, header: Dict[str, Any], rows: List[Dict[str, Any]]) -> None:
    """``{**header, "runs": rows}`` as JSON, and ``rows`` as CSV (columns of the first row), each replaced whole."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    _replace(json_path, json.dumps({**header, "runs": rows}, indent=2) + "\n")
    tmp = f"{csv_path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)


def _replace(path: Path, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Dict[str, Any]) -> None:
    """``data`` to ``path``, replaced whole (a killed write leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(path, json.dumps(data, indent=2) + "\n")
