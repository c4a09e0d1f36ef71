"""Run a planned study: every run through ``python -m megatron_soda.pretrain --config``, resumably.

A run is finished when its metrics file has the last iteration and the validation at it (``run_state``);
finished runs are skipped. Any other run is (re)started with ``--load`` = ``--save`` = its checkpoint
directory: the trainer resumes from the latest complete checkpoint (or starts fresh when there is none) and
its metrics file drops the records past it, so a killed study is finished by launching it again. Runs go one
after another, ``--jobs`` at a time (each job its own devices), each under torchrun with
``--nproc-per-node`` > 1; or ``--slurm`` writes a SLURM array script, one task per run, each task this same
launcher on one run (so resubmitting the array skips what finished), and ``--submit`` hands it to sbatch.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from megatron_soda.flags import flag
from megatron_soda.scaling.study import Study
from megatron_soda.training.stopping import EXIT_RESUMABLE

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""Left out of a run's environment: the launcher's own launcher must not make each run one of its ranks."""
TOOL = Path(__file__).resolve().parents[2] / "tools" / "isoflop.py"


@dataclass
class LaunchSettings:
    """How to run the plan."""

    data_path: List[str] = field(default_factory=list)
    """the runs' --data-path: prefixes, or weight/prefix pairs (0.95 data/speech 0.05 data/text)."""
    runs: Optional[List[str]] = field(default=None, metadata=flag(nargs="+"))
    """only these runs, by name (1e18-d768) or index in the plan (0-based); default: all."""
    nproc_per_node: int = 1
    """processes per run: 1 runs `python -m megatron_soda.pretrain`, more run it under torchrun."""
    jobs: int = 1
    """runs at once (each gets --nproc-per-node of the visible GPUs, or its share of the CPU threads)."""
    extra_args: str = ""
    """more pretrain flags for every run, one string ("--attention-backend flash --num-workers 4"; a single flag
    as --extra-args=--bf16)."""
    keep_checkpoints: bool = False
    """keep every checkpoint of a finished run (default: only its last)."""
    slurm: bool = False
    """write slurm/isoflop.sbatch, an array job with one task per run, instead of running here."""
    submit: bool = False
    """with --slurm: submit the script with sbatch."""
    slurm_partition: Optional[str] = None
    """#SBATCH --partition."""
    slurm_account: Optional[str] = None
    """#SBATCH --account."""
    slurm_time: str = "24:00:00"
    """#SBATCH --time of each task."""
    slurm_max_parallel: Optional[int] = None
    """at most this many array tasks at once (--array=0-N%M)."""
    slurm_gpus_per_node: Optional[int] = None
    """#SBATCH --gpus-per-node (default: --nproc-per-node, one GPU per process); 0 asks for none (a CPU
    cluster, where a GPU request is refused)."""
    requeue: bool = False
    """when SIGTERM stopped runs part-way, requeue this SLURM job (scontrol requeue $SLURM_JOB_ID) to finish
    them; the array script sets it."""


@dataclass
class LaunchConfig:
    """``tools/isoflop.py launch``."""

    output_dir: str
    """the study directory made by plan: runs/<run>/ (metrics, checkpoints, logs) go there."""
    settings: LaunchSettings = field(default_factory=LaunchSettings)


@dataclass
class RunState:
    """Where one run stands, from its metrics file and checkpoint directory."""

    name: str
    train_iters: int
    iteration: int = 0
    """Last iteration logged."""
    validated: bool = False
    """The validation at the last iteration is logged."""
    checkpoint: Optional[int] = None
    """Latest complete checkpoint's iteration."""

    @property
    def finished(self) -> bool:
        return self.iteration >= self.train_iters and self.validated

    def describe(self) -> str:
        if self.finished:
            return "finished"
        if self.iteration == 0:
            return "not started"
        where = f"checkpoint at {self.checkpoint}" if self.checkpoint else "no checkpoint"
        if self.iteration >= self.train_iters:
            return f"trained {self.iteration} iterations, no final validation ({where})"
        return f"stopped at iteration {self.iteration} of {self.train_iters} ({where})"


def run_state(study: Study, row: Dict[str, Any]) -> RunState:
    from megatron_soda.training import checkpointing

    state = RunState(row["name"], row["train_iters"])
    path = study.metrics(row["name"])
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # the half-written last line of a killed run
                continue
            if "iteration" in record and "lm loss" in record:
                state.iteration = max(state.iteration, record["iteration"])
            if record.get("iteration") == state.train_iters and "validation lm loss" in record:
                state.validated = True
    try:
        state.checkpoint = checkpointing.latest_iteration(study.checkpoint(row["name"]))
    except (OSError, ValueError):
        state.checkpoint = None
    return state


def select_runs(plan: Dict[str, Any], wanted: Optional[List[str]]) -> List[Dict[str, Any]]:
    """The plan's rows named (or indexed) by ``wanted``, in plan order; ValueError naming an unknown one."""
    rows = plan["runs"]
    if not wanted:
        return rows
    names = {row["name"]: row for row in rows}
    chosen = set()
    for item in wanted:
        if item in names:
            chosen.add(item)
        elif item.isdigit() and int(item) < len(rows):
            chosen.add(rows[int(item)]["name"])
        else:
            raise ValueError(f"--runs {item}: no such run (names like {rows[0]['name']}, or 0..{len(rows) - 1})")
    return [row for row in rows if row["name"] in chosen]


def micro_batch(config_micro: int, batch: int, data_parallel: int) -> int:
    """The largest micro-batch up to the config's that splits ``batch`` over ``data_parallel`` ranks."""
    per_rank = batch // data_parallel
    if per_rank * data_parallel != batch:
        raise ValueError(f"a batch of {batch} sequences does not split over {data_parallel} data-parallel ranks")
    return math.gcd(config_micro, per_rank)


def pretrain_command(study: Study, row: Dict[str, Any], settings: LaunchSettings) -> List[str]:
    """The command that trains (or resumes) one run."""
    import yaml

    config = yaml.safe_load(study.config(row["name"]).read_text(encoding="utf-8"))
    nproc = settings.nproc_per_node
    extra = shlex.split(settings.extra_args)
    launcher = [sys.executable, "-m"]
    if nproc > 1:
        launcher += ["torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m"]
    command = launcher + ["megatron_soda.pretrain", "--config", str(study.config(row["name"]))]
    if not settings.data_path and not config["data"].get("data_path"):
        raise ValueError("launch needs --data-path (the datasets the runs train on)")
    command += ["--data-path", *settings.data_path] if settings.data_path else []
    checkpoint = str(study.checkpoint(row["name"]))
    command += ["--save", checkpoint, "--load", checkpoint, "--metrics-file", str(study.metrics(row["name"]))]
    command += ["--exit-signal-handler"]  # SIGTERM: save where it stands (launch_local passes it on)
    if "--micro-batch-size" not in extra:
        micro = micro_batch(config["training"]["micro_batch_size"], row["batch_size"], nproc)
        command += ["--micro-batch-size", str(micro)]
    return command + extra


def _environment(job: int, settings: LaunchSettings) -> Dict[str, str]:
    """A run's environment: no launcher variables; with --jobs > 1, its own GPUs (or a share of the CPU)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    if settings.jobs > 1:
        from megatron_soda.device import device_info

        if device_info().cuda:
            import torch

            first = job * settings.nproc_per_node
            devices = range(first, min(first + settings.nproc_per_node, torch.cuda.device_count()))
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        else:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (settings.jobs * settings.nproc_per_node)))
    return env


def _prune_checkpoints(path: Path) -> None:
    """Removes every checkpoint but the latest (a finished run needs no earlier ones)."""
    from megatron_soda.training import checkpointing

    if checkpointing.latest_iteration(path) is not None:
        checkpointing.prune_checkpoints(path, keep_latest=1)


class _StopOnSignal:
    """SIGTERM to the launcher (preemption, an array task's ``--signal`` ahead of its time limit): passed on
    to the running runs, which save and exit (``--exit-signal-handler``); no further run starts."""

    def __init__(self, running: Dict[int, tuple]):
        self.running = running
        self.received = False
        self.previous = None

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._stop)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _stop(self, signum, frame) -> None:
        self.received = True
        for _, process, _, _ in list(self.running.values()):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)


def _requeue(log) -> None:
    """Requeues this SLURM job, so that it starts again and finishes the runs a stop left part-way."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        log("--requeue: not a SLURM job; launch again to finish the stopped runs")
        return
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
    if result.returncode == 0:
        log(f"requeued SLURM job {job}: it finishes the stopped runs when it starts again")
    else:
        log(f"scontrol requeue {job} failed ({result.stderr.strip()}); resubmit the array to finish the runs")


def launch_local(config: LaunchConfig, log=print) -> Dict[str, Any]:
    """Trains every selected unfinished run here, ``--jobs`` at a time; returns what happened to each run.

    On SIGTERM the running runs save and stop and no other starts; they are reported as stopped (launching
    again, or the requeued job with ``--requeue``, resumes them from those checkpoints).
    """
    study, settings = Study(config.output_dir), config.settings
    plan = study.load_plan()
    rows = select_runs(plan, settings.runs)
    states = {row["name"]: run_state(study, row) for row in rows}
    todo = [row for row in rows if not states[row["name"]].finished]
    commands = {row["name"]: pretrain_command(study, row, settings) for row in todo}  # refuse before running
    log(f"{len(rows) - len(todo)} of {len(rows)} runs finished already; {len(todo)} to run")
    running: Dict[int, tuple] = {}  # job slot -> (name, process, log file, start)
    failed, stopped, queue = [], [], list(todo)
    with _StopOnSignal(running) as stop:
        _run_queue(study, settings, commands, states, queue, running, failed, stopped, stop, log)
    if stopped:
        names = ", ".join(stopped)
        log(f"stopped on request (a signal or --exit-duration-in-mins): {names} saved part-way; launch again to finish")
        if settings.requeue:
            _requeue(log)
    if failed:
        log(f"{len(failed)} runs failed: {', '.join(failed)}; see their train.log (launch again to retry)")
    return {
        "runs": {name: state.describe() for name, state in states.items()},
        "finished": sum(state.finished for state in states.values()),
        "failed": failed,
        "stopped": stopped,
        "total": len(rows),
    }


def _run_queue(study, settings, commands, states, queue, running, failed, stopped, stop, log) -> None:
    """Starts queued runs into free job slots (none once ``stop`` received SIGTERM) until all have ended."""
    while (queue and not stop.received) or running:
        for job in range(settings.jobs):
            if job not in running and queue and not stop.received:
                row = queue.pop(0)
                name, state = row["name"], states[row["name"]]
                study.run_dir(name).mkdir(parents=True, exist_ok=True)
                out = open(study.log(name), "a", encoding="utf-8")
                out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(commands[name])}\n")
                out.flush()
                process = subprocess.Popen(
                    commands[name], stdout=out, stderr=subprocess.STDOUT, env=_environment(job, settings)
                )
                log(f"{name}: {state.describe()} -> training ({row['train_iters']} iterations; log {study.log(name)})")
                running[job] = (row, process, out, time.time())
        for job, (row, process, out, start) in list(running.items()):
            if process.poll() is None:
                continue
            out.close()
            del running[job]
            state = states[row["name"]] = run_state(study, row)
            status = state.describe()
            if not state.finished and (process.returncode == EXIT_RESUMABLE or stop.received):
                stopped.append(row["name"])  # torchrun reports its own exit code, not its workers' 75
                status = f"stopped on request, {status}"
            elif process.returncode != 0:
                failed.append(row["name"])
                status = f"FAILED (exit {process.returncode})"
            elif state.finished and not settings.keep_checkpoints:
                _prune_checkpoints(study.checkpoint(row["name"]))
            log(f"{row['name']}: {status} after {time.time() - start:.0f} s")
        time.sleep(0.2)


def slurm_script(config: LaunchConfig) -> str:
    """The SLURM array script: task i runs this launcher on the plan's run i (skipped if finished)."""
    study, settings = Study(config.output_dir), config.settings
    plan = study.load_plan()
    rows = select_runs(plan, settings.runs)
    indices = [plan["runs"].index(row) for row in rows]
    array = ",".join(map(str, indices)) + (f"%{settings.slurm_max_parallel}" if settings.slurm_max_parallel else "")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=isoflop-{study.root.name}",
        f"#SBATCH --array={array}",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --time={settings.slurm_time}",
        f"#SBATCH --output={study.slurm}/%A_%a.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:TERM@120",  # to the launcher (this shell, exec'd): its runs save before the limit
    ]
    gpus = settings.nproc_per_node if settings.slurm_gpus_per_node is None else settings.slurm_gpus_per_node
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    if settings.slurm_partition:
        lines.append(f"#SBATCH --partition={settings.slurm_partition}")
    if settings.slurm_account:
        lines.append(f"#SBATCH --account={settings.slurm_account}")
    command = [sys.executable, str(TOOL), "launch", "--output-dir", str(study.root), "--runs", "$SLURM_ARRAY_TASK_ID"]
    command += ["--nproc-per-node", str(settings.nproc_per_node)]
    if settings.data_path:
        command += ["--data-path", *settings.data_path]
    if settings.extra_args:
        command += ["--extra-args", settings.extra_args]
    if settings.keep_checkpoints:
        command.append("--keep-checkpoints")
    command.append("--requeue")
    quoted = " ".join('"$SLURM_ARRAY_TASK_ID"' if part.startswith("$") else shlex.quote(part) for part in command)
    lines += [
        "# One IsoFLOP run per array task; a finished run is skipped, a killed one resumes from its checkpoint,",
        "# so resubmitting this script finishes the study. SIGTERM (preemption, or two minutes before the time",
        "# limit) makes the run save and the task requeue itself.",
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
        f"exec {quoted}",
    ]
    return "\n".join(lines) + "\n"


def launch_slurm(config: LaunchConfig, log=print) -> Dict[str, Any]:
    """Writes slurm/isoflop.sbatch, and submits it with --submit; returns the script's path (and job id)."""
    study = Study(config.output_dir)
    study.slurm.mkdir(parents=True, exist_ok=True)
    path = study.slurm / "isoflop.sbatch"
    path.write_text(slurm_script(config), encoding="utf-8")
    path.chmod(0o755)
    log(f"wrote {path}")
    summary: Dict[str, Any] = {"script": str(path), "submitted": False}
    if config.settings.submit:
        if shutil.which("sbatch") is None:
            raise ValueError(f"--submit: no sbatch on this machine; submit {path} where SLURM runs")
        result = subprocess.run(["sbatch", str(path)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ValueError(f"sbatch {path} failed: {result.stderr.strip()}")
        log(result.stdout.strip())
        summary.update(submitted=True, sbatch=result.stdout.strip())
    return summary


def launch(config: LaunchConfig, log=print) -> Dict[str, Any]:
    """``--slurm``: the array script; otherwise the runs here."""
    return launch_slurm(config, log) if config.settings.slurm else launch_local(config, log)
