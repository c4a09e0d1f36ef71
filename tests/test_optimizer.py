"""Cautious AdamW + AdamC (docs/recipe.md "Training hyperparameters") and its megatron-core wiring."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_soda.training.config import OptimizerConfig
from megatron_soda.training.optimizer import CautiousAdamW, cautious_adamw, decays, param_groups

REPO = Path(__file__).resolve().parents[1]


def _params(seed=0, shapes=((5, 3), (4,), (2, 2, 3))):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=generator, requires_grad=True) for s in shapes]


def test_without_cautious_or_adamc_it_is_torch_adamw_step_for_step():
    ours, theirs = _params(), _params()
    kwargs = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt_ours = CautiousAdamW(ours, cautious=False, adamc=False, **kwargs)
    opt_theirs = torch.optim.AdamW(theirs, **kwargs)
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        opt_ours.step()
        opt_theirs.step()
    for a, b, start in zip(ours, theirs, _params()):
        assert torch.allclose(a, b, rtol=0, atol=1e-7)
        assert (a - start).abs().max() > 1e-3  # the comparison is not between untouched tensors


def test_a_parameter_whose_first_gradient_comes_late_starts_its_own_count_like_adamw():
    ours, theirs = _params(), _params()
    opt_ours = CautiousAdamW(ours, lr=1e-2, weight_decay=0.1, cautious=False)
    opt_theirs = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1)
    for step in range(4):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            a.grad = None if (i == 1 and step < 2) else torch.full(a.shape, 0.1 * (step + 1))
            b.grad = None if a.grad is None else a.grad.clone()
        opt_ours.step()
        opt_theirs.step()
    assert opt_ours.state[ours[1]]["step"].item() == 2
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=0, atol=1e-7)


def test_cautious_adamc_step_matches_hand_computed_reference():
    # betas 0.5 keep the arithmetic checkable by hand; eps 0; AdamC ratio lr/max_lr = 0.5.
    lr, max_lr, wd = 0.1, 0.2, 0.1
    p0 = [1.0, -2.0, 0.5, 3.0]
    p = torch.tensor(p0, requires_grad=True)
    opt = CautiousAdamW(
        [p], lr=lr, max_lr=max_lr, betas=(0.5, 0.5), eps=0.0, weight_decay=wd, cautious=True, adamc=True
    )
    shrink = 1 - lr * wd * lr / max_lr  # 0.995
    # Step 1: m_hat = g, v_hat = g^2, so u = sign(g): every sign agrees, nothing is masked.
    p.grad = torch.tensor([1.0, -1.0, 2.0, -2.0])
    opt.step()
    p1 = [x * shrink - lr * s for x, s in zip(p0, [1, -1, 1, -1])]
    assert torch.allclose(p, torch.tensor(p1), atol=1e-7)
    # Step 2: m = [0.75, 1.25, 0.25, -2.5] while g[2] = -0.5 disagrees with m[2] > 0: mask [1, 1, 0, 1],
    # kept fraction 0.75. v = [0.75, 4.75, 1.125, 9]; both bias corrections are 1 - 0.25 = 0.75.
    p.grad = torch.tensor([1.0, 3.0, -0.5, -4.0])
    opt.step()
    m_hat = [0.75 / 0.75, 1.25 / 0.75, 0.25 / 0.75, -2.5 / 0.75]
    v_hat = [0.75 / 0.75, 4.75 / 0.75, 1.125 / 0.75, 9.0 / 0.75]
    mask = [1, 1, 0, 1]
    u = [m / math.sqrt(v) * k / 0.75 for m, v, k in zip(m_hat, v_hat, mask)]
    p2 = [x * shrink - lr * du for x, du in zip(p1, u)]
    assert torch.allclose(p, torch.tensor(p2), atol=1e-6)
    assert p[2].item() == pytest.approx(p1[2] * shrink, abs=1e-7)  # the masked entry only decays


def test_adamc_scales_decay_by_lr_over_peak_and_plain_decay_does_not():
    for adamc, factor in ((True, 1 - 0.01 * 0.5 * (0.01 / 0.02)), (False, 1 - 0.01 * 0.5)):
        p = torch.ones(3, requires_grad=True)
        opt = CautiousAdamW([p], lr=0.01, max_lr=0.02, weight_decay=0.5, adamc=adamc)
        p.grad = torch.zeros(3)  # zero gradient: zero Adam update, decay alone moves p
        opt.step()
        assert torch.allclose(p, torch.full((3,), factor), rtol=0, atol=1e-7), adamc


def test_update_that_disagrees_everywhere_is_zero_not_nan():
    p = torch.zeros(4, requires_grad=True)
    opt = CautiousAdamW([p], lr=0.1, betas=(0.9, 0.9), eps=0.0)
    p.grad = torch.ones(4)
    opt.step()
    before = p.detach().clone()
    p.grad = -0.01 * torch.ones(4)  # momentum still positive, gradient negative everywhere
    opt.step()
    assert torch.equal(p, before)


def test_resume_from_state_dict_continues_identically():
    generator = torch.Generator().manual_seed(3)
    grads = [[torch.randn(q.shape, generator=generator) for q in _params()] for _ in range(6)]

    def run(params, opt, steps):
        for g in steps:
            for q, gq in zip(params, g):
                q.grad = gq.clone()
            opt.step()

    settings = OptimizerConfig(lr=1e-2, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8)
    straight = _params()
    opt = cautious_adamw(settings, straight)
    run(straight, opt, grads)
    first = _params()
    opt_first = cautious_adamw(settings, first)
    run(first, opt_first, grads[:3])
    resumed = [q.detach().clone().requires_grad_() for q in first]
    opt_resumed = cautious_adamw(settings, resumed)
    opt_resumed.load_state_dict(opt_first.state_dict())
    run(resumed, opt_resumed, grads[3:])
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_missing_per_parameter_step_is_taken_from_the_param_group():
    # megatron's distributed optimizer (with TE installed) restores state without "step".
    p, q = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt_p, opt_q = (CautiousAdamW([x], lr=0.1, betas=(0.9, 0.99), cautious=False) for x in (p, q))
    for opt, x in ((opt_p, p), (opt_q, q)):
        for _ in range(5):
            x.grad = torch.full((3,), 0.5)
            opt.step()
    del opt_q.state[q]["step"]
    assert opt_q.param_groups[0]["step"] == 5
    for opt, x in ((opt_p, p), (opt_q, q)):
        x.grad = torch.full((3,), -0.25)
        opt.step()
    assert torch.equal(p, q) and opt_q.state[q]["step"].item() == 6


# Names from megatron-core's GPTModel (local spec, and the TE spec's fused norms), as megatron's DDP
# (and Float16Module) prefix them with "module.".
MEGATRON_NAMES = {
    "embedding.word_embeddings.weight": ((32, 8), False),
    "decoder.layers.0.input_layernorm.weight": ((8,), False),
    "decoder.layers.0.self_attention.linear_qkv.weight": ((16, 8), True),
    "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight": ((8,), False),
    "decoder.layers.0.self_attention.q_layernorm.weight": ((4,), False),
    "decoder.layers.0.self_attention.k_layernorm.weight": ((4,), False),
    "decoder.layers.0.self_attention.linear_proj.weight": ((8, 8), True),
    "decoder.layers.0.self_attention.linear_proj.bias": ((8,), False),
    "decoder.layers.0.pre_mlp_layernorm.weight": ((8,), False),
    "decoder.layers.0.mlp.linear_fc1.layer_norm_weight": ((8,), False),
    "decoder.layers.0.mlp.linear_fc1.weight": ((32, 8), True),
    "decoder.layers.0.mlp.linear_fc2.weight": ((8, 16), True),
    "decoder.final_layernorm.weight": ((8,), False),
    "output_layer.weight": ((32, 8), True),  # untied LM head: a Linear, decayed as in Levanter
    "decoder.layers.0.unknown_scale": ((8,), False),  # 1-D fallback
}


@pytest.mark.parametrize("prefix", ["", "module.", "module.module."])
def test_weight_decay_skips_norms_embeddings_and_biases_by_megatron_names(prefix):
    named = [(prefix + n, torch.zeros(shape, requires_grad=True)) for n, (shape, _) in MEGATRON_NAMES.items()]
    for (name, tensor), (shape, expected) in zip(named, MEGATRON_NAMES.values()):
        assert decays(name, tensor) is expected, name
    decayed, other = param_groups(named, weight_decay=0.033)
    assert (decayed["weight_decay"], other["weight_decay"]) == (0.033, 0.0)
    assert len(decayed["params"]) == sum(d for _, d in MEGATRON_NAMES.values())
    assert len(decayed["params"]) + len(other["params"]) == len(named)


def test_tied_output_layer_copy_on_the_last_pipeline_stage_is_not_decayed():
    weight = torch.nn.Parameter(torch.zeros(32, 8))
    weight.shared_embedding = True  # set by megatron's LanguageModule when embeddings are tied
    assert not decays("module.output_layer.weight", weight)


def test_settings_reject_an_unknown_optimizer_and_adamc_without_peak():
    with pytest.raises(ValueError, match="cautious"):
        OptimizerConfig(name="adam")
    with pytest.raises(ValueError, match="max_lr"):
        CautiousAdamW([torch.zeros(2, requires_grad=True)], lr=0.0, adamc=True)


MEGATRON_CHILD = r"""
import copy, json, os, warnings
warnings.filterwarnings("ignore")
import torch, torch.distributed as dist
from megatron_soda.training import cpu_compat
cpu_compat.install()
dist.init_process_group("gloo", rank=0, world_size=1)
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.transformer import TransformerConfig
from megatron_soda.training.config import OptimizerConfig
from megatron_soda.training.optimizer import build_megatron_optimizer, cautious_adamw, param_groups
from megatron_soda.training.schedules import apply_lr
parallel_state.initialize_model_parallel(1, 1)

class Toy(torch.nn.Module):  # GPT-like names: embedding, a decayed matrix, a norm, a bias, an LM head
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Module()
        self.embedding.word_embeddings = torch.nn.Embedding(10, 6)
        self.linear_fc1 = torch.nn.Linear(6, 6)
        self.final_layernorm = torch.nn.LayerNorm(6)
        self.output_layer = torch.nn.Linear(6, 10, bias=False)
    def forward(self, x):
        h = self.embedding.word_embeddings(x)
        return self.output_layer(self.final_layernorm(torch.tanh(self.linear_fc1(h)) + h))

settings = OptimizerConfig(lr=2e-2, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, weight_decay=0.1, clip_grad=0.0)
config = TransformerConfig(num_layers=1, hidden_size=6, num_attention_heads=1)
def megatron_pair(state):
    model = Toy(); model.load_state_dict(state)
    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(), model)
    return model, ddp, build_megatron_optimizer([ddp], settings)

torch.manual_seed(0)
start = Toy().state_dict()
reference = Toy(); reference.load_state_dict(start)
ref_opt = cautious_adamw(settings, param_groups(reference.named_parameters(), settings.weight_decay))
model, ddp, opt = megatron_pair(start)
generator = torch.Generator().manual_seed(1)
batches = [torch.randint(0, 10, (3, 5), generator=generator) for _ in range(4)]
lrs = [2e-2, 1e-2, 5e-3, 1e-3]
def megatron_step(ddp, opt, x, lr):
    apply_lr(opt, lr); ddp.zero_grad_buffer(); opt.zero_grad()
    ddp(x).logsumexp(-1).mean().backward(); ddp.finish_grad_sync()
    grads_none = all(p.grad is None for p in ddp.parameters())
    ok, _, _ = opt.step()
    return ok and grads_none
steps_ok = []
for step, (x, lr) in enumerate(zip(batches, lrs)):
    apply_lr(ref_opt, lr); ref_opt.zero_grad()
    reference(x).logsumexp(-1).mean().backward(); ref_opt.step()
    steps_ok.append(megatron_step(ddp, opt, x, lr))
    if step == 1:  # resume a second megatron optimizer from here
        saved_state, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
model2, ddp2, opt2 = megatron_pair(saved_state)
opt2.load_state_dict(saved_opt)
for x, lr in zip(batches[2:], lrs[2:]):
    steps_ok.append(megatron_step(ddp2, opt2, x, lr))
diff = lambda a, b: max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
moved = max((p - start[n]).abs().max().item() for n, p in reference.named_parameters())
print(json.dumps({
    "inner": [type(o.optimizer).__name__ for o in opt.chained_optimizers],
    "groups": sorted((g["wd_mult"], g["weight_decay"], len(g["params"])) for g in opt.param_groups),
    "max_diff": diff(model, reference), "resumed_max_diff": diff(model2, reference),
    "moved": moved, "steps_ok": steps_ok}))
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_megatron_wrapper_steps_cautious_adamw_from_ddp_main_grad_and_resumes():
    env = dict(
        os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"
    )
    run = subprocess.run(
        [sys.executable, "-c", MEGATRON_CHILD], cwd=REPO, env=env, capture_output=True, text=True, timeout=280
    )
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["inner"] == ["CautiousAdamW"]
    # Decayed: linear_fc1.weight and output_layer.weight; not: embedding, norm weight/bias, fc1 bias.
    assert result["groups"] == [[0.0, 0.0, 4], [1.0, 0.1, 2]]
    assert result["steps_ok"] == [True] * 6  # every step succeeded with param.grad left None by DDP
    assert result["moved"] > 1e-3
    assert result["max_diff"] < 1e-6 and result["resumed_max_diff"] < 1e-6, result
