"""Preprocessing spread over workers: a SLURM array's tasks share one job by shards and end byte-identical to
one process; a cancelled task resubmitted finishes it; overwriting workers never delete each other's shards;
a job resumes on another codec device or dtype but never with another codec."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_soda.codec import CodecConfig
from megatron_soda.codec.tiny import TINY_MIMI
from megatron_soda.data.audio_pipeline import preprocess_audio
from megatron_soda.data.jobs import WorkerConfig, launcher_share
from tests.test_preprocess_audio import assert_same_outputs, config, corpus_subset, tokenizer_dir  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
MERGED = [f"{kind}{ext}" for kind in ("tokens", "codes") for ext in (".bin", ".idx", ".vocab.json")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # every run alike: torch's threads could regroup float sums


def tool_args(manifest, output_dir, tokenizer, *extra) -> list:
    return [
        sys.executable,
        str(ROOT / "tools" / "preprocess_audio.py"),
        *("--input", str(manifest), "--output-dir", str(output_dir), "--tokenizer", tokenizer),
        *("--codec-random-init", "--codec-config", json.dumps(TINY_MIMI), "--documents-per-shard", "1"),
        *("--workers", "0", "--no-progress", "--json", "-", *map(str, extra)),
    ]


def assert_same_job(a: Path, b: Path) -> None:
    """Shards, merged datasets, rejects and report byte for byte (job.json and timings may differ)."""
    assert_same_outputs(a, b)
    for name in MERGED + ["rejects_input.jsonl"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_workers_default_to_the_launchers_variables_and_flags_win():
    array = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert launcher_share(array)[:2] == (2, 4)
    no_count = {k: v for k, v in array.items() if k != "SLURM_ARRAY_TASK_COUNT"}
    assert launcher_share({**no_count, "SLURM_ARRAY_TASK_MAX": "8"})[:2] == (2, 4)
    assert launcher_share({"SLURM_PROCID": "1", "SLURM_NTASKS": "3", "SLURM_STEP_ID": "0"})[:2] == (1, 3)
    assert launcher_share({"RANK": "3", "WORLD_SIZE": "8", **array})[:2] == (3, 8)  # torchrun wins
    assert launcher_share({})[:2] == (0, 1)
    share = WorkerConfig(worker_rank=2, num_workers_total=4).share(array)
    assert (share.rank, share.total, share.owns(6), share.owns(5)) == (2, 4, True, False)
    with pytest.raises(ValueError, match="worker rank 5 is not within the 4 workers"):
        WorkerConfig(worker_rank=5).share(array)


BATCH = """#!/bin/bash
if [ "$SLURM_ARRAY_TASK_ID" = "$PAUSED_TASK" ]; then export MEGATRON_SODA_PAUSE_AFTER_SHARD=600; fi
exec {command} "$@"
"""


def sbatch(cluster, script: Path, logs: Path, array: str, *args, **env) -> str:
    exports = ",".join(["ALL", "OMP_NUM_THREADS=1", *(f"{k}={v}" for k, v in env.items())])
    out = cluster.run(
        "sbatch", "--parsable", f"--array={array}", f"--export={exports}", f"--chdir={ROOT}",
        f"--output={logs}/%A_%a.out", str(script), *map(str, args),
    ).stdout  # fmt: skip
    return out.strip().split(";")[0]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.timeout(400)
def test_a_slurm_array_with_a_cancelled_task_resubmitted_equals_one_uninterrupted_process(
    slurm_cluster,
    tmp_path,
    tokenizer_dir,  # noqa: F811
):
    manifest, _, recordings = corpus_subset(tmp_path, recordings=8)  # 8 shards: worker r does r and r + 4
    whole = subprocess.Popen(tool_args(manifest, tmp_path / "whole", tokenizer_dir), env=ENV, stdout=subprocess.PIPE)
    out, logs = tmp_path / "array", tmp_path / "logs"
    logs.mkdir()
    script = tmp_path / "preprocess.sbatch"
    command = " ".join(f"'{a}'" for a in tool_args(manifest, out, tokenizer_dir))
    script.write_text(BATCH.format(command=command))

    job = sbatch(slurm_cluster, script, logs, "0-3", PAUSED_TASK=2)  # task 2 sleeps after its first shard
    wait_for(lambda: (out / "shards" / "shard_00002.json").exists(), 240, "task 2's first shard")
    slurm_cluster.run("scancel", f"{job}_2")
    slurm_cluster.wait_for_empty_queue(timeout=240, job=job)
    committed = sorted(p.name for p in (out / "shards").glob("shard_*.json"))
    assert committed == [f"shard_{i:05d}.json" for i in range(8) if i != 6]
    assert not (out / "report.json").exists()  # no task finished last with every shard committed

    refused = subprocess.run(tool_args(manifest, out, tokenizer_dir, "--finalize"), env=ENV, capture_output=True)
    assert refused.returncode == 1
    assert b"1 of 8 shards are not committed yet: 6 (worker 2)" in refused.stderr

    resubmitted = sbatch(slurm_cluster, script, logs, "2", "--worker-rank", 2, "--num-workers-total", 4)
    slurm_cluster.wait_for_empty_queue(timeout=240, job=resubmitted)
    assert whole.wait(timeout=240) == 0
    report = json.loads((out / "report.json").read_text())  # written by the resubmitted task: the last
    assert (report["documents"], report["shards"], report["merged"]) == (recordings, 8, ["tokens", "codes"])
    assert_same_job(tmp_path / "whole", out)
    assert json.loads((out / "throughput.json").read_text())["cpu"]["audio_hours_per_device_hour"] > 0
    finalized = subprocess.run(tool_args(manifest, out, tokenizer_dir, "--finalize"), env=ENV, capture_output=True)
    assert finalized.returncode == 0 and json.loads(finalized.stdout) == report


@pytest.mark.timeout(300)
def test_overwriting_workers_started_together_never_delete_each_others_shards(tmp_path, tokenizer_dir):  # noqa: F811
    manifest, _, _ = corpus_subset(tmp_path, recordings=4)
    whole = subprocess.Popen(tool_args(manifest, tmp_path / "whole", tokenizer_dir), env=ENV)
    out = tmp_path / "out"

    def worker(rank, **env):
        args = tool_args(manifest, out, tokenizer_dir, "--overwrite", "--worker-rank", rank, "--num-workers-total", 2)
        return subprocess.Popen(
            args, env={**ENV, **{k: str(v) for k, v in env.items()}}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    # A finished two-worker job; then both workers again with --overwrite, together: worker 1 overwrites
    # and finishes while worker 0, asleep after its first shard, has that shard committed.
    for first in (worker(0), worker(1)):
        assert first.wait(timeout=240) == 0
    shard_zero = out / "shards" / "shard_00000.json"
    before = shard_zero.stat().st_mtime_ns
    go = tmp_path / "go"
    zero = worker(0, MEGATRON_SODA_PAUSE_AFTER_SHARD=go)  # asleep after its first shard until `go` exists
    try:
        wait_for(lambda: shard_zero.exists() and shard_zero.stat().st_mtime_ns != before, 240, "worker 0's shard")
        committed = shard_zero.stat()
        one = worker(1)
        assert one.wait(timeout=240) == 0, one.stderr.read()
        assert zero.poll() is None, "worker 0 should still be asleep after its first shard"
        assert (shard_zero.stat().st_ino, shard_zero.stat().st_mtime_ns) == (committed.st_ino, committed.st_mtime_ns)
        assert (out / "shards" / "tokens_00000.bin").exists() and (out / "shards" / "codes_00000.idx").exists()
        assert not (out / "report.json").exists()  # shard 2, worker 0's, is still to do
        go.touch()
        assert zero.wait(timeout=240) == 0 and whole.wait(timeout=240) == 0
    finally:  # nothing left running (worker 0 would wait for `go` forever)
        for process in (zero, whole):
            if process.poll() is None:
                process.kill()
    assert (out / "report.json").exists()  # worker 0, the last, finalized
    assert_same_job(tmp_path / "whole", out)


def test_a_job_resumes_with_another_codec_dtype_but_never_with_another_codec(tmp_path, tokenizer_dir):  # noqa: F811
    manifest, _, _ = corpus_subset(tmp_path, recordings=2)
    out = tmp_path / "out"
    preprocess_audio(config([manifest], out, tokenizer_dir, documents_per_shard=1))
    for name in ("shard_00001.json", "tokens_00001.idx"):  # as a job killed inside shard 1 leaves it
        (out / "shards" / name).unlink()
    (out / "report.json").unlink()

    # another dtype and encoder implementation: the same codec, recorded per shard
    bf16 = CodecConfig(random_init=True, config_overrides=TINY_MIMI, dtype="bfloat16", encoder="transformers")
    report = preprocess_audio(config([manifest], out, tokenizer_dir, documents_per_shard=1, codec=bf16))
    assert report["codec_runs"] == {"cpu float32 gemm": 1, "cpu bfloat16 transformers": 1} and report["shards"] == 2
    runs = [json.loads((out / "shards" / f"shard_0000{i}.json").read_text())["codec"] for i in (0, 1)]
    assert runs == [
        {"device": "cpu", "dtype": "float32", "encoder": "gemm"},
        {"device": "cpu", "dtype": "bfloat16", "encoder": "transformers"},
    ]

    other = CodecConfig(random_init=True, config_overrides=TINY_MIMI, seed=1)  # other weights
    with pytest.raises(ValueError, match="different job \\(codec \\(job.json has .*'seed': 0.*this run .*'seed': 1"):
        preprocess_audio(config([manifest], out, tokenizer_dir, documents_per_shard=1, codec=other))
