"""Multi-process launching for tests: one subprocess per rank, gloo on localhost."""

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(script: str, world_size: int, *args, **popen) -> List[subprocess.Popen]:
    """Starts ``tests/dist/<script>`` on ``world_size`` ranks, as torchrun would; returns the processes."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world_size),
           "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    return [
        subprocess.Popen([sys.executable, str(ROOT / "tests" / "dist" / script), *map(str, args)],
                         env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
        for rank in range(world_size)
    ]


def finish(procs: List[subprocess.Popen], timeout: float = 240) -> Tuple[List[int], List[str]]:
    """Waits for ``procs`` (killing what is left after ``timeout``); their exit codes and logs."""
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            proc.kill()
    return [proc.returncode for proc in procs], logs


def launch(script: str, world_size: int, *args, timeout: float = 240) -> None:
    """Runs ``tests/dist/<script>`` on ``world_size`` ranks, as torchrun would; raises with the logs on failure."""
    codes, logs = finish(start(script, world_size, *args), timeout)
    failed = [rank for rank, code in enumerate(codes) if code != 0]
    if failed:
        raise RuntimeError(f"ranks {failed} of {script} failed:\n" + "\n".join(logs[r][-3000:] for r in failed))
