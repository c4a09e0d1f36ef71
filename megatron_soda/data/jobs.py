"""Resumable sharded jobs: an output directory whose shards commit one at a time.

``job.json`` records what the job is (a fingerprint of inputs and settings); a rerun must match it
to resume, so a changed input can never be mixed with old shards. Each shard's files are written
first and its ``shard_NNNNN.json`` report last (atomically): that file is the shard's commit point. A
shard without it is redone from scratch, overwriting whatever a killed run left.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Iterable, List


def write_atomic(path: str, text: str) -> None:
    """Writes a small text file so that it is either absent or complete (fsync, then rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))


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


JOB_FILES = ("job.json", "report.json", "rejects_input.jsonl")


class ShardedJob:
    """The output directory of a sharded job; opening it checks (or records) the job's fingerprint."""

    def __init__(self, output_dir: str, fingerprint: dict, overwrite: bool = False):
        self.output_dir = output_dir
        self.shard_dir = os.path.join(output_dir, "shards")
        job_path = os.path.join(output_dir, "job.json")
        if os.path.exists(job_path) and not overwrite:
            with open(job_path) as f:
                if json.load(f) != json.loads(json.dumps(fingerprint)):
                    raise ValueError(
                        f"{output_dir} holds a different job (inputs, tokenizer or settings changed); rerun the "
                        "original command to resume it, or pass --overwrite to start again"
                    )
            return
        if overwrite:  # only what a job writes: never inputs or other files that share the directory
            shutil.rmtree(self.shard_dir, ignore_errors=True)
            for name in JOB_FILES:
                if os.path.exists(os.path.join(output_dir, name)):
                    os.remove(os.path.join(output_dir, name))
        os.makedirs(self.shard_dir, exist_ok=True)
        write_atomic(job_path, json.dumps(fingerprint, indent=2))

    def path(self, kind: str, index: int, ext: str = "") -> str:
        return os.path.join(self.shard_dir, f"{kind}_{index:05d}{ext}")

    def is_committed(self, index: int) -> bool:
        return os.path.exists(self.path("shard", index, ".json"))

    def commit(self, index: int, report: dict) -> None:
        write_atomic(self.path("shard", index, ".json"), json.dumps({"shard": index, **report}))

    def reports(self, num_shards: int) -> List[dict]:
        reports = []
        for index in range(num_shards):
            with open(self.path("shard", index, ".json")) as f:
                reports.append(json.load(f))
        return reports

    def write(self, name: str, text: str) -> None:
        write_atomic(os.path.join(self.output_dir, name), text)


def summarize(reports: List[dict], input_rejects=()) -> dict:
    """Totals of shard reports: numbers summed, reject counts merged by reason."""
    totals, rejects = {}, {}
    for reason in (r.reason for r in input_rejects):
        rejects[reason] = rejects.get(reason, 0) + 1
    for report in reports:
        for key, value in report.items():
            if key == "rejects":
                for reason, count in value.items():
                    rejects[reason] = rejects.get(reason, 0) + count
            elif key != "shard":
                totals[key] = totals.get(key, 0) + value
    return {"shards": len(reports), **totals, "rejects": rejects}
