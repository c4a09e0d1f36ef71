"""The one place that decides which device this process computes on.

Asked once per process and remembered: CUDA when torch sees a GPU, else the CPU (where
``training/cpu_compat.py`` adapts megatron-core). Every other module asks ``device_info()`` instead
of calling ``torch.cuda.is_available()`` itself, so the answer, and the rule behind it, live here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class DeviceInfo:
    """What this process computes on."""

    type: str
    """"cuda" or "cpu"."""
    count: int
    """GPUs this process can see (0 on the CPU)."""

    @property
    def cuda(self) -> bool:
        return self.type == "cuda"

    @property
    def name(self) -> str:
        """The device's marketing name (asking creates a CUDA context, so it is asked only when needed)."""
        return torch.cuda.get_device_name() if self.cuda else "cpu"

    @property
    def distributed_backend(self) -> str:
        """torch.distributed's backend for this device: NCCL between GPUs, gloo between CPU processes."""
        return "nccl" if self.cuda else "gloo"

    def current(self) -> torch.device:
        """The device this rank's tensors belong on (its GPU once ``torch.cuda.set_device`` ran)."""
        return torch.device("cuda", torch.cuda.current_device()) if self.cuda else torch.device("cpu")


@lru_cache(maxsize=1)
def device_info() -> DeviceInfo:
    """This process's device, decided on first use (``is_available`` creates no CUDA context)."""
    if torch.cuda.is_available():
        return DeviceInfo("cuda", torch.cuda.device_count())
    return DeviceInfo("cpu", 0)
