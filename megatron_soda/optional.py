"""The one import guard for optional packages: CUDA accelerators (Transformer Engine, flash-attn, apex), wandb.

Nothing else in megatron_soda imports these packages. Code asks ``available(name)`` to choose a
path, or ``require(name, feature)`` to fail with a message that says how to get it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from functools import lru_cache
from types import ModuleType
from typing import Optional

# name -> (import path, how to install)
PACKAGES = {
    "transformer_engine": ("transformer_engine.pytorch", "pip install 'megatron-soda[gpu]' (needs CUDA)"),
    "flash_attn": ("flash_attn", "pip install 'megatron-soda[gpu]' (source build, needs CUDA)"),
    "apex": ("apex", "build NVIDIA apex from source (see README, GPU extras)"),
    "wandb": ("wandb", "pip install wandb"),
}


@lru_cache(maxsize=None)
def load(name: str) -> Optional[ModuleType]:
    """The module, or None when it is not installed or does not load (e.g. no CUDA runtime)."""
    if name not in PACKAGES:
        raise KeyError(f"unknown optional package {name!r}; known: {', '.join(PACKAGES)}")
    try:
        return importlib.import_module(PACKAGES[name][0])
    except Exception:  # a broken install (missing CUDA libraries) is as good as absent
        return None


def available(name: str) -> bool:
    return load(name) is not None


def require(name: str, feature: str) -> ModuleType:
    """The module, or ImportError naming the feature that needs it and how to install it."""
    module = load(name)
    if module is None:
        raise ImportError(f"{feature} needs {name}, which is not installed here: {PACKAGES[name][1]}")
    return module


class _MegatronSkipsWandb(importlib.abc.MetaPathFinder):
    """Fails megatron-core's own ``import wandb``: it imports wandb, when installed, at import time (about
    2 s of every process start) only for the W&B logging of its dynamic inference context, which this
    project does not use; megatron-core then runs as without wandb. Every other import of wandb, ours
    (``--wandb-project``) or a user's, loads it as usual."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "wandb":
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith("importlib"):
            frame = frame.f_back  # the import machinery's own frames, up to the importing module
        if frame is not None and frame.f_globals.get("__name__", "").startswith("megatron.core"):
            raise ModuleNotFoundError("megatron-core runs without wandb here (megatron_soda.optional)", name="wandb")
        return None


class _MegatronJitFuserOff(importlib.abc.MetaPathFinder):
    """Runs megatron-core's own ``disable_jit_fuser()`` as soon as ``megatron.core.jit`` loads. megatron-core
    wraps its fused bias/activation kernels in ``torch.compile`` at import time, which loads TorchDynamo and
    TorchInductor (about 1.4 s of every process start); this project builds models with those fusions off
    (``models/gpt.py``) and never calls them, so they stay plain functions."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "megatron.core.jit" or getattr(self, "_finding", False):
            return None
        self._finding = True  # the other finders are asked below: never this one again (nor a reloaded twin)
        try:
            spec = next(filter(None, (f.find_spec(fullname, path, target) for f in _finders_except(self))), None)
        finally:
            self._finding = False
        run = getattr(spec.loader, "exec_module", None) if spec is not None else None
        if run is None:
            return None  # megatron-core as it comes

        def exec_module(module):
            run(module)
            getattr(module, "disable_jit_fuser", lambda: None)()

        spec.loader.exec_module = exec_module
        return spec


def _finders_except(finder):
    return [f for f in sys.meta_path if f is not finder and hasattr(f, "find_spec")]


def adjust_megatron_core_imports() -> None:
    """Installs ``_MegatronSkipsWandb`` and ``_MegatronJitFuserOff`` once (``megatron_soda/__init__.py`` does,
    before megatron-core loads)."""
    for finder in (_MegatronSkipsWandb, _MegatronJitFuserOff):
        if not any(type(installed).__name__ == finder.__name__ for installed in sys.meta_path):  # reloads too
            sys.meta_path.insert(0, finder())
