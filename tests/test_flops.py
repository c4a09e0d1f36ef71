"""FLOP counts (training/flops.py): hand-computed values, the conventions, and Levanter parity."""

import pytest

from megatron_soda.models.isoflop import isoflop_shape
from megatron_soda.models.presets import PRESETS, get_preset
from megatron_soda.training.flops import (
    PEAK_BF16_FLOPS,
    attention_flops_per_token,
    forward_flops_per_token,
    lm_head_flops_per_token,
    mfu,
    six_n_flops_per_token,
    six_n_mfu,
    training_flops_per_token,
)

TINY = PRESETS["tiny"]  # L=2, h=64, 4 heads, 2 kv groups, head dim 16, FFN 128, V=144,644, untied


def levanter_lm_flops_per_token(
    hidden_dim, intermediate_dim, num_layers, num_kv_heads, num_heads, seq_len, vocab_size, glu
):
    """Levanter's ``lm_flops_per_token`` (marin lib/levanter utils/flop_utils.py), transcribed as the reference:
    it assumes head_dim = hidden / heads."""
    head_dim = hidden_dim / num_heads
    mlp = 2 * (3 if glu else 2) * hidden_dim * intermediate_dim
    qkv_proj = 2 * hidden_dim * (num_heads * head_dim + 2 * num_kv_heads * head_dim)
    dense_proj = 2 * hidden_dim * hidden_dim
    key_query_logits = 2 * seq_len**2 * num_heads * head_dim
    mask = 3 * seq_len * seq_len * num_heads
    mask_value = 2 * seq_len * seq_len * head_dim * num_heads
    attn = (key_query_logits + mask + mask_value) / seq_len
    return num_layers * (mlp + qkv_proj + dense_proj + attn) + 2 * hidden_dim * vocab_size


def test_forward_flops_of_the_tiny_shape_by_hand():
    # per layer: qkv 2*64*(4*16 + 2*2*16) = 16,384; out 2*64*64 = 8,192; SwiGLU 2*3*64*128 = 49,152
    assert forward_flops_per_token(TINY, 32, include_attention=False, include_lm_head=False) == 2 * 73_728
    # attention at s=32, per layer: QK^T 2*32*4*16 + AV 2*32*4*16 = 8,192, mask/softmax 3*32*4 = 384
    assert attention_flops_per_token(TINY, 32) == 2 * 8_576
    assert lm_head_flops_per_token(TINY) == 2 * 64 * 144_644 == 18_514_432
    assert forward_flops_per_token(TINY, 32) == 147_456 + 17_152 + 18_514_432 == 18_679_040
    assert forward_flops_per_token(TINY, 32, include_lm_head=False) == 147_456 + 17_152


def test_training_flops_are_three_forwards():
    for shape in (TINY, PRESETS["soda-600m"], PRESETS["soda-4b"]):
        assert training_flops_per_token(shape, 4096) == 3 * forward_flops_per_token(shape, 4096)


def test_six_n_uses_non_embedding_parameters():
    assert TINY.num_non_embedding_parameters() == 74_112
    assert six_n_flops_per_token(TINY) == 6 * 74_112 == 444_672
    assert six_n_flops_per_token(PRESETS["soda-135m"]) == 6 * 57_034_112


@pytest.mark.parametrize("name", ["tiny", "soda-135m", "soda-600m", "soda-4b", "ablation-75m"])
def test_matmul_flops_are_twice_the_non_embedding_parameters_less_the_norm_weights(name):
    # Without the attention core and the LM head, a forward pass is 2 FLOPs per matmul weight. The
    # non-embedding count also holds the norm weights (2h + 2 head_dim per layer, h final), which are
    # elementwise scales, not matmul weights: they are the whole difference.
    shape = PRESETS[name]
    norms = shape.num_layers * (2 * shape.hidden_size + 2 * shape.kv_channels) + shape.hidden_size
    dense = forward_flops_per_token(shape, 4096, include_attention=False, include_lm_head=False)
    assert dense == 2 * (shape.num_non_embedding_parameters() - norms)


def test_causal_attention_is_counted_as_the_full_map():
    # Full map (Megatron-LM / Levanter): 2*s*a*d for QK^T and again for AV per token, not s/2.
    assert attention_flops_per_token(TINY, 8192) == 2 * attention_flops_per_token(TINY, 4096)
    per_layer = attention_flops_per_token(TINY, 4096) / TINY.num_layers
    assert per_layer == 2 * (2 * 4096 * 4 * 16) + 3 * 4096 * 4


@pytest.mark.parametrize("width", [128, 512, 1024, 2048])
def test_isoflop_shapes_match_levanter_lm_flops_per_token(width):
    shape = isoflop_shape(width)
    expected = levanter_lm_flops_per_token(
        width, 4 * width, shape.num_layers, width // 128, width // 128, 4096, 144_644, glu=True
    )
    assert forward_flops_per_token(shape, 4096) == expected


def test_ablation_shapes_match_levanter_where_head_dim_is_hidden_over_heads():
    for name in ("ablation-30m", "ablation-300m"):
        s = PRESETS[name]
        expected = levanter_lm_flops_per_token(
            s.hidden_size,
            s.ffn_hidden_size,
            s.num_layers,
            s.num_query_groups,
            s.num_attention_heads,
            4096,
            s.vocab_size,
            glu=True,
        )
        assert forward_flops_per_token(s, 4096) == expected


def test_decoupled_head_dim_uses_the_real_attention_width():
    # SODA-600M: 16 heads x 128 = 2048 != hidden 1024. Levanter's older formula (hidden/heads) would
    # undercount; ours counts the q/o projections at 2048 wide.
    shape = PRESETS["soda-600m"]
    per_layer = forward_flops_per_token(shape, 4096, False, False) // shape.num_layers
    assert per_layer == 2 * 1024 * (2048 + 2 * 1024) + 2 * 2048 * 1024 + 2 * 3 * 1024 * 3072


def test_lm_head_uses_the_unpadded_vocabulary_also_when_tied():
    tied = get_preset("tiny", tie_embeddings=True)
    assert forward_flops_per_token(tied, 64) == forward_flops_per_token(TINY, 64)
    assert lm_head_flops_per_token(get_preset("tiny", vocab_size=1000)) == 2 * 64 * 1000


def test_mfu_divides_model_flops_by_the_peak_of_all_devices():
    peak = PEAK_BF16_FLOPS["h100-sxm"]
    assert peak == 989e12 and PEAK_BF16_FLOPS["h200"] == 989e12
    per_token = training_flops_per_token(PRESETS["soda-600m"], 4096)
    tokens_per_second = 0.4 * peak / per_token
    assert mfu(tokens_per_second, PRESETS["soda-600m"], 4096, peak) == pytest.approx(0.4)
    assert mfu(8 * tokens_per_second, PRESETS["soda-600m"], 4096, peak, num_devices=8) == pytest.approx(0.4)


def test_six_n_mfu_is_reported_in_its_own_convention():
    shape = PRESETS["soda-600m"]
    tps = 1e5
    assert six_n_mfu(tps, shape, 1e15) == pytest.approx(tps * 6 * 440_467_456 / 1e15)
    assert six_n_mfu(tps, shape, 1e15) < mfu(tps, shape, 4096, 1e15)  # 6N leaves out attention and LM head


def test_invalid_sequence_length_is_refused():
    with pytest.raises(ValueError, match="seq_len"):
        forward_flops_per_token(TINY, 0)


def test_peak_is_read_from_the_device_name_and_unknown_devices_get_none():
    from megatron_soda.training.flops import PEAK_BF16_FLOPS, peak_bf16_flops

    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == PEAK_BF16_FLOPS["h100-sxm"] == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12 and peak_bf16_flops("NVIDIA H100 NVL") == 835e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") is None
