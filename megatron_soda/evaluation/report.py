"""An evaluation's report: one JSON object (what was evaluated, how, and each task's numbers), one
side file of per-item records per task, a table for people, and two reports side by side."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

from megatron_soda.evaluation.base import TaskResult

REPORT_FILE = "report.json"


def items_file(output_dir: str, task: str) -> str:
    return os.path.join(output_dir, f"{task}.items.jsonl")


def task_entry(result: TaskResult, output_dir: str) -> dict:
    """A task's part of the report; its per-item records go to the side file."""
    path = items_file(output_dir, result.task)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        for item in result.items:
            f.write(json.dumps(item, ensure_ascii=False, default=float) + "\n")
    os.replace(f"{path}.tmp", path)
    return {
        "metric": result.primary,
        "value": result.metrics[result.primary],
        "metrics": result.metrics,
        "n": result.n,
        "skipped": len(result.skipped),
        "skipped_items": [asdict(s) for s in result.skipped],
        "breakdown": result.breakdown,
        "notes": result.notes,
        "info": result.info,
        "items_file": path,
    }


def write_report(
    output_dir: str, model: dict, settings: dict, results: Sequence[TaskResult], failed: Optional[dict] = None
) -> dict:
    """``report.json`` in ``output_dir`` (replaced whole) and the side files; returns the report.
    ``failed``: task -> why it could not run."""
    os.makedirs(output_dir, exist_ok=True)
    report = {
        "model": model,
        "settings": settings,
        "tasks": {result.task: task_entry(result, output_dir) for result in results},
        "failed": failed or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = os.path.join(output_dir, REPORT_FILE)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False, default=float)
    os.replace(f"{path}.tmp", path)
    return report


def read_report(path: str) -> dict:
    """A report written by ``write_report`` (a file, or the directory holding it); ValueError otherwise."""
    if os.path.isdir(path):
        path = os.path.join(path, REPORT_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--compare {path}: not a readable evaluation report ({error})") from None
    if not isinstance(report, dict) or not isinstance(report.get("tasks"), dict):
        raise ValueError(f"--compare {path}: not an evaluation report (no 'tasks')")
    return report


def _value(entry: dict) -> str:
    value = entry["value"]
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table(report: dict) -> List[str]:
    """The report as aligned lines: task, metric, value, items, skipped, then each breakdown row."""
    rows = [("task", "metric", "value", "n", "skipped")]
    for task, entry in report["tasks"].items():
        rows.append((task, entry["metric"], _value(entry), str(entry["n"]), str(entry["skipped"])))
        for name, metrics in entry.get("breakdown", {}).items():
            shown = {k: v for k, v in metrics.items() if k != "n"}
            for metric, value in shown.items():
                rows.append((f"  {name}", metric, f"{value:.4f}", str(metrics.get("n", "")), ""))
    for task, reason in report.get("failed", {}).items():
        rows.append((task, "failed", reason[:80], "", ""))
    return _aligned(rows)


def compare(reports: Dict[str, dict]) -> List[str]:
    """Reports side by side (by their names): each task's headline metric, then the difference."""
    names = list(reports)
    tasks: List[str] = []
    for report in reports.values():
        tasks += [t for t in report["tasks"] if t not in tasks]
    rows = [("task", "metric", *names, *(["difference"] if len(names) == 2 else []))]
    for task in tasks:
        entries = [report["tasks"].get(task) for report in reports.values()]
        metric = next(e["metric"] for e in entries if e is not None)
        values = [e["metrics"].get(metric) if e is not None else None for e in entries]
        shown = [f"{v:.4f}" if isinstance(v, (int, float)) else "-" for v in values]
        difference = []
        if len(names) == 2:
            a, b = values
            difference = [f"{b - a:+.4f}" if a is not None and b is not None else "-"]
        rows.append((task, metric, *shown, *difference))
    return _aligned(rows)


def _aligned(rows) -> List[str]:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
