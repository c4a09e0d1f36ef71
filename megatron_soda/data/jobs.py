"""Resumable sharded jobs: an output directory whose shards commit one at a time, shared by workers.

``job.json`` records what the job is (a fingerprint of inputs and settings) and how many workers share
it; every worker and every rerun must match it, so a changed input is never mixed with old shards. It
is created once (the first worker's write wins; the others compare against it) and holds nothing one
worker knows and another does not. Worker ``r`` of ``W`` owns shard ``i`` when ``i % W == r``: it alone
writes, resumes or (``--overwrite``) deletes that shard's files, so workers never touch each other's.

Each shard's files are written first and its ``shard_NNNNN.json`` report last (atomically): that file,
naming the job it belongs to, is the shard's commit point. A shard without it (or with another job's)
is redone from scratch, overwriting whatever a killed run left. ``finalize_job`` runs once every shard is
committed: it merges the shards of each kind into one dataset and writes ``report.json``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence

from megatron_soda.checks import check_at_least

logger = logging.getLogger(__name__)


def write_atomic(path: str, text: str) -> None:
    """Writes a small text file so that it is either absent or complete (fsync, then rename)."""
    tmp = _written_tmp(path, text)
    os.replace(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))


def create_once(path: str, text: str) -> bool:
    """Writes ``path`` complete unless it exists (then leaves it alone); whether this call wrote it.
    Atomic between processes: of workers racing to create it, exactly one wins (hard link, not rename)."""
    tmp = _written_tmp(path, text)
    try:
        os.link(tmp, path)
        fsync_path(os.path.dirname(os.path.abspath(path)))
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)


def _written_tmp(path: str, text: str) -> str:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def fsync_path(path) -> None:
    """fsyncs a file or a directory by path (a directory: so the renames in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def content_digest(path: str) -> str:
    """sha256 over a file, or over the names and contents of a directory's files (not recursive)."""
    digest = hashlib.sha256()
    names = sorted(os.listdir(path)) if os.path.isdir(path) else [""]
    for name in names:
        full = os.path.join(path, name) if name else path
        if os.path.isfile(full):
            digest.update(name.encode() + b"\0")
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def records_digest(rows: Iterable[Iterable]) -> str:
    """sha256 over rows of values: what a job will read, so a changed input is never resumed."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(list(row), default=str).encode() + b"\n")
    return digest.hexdigest()


def file_fingerprint(path: str) -> dict:
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# ---- which worker owns which shard ------------------------------------------------------------------------


@dataclass
class WorkerConfig:
    """How a job is shared between workers (the ``--worker-rank``, ``--num-workers-total``, ``--finalize`` flags)."""

    worker_rank: Optional[int] = None
    """this worker's rank, 0..W-1 (default: torchrun's RANK, the SLURM array task's position
    SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, srun's SLURM_PROCID, else 0)."""
    num_workers_total: Optional[int] = None
    """W, the workers sharing the job: worker r does shards i with i % W == r (default: WORLD_SIZE,
    SLURM_ARRAY_TASK_COUNT, SLURM_NTASKS, else 1). The last to finish writes the report."""
    finalize: bool = False
    """do no shard: check that every shard is committed (naming missing ones and their workers), merge
    them and write report.json."""

    def check(self, overwrite: bool = False) -> None:
        if self.finalize and overwrite:
            raise ValueError("--finalize writes the report of a finished job; it cannot --overwrite one")
        check_at_least("--num-workers-total", self.num_workers_total, 1)
        check_at_least("--worker-rank", self.worker_rank, 0)
        if None not in (self.worker_rank, self.num_workers_total) and self.worker_rank >= self.num_workers_total:
            raise ValueError(
                f"--worker-rank {self.worker_rank} must be below --num-workers-total {self.num_workers_total}"
            )

    def share(self, environ: Optional[Mapping[str, str]] = None) -> "WorkerShare":
        """This process's share: the flags, else what its launcher says (``launcher_share``)."""
        rank, total, what = launcher_share(os.environ if environ is None else environ)
        if self.num_workers_total is not None:
            total, what = self.num_workers_total, "--num-workers-total"
        if self.worker_rank is not None:
            rank = self.worker_rank
        if not 0 <= rank < total:
            raise ValueError(f"worker rank {rank} is not within the {total} workers of {what}; pass --worker-rank")
        return WorkerShare(rank, total)


def launcher_share(environ: Mapping[str, str]):
    """(rank, workers, where from): torchrun's RANK/WORLD_SIZE, else a SLURM array task's position in its
    array, else an srun task's SLURM_PROCID/SLURM_NTASKS, else (0, 1)."""

    def number(key: str) -> int:
        try:
            return int(environ[key])
        except ValueError:
            raise ValueError(f"{key}={environ[key]!r} is not a whole number") from None

    if "RANK" in environ and "WORLD_SIZE" in environ:
        return number("RANK"), number("WORLD_SIZE"), "WORLD_SIZE"
    if "SLURM_ARRAY_TASK_ID" in environ:
        first, step = number("SLURM_ARRAY_TASK_MIN"), int(environ.get("SLURM_ARRAY_TASK_STEP") or 1)
        if "SLURM_ARRAY_TASK_COUNT" in environ:
            total = number("SLURM_ARRAY_TASK_COUNT")
        else:
            total = (number("SLURM_ARRAY_TASK_MAX") - first) // step + 1
        return (number("SLURM_ARRAY_TASK_ID") - first) // step, total, "the SLURM array"
    if "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:  # a task of an srun step
        return number("SLURM_PROCID"), number("SLURM_NTASKS"), "SLURM_NTASKS"
    return 0, 1, "a single process"


@dataclass(frozen=True)
class WorkerShare:
    """Worker ``rank`` of ``total``: it owns shard ``i`` when ``i % total == rank``."""

    rank: int = 0
    total: int = 1

    def owns(self, index: int) -> bool:
        return index % self.total == self.rank

    def owner(self, index: int) -> int:
        return index % self.total

    def __str__(self) -> str:
        return f"worker {self.rank} of {self.total}"


SOLO = WorkerShare()

# ---- the job directory ------------------------------------------------------------------------------------

JOB_FILES = ("report.json", "rejects_input.jsonl", "throughput.json")
"""What finalizing writes beside job.json (with the merged datasets): stale once any shard is redone."""
SHARD_FILE = re.compile(r"^[a-z]+_(\d{5})\.")


class IncompleteJob(ValueError):
    """Finalizing a job some of whose shards are not committed yet (``missing``)."""

    def __init__(self, message: str, missing: Sequence[int]):
        super().__init__(message)
        self.missing = list(missing)


class ShardedJob:
    """The output directory of a sharded job, as seen by one worker; opening it checks (or records) the
    job's fingerprint and its number of workers.

    ``overwrite`` discards this worker's own shards (and the job-level results, now stale), never another's.
    ``share`` None (finalizing) takes the workers job.json records.
    """

    def __init__(
        self, output_dir: str, fingerprint: dict, overwrite: bool = False, share: Optional[WorkerShare] = SOLO
    ):
        job_path = os.path.join(output_dir, "job.json")
        if share is None:
            try:
                with open(job_path) as f:
                    share = WorkerShare(0, int(json.load(f).get("workers", 1)))
            except FileNotFoundError:
                raise ValueError(f"{output_dir}: no job.json, so no job to finalize; run its workers first") from None
        self.output_dir, self.share = output_dir, share
        self.shard_dir = os.path.join(output_dir, "shards")
        self.job_id = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
        os.makedirs(self.shard_dir, exist_ok=True)
        os.makedirs(os.path.join(output_dir, "timing"), exist_ok=True)
        recorded = {**json.loads(json.dumps(fingerprint, default=str)), "workers": share.total}
        if overwrite:
            self._discard_own()
            write_atomic(job_path, json.dumps(recorded, indent=2))  # racing workers of one job write the same
        elif not create_once(job_path, json.dumps(recorded, indent=2)):
            with open(job_path) as f:
                self._check_same(json.load(f), recorded)

    def _check_same(self, old: dict, new: dict) -> None:
        changed = sorted(k for k in set(old) | set(new) if k != "workers" and old.get(k) != new.get(k))
        if changed:
            what = ", ".join(
                f"{k} (job.json has {old.get(k)}, this run {new.get(k)})" if k == "codec" else k for k in changed
            )
            raise ValueError(
                f"{self.output_dir} holds a different job ({what} changed); rerun the original command to resume "
                "it, or pass --overwrite to start again"
            )
        if old.get("workers") != new["workers"]:
            raise ValueError(
                f"{self.output_dir} is shared by {old.get('workers')} workers (shard i belongs to worker i % "
                f"{old.get('workers')}), not {new['workers']}: pass --num-workers-total {old.get('workers')} "
                "--worker-rank R, or --overwrite to start again"
            )

    def _discard_own(self) -> None:
        """Only what this worker's shards wrote, and the job-level results: never inputs, other files that
        share the directory, or another worker's shards."""
        for folder in (self.shard_dir, os.path.join(self.output_dir, "timing")):
            for name in os.listdir(folder):
                match = SHARD_FILE.match(name)
                if match and self.share.owns(int(match.group(1))):
                    os.remove(os.path.join(folder, name))
        self.discard_results()

    def discard_results(self) -> None:
        for name in JOB_FILES:
            if os.path.exists(os.path.join(self.output_dir, name)):
                os.remove(os.path.join(self.output_dir, name))

    def path(self, kind: str, index: int, ext: str = "") -> str:
        return os.path.join(self.shard_dir, f"{kind}_{index:05d}{ext}")

    def commit_record(self, index: int) -> Optional[dict]:
        """Shard ``index``'s commit (its report), or None when it is not committed to this job."""
        try:
            with open(self.path("shard", index, ".json")) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        return record if record.get("job", self.job_id) == self.job_id else None

    def is_committed(self, index: int) -> bool:
        return self.commit_record(index) is not None

    def commit(self, index: int, report: dict) -> None:
        write_atomic(self.path("shard", index, ".json"), json.dumps({"shard": index, "job": self.job_id, **report}))

    def own(self, num_shards: int) -> List[int]:
        """This worker's shards."""
        return [i for i in range(num_shards) if self.share.owns(i)]

    def missing(self, num_shards: int) -> List[int]:
        return [i for i in range(num_shards) if not self.is_committed(i)]

    def reports(self, num_shards: int) -> List[dict]:
        return [self.commit_record(i) for i in range(num_shards)]

    def record_time(self, index: int, device: str, seconds: float, audio_seconds: float) -> None:
        """What shard ``index`` cost (wall seconds on ``device``), kept out of the shard's own files so that
        those stay byte-identical from run to run."""
        record = {"device": device, "seconds": seconds, "audio_seconds": audio_seconds}
        write_atomic(os.path.join(self.output_dir, "timing", f"shard_{index:05d}.json"), json.dumps(record))

    def throughput(self, num_shards: int) -> dict:
        """Per device: audio hours, device hours and audio hours per device hour of the shards' last runs."""
        out = {}
        for index in range(num_shards):
            try:
                with open(os.path.join(self.output_dir, "timing", f"shard_{index:05d}.json")) as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue
            totals = out.setdefault(record["device"], {"audio_hours": 0.0, "device_hours": 0.0})
            totals["audio_hours"] += record["audio_seconds"] / 3600
            totals["device_hours"] += record["seconds"] / 3600
        for totals in out.values():
            totals["audio_hours_per_device_hour"] = totals["audio_hours"] / max(totals["device_hours"], 1e-12)
        return out

    def write(self, name: str, text: str) -> None:
        write_atomic(os.path.join(self.output_dir, name), text)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Held while finalizing: of workers finishing together, one merges; the others find it done."""
        with open(os.path.join(self.output_dir, "finalize.lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def summarize(reports: List[dict], input_rejects=()) -> dict:
    """Totals of shard reports: numbers summed, reject counts merged by reason, shards per codec run."""
    totals, rejects, codecs = {}, {}, {}
    for reason in (r.reason for r in input_rejects):
        rejects[reason] = rejects.get(reason, 0) + 1
    for report in reports:
        for key, value in report.items():
            if key == "rejects":
                for reason, count in value.items():
                    rejects[reason] = rejects.get(reason, 0) + count
            elif key == "codec":
                run = " ".join(str(v) for v in value.values())  # e.g. "cpu float32 gemm"
                codecs[run] = codecs.get(run, 0) + 1
            elif key != "shard" and isinstance(value, (int, float)):
                totals[key] = totals.get(key, 0) + value
    return {"shards": len(reports), **totals, "rejects": rejects, **({"codec_runs": codecs} if codecs else {})}


def missing_message(job: ShardedJob, missing: Sequence[int], num_shards: int) -> str:
    names = ", ".join(f"{i} (worker {job.share.owner(i)})" for i in missing[:20])
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    return (
        f"{job.output_dir}: {len(missing)} of {num_shards} shards are not committed yet: {names}{more} "
        f"(worker r of {job.share.total} does shards i with i % {job.share.total} == r); rerun those workers "
        "with the same command, then --finalize"
    )


def finalize_job(job: ShardedJob, num_shards: int, kinds: Sequence[str], input_rejects=(), **extra) -> dict:
    """Once every shard is committed: each kind's shards merged into ``<output_dir>/<kind>`` (byte-identical
    to one writer's output), ``rejects_input.jsonl`` and ``report.json`` written, the report returned. The
    shards' cost goes to ``throughput.json`` (audio-hours per device-hour, per device) and the log, not to
    the report, which stays the same from run to run.
    ``IncompleteJob`` naming the missing shards and their workers otherwise. Done once: a later call (a
    worker finishing at the same time) returns the report already written."""
    from megatron_soda.data.indexed_dataset import merge_datasets

    missing = job.missing(num_shards)
    if missing:
        raise IncompleteJob(missing_message(job, missing, num_shards), missing)
    report_path = os.path.join(job.output_dir, "report.json")
    with job.locked():
        if os.path.exists(report_path):
            with open(report_path) as f:
                report = json.load(f)
            if report.get("job") == job.job_id:
                return report
        for kind in kinds if num_shards else ():
            prefixes = [job.path(kind, i) for i in range(num_shards)]
            merge_datasets(os.path.join(job.output_dir, kind), prefixes, overwrite=True)
        job.write("rejects_input.jsonl", "".join(r.to_json() + "\n" for r in input_rejects))
        report = summarize(job.reports(num_shards), input_rejects)
        if "seconds" in report:
            report["hours"] = report["seconds"] / 3600
        report.update(extra, job=job.job_id, merged=[kind for kind in kinds if num_shards])
        throughput = job.throughput(num_shards)
        job.write("throughput.json", json.dumps(throughput, indent=2))
        job.write("report.json", json.dumps(report, indent=2))
    for device, totals in throughput.items():
        logger.info(
            "%s: %.4f audio-hours in %.4f device-hours on %s: %.1f audio-hours per device-hour (throughput.json)",
            job.output_dir,
            totals["audio_hours"],
            totals["device_hours"],
            device,
            totals["audio_hours_per_device_hour"],
        )
    return report


def open_job(config, fingerprint: dict) -> ShardedJob:
    """The job directory as this worker (``config.cluster``) sees it; ``--finalize`` alone takes the
    workers job.json records."""
    share = config.cluster.share()
    if config.cluster.finalize and config.cluster.num_workers_total is None:
        share = None
    return ShardedJob(config.output_dir, fingerprint, config.overwrite, share)


def finish(job: ShardedJob, num_shards: int, kinds: Sequence[str], input_rejects, finalize: bool) -> dict:
    """The job's report: written by ``--finalize``, the only worker, or whichever worker finds every shard
    committed when its own are done; the others return their part (``finalized`` false)."""
    try:
        return finalize_job(job, num_shards, kinds, input_rejects)
    except IncompleteJob as waiting:
        if finalize or job.share.total == 1:
            raise
        logger.info("%s is done; the last worker to finish (or --finalize) writes the report: %s", job.share, waiting)
        own = job.own(num_shards)
        return {
            "finalized": False,
            "worker": job.share.rank,
            "workers": job.share.total,
            **summarize([job.commit_record(i) for i in own]),
            "shards_left": len(waiting.missing),
        }
