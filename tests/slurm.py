"""A real single-node SLURM cluster for the tests: Debian's slurm-wlm and munge, started in a temporary
folder and stopped cleanly (cancel every job, wait for an empty queue, then slurmd, slurmctld, munged).

``make slurm`` (and ``.ci/run``) installs the packages where they are missing; without them the tests
that need a cluster are skipped, naming the packages.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

MISSING = "needs Debian's slurm-wlm and munge (make slurm installs them)"


def available() -> bool:
    return all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "srun", "sbatch", "munged", "mungekey"))


def _free_memory_mb() -> int:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(int(fields["MemAvailable"].split()[0]) / 1024 * 0.9)


class SlurmCluster:
    """slurmctld + slurmd on this host, configured in ``root`` (SLURM_CONF points there)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.processes: List[subprocess.Popen] = []
        self.started_munge = False

    @property
    def env(self) -> Dict[str, str]:
        """The environment a client command (srun, sbatch, squeue) needs, launcher variables removed."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        env["SLURM_CONF"] = str(self.root / "slurm.conf")
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def start(self) -> "SlurmCluster":
        self._start_munge()
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        (self.root / "spool").mkdir(exist_ok=True)
        (self.root / "slurm.conf").write_text(self._config())
        for daemon in (["slurmctld", "-D", "-i"], ["slurmd", "-D"]):
            log = open(self.root / f"{daemon[0]}.out", "w")
            self.processes.append(subprocess.Popen(daemon, env=self.env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.time() + 60
        while time.time() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the SLURM node never became idle (last state {state!r}); see {self.root}")

    def _start_munge(self) -> None:
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create"], check=True, capture_output=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True, capture_output=True)
            self.started_munge = True

    def _config(self) -> str:
        r = self.root
        return "\n".join(
            [
                "ClusterName=tests",
                f"SlurmctldHost={self.host}",
                "SlurmUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                "ProctrackType=proctrack/pgid",  # linuxproc misses children that escape their parent
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "ReturnToService=2",
                "MailProg=/bin/true",
                f"StateSaveLocation={r}/state",
                f"SlurmdSpoolDir={r}/spool",
                f"SlurmctldPidFile={r}/slurmctld.pid",
                f"SlurmdPidFile={r}/slurmd.pid",
                f"SlurmctldLogFile={r}/slurmctld.log",
                f"SlurmdLogFile={r}/slurmd.log",
                f"NodeName={self.host} CPUs={os.cpu_count()} RealMemory={_free_memory_mb()} State=UNKNOWN",
                f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def wait_for_empty_queue(self, timeout: float = 120, job: Optional[str] = None) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            queue = self.run("squeue", "-h", *(["-j", job] if job else []), check=False).stdout.strip()
            if not queue:
                return
            time.sleep(0.3)
        raise TimeoutError(f"SLURM jobs still queued after {timeout} s: {queue}")

    def stop(self) -> None:
        """Cancel, drain, then stop slurmd, slurmctld and (if started here) munged: in that order, or
        slurmstepd retries forever."""
        try:
            self.run("scancel", "--user", os.environ.get("USER", "root"), check=False, timeout=30)
            self.wait_for_empty_queue(timeout=60)
        except (OSError, subprocess.SubprocessError, TimeoutError):
            pass
        for process in reversed(self.processes):  # slurmd first
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()
        if self.started_munge:
            subprocess.run(["pkill", "-x", "munged"], check=False)
