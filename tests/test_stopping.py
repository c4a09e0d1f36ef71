"""Stopping on request: a signal stops every rank after the same iteration, saved, with exit code 75, and a
relaunch with --load (or the SLURM job requeued by itself) trains the uninterrupted run's numbers."""

import os
import signal
import time
from pathlib import Path

import pytest

from megatron_soda.training.checkpointing import latest_iteration
from megatron_soda.training.logger import iteration_records
from megatron_soda.training.stopping import StopRequests
from tests.dist import ROOT, free_port, launch

ITERATIONS = 60


def run_args(learned, metrics, *extra):
    return [
        *("--model", "tiny", "--tokenizer", learned["root"] / "tok", "--data-path", learned["root"] / "utterance"),
        *("--split", "100,0,0", "--seq-length", 64, "--micro-batch-size", 2, "--global-batch-size", 4),
        *("--train-iters", ITERATIONS, "--lr", 3e-3, "--lr-decay-style", "cosine", "--lr-warmup-iters", 2),
        *("--metrics-file", metrics, "--skip-data-validation", *extra),
    ]


def wait_for_records(metrics, running, timeout=120):
    """Until ``metrics`` holds an iteration record, while ``running()`` says the run is still going."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if metrics.exists() and iteration_records(metrics):
                return
        except ValueError:  # a line still being written
            pass
        assert running(), "the run ended before it was signalled"
        time.sleep(0.02)
    raise AssertionError(f"no iteration recorded in {metrics} within {timeout} s")


def task_pid(job, rank):
    """The pid of rank ``rank`` of SLURM job ``job``'s pretraining step, found by its environment."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = dict(v.split("=", 1) for v in environ.read_bytes().decode().split("\0") if "=" in v)
            command = (environ.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if variables.get("SLURM_JOB_ID") == job and variables.get("SLURM_PROCID") == str(rank):
            if b"megatron_soda.pretrain" in command:
                return int(environ.parent.name)
    raise AssertionError(f"no rank {rank} of job {job} running")


@pytest.fixture(scope="module")
def whole(learned, tmp_path_factory):
    """The uninterrupted run's records (DP=2)."""
    metrics = tmp_path_factory.mktemp("whole") / "whole.jsonl"
    launch("pretrain_entry.py", 2, *run_args(learned, metrics))
    return iteration_records(metrics)


def assert_same_run(records, whole):
    assert [r["iteration"] for r in records] == list(range(1, ITERATIONS + 1))
    for key in ("lm loss", "grad norm", "learning rate", "consumed samples"):
        assert [r[key] for r in records] == [r[key] for r in whole], key


@pytest.mark.timeout(900)
def test_a_two_task_srun_job_trains_the_torchrun_runs_losses_and_signalled_requeues_itself_and_finishes(
    learned, whole, slurm_cluster, tmp_path
):
    """Plain srun (ranks from SLURM's variables) at DP=2, under the example's requeue (examples/slurm_requeue.sh)
    on a real cluster. SIGTERM reaches rank 1 alone (as when one node of a job is signalled first): both ranks
    stop after the same iteration, save and exit 75, the job requeues itself and resumes into the same metrics
    file, which ends with the records of the uninterrupted run started as torchrun starts ranks."""
    import sys

    ckpt, metrics, log = tmp_path / "ckpt", tmp_path / "run.jsonl", tmp_path / "job.out"
    args = " ".join(
        f"'{a}'" for a in run_args(learned, metrics, "--save", ckpt, "--load", ckpt, "--exit-signal-handler")
    )
    script = tmp_path / "job.sbatch"
    script.write_text(
        "#!/bin/bash\nset -euo pipefail\n"
        f"source '{ROOT}/examples/slurm_requeue.sh'\n"
        f"run_requeueing srun --kill-on-bad-exit=1 --export=ALL,MASTER_PORT={free_port()},OMP_NUM_THREADS=1 "
        f"'{sys.executable}' -m megatron_soda.pretrain {args}\n"
    )
    job = slurm_cluster.run(
        "sbatch",
        "--parsable",
        "-n",
        "2",
        "--requeue",
        "--open-mode=append",
        f"--output={log}",
        f"--chdir={ROOT}",
        str(script),
    ).stdout.strip()

    def queued():  # an squeue that fails (slurmctld busy) says nothing about the job
        result = slurm_cluster.run("squeue", "-h", "-j", job, check=False)
        assert result.returncode != 0 or result.stdout.strip(), log.read_text()[-3000:] if log.exists() else "no log"
        return True

    wait_for_records(metrics, queued)
    os.kill(task_pid(job, rank=1), signal.SIGTERM)
    # A requeued job waits (BeginTime) before it may start again; the test does not.
    deadline = time.time() + 120
    while "PENDING" not in slurm_cluster.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout:
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    slurm_cluster.wait_for_empty_queue(timeout=300, job=job)

    output = log.read_text()
    assert f"stopped early with a checkpoint saved: requeueing job {job}" in output, output[-3000:]
    assert "Restarts=1" in slurm_cluster.run("scontrol", "show", "job", job).stdout
    assert_same_run(iteration_records(metrics), whole)
    assert latest_iteration(ckpt) == ITERATIONS
    run = metrics.read_text().splitlines()[0]
    assert '"data": 2' in run and '"world_size": 2' in run


def test_the_handler_notes_its_signal_and_stays_once_a_stop_is_under_way():
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequests("SIGUSR1", None, started=time.time()) as stops:
        assert stops.requested() is None
    assert signal.getsignal(signal.SIGUSR1) is before  # nothing asked: the old handler comes back

    stops = StopRequests("SIGUSR1", None, started=time.time()).install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stops.requested() == "SIGUSR1 received (--exit-signal-handler)"
        stops.restore()
        os.kill(os.getpid(), signal.SIGUSR1)  # as srun's follow-up SIGTERM: noted, the process lives on
        assert signal.getsignal(signal.SIGUSR1) == stops._note
    finally:
        signal.signal(signal.SIGUSR1, before)

    with StopRequests("SIGINT", None, started=time.time()) as stops:
        os.kill(os.getpid(), signal.SIGINT)
        assert stops.requested() is not None
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)


def test_a_budget_counts_from_the_start_and_nothing_asked_means_no_collective():
    assert StopRequests(None, None, started=0.0).requested() is None  # inactive: no process group needed
    assert StopRequests(None, 1.0, started=time.time()).requested() is None
    assert StopRequests(None, 1.0, started=time.time() - 61).requested() == "--exit-duration-in-mins 1 reached"
    with pytest.raises(ValueError, match="--exit-signal 'SIGKILL': choose one of SIGTERM"):
        StopRequests("SIGKILL", None, started=0.0)
