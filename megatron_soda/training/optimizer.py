"""SODA's optimizer: Cautious AdamW with AdamC weight decay, and its wiring into megatron-core.

Update for one parameter p with gradient g at step t (lr_t from the schedule, lr_max the peak):

    m, v      = AdamW moments with bias correction (exactly as ``torch.optim.AdamW``)
    u         = m_hat / (sqrt(v_hat) + eps)
    cautious:   mask = (u * g > 0);  u = u * mask / (mean(mask) + eps)        [per tensor]
    lambda_t  = lambda * lr_t / lr_max  with AdamC,  lambda  without
    p         = p - lr_t * (u + lambda_t * p)

The cautious rescale is Levanter's ``scale_by_cautious`` (the implementation behind SODA's run):
dividing by the fraction of kept entries keeps the update's average size unchanged. The paper's
reference PyTorch code (Liang et al. 2024) divides by ``(mask.sum() + 1) / numel`` instead; the two
differ by 1/numel. The mean is over the tensor this process holds: under tensor parallelism or the
distributed optimizer that is a shard, where Levanter (global arrays) used the whole tensor.
Weight decay is not masked, as in Levanter (decay is added after the cautious transform).

megatron's DDP writes gradients into ``param.main_grad``; its optimizer wrappers copy them into the
``.grad`` of the tensors the inner torch optimizer holds (``FP32Optimizer.prepare_grads``:
``param.grad = param.main_grad``; ``Float16OptimizerWithFloat16Params`` / ``DistributedOptimizer``:
``main_param.grad = main_grad.float()``, for their fp32 master copies). So ``CautiousAdamW`` stays a
plain torch optimizer reading ``.grad``; ``build_megatron_optimizer`` puts it inside those wrappers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

import torch


class CautiousAdamW(torch.optim.Optimizer):
    """AdamW with optional cautious masking and AdamC decay; ``cautious=adamc=False`` is torch's AdamW.

    State per parameter is torch AdamW's (``step`` float tensor, ``exp_avg``, ``exp_avg_sq``), so
    megatron's checkpointing treats it like the torch AdamW it falls back to. ``group["step"]``
    mirrors the count: megatron's distributed optimizer, when Transformer Engine is installed,
    saves the step from the param groups (FusedAdam's layout) and restores state without it.
    """

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, cautious: bool = True,
                 adamc: bool = False, max_lr: float | None = None):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr ({lr}), eps ({eps}) and weight_decay ({weight_decay}) must be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        cautious=cautious, adamc=adamc, max_lr=lr if max_lr is None else max_lr)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["adamc"] and not group["max_lr"] > 0:
                raise ValueError(f"AdamC needs a positive max_lr per param group, got {group['max_lr']}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            decay = group["weight_decay"]
            if group["adamc"]:
                decay = decay * lr / group["max_lr"]
            group_step = group.get("step", 0)  # read before this step updates it
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("CautiousAdamW does not support sparse gradients")
                state = self.state[p]
                if "step" not in state:  # fresh: 0; moments restored without their step: the group's
                    state["step"] = torch.tensor(float(group_step if "exp_avg" in state else 0))
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                step = state["step"].item()
                group["step"] = int(step)  # mirrored for checkpoints that keep it per group

                p.mul_(1 - lr * decay)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1**step
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                if not group["cautious"]:
                    p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
                    continue
                update = exp_avg.div(denom).div_(bias_correction1)
                mask = (update * grad > 0).to(update.dtype)
                # An all-zero mask makes the update zero whatever the divisor; the floor avoids 0/0.
                scale = (mask.mean() + eps).clamp_min(1.0 / mask.numel())
                p.add_(update.mul_(mask).div_(scale), alpha=-lr)
        return loss


# ---- which parameters decay -------------------------------------------------------------------

_NO_DECAY_NAME_PARTS = ("norm", "embedding")  # layernorm, layer_norm_weight, q_layernorm, *_norm, word_embeddings


def decays(name: str, param: torch.Tensor) -> bool:
    """SODA decays matrices only: never norms, embeddings or biases (SODA.md), nor any 1-D tensor.

    Names are megatron-core GPTModel's (local or TE spec), possibly prefixed by wrappers
    (``module.``). ``output_layer.weight`` (the untied LM head) decays, as Levanter's ``lm_head``
    (a ``Linear``) did; when embeddings are tied, the last pipeline stage's ``output_layer.weight``
    is a copy of the embedding (megatron marks it ``shared_embedding``) and must not decay, or the
    two copies would drift apart.
    """
    if param.dim() < 2 or name.endswith("bias") or getattr(param, "shared_embedding", False):
        return False
    parts = name.lower().split(".")
    return not any(key in part for part in parts for key in _NO_DECAY_NAME_PARTS)


def param_groups(named_parameters: Iterable[Tuple[str, torch.Tensor]], weight_decay: float) -> List[dict]:
    """Two groups for a plain torch optimizer: decayed matrices, then everything else at 0."""
    decayed, other = [], []
    for name, param in named_parameters:
        if param.requires_grad:
            (decayed if decays(name, param) else other).append(param)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


# ---- settings and megatron wiring ---------------------------------------------------------------

@dataclass
class OptimizerSettings:
    """Optimizer hyperparameters; the defaults are SODA's (SODA.md, "Training hyperparameters")."""

    name: str = "cautious"
    """"cautious" (Cautious AdamW) or "adamw" (plain AdamW, the same code with the mask off)."""
    lr: float = 3e-3
    """Peak learning rate (lr_max): the schedule's plateau and AdamC's reference."""
    min_lr: float = 0.0
    """Learning rate at the end of the decay."""
    betas: Tuple[float, float] = (0.98, 0.98)
    """Adam beta1, beta2."""
    eps: float = 1e-16
    """Adam epsilon (also the cautious rescale's epsilon, as in Levanter)."""
    weight_decay: float = 0.033
    """Decoupled weight decay lambda on matrices (see ``decays``)."""
    adamc: bool = True
    """AdamC: the decay coefficient follows the schedule, lambda * lr_t / lr_max."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (megatron's ``clip_grad``); 0 disables."""

    def __post_init__(self):
        if self.name not in ("cautious", "adamw"):
            raise ValueError(f"optimizer name must be 'cautious' or 'adamw', got {self.name!r}")

    def build(self, params) -> CautiousAdamW:
        """A bare torch optimizer over ``params`` (groups keep their own weight_decay / max_lr)."""
        return CautiousAdamW(params, lr=self.lr, betas=self.betas, eps=self.eps,
                             weight_decay=self.weight_decay, cautious=self.name == "cautious",
                             adamc=self.adamc, max_lr=self.lr)


def build_megatron_optimizer(model_chunks: Sequence[torch.nn.Module], settings: OptimizerSettings, *,
                             bf16: bool = False, use_distributed_optimizer: bool = False):
    """megatron-core's optimizer for ``model_chunks`` (DDP-wrapped), stepping with ``CautiousAdamW``.

    megatron's own factory builds everything around the inner optimizer (param groups, main-grad
    copies, fp32 master weights for bf16, grad-norm clipping, the distributed optimizer's shards);
    then each wrapper's inner torch ``AdamW``/``FusedAdam`` is replaced by ours over the very same
    param-group dicts. Relies on: ``get_megatron_optimizer(config, chunks, config_overrides)``,
    ``ParamKey``/``ParamWithNamePredicate`` (0.16 and later), the ``wd_mult`` and ``max_lr`` group
    fields, ``ChainedOptimizer.chained_optimizers`` and ``MegatronOptimizer.optimizer``. The
    replacement happens before any step, so no optimizer state is lost. Megatron's
    ``OptimizerParamScheduler`` is not used: it would be the one to turn ``wd_mult`` into
    ``weight_decay``, so that is done here once; set lr with ``schedules.apply_lr``.

    On CPU (with ``cpu_compat``, which also supplies gradient clipping) only the fp32,
    non-distributed path runs: megatron's bf16 wrapper and distributed optimizer check for
    ``torch.cuda`` tensor types.
    """
    from megatron.core.optimizer import (OptimizerConfig, ParamKey, ParamWithNamePredicate,
                                         get_megatron_optimizer)

    config = OptimizerConfig(
        optimizer="adam", lr=settings.lr, min_lr=settings.min_lr, weight_decay=settings.weight_decay,
        adam_beta1=settings.betas[0], adam_beta2=settings.betas[1], adam_eps=settings.eps,
        clip_grad=settings.clip_grad, bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=use_distributed_optimizer)
    no_decay = ParamKey(with_name_predicate=ParamWithNamePredicate(
        name="soda_no_weight_decay", fn=lambda param, name: not decays(name, param)))
    wrapper = get_megatron_optimizer(config, list(model_chunks), config_overrides={no_decay: {"wd_mult": 0.0}})
    for sub in getattr(wrapper, "chained_optimizers", [wrapper]):
        if sub.optimizer is None:  # a rank without trainable parameters
            continue
        for group in sub.optimizer.param_groups:
            group["weight_decay"] = settings.weight_decay * group.get("wd_mult", 1.0)
        sub.optimizer = settings.build(sub.optimizer.param_groups)
    return wrapper
