"""Stopping a run early on request: a signal (preemption, a time limit) or a wall-clock budget.

Megatron-LM's ``--exit-signal-handler`` and ``--exit-duration-in-mins``. A cluster that preempts a job
or reaches its time limit signals it (SLURM sends SIGTERM to every task, or the signal ``sbatch
--signal`` names ahead of the limit; torchrun passes SIGTERM on to its workers) and kills it a grace
period later. The handler only notes the signal. After each iteration one all-reduce tells every rank
whether any rank saw it or ran past the budget, so all ranks stop after the same iteration, save a
checkpoint there and exit with ``EXIT_RESUMABLE``: a relaunch with the same ``--load`` continues the
run as if it had never stopped (the data order and schedule depend only on the iteration).
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Optional

from megatron_soda.training.config import EXIT_SIGNALS

EXIT_RESUMABLE = 75
"""Exit code of a run stopped early on request after saving (sysexits' EX_TEMPFAIL: try again later)."""


class StopRequests:
    """Notes ``signal_name`` while installed, and says when every rank should stop (``requested``).

    ``install`` before building (a signal during setup or loading is answered after the first iteration),
    ``restore`` when done. Once a stop was requested, ``restore`` keeps the handler: the process is on its
    way out with ``EXIT_RESUMABLE``, and a launcher's follow-up SIGTERM (srun ends a step's other tasks
    as soon as one has exited) must not turn that exit into a kill. A second SIGINT (Ctrl-C pressed
    again) interrupts at once, as without the handler.
    """

    def __init__(self, signal_name: Optional[str], duration_minutes: Optional[float], started: float):
        if signal_name is not None and signal_name not in EXIT_SIGNALS:
            raise ValueError(f"--exit-signal {signal_name!r}: choose one of {', '.join(EXIT_SIGNALS)}")
        self.signal_name = signal_name
        self.duration_minutes = duration_minutes
        self.started = started
        self.received: Optional[int] = None
        self.stopping = False
        """Whether ``requested`` has answered with a reason."""
        self._previous = None

    @property
    def active(self) -> bool:
        return self.signal_name is not None or self.duration_minutes is not None

    def install(self) -> "StopRequests":
        if self.signal_name is not None and self._previous is None:
            if threading.current_thread() is not threading.main_thread():
                raise ValueError("--exit-signal-handler needs the training loop on the main thread (signals go there)")
            signum = getattr(signal, self.signal_name)
            previous = signal.signal(signum, self._note)
            self._previous = (signum, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
        return self

    def restore(self) -> None:
        """The signal's previous handler back, unless a stop was requested (class docstring)."""
        if self._previous is not None and not self.stopping:
            signal.signal(*self._previous)
            self._previous = None

    def __enter__(self) -> "StopRequests":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    def _note(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def requested(self) -> Optional[str]:
        """Why the run stops now (the same answer on every rank; collective), or None to go on."""
        if not self.active:
            return None
        import torch

        from megatron_soda.device import device_info

        over_budget = self.duration_minutes is not None and (time.time() - self.started) / 60 >= self.duration_minutes
        flags = torch.tensor(
            [float(self.received is not None), float(over_budget)], dtype=torch.float32, device=device_info().current()
        )
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        signalled, over_budget = flags.tolist()
        self.stopping = bool(signalled or over_budget)
        if signalled:
            return f"{self.signal_name} received (--exit-signal-handler)"
        if over_budget:
            return f"--exit-duration-in-mins {self.duration_minutes:g} reached"
        return None
