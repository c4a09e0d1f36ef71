"""Who launched this process: torchrun, plain ``srun``, or nobody (a world of one).

torch.distributed's ``env://`` start reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
(and megatron's device choice ``LOCAL_RANK``). torchrun sets them; ``srun`` without torchrun sets only
SLURM's own variables, so they are derived here: rank ``SLURM_PROCID``, world ``SLURM_NTASKS``, local rank
``SLURM_LOCALID``, master the first host of ``SLURM_JOB_NODELIST`` (or ``SLURM_STEP_NODELIST``) and a
port from the job id unless ``MASTER_PORT`` is given. torchrun's variables win where both exist (torchrun
inside an ``sbatch`` script). ``apply()`` runs before anything reads them: at the top of every entry point.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, MutableMapping, Optional

TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
PORT_BASE, PORT_SPAN = 20000, 20000
"""srun: MASTER_PORT = PORT_BASE + job id mod PORT_SPAN, one port per job on a shared node."""


class LaunchError(ValueError):
    """The launcher's variables contradict each other: training would hang or pair the wrong ranks."""


@dataclass(frozen=True)
class LaunchEnv:
    launcher: str
    """"torchrun", "srun" or "none"."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: Optional[str] = None
    master_port: Optional[int] = None

    def variables(self) -> Dict[str, str]:
        """What torch.distributed's env:// start reads (empty for a world of one)."""
        if self.launcher == "none":
            return {}
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "MASTER_ADDR": str(self.master_addr),
            "MASTER_PORT": str(self.master_port),
        }


def detect(environ: Mapping[str, str]) -> LaunchEnv:
    """The launch environment ``environ`` describes; ``LaunchError`` when it is inconsistent."""
    if any(key in environ for key in ("RANK", "WORLD_SIZE")):
        return _from_torchrun(environ)
    if "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:  # a task of an srun step
        return _from_srun(environ)
    return LaunchEnv("none")


def apply(environ: Optional[MutableMapping[str, str]] = None) -> LaunchEnv:
    """Detects the launch environment and writes torch's variables into ``environ`` (default os.environ)."""
    environ = os.environ if environ is None else environ
    found = detect(environ)
    environ.update(found.variables())
    return found


def _integer(environ: Mapping[str, str], key: str, launcher: str) -> int:
    try:
        return int(environ[key])
    except KeyError:
        raise LaunchError(f"{launcher} launch without {key} in the environment") from None
    except ValueError:
        raise LaunchError(f"{key}={environ[key]!r} is not a whole number") from None


def _check(found: LaunchEnv, what: str) -> LaunchEnv:
    if found.world_size < 1 or not 0 <= found.rank < found.world_size:
        raise LaunchError(f"{what}: rank {found.rank} is not within a world of {found.world_size}")
    if found.local_rank < 0 or found.local_rank > found.rank:
        raise LaunchError(f"{what}: local rank {found.local_rank} does not fit rank {found.rank}")
    return found


def _from_torchrun(environ: Mapping[str, str]) -> LaunchEnv:
    missing = [key for key in TORCHRUN_KEYS if key not in environ and key != "LOCAL_RANK"]
    if missing:
        raise LaunchError(
            f"RANK/WORLD_SIZE are set but not {', '.join(missing)}: start with torchrun (or srun, which sets "
            f"SLURM's variables), or unset RANK and WORLD_SIZE for a single process"
        )
    rank = _integer(environ, "RANK", "torchrun")
    found = LaunchEnv(
        "torchrun",
        rank=rank,
        world_size=_integer(environ, "WORLD_SIZE", "torchrun"),
        local_rank=int(environ.get("LOCAL_RANK", rank)),
        master_addr=environ["MASTER_ADDR"],
        master_port=_integer(environ, "MASTER_PORT", "torchrun"),
    )
    return _check(found, "RANK, WORLD_SIZE and LOCAL_RANK")


def _from_srun(environ: Mapping[str, str]) -> LaunchEnv:
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if not nodes:
        raise LaunchError("srun launch without SLURM_STEP_NODELIST or SLURM_JOB_NODELIST: no master host")
    port = environ.get("MASTER_PORT")
    job = _integer(environ, "SLURM_JOB_ID", "srun")
    found = LaunchEnv(
        "srun",
        rank=_integer(environ, "SLURM_PROCID", "srun"),
        world_size=_integer(environ, "SLURM_NTASKS", "srun"),
        local_rank=_integer(environ, "SLURM_LOCALID", "srun"),
        master_addr=environ.get("MASTER_ADDR") or expand_nodelist(nodes)[0],
        master_port=int(port) if port else PORT_BASE + job % PORT_SPAN,
    )
    return _check(found, "SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID")


def expand_nodelist(nodelist: str) -> List[str]:
    """SLURM's compressed host list (``gpu[01-03,7],login``) as host names, in order."""
    hosts = []
    for prefix, ranges, suffix in re.findall(r"([^,\[]+)(?:\[([^\]]+)\])?([^,\[]*)", nodelist):
        if not ranges:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            for number in range(int(first), int(last or first) + 1):
                hosts.append(f"{prefix}{number:0{len(first)}d}{suffix}")
    if not hosts:
        raise LaunchError(f"cannot read the SLURM host list {nodelist!r}")
    return hosts
