"""Cautious AdamW's mask mean is over the whole tensor however the tensor is split (optimizer.py).

Multi-rank runs (gloo, CPU) of 3 optimizer steps on the ``tiny`` model (vocabulary 200) from one saved
start (tests/dist/cautious_worker.py): TP=2, DP=2 and megatron's distributed optimizer against one
rank, with the same global batch. Comparisons are between layouts only, so they hold whatever the loss
normalization is. The shard-local mean differs by far more than rounding here: the 200 real token rows
of the embedding and LM head (1,024 padded rows) all sit in TP rank 0's half (or DP rank 0's slice).
"""

import json

import pytest
import torch

from megatron_soda.training.optimizer import CautiousAdamW
from tests.dist import launch

ROUNDING = 1e-5  # relative; fp32 reductions in another order (TP matmul splits, DP gradient sums)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The start every run loads and the reference's (one rank) trained weights and results."""
    root = tmp_path_factory.mktemp("cautious")
    launch(
        "cautious_worker.py",
        1,
        "--init",
        root / "init",
        "--save-init",
        "--final",
        root / "final",
        "--run",
        "1:scoped",
        "--out",
        root / "reference.json",
    )
    return root


def _run(root, name, world, *runs):
    out = root / f"{name}.json"
    launch(
        "cautious_worker.py",
        world,
        "--init",
        root / "init",
        "--compare",
        root / "final",
        "--out",
        out,
        *[arg for run in runs for arg in ("--run", run)],
    )
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(root):
    """Two ranks: TP=2 (with and without the scope; megatron's bf16 wrapper), then DP=2 (DDP; distributed
    optimizer with and without the scope)."""
    two = _run(root, "two-ranks", 2, "2:scoped,local,float16-wrapper", "1:scoped,distopt,distopt-local")
    return {
        "reference": json.loads((root / "reference.json").read_text())["tp1"]["scoped"],
        "tp2": two["tp2"],
        "dp2": two["tp1"],
    }


def _losses(result):
    return [loss for step in result["losses"] for loss in step] + result["after"]


def _largest_relative_difference(a, b):
    return max(abs(x / y - 1) for x, y in zip(_losses(a), _losses(b)))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", ["tp2", "dp2"])
def test_cautious_steps_at_tp2_and_dp2_give_the_single_rank_losses_and_weights(runs, layout):
    reference, result = runs["reference"], runs[layout]["scoped"]
    assert result["wrappers"] == ["FP32Optimizer"]
    assert result["scoped"] == [layout == "tp2"]  # DDP alone: every rank holds whole tensors, nothing to sum
    assert len(result["losses"]) == 3 and all(len(step) == 2 for step in result["losses"])
    assert _losses(result) == pytest.approx(_losses(reference), rel=ROUNDING)
    assert result["weight_diff"] < ROUNDING
    assert reference["moved"] > 1e-2  # the weights really moved (relative to their size)
    assert reference["after"] != pytest.approx(reference["losses"][0], rel=1e-3)  # and the loss with them


@pytest.mark.timeout(300)
def test_the_shard_local_mean_would_have_changed_the_tp2_steps(runs):
    """Without the scope each TP rank divides by its own shard's kept fraction: clearly not TP=1's steps."""
    local, reference = runs["tp2"]["local"], runs["reference"]
    assert local["weight_diff"] > 100 * ROUNDING, local["weight_diff"]
    assert local["losses"][0] == pytest.approx(reference["losses"][0], rel=ROUNDING)  # before any update: equal
    assert _largest_relative_difference(local, reference) > 100 * ROUNDING


@pytest.mark.timeout(300)
def test_megatron_float16_wrapper_at_tp2_maps_its_main_params_to_the_same_scope(runs):
    """``Float16OptimizerWithFloat16Params`` (here around fp32 parameters: its ``fp32_from_fp32_groups``)."""
    result, reference = runs["tp2"]["float16-wrapper"], runs["reference"]
    assert result["wrappers"] == ["Float16OptimizerWithFloat16Params"] and result["scoped"] == [True]
    assert _losses(result) == pytest.approx(_losses(reference), rel=ROUNDING)
    assert result["weight_diff"] < ROUNDING


def _check_distributed_optimizer(result, reference):
    scoped, local = result["distopt"], result["distopt-local"]
    assert scoped["wrappers"] == local["wrappers"] == ["DistributedOptimizer"] and scoped["scoped"] == [True]
    assert _losses(scoped) == pytest.approx(_losses(reference), rel=ROUNDING)
    assert scoped["weight_diff"] < ROUNDING
    assert local["weight_diff"] > 100 * ROUNDING, local["weight_diff"]  # each DP rank's slice alone: not
    assert _largest_relative_difference(local, reference) > 100 * ROUNDING


@pytest.mark.timeout(300)
def test_distributed_optimizer_slices_sum_their_counts_over_data_parallel_ranks(runs):
    """megatron's DistributedOptimizer (CPU shim) at DP=2, every large parameter sliced over both ranks."""
    _check_distributed_optimizer(runs["dp2"], runs["reference"])


@pytest.mark.timeout(300)
def test_distributed_optimizer_at_tp2_dp2_sums_over_both_groups(root):
    """Four ranks: TP-split parameters sliced over DP, counts summed over TP, then DP."""
    four = _run(root, "four-ranks", 4, "2:distopt,distopt-local")
    reference = json.loads((root / "reference.json").read_text())["tp1"]["scoped"]
    _check_distributed_optimizer(four["tp2"], reference)


class _FakeScope:
    """Pretends each tensor is split: whole counts = 3 x local + 1, whole numel = 4 x local numel."""

    def __init__(self):
        self.calls = []

    def reduce(self, params, counts):
        self.calls.append((list(params), counts.clone()))
        numel = torch.tensor([4.0 * p.numel() for p in params], dtype=torch.float64)
        return 3 * counts + 1, numel


def test_two_pass_step_divides_by_the_scopes_whole_tensor_fraction():
    lr, eps, (beta1, beta2) = 0.1, 1e-8, (0.9, 0.95)
    generator = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (5,), (2, 2)]
    params = [torch.randn(s, generator=generator).requires_grad_() for s in shapes]
    scope = _FakeScope()
    opt = CautiousAdamW(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=0.0, mask_scope=scope)
    m = [torch.zeros(s) for s in shapes]
    v = [torch.zeros(s) for s in shapes]
    partial = 0
    for t in range(1, 4):
        grads = [torch.randn(s, generator=generator) for s in shapes]
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        called_with, counts = scope.calls[-1]
        assert len(called_with) == 3 and all(a is b for a, b in zip(called_with, params))
        for i, (p, g, b) in enumerate(zip(params, grads, before)):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            update = (m[i] / (1 - beta1**t)) / ((v[i] / (1 - beta2**t)).sqrt() + eps)
            mask = update * g > 0
            kept, numel = mask.sum().item(), mask.numel()
            assert counts[i].item() == kept  # pass 1: this process's count of kept entries
            scale = max((3 * kept + 1) / (4 * numel) + eps, 1 / (4 * numel))  # the scope's whole tensor
            assert torch.allclose(p.detach(), b - lr * update * mask / scale, rtol=0, atol=1e-6), (t, i)
            if 0 < kept < numel:  # and not the local fraction
                partial += 1
                local = b - lr * update * mask / (kept / numel)
                assert not torch.allclose(p.detach(), local, rtol=0, atol=1e-4)
    assert len(scope.calls) == 3 and partial >= 2  # masks that kept some entries, not all


def test_a_scope_is_called_even_when_this_rank_holds_no_gradient():
    """A collective: a rank whose tensors got no gradient (e.g. an empty distributed-optimizer slice) joins."""
    scope = _FakeScope()
    p = torch.zeros(3, requires_grad=True)
    CautiousAdamW([p], lr=0.1, mask_scope=scope).step()
    assert len(scope.calls) == 1 and scope.calls[0][0] == [] and scope.calls[0][1].numel() == 0
    assert torch.equal(p, torch.zeros(3))
