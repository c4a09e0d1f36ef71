"""Collect a study's results: each run's final validation losses (overall, audio, text) into one table.

N and FLOPs come from the run record at the head of each metrics file (what the trainer built), checked
against the plan; tokens are iterations x the run's tokens per iteration. Unfinished runs are refused by name
(``--skip-unfinished`` leaves them out instead, saying so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

from megatron_soda.scaling.launch import run_state
from megatron_soda.scaling.study import Study, write_table
from megatron_soda.training.logger import read_metrics

LOSSES = {"lm": "validation lm loss", "audio": "validation audio loss", "text": "validation text loss"}
"""The fit's --loss choices -> the metrics file's validation keys."""


@dataclass
class CollectConfig:
    """``tools/isoflop.py collect``."""

    output_dir: str
    """the study directory: reads runs/*/metrics.jsonl, writes results.json and results.csv."""
    skip_unfinished: bool = False
    """leave unfinished runs out (named) instead of refusing."""


def run_result(study: Study, row: Dict[str, Any]) -> Dict[str, Any]:
    """One finished run's row: the plan's columns, what the trainer recorded, and the final losses."""
    records = read_metrics(str(study.metrics(row["name"])))
    run = next(r["run"] for r in records if "run" in r)
    if run["parameters"] != row["parameters"]:
        raise ValueError(
            f"{row['name']}: the trainer built {run['parameters']:,} parameters, the plan {row['parameters']:,} "
            f"(another --tokenizer than the plan's?); replan with the tokenizer the data was made with"
        )
    last = row["train_iters"]
    final = {}
    for record in records:
        if record.get("iteration") == last:
            final.update(record)
    tokens = run["train_iters"] * run["tokens_per_iteration"]
    result = {
        **{k: v for k, v in row.items() if k != "config"},
        "tokens": tokens,
        "flops_training": run["flops_per_token"] * tokens,
        "flops_6nd": run["six_n_flops_per_token"] * tokens,
        "train_loss": final["lm loss"],
    }
    for name, key in LOSSES.items():
        result[f"loss_{name}"] = final.get(key)
    return result


def collect(config: CollectConfig, log=print) -> Dict[str, Any]:
    """Reads every run of the plan; writes results.json/csv; returns results.json's content."""
    study = Study(config.output_dir)
    plan = study.load_plan()
    states = [run_state(study, row) for row in plan["runs"]]
    unfinished = [f"{state.name} ({state.describe()})" for state in states if not state.finished]
    if unfinished and not config.skip_unfinished:
        raise ValueError(
            f"{len(unfinished)} of {len(states)} runs did not finish: {'; '.join(unfinished)}. Launch the study "
            f"again to finish them, or collect with --skip-unfinished"
        )
    if unfinished:
        log(f"left out {len(unfinished)} unfinished runs: {'; '.join(unfinished)}")
    rows: List[Dict[str, Any]] = [run_result(study, row) for row, state in zip(plan["runs"], states) if state.finished]
    header = {
        "family": plan["family"],
        "family_shape": plan["family_shape"],
        "vocab_size": plan["vocab_size"],
        "seq_length": plan["seq_length"],
        "skipped": unfinished,
        "columns": {
            "budget": "forward FLOPs budget (plan); budget_training = 3 x budget",
            "parameters": "N total (embeddings + LM head); non_embedding_parameters beside it",
            "flops_training": "3 x forward FLOPs with attention and LM head, as trained",
            "flops_6nd": "6 x non-embedding parameters x tokens",
            "loss_lm": "validation loss at the last iteration (loss_audio, loss_text per modality)",
        },
    }
    write_table(study.results_json, study.results_csv, header, rows)
    return {**header, "runs": rows}
