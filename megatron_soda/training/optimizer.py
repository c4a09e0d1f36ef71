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
differ by 1/numel. The mean is over the whole tensor, as in Levanter (global arrays), however it is
split: ``mean(mask) = kept / numel`` with ``kept`` summed over every process holding a piece of it
and ``numel`` the whole tensor's size. A ``MaskScope`` (set by ``build_megatron_optimizer``) says
which pieces exist: a parameter megatron splits over tensor parallelism (``tensor_model_parallel``)
sums over the tensor-parallel group, numel x TP size; under megatron's distributed optimizer each
data-parallel rank holds a contiguous slice of the (TP-local) parameter, summed over the buffer's
data-parallel group, numel the model parameter's. Replicated parameters (norms: the same mask on
every TP rank) and plain DDP (every DP rank holds the whole parameter with all-reduced gradients)
sum nothing. Without a scope (plain torch use, or nothing split) the mean is over the tensor held.
With one, ``step`` runs two passes: moments and each parameter's local kept count, one
``all_reduce`` per process group of a vector of counts in an order fixed on every rank, then the
update recomputed and applied with the whole-tensor scale.
Weight decay is not masked, as in Levanter (decay is added after the cautious transform).

megatron's DDP writes gradients into ``param.main_grad``; its optimizer wrappers copy them into the
``.grad`` of the tensors the inner torch optimizer holds (``FP32Optimizer.prepare_grads``:
``param.grad = param.main_grad``; ``Float16OptimizerWithFloat16Params`` / ``DistributedOptimizer``:
``main_param.grad = main_grad.float()``, for their fp32 master copies). So ``CautiousAdamW`` stays a
plain torch optimizer reading ``.grad``; ``build_megatron_optimizer`` puts it inside those wrappers.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from megatron_soda.training.config import OptimizerConfig


class MaskScope:
    """Turns per-tensor local kept-entry counts into whole-tensor counts, for ``CautiousAdamW``.

    ``slots`` maps each tensor the optimizer updates to ``(index, numel)``: its position in a vector
    of ``size`` counts laid out identically on every rank of each group, and the whole tensor's
    numel. ``reductions`` lists ``(process group, indices)``: the entries summed over that group, in
    an order every rank shares (tensor-parallel groups before data-parallel ones); entries in no
    group keep their local count. ``device`` carries the counts (the collectives' device).
    """

    def __init__(
        self,
        size: int,
        slots: Dict[torch.Tensor, Tuple[int, int]],
        reductions: Sequence[Tuple[object, Sequence[int]]],
        device: torch.device,
    ):
        self.size, self.slots, self.device = size, dict(slots), torch.device(device)
        self.reductions = [
            (group, torch.tensor(list(indices), dtype=torch.long, device=self.device)) for group, indices in reductions
        ]
        self._cache: Tuple[Tuple[int, ...], torch.Tensor, torch.Tensor] | None = None

    def reduce(self, params: Sequence[torch.Tensor], counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Whole-tensor (kept counts, numels) of ``params`` from their local kept ``counts`` (float64).

        A collective: every rank of each group calls it at the same step, whatever it holds.
        """
        import torch.distributed as dist

        key = tuple(map(id, params))
        if self._cache is None or self._cache[0] != key:
            slots = [self.slots[p] for p in params]
            index = torch.tensor([i for i, _ in slots], dtype=torch.long, device=self.device)
            numel = torch.tensor([n for _, n in slots], dtype=torch.float64, device=self.device)
            self._cache = (key, index, numel)
        _, index, numel = self._cache
        vector = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        vector.index_copy_(0, index, counts.to(device=self.device, dtype=torch.float64))
        for group, indices in self.reductions:
            part = vector.index_select(0, indices)
            dist.all_reduce(part, group=group)
            vector.index_copy_(0, indices, part)
        return vector.index_select(0, index), numel


class CautiousAdamW(torch.optim.Optimizer):
    """AdamW with optional cautious masking and AdamC decay; ``cautious=adamc=False`` is torch's AdamW.

    State per parameter is torch AdamW's (``step`` float tensor, ``exp_avg``, ``exp_avg_sq``), so
    megatron's checkpointing treats it like the torch AdamW it falls back to. ``group["step"]``
    mirrors the count: megatron's distributed optimizer, when Transformer Engine is installed,
    saves the step from the param groups (FusedAdam's layout) and restores state without it.
    ``mask_scope`` (a ``MaskScope``, or anything with its ``reduce``) makes the cautious mean
    whole-tensor when this process holds shards; None: the mean over the tensor held.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        cautious: bool = True,
        adamc: bool = False,
        max_lr: float | None = None,
        mask_scope: Optional[MaskScope] = None,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr ({lr}), eps ({eps}) and weight_decay ({weight_decay}) must be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            cautious=cautious,
            adamc=adamc,
            max_lr=lr if max_lr is None else max_lr,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["adamc"] and not group["max_lr"] > 0:
                raise ValueError(f"AdamC needs a positive max_lr per param group, got {group['max_lr']}")
        self.mask_scope = mask_scope

    @staticmethod
    def _adam_update(state, group, step: float) -> torch.Tensor:
        """m_hat / (sqrt(v_hat) + eps), a fresh tensor (the same arithmetic in both passes)."""
        (_, beta2), eps = group["betas"], group["eps"]
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
        return state["exp_avg"].div(denom).div_(1 - group["betas"][0] ** step)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Identical on every rank (same settings), so all of them join the scope's collectives.
        scoped = self.mask_scope is not None and any(group["cautious"] for group in self.param_groups)
        pending: List[Tuple[torch.Tensor, dict, float]] = []  # cautious updates awaiting whole-tensor counts
        counts: List[torch.Tensor] = []
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
                if not group["cautious"]:
                    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                    p.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
                    continue
                update = self._adam_update(state, group, step)
                if scoped:  # pass 1: only the local count of kept entries
                    counts.append((update * grad > 0).sum())
                    pending.append((p, group, step))
                    continue
                mask = (update * grad > 0).to(update.dtype)
                # An all-zero mask makes the update zero whatever the divisor; the floor avoids 0/0.
                scale = (mask.mean() + eps).clamp_min(1.0 / mask.numel())
                p.add_(update.mul_(mask).div_(scale), alpha=-lr)
        if scoped:
            self._apply_with_whole_tensor_counts(pending, counts)
        return loss

    def _apply_with_whole_tensor_counts(self, pending, counts) -> None:
        """Pass 2: whole-tensor counts from the scope, then each update recomputed and applied."""
        scope = self.mask_scope
        local = (
            torch.stack(counts).to(torch.float64)
            if counts
            else torch.zeros(0, dtype=torch.float64, device=getattr(scope, "device", None))
        )
        kept, numel = scope.reduce([p for p, _, _ in pending], local)
        eps = torch.tensor([group["eps"] for _, group, _ in pending], dtype=torch.float64, device=kept.device)
        scales = torch.maximum(kept / numel + eps, 1.0 / numel)  # the same floor as the local path
        for i, (p, group, step) in enumerate(pending):
            update = self._adam_update(self.state[p], group, step)
            mask = (update * p.grad > 0).to(update.dtype)
            p.add_(update.mul_(mask).div_(scales[i].to(device=update.device, dtype=update.dtype)), alpha=-group["lr"])


# ---- which parameters decay -------------------------------------------------------------------

_NO_DECAY_NAME_PARTS = ("norm", "embedding")  # layernorm, layer_norm_weight, q_layernorm, *_norm, word_embeddings


def decays(name: str, param: torch.Tensor) -> bool:
    """SODA decays matrices only: never norms, embeddings or biases (docs/recipe.md), nor any 1-D tensor.

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


def cautious_adamw(config: OptimizerConfig, params, mask_scope: Optional[MaskScope] = None) -> CautiousAdamW:
    """A bare torch optimizer over ``params`` as ``config`` says (groups keep their own weight_decay / max_lr)."""
    return CautiousAdamW(
        params,
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        cautious=config.name == "cautious",
        adamc=config.adamc,
        max_lr=config.lr,
        mask_scope=mask_scope,
    )


def _model_params_of(wrapper) -> Dict[torch.Tensor, torch.Tensor]:
    """Each tensor ``wrapper``'s inner optimizer updates -> the model parameter it stands for.

    ``FP32Optimizer``: the model parameters themselves. ``Float16OptimizerWithFloat16Params``:
    ``fp32_from_float16_groups[g][i]`` is the fp32 main copy of ``float16_groups[g][i]``;
    ``fp32_from_fp32_groups`` are model parameters. ``DistributedOptimizer``: its inner groups are
    ``shard_fp32_groups[g] + shard_fp32_from_float16_groups[g]``, slices of the flattened
    ``model_fp32_groups[g]`` / ``model_float16_groups[g]`` (pairwise).
    """
    from itertools import chain

    from megatron.core.optimizer import DistributedOptimizer, Float16OptimizerWithFloat16Params

    if isinstance(wrapper, DistributedOptimizer):
        if not hasattr(wrapper, "shard_fp32_groups"):  # megatron FSDP: no shard groups
            raise ValueError(
                "--optimizer cautious with megatron-core's FSDP is not supported: its shards carry no map back to "
                "whole tensors; use --optimizer adamw, or the distributed optimizer without FSDP"
            )
        pairs = chain(
            zip(chain(*wrapper.model_fp32_groups), chain(*wrapper.shard_fp32_groups)),
            zip(chain(*wrapper.model_float16_groups), chain(*wrapper.shard_fp32_from_float16_groups)),
        )
    elif isinstance(wrapper, Float16OptimizerWithFloat16Params):
        pairs = chain(
            zip(chain(*wrapper.float16_groups), chain(*wrapper.fp32_from_float16_groups)),
            ((p, p) for p in chain(*wrapper.fp32_from_fp32_groups)),
        )
    else:
        pairs = ((p, p) for group in wrapper.optimizer.param_groups for p in group["params"])
    mapping = {inner: model for model, inner in pairs if inner is not None}
    missing = [p for group in wrapper.optimizer.param_groups for p in group["params"] if p not in mapping]
    if missing:
        raise RuntimeError(f"{type(wrapper).__name__}: {len(missing)} optimizer tensors without a model parameter")
    return mapping


def mask_scope_for(wrapper) -> Optional[MaskScope]:
    """The ``MaskScope`` of one megatron optimizer wrapper (not a ``ChainedOptimizer``); None when
    every tensor its inner optimizer updates is whole on this process (nothing to sum).

    Vector order: the model parameters' order, identical on every rank of each group: for the
    distributed optimizer the order of its grad buffers' ``param_index_map`` (every parameter of the
    buffers, also those with no slice on this rank: count 0), else the inner param groups' order
    (the same model on every TP rank of a pipeline stage). Groups: a ``tensor_model_parallel``
    parameter sums over the tensor-parallel group (the expert one for expert parameters,
    ``allreduce=False``), numel x its size; the distributed optimizer's slices sum over the
    ``data_parallel_group`` of the buffer that shards them. Tensor-parallel sums come first on every rank.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.optimizer import DistributedOptimizer

    model_of = _model_params_of(wrapper)
    if isinstance(wrapper, DistributedOptimizer):
        shard_group = {p: buffer.data_parallel_group for buffer in wrapper.buffers for p in buffer.param_index_map}
        order = list(shard_group)
    else:
        shard_group = {}
        order = list(dict.fromkeys(model_of[p] for group in wrapper.optimizer.param_groups for p in group["params"]))
    index = {id(model): i for i, model in enumerate(order)}

    reductions: Dict[Tuple[int, int], Tuple[object, List[int]]] = {}  # (kind, id(group)) -> (group, indices)
    numels = []
    for i, model in enumerate(order):
        numel = model.numel()
        if getattr(model, "tensor_model_parallel", False):
            expert = not getattr(model, "allreduce", True)
            group = (
                parallel_state.get_expert_tensor_parallel_group()
                if expert
                else parallel_state.get_tensor_model_parallel_group()
            )
            size = dist.get_world_size(group)
            numel *= size
            if size > 1:
                reductions.setdefault((0, id(group)), (group, []))[1].append(i)
        group = shard_group.get(model)
        if group is not None and dist.get_world_size(group) > 1:
            reductions.setdefault((1, id(group)), (group, []))[1].append(i)
        numels.append(numel)
    if not reductions:
        return None
    slots = {inner: (index[id(model)], numels[index[id(model)]]) for inner, model in model_of.items()}
    # Sorted by kind only (stable: first appearance within a kind), so every rank reduces TP first.
    ordered = [reductions[key] for key in sorted(reductions, key=lambda key: key[0])]
    return MaskScope(len(order), slots, ordered, order[0].device)  # the model's device: NCCL's or gloo's


def build_megatron_optimizer(
    model_chunks: Sequence[torch.nn.Module],
    settings: OptimizerConfig,
    *,
    bf16: bool = False,
    use_distributed_optimizer: bool = False,
):
    """megatron-core's optimizer for ``model_chunks`` (DDP-wrapped), stepping with ``CautiousAdamW``.

    megatron's own factory builds everything around the inner optimizer (param groups, main-grad
    copies, fp32 master weights for bf16, grad-norm clipping, the distributed optimizer's shards);
    then each wrapper's inner torch ``AdamW``/``FusedAdam`` is replaced by ours over the very same
    param-group dicts. Relies on: ``get_megatron_optimizer(config, chunks, config_overrides)``,
    ``ParamKey``/``ParamWithNamePredicate`` (0.16 and later), the ``wd_mult`` and ``max_lr`` group
    fields, ``ChainedOptimizer.chained_optimizers`` and ``MegatronOptimizer.optimizer``. The
    replacement happens before any step, so no optimizer state is lost. Each inner optimizer gets
    ``mask_scope_for(wrapper)``, so the cautious mean is whole-tensor under TP and the distributed
    optimizer (see the module docstring). Megatron's
    ``OptimizerParamScheduler`` is not used: it would be the one to turn ``wd_mult`` into
    ``weight_decay``, so that is done here once; set lr with ``schedules.apply_lr``.

    On CPU (with ``cpu_compat``, which also supplies gradient clipping) only the fp32,
    non-distributed path runs: megatron's bf16 wrapper and distributed optimizer check for
    ``torch.cuda`` tensor types (tests/dist/cautious_worker.py runs the fp32 distributed optimizer
    on gloo by making CPU tensors report their CUDA type name).
    """
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
    from megatron.core.optimizer import ParamKey, ParamWithNamePredicate, get_megatron_optimizer

    config = MegatronOptimizerConfig(
        optimizer="adam",
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_eps=settings.adam_eps,
        clip_grad=settings.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    no_decay = ParamKey(
        with_name_predicate=ParamWithNamePredicate(
            name="soda_no_weight_decay", fn=lambda param, name: not decays(name, param)
        )
    )
    wrapper = get_megatron_optimizer(config, list(model_chunks), config_overrides={no_decay: {"wd_mult": 0.0}})
    for sub in getattr(wrapper, "chained_optimizers", [wrapper]):
        if sub.optimizer is None:  # a rank without trainable parameters
            continue
        for group in sub.optimizer.param_groups:
            group["weight_decay"] = settings.weight_decay * group.get("wd_mult", 1.0)
        scope = mask_scope_for(sub) if settings.name == "cautious" else None
        sub.optimizer = _replacing(sub.optimizer, settings, scope)
    return wrapper


def _replacing(inner: torch.optim.Optimizer, settings: OptimizerConfig, scope: Optional[MaskScope]) -> CautiousAdamW:
    """``CautiousAdamW`` over ``inner``'s very param-group dicts, tensors in the same order.

    The tensors are put back after construction, as megatron's ``DistributedOptimizer`` does with
    its own: for fp32 parameters its shards are views of the model parameters (non-leaf tensors),
    which ``torch.optim.Optimizer.add_param_group`` refuses.
    """
    groups = inner.param_groups
    tensors = [group["params"] for group in groups]
    for group in groups:
        group["params"] = []
    try:
        optimizer = cautious_adamw(settings, groups, mask_scope=scope)
    finally:
        for group, params in zip(groups, tensors):
            group["params"] = params
    assert all(a is b for a, b in zip(optimizer.param_groups, groups))
    return optimizer
