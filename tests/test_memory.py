"""Training memory estimate (training/memory.py): a hand calculation, structural properties, and
measurements of a real (tiny, CPU) model's parameters, grad buffer and saved activations."""

import json

import pytest

from megatron_soda.models.presets import get_preset
from megatron_soda.training.memory import MemoryEstimate, estimate_memory

SODA_600M = get_preset("soda-600m")
SODA_4B = get_preset("soda-4b")
SODA_RUN = dict(micro_batch_size=4, seq_length=4096, bf16=True)


def test_soda_600m_matches_a_hand_calculation():
    # soda-600m: L=28, h=1024, a=16 query heads, g=8 kv heads, head dim d=128, FFN f=3072, untied,
    # vocabulary 144,644 padded to the next multiple of 1,024 above it: 145,408.
    h, a, g, d, f, L, V = 1024, 16, 8, 128, 3072, 28, 145_408
    assert (SODA_600M.num_layers, SODA_600M.hidden_size, SODA_600M.ffn_hidden_size) == (L, h, f)
    q, k = a * d, g * d  # 2,048 query width, 1,024 key/value width
    # One layer: q 1024x2048, k and v 1024x1024 each, o 2048x1024 = 6,291,456; SwiGLU 3x1024x3072 =
    # 9,437,184; two RMSNorms 2x1024 and q/k norms 2x128 = 2,304. Total 15,730,944.
    layer = h * q + 2 * h * k + q * h + 3 * h * f + 2 * h + 2 * d
    assert layer == 15_730_944
    # 28 layers (440,466,432) + final norm (1,024) + embedding and untied head (2 x 145,408 x 1,024).
    n = L * layer + h + 2 * V * h
    assert n == 738_263_040
    weights = 2 * n  # bf16
    grads = 4 * n  # fp32 grad buffer (grad_reduce_in_fp32)
    optimizer = 12 * n // 8  # fp32 main params + exp_avg + exp_avg_sq, sharded over DP=8
    # Activations per layer and token (elements): 4h + 4q + 3k + 5f = 4,096 + 8,192 + 3,072 + 15,360
    # = 30,720; x 2 bytes x b*s = 4 x 4,096 tokens: 1,006,632,960 bytes per layer (0.94 GiB), x 28 layers.
    tokens = 4 * 4096
    activations = L * tokens * (4 * h + 4 * q + 3 * k + 5 * f) * 2
    assert activations == 28 * 1_006_632_960
    # Logits: bf16 [4, 4096, 145,408] plus the fp32 softmax kept for backward: 6 bytes each
    # (14.3e9 bytes); the final norm's and LM head's inputs add 2 x tokens x h x 2 bytes.
    logits = tokens * V * (2 + 4) + 2 * tokens * h * 2
    est = estimate_memory(
        SODA_600M, tensor_parallel=1, pipeline_parallel=1, data_parallel=8, distributed_optimizer=True, **SODA_RUN
    )
    for got, want in [
        (est.weights, weights),
        (est.gradients, grads),
        (est.optimizer_state, optimizer),
        (est.activations, activations),
        (est.logits, logits),
    ]:
        assert got == pytest.approx(want, rel=0.15)
    assert est.total == pytest.approx(weights + grads + optimizer + activations + logits, rel=0.15)
    assert 40 * 2**30 < est.total < 50 * 2**30  # ~44.8 GiB: fits an 80 GB H100 at micro-batch 4
    assert (est.stage, est.parameters, est.layers, est.micro_batches_in_flight) == ("only", n, 28, 1)


def test_tensor_parallel_halves_the_split_weights_only():
    one = estimate_memory(SODA_600M, tensor_parallel=1, **SODA_RUN)
    two = estimate_memory(SODA_600M, tensor_parallel=2, **SODA_RUN)
    # Replicated on every TP rank: per layer two RMSNorms (2 x 1,024) and q/k norms (2 x 128), plus the final norm.
    replicated = 28 * (2 * 1024 + 2 * 128) + 1024
    assert 2 * two.parameters - one.parameters == replicated
    assert 2 * two.weights - one.weights == 2 * replicated
    assert two.logits < 0.51 * one.logits  # vocabulary split over TP
    assert two.activations < one.activations  # q/k/v/f terms split, the 4h terms whole (no SP)
    with_sp = estimate_memory(SODA_600M, tensor_parallel=2, sequence_parallel=True, **SODA_RUN)
    assert 2 * with_sp.activations == one.activations  # sequence parallelism splits the rest


def test_distributed_optimizer_divides_the_optimizer_state_by_dp():
    plain = estimate_memory(SODA_600M, data_parallel=8, distributed_optimizer=False, **SODA_RUN)
    sharded = estimate_memory(SODA_600M, data_parallel=8, distributed_optimizer=True, **SODA_RUN)
    assert 8 * sharded.optimizer_state == plain.optimizer_state == 12 * plain.parameters
    assert (sharded.weights, sharded.gradients) == (plain.weights, plain.gradients)  # grad buffer is not sharded
    assert estimate_memory(SODA_600M, data_parallel=1, **SODA_RUN).optimizer_state == plain.optimizer_state
    fp32 = estimate_memory(SODA_600M, **{**SODA_RUN, "bf16": False})
    assert fp32.optimizer_state == 8 * fp32.parameters  # no main-param copy: the params are fp32 already
    assert fp32.weights == fp32.gradients == 4 * fp32.parameters


def test_full_recompute_keeps_roughly_the_layer_inputs():
    none = estimate_memory(SODA_600M, **SODA_RUN)
    full = estimate_memory(SODA_600M, recompute_granularity="full", **SODA_RUN)
    inputs = 28 * 4 * 4096 * 1024 * 2  # one [s, b, h] bf16 tensor per layer
    assert inputs <= full.activations <= inputs + none.activations / 28  # plus one layer rematerialized
    assert full.activations < 0.1 * none.activations
    assert full.logits == none.logits  # the head is not recomputed
    selective = estimate_memory(SODA_600M, recompute_granularity="selective", **SODA_RUN)
    assert full.activations < selective.activations <= none.activations


def test_activations_grow_linearly_with_the_micro_batch():
    one = estimate_memory(SODA_600M, micro_batch_size=1, seq_length=4096)
    three = estimate_memory(SODA_600M, micro_batch_size=3, seq_length=4096)
    assert three.activations == 3 * one.activations
    assert three.logits == 3 * one.logits
    assert (three.weights, three.gradients, three.optimizer_state) == (one.weights, one.gradients, one.optimizer_state)


def test_pipeline_parallel_halves_the_layers_on_a_stage():
    pp1 = estimate_memory(SODA_600M, pipeline_parallel=1, **SODA_RUN)
    pp2 = estimate_memory(SODA_600M, pipeline_parallel=2, **SODA_RUN)
    layer, table = 15_730_944, 145_408 * 1024
    assert pp2.layers == 14
    # A stage holds 14 layers and one vocabulary table (embedding, or final norm + LM head).
    assert pp2.parameters == 14 * layer + table + (1024 if pp2.stage == "last" else 0)
    assert pp2.stage in ("first", "last")
    assert 0.5 < pp2.weights / pp1.weights < 0.75  # half the layers, half the vocabulary tables
    # 4B at micro-batch 1, PP=4: the first stage holds 4 micro-batches of 9 layers = all 36 layers' worth.
    pp4 = estimate_memory(SODA_4B, pipeline_parallel=4, micro_batch_size=1, seq_length=4096)
    assert (pp4.stage, pp4.micro_batches_in_flight, pp4.logits) == ("first", 4, 0)
    assert pp4.activations == estimate_memory(SODA_4B, micro_batch_size=1, seq_length=4096).activations
    fewer = estimate_memory(
        SODA_4B, pipeline_parallel=4, micro_batch_size=1, seq_length=4096, num_micro_batches_in_flight=2
    )
    assert fewer.micro_batches_in_flight == 2 and fewer.activations == pp4.activations // 2


def test_interleaving_holds_the_warm_up_chunks_of_megatrons_schedule():
    """p = 4 stages of 9 layers, v = 3 chunks of 3: the first stage runs 2 (p - 1) + (v - 1) p = 14 chunk
    forwards before its first backward and holds 15 chunks of 3 layers: 45 layers' worth against plain
    1F1B's 36, i.e. 1 + (p - 1) / (p v) = 1.25 times."""
    plain = estimate_memory(SODA_4B, pipeline_parallel=4, micro_batch_size=1, seq_length=4096)
    interleaved = estimate_memory(SODA_4B, pipeline_parallel=4, micro_batch_size=1, seq_length=4096, virtual_pipeline=3)
    assert (interleaved.micro_batches_in_flight, interleaved.virtual_pipeline) == (15, 3)
    assert interleaved.activations * 4 == plain.activations * 5
    assert "through chunks of 3 layers" in interleaved.lines()[0]
    with pytest.raises(ValueError, match="virtual_pipeline=2"):
        estimate_memory(SODA_4B, pipeline_parallel=4, micro_batch_size=1, seq_length=4096, virtual_pipeline=2)


def test_refuses_layouts_that_cannot_run():
    with pytest.raises(ValueError, match="tensor_parallel=3"):
        estimate_memory(SODA_600M, tensor_parallel=3, **SODA_RUN)
    with pytest.raises(ValueError, match="pipeline stages"):
        estimate_memory(SODA_600M, pipeline_parallel=3, **SODA_RUN)
    with pytest.raises(ValueError, match="recompute_granularity"):
        estimate_memory(SODA_600M, recompute_granularity="block", **SODA_RUN)
    with pytest.raises(ValueError, match="micro_batch_size"):
        estimate_memory(SODA_600M, micro_batch_size=0, seq_length=4096)


def test_renders_a_table_and_json():
    est = estimate_memory(
        SODA_4B, tensor_parallel=2, data_parallel=4, distributed_optimizer=True, micro_batch_size=1, seq_length=4096
    )
    assert isinstance(est, MemoryEstimate)
    data = json.loads(json.dumps(est.as_dict()))
    assert (
        data["total"]
        == est.total
        == sum(data[k] for k in ("weights", "gradients", "optimizer_state", "activations", "logits"))
    )
    text = est.format()
    assert "total" in text and "GiB" in text and f"{est.total / 2**30:.2f}" in text
    with pytest.raises(Exception):
        est.weights = 0  # frozen


# -- a real model on CPU -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(megatron_world):
    from megatron_soda.models.gpt import build_gpt_model, transformer_config

    shape = get_preset("tiny")  # L=2, h=64, 4 heads, 2 kv groups, head dim 16, FFN 128, untied
    config = transformer_config(shape, attention_backend="sdpa")
    return shape, config, build_gpt_model(shape, config, attention_backend="sdpa")


def test_parameter_and_grad_buffer_bytes_match_a_real_model(tiny_model):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    shape, config, model = tiny_model
    est = estimate_memory(shape, micro_batch_size=1, seq_length=16, bf16=False)
    assert est.weights == sum(p.numel() * p.element_size() for p in model.parameters())
    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), module=model)
    grad_buffer = sum(b.grad_data.numel() * b.grad_data.element_size() for b in ddp.buffers)
    assert grad_buffer == pytest.approx(est.gradients, rel=0.01)  # megatron pads buckets a little


def test_saved_activations_of_a_real_layer(tiny_model):
    """Saved tensors of one layer's forward (distinct storages, parameters excluded) against the formula.

    Measured here (torch 2.x, CPU, local spec): 1,516 fp32 elements per token against the formula's
    4h + 4q + 3k + 5f = 1,248; the rest is torch's unfused RMSNorm saving ``x * rsqrt`` besides its
    input (64 + 64 + 64 + 32) and its per-token rsqrt (1 + 1 + 4 + 2), RoPE's cos/sin tables (32 per
    token at b=2) and the kernel's logsumexp (4): what the docstring leaves out (TE's norms are fused).
    """
    import torch

    shape, _, model = tiny_model
    b, s = 2, 64
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved, recording = {}, [False]

    def pack(t):
        storage = t.untyped_storage()
        if recording[0] and storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    layer = model.decoder.layers[1]
    hooks = [
        layer.register_forward_pre_hook(lambda *_: recording.__setitem__(0, True)),
        layer.register_forward_hook(lambda *_: recording.__setitem__(0, False)),
    ]
    try:
        tokens = torch.randint(0, shape.vocab_size, (b, s))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(tokens, torch.arange(s).expand(b, s), None)
    finally:
        for hook in hooks:
            hook.remove()
    per_layer = estimate_memory(shape, micro_batch_size=b, seq_length=s, bf16=False).activations // shape.num_layers
    assert per_layer == b * s * (4 * 64 + 4 * 64 + 3 * 32 + 5 * 128) * 4
    assert per_layer <= sum(saved.values()) <= 1.3 * per_layer
