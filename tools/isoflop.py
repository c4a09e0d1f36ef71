#!/usr/bin/env python3
"""IsoFLOP scaling-law studies, SODA's way: plan, launch, collect, fit, plot (one study directory).

    # SODA's 59-run grid (forward budgets 1e18..1e20 = the paper's 3e18..3e20 training FLOPs), + Marin's 7 targets
    python tools/isoflop.py plan --output-dir study --tokenizer tokenizers/soda --with-targets
    # train every run: one after another here, under torchrun, or as a SLURM array (one task per run)
    python tools/isoflop.py launch --output-dir study --data-path 0.95 data/speech 0.05 data/text --nproc-per-node 8
    python tools/isoflop.py launch --output-dir study --data-path data/speech --nproc-per-node 8 --slurm --submit
    # final validation losses -> results.csv/json (unfinished runs are refused by name)
    python tools/isoflop.py collect --output-dir study
    # approach 2 (+ bootstrap) and Chinchilla's approach 3; the optimal run at 1e21 training FLOPs
    python tools/isoflop.py fit --output-dir study --predict 1e21
    python tools/isoflop.py plot --output-dir study
    # all of it; and the CPU-sized study on the shipped corpus (make isoflop-demo)
    python tools/isoflop.py run --output-dir study --family cpu --tokenizer tok --data-path data/speech
    python tools/isoflop.py demo --output-dir demo_out/isoflop

Launching again finishes a study: finished runs are skipped, killed ones resume from their checkpoints.
Every fitted figure says which N (total or non-embedding parameters) and which C (training FLOPs = 3 x
forward with attention and LM head, or 6ND) it uses. --json PATH writes each command's summary as JSON.
"""

import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from megatron_soda.flags import FlagCommands, flag
from megatron_soda.scaling.collect import CollectConfig
from megatron_soda.scaling.launch import LaunchConfig
from megatron_soda.scaling.plan import PlanConfig
from megatron_soda.scaling.plot import PlotConfig
from megatron_soda.scaling.report import FitConfig
from megatron_soda.scaling.study_run import DemoConfig, RunConfig
from megatron_soda.tool_json import check_json_path, write_json
from megatron_soda.training.stopping import EXIT_RESUMABLE

COMMANDS = {
    "plan": (PlanConfig, "budgets x a width family -> plan.csv/json and one trainer config per run"),
    "launch": (LaunchConfig, "train the planned runs (here, torchrun, or a SLURM array), skipping finished ones"),
    "collect": (CollectConfig, "final validation losses of every run -> results.csv/json"),
    "fit": (FitConfig, "approach 2 + bootstrap, approach 3, predictions -> fit.json"),
    "plot": (PlotConfig, "parabolas, frontiers with bands, loss curves -> plots/*.png"),
    "run": (RunConfig, "plan, launch, collect, fit and plot in one go"),
    "demo": (DemoConfig, "the CPU-sized study on the shipped demo corpus, end to end"),
}


def with_json(base):
    """``base`` (a command's library config) with the tool's ``--json`` flag."""

    @dataclass
    class Command(base):
        json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
        """also write the command's summary as one JSON object to PATH ("-": to stdout, in place of the text)."""

    return Command


def _check(config) -> None:
    check_json_path(config.json)
    for name in ("jobs", "nproc_per_node", "bootstrap"):
        for section in (config, getattr(config, "settings", None), getattr(config, "launch", None)):
            value = getattr(section, name, None)
            if value is not None and value < (0 if name == "bootstrap" else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be >= {0 if name == 'bootstrap' else 1}")


def build_parser() -> FlagCommands:
    return FlagCommands(
        {name: (with_json(cls), text, None, _check) for name, (cls, text) in COMMANDS.items()},
        prog=os.path.basename(__file__),
        description=__doc__,
    )


def main(argv=None) -> int:
    command, config = build_parser().parse(argv)
    from megatron_soda.scaling import collect, launch, plan, plot, report, study_run

    quiet = config.json == "-"
    log = lambda message: print(message, file=sys.stderr if quiet else sys.stdout, flush=True)  # noqa: E731
    try:
        if command == "plan":
            made = plan.write_plan(config)
            log(f"planned {len(made['runs'])} runs ({made['family']} family) in {config.output_dir}")
            summary = {"runs": len(made["runs"]), "plan": str(plan.Study(config.output_dir).plan_json)}
        elif command == "launch":
            summary = launch.launch(config, log)
        elif command == "collect":
            made = collect.collect(config, log)
            log(f"collected {len(made['runs'])} runs -> {collect.Study(config.output_dir).results_csv}")
            summary = {"runs": len(made["runs"]), "skipped": made["skipped"]}
        elif command == "fit":
            summary = report.run_fit(config)
            for line in report.fit_table(summary):
                log(line)
        elif command == "plot":
            summary = {"plots": plot.plot_study(config)}
            log("\n".join(summary["plots"]))
        elif command == "run":
            summary = study_run.run_study(config, log)
        else:
            summary = study_run.run_demo(config, log)
    except ValueError as error:
        print(f"isoflop {command}: error: {error}", file=sys.stderr)
        return 2
    write_json(config.json, summary)
    if command == "launch" and not config.settings.slurm and summary["failed"]:
        return 1
    if command == "launch" and not config.settings.slurm and summary["stopped"]:
        return EXIT_RESUMABLE  # stopped on request, resumable: what a batch script requeues on
    return 0


if __name__ == "__main__":
    sys.exit(main())
