"""The whole study in one call (``tools/isoflop.py run``), and the CPU-sized demo on the shipped corpus
(``tools/isoflop.py demo``, ``make isoflop-demo``): plan -> launch -> collect -> fit -> plot."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict

from megatron_soda.flags import flag
from megatron_soda.scaling.collect import CollectConfig, collect
from megatron_soda.scaling.demo_corpus import CORPUS, prepare_demo_data
from megatron_soda.scaling.fit import FitSettings
from megatron_soda.scaling.launch import LaunchConfig, LaunchSettings, launch
from megatron_soda.scaling.plan import PlanConfig, PlanSettings, write_plan
from megatron_soda.scaling.plot import PlotConfig, plot_study
from megatron_soda.scaling.report import FitConfig, fit_table, run_fit


@dataclass
class RunConfig:
    """``tools/isoflop.py run``: every stage's settings."""

    output_dir: str
    """the study directory (everything goes there)."""
    plan: PlanSettings = field(default_factory=PlanSettings)
    launch: LaunchSettings = field(default_factory=LaunchSettings)
    fit: FitSettings = field(default_factory=FitSettings)


@dataclass
class DemoConfig:
    """``tools/isoflop.py demo``."""

    output_dir: str = "demo_out/isoflop"
    """where to write: data/ (the corpus preprocessed) and the study."""
    corpus: str = field(default=str(CORPUS), metadata=flag("--input"))
    """the corpus: a directory holding manifest.jsonl and text.jsonl."""
    workers: int = 2
    """audio decoding processes."""
    jobs: int = 1
    """runs at once."""


def run_study(config: RunConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """plan, launch (here or --slurm), then, once every run finished, collect, fit and plot."""
    plan = write_plan(PlanConfig(config.output_dir, config.plan))
    log(f"plan: {len(plan['runs'])} runs in {config.output_dir}")
    launched = launch(LaunchConfig(config.output_dir, config.launch), log)
    if config.launch.slurm:
        return {"plan": len(plan["runs"]), "launch": launched}
    results = collect(CollectConfig(config.output_dir), log)
    fit = run_fit(FitConfig(config.output_dir, config.fit))
    for line in fit_table(fit):
        log(line)
    plots = plot_study(PlotConfig(config.output_dir))
    log(f"plots: {', '.join(plots)}")
    return {"plan": len(plan["runs"]), "launch": launched, "collected": len(results["runs"]), "plots": plots}


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """The CPU family's study (3 budgets x widths 32, 64, 96) on the shipped corpus, end to end."""
    out = Path(config.output_dir)
    log("preparing the demo corpus (random-weight Mimi: the tokens mean nothing; the pipeline is real)")
    data = prepare_demo_data(Path(config.corpus), out / "data", config.workers)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // config.jobs)))
    return run_study(
        RunConfig(
            str(out / "study"),
            plan=PlanSettings(
                family="cpu",
                tokenizer=data["tokenizer"],
                split="90,10,0",
                eval_samples=32,
                micro_batch_size=16,
                saves_per_run=2,
            ),
            launch=LaunchSettings(data_path=data["data_path"], jobs=config.jobs, extra_args="--num-workers 0"),
            fit=FitSettings(predict=[1e13], bootstrap=200),
        ),
        log,
    )
