"""The one place that adapts megatron-core to machines without CUDA, so real TP/PP runs on CPU (gloo).

megatron-core's model, TP layers, vocab-parallel cross-entropy, pipeline schedules, DDP, its
(non-distributed, fp32) optimizer with gradient clipping and dist checkpoints run on CPU given five
things, all done here and nowhere else:

1. ``torch.cuda.current_device()`` returns the CPU device (RoPE moves ``inv_freq`` there; pipeline
   p2p builds its buffers there) and ``torch.cuda.synchronize()`` does nothing.
2. ``device="cuda"`` literals in megatron-core (e.g. the token counter in
   ``pipeline_parallel/schedules.py``) become CPU: a ``TorchFunctionMode`` rewrites the ``device``
   argument of tensor factories, and ``Tensor.cuda()`` returns the tensor itself.
3. CUDA streams (``current_stream``, ``Stream``, ``stream``) used by megatron's DDP are inert stand-ins.
4. Core attention is ours (``models/attention.py``), not megatron's local ``DotProductAttention``,
   which builds its causal mask on CUDA; that choice lives in the layer spec, not here.
5. Gradient clipping (``clip_grad > 0``): megatron's ``clip_grad_by_total_norm_fp32`` asserts
   ``torch.cuda.FloatTensor`` gradients, so the name its optimizer module calls
   (``megatron.core.optimizer.optimizer.clip_grad_by_total_norm_fp32``, and the defining module's)
   is replaced by ``clip_grad_by_total_norm_fp32_cpu``: the same in-place scaling by
   ``clip / (norm + 1e-6)`` when that is below 1, with ``torch._foreach_mul_`` instead of the
   multi-tensor kernel. The total norm itself is megatron's ``get_grad_norm_fp32`` unchanged (its
   ``device="cuda"`` buffers fall under 2.), reduced over the same groups, TP duplicates skipped.

Still CUDA-only in megatron-core: the distributed optimizer and the bf16/fp16 optimizer wrapper
(both check for ``torch.cuda`` tensor types). Interleaved pipelining on gloo needs at least 4 stages
(``parallel.initialize`` refuses 2; see there). Everything is a no-op on a machine with CUDA.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch.overrides import TorchFunctionMode

from megatron_soda.device import device_info

_lock = threading.Lock()
_installed = False


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int)  # a bare ordinal means a CUDA device


class _CudaToCpu(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU for every torch function called under it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = torch.device("cpu")
        if func is torch.Tensor.to and args[1:] and _is_cuda(args[1]):
            args = (args[0], torch.device("cpu"), *args[2:])
        return func(*args, **kwargs)


class _InertStream:
    """Stands in for ``torch.cuda.Stream``: ordering is trivial on one CPU stream."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, *args, **kwargs):
        return None

    def synchronize(self):
        pass


def clip_grad_by_total_norm_fp32_cpu(parameters, max_norm, total_norm, use_decoupled_grad: bool = False):
    """megatron's ``clip_grad_by_total_norm_fp32`` for CPU gradients (same signature and arithmetic).

    Scales the gradients (``.grad``, or ``.decoupled_grad``) of ``parameters`` in place by
    ``max_norm / (total_norm + 1e-6)`` when that is below 1. CUDA gradients go to megatron's own.
    """
    from megatron.core.utils import to_local_if_dtensor

    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    parameters = list(parameters)
    grads = []
    for param in parameters:
        grad = getattr(param, "decoupled_grad", None) if use_decoupled_grad else param.grad
        if grad is None:
            continue
        if grad.is_cuda:
            return _megatron_clip(parameters, max_norm, total_norm, use_decoupled_grad)
        allowed = (torch.float32, torch.bfloat16) if use_decoupled_grad else (torch.float32,)
        assert grad.dtype in allowed, f"gradient clipping expects {allowed} gradients, got {grad.dtype}"
        grads.append(to_local_if_dtensor(grad).detach())
    clip_coeff = max_norm / (float(total_norm) + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


_megatron_clip = None


def _install_clip() -> None:
    global _megatron_clip
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as megatron_optimizer

    _megatron_clip = clip_grads.clip_grad_by_total_norm_fp32
    clip_grads.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32_cpu
    megatron_optimizer.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32_cpu


def needed() -> bool:
    return not device_info().cuda


def install() -> None:
    """Patches ``torch.cuda`` as described above, once per process; a no-op where CUDA exists.

    The device-rewriting mode is entered on the calling thread and stays active for the life of
    the process: call this from the main thread before building models.
    """
    global _installed
    if not needed():
        return
    with _lock:
        if _installed:
            return
        cpu = torch.device("cpu")
        torch.cuda.current_device = lambda: cpu
        torch.cuda.synchronize = lambda *args, **kwargs: None
        torch.cuda.current_stream = lambda *args, **kwargs: _InertStream()
        torch.cuda.default_stream = lambda *args, **kwargs: _InertStream()
        torch.cuda.Stream = _InertStream
        torch.cuda.stream = lambda *args, **kwargs: contextlib.nullcontext()
        _CudaToCpu().__enter__()
        _install_clip()
        _installed = True
