"""Llama-3 RoPE scaling reaches megatron-core with all four settings (models/gpt.py ``apply_rope_scaling``).

megatron-core's GPTModel takes only the factor; the model's rotary frequencies must nevertheless be the
Llama-3 formula of the shape's factor, low/high frequency factors and original context, as transformers
computes them (``ROPE_INIT_FUNCTIONS["llama3"]``) and as written out by hand here.
"""

import math
from dataclasses import replace

import pytest
import torch

from megatron_soda.models.presets import LLAMA3_ROPE_SCALING, RopeScaling, get_preset

# Head dimension 32 at theta 500k: wavelengths from 6 to ~4e5 positions, so with an original context
# of 2048 and factors 2 / 8 (edges at 1024 and 256 positions) some frequencies are kept, some divided
# by the factor and some interpolated.
CUSTOM = RopeScaling(factor=16.0, low_freq_factor=2.0, high_freq_factor=8.0, original_max_position=2048)


def shape_with(rope):
    return get_preset("tiny", vocab_size=64, kv_channels=32, rope_scaling=rope)


def by_hand(shape):
    """The Llama-3 formula (Meta's apply_scaling), in float64, from the shape's four settings."""
    rope, dim = shape.rope_scaling, shape.kv_channels
    freqs = [1.0 / shape.rotary_base ** (i / dim) for i in range(0, dim, 2)]
    if rope is None:
        return torch.tensor(freqs, dtype=torch.float64)
    low_wavelen = rope.original_max_position / rope.low_freq_factor
    high_wavelen = rope.original_max_position / rope.high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(freq)
        elif wavelen > low_wavelen:
            out.append(freq / rope.factor)
        else:
            band = rope.high_freq_factor - rope.low_freq_factor
            smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / band
            out.append((1 - smooth) * freq / rope.factor + smooth * freq)
    return torch.tensor(out, dtype=torch.float64)


def by_transformers(shape):
    from transformers import Qwen3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = shape.rope_scaling
    config = Qwen3Config(
        hidden_size=shape.hidden_size,
        num_attention_heads=shape.num_attention_heads,
        head_dim=shape.kv_channels,
        max_position_embeddings=shape.max_position_embeddings,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": shape.rotary_base,
            "factor": rope.factor,
            "low_freq_factor": rope.low_freq_factor,
            "high_freq_factor": rope.high_freq_factor,
            "original_max_position_embeddings": rope.original_max_position,
        },
    )
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    return inv_freq


def model_inv_freq(shape, **kwargs):
    from megatron_soda.models.gpt import build_gpt_model, transformer_config

    config = transformer_config(shape, attention_backend="sdpa")
    model = build_gpt_model(shape, config, attention_backend="sdpa", **kwargs)
    return model.rotary_pos_emb


def megatron_alone(shape):
    """What megatron-core computes from the factor alone (its other settings fixed at 1, 4, 8192)."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    return RotaryEmbedding(
        shape.kv_channels,
        1.0,
        rotary_base=shape.rotary_base,
        rope_scaling=True,
        rope_scaling_factor=shape.rope_scaling.factor,
        use_cpu_initialization=True,
    ).inv_freq


def test_custom_low_high_and_original_context_reach_the_model(megatron_world):
    shape = shape_with(CUSTOM)
    rotary = model_inv_freq(shape)
    inv_freq = rotary.inv_freq
    assert inv_freq.dtype == torch.float32
    expected = by_hand(shape)
    torch.testing.assert_close(inv_freq.double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(inv_freq, by_transformers(shape), rtol=1e-6, atol=0)
    # All three regimes are exercised, and megatron's factor-only frequencies would be wrong here.
    unscaled = by_hand(replace(shape, rope_scaling=None))
    ratio = expected / unscaled
    kept, divided = ratio == 1, ratio == 1 / CUSTOM.factor
    assert kept.any() and divided.any() and (~kept & ~divided).any()
    assert (megatron_alone(shape).double() - expected).abs().max() > 1e-3 * expected.max()
    # The embedding the layers get is built from these frequencies (a later stage's too).
    positions = torch.arange(8, dtype=torch.float32)
    torch.testing.assert_close(rotary.get_freqs_non_repeated(8), torch.outer(positions, inv_freq))
    torch.testing.assert_close(model_inv_freq(shape, pre_process=False).inv_freq, inv_freq, rtol=0, atol=0)


def test_default_scaling_is_megatrons_own_bit_for_bit(megatron_world):
    shape = shape_with(LLAMA3_ROPE_SCALING)
    inv_freq = model_inv_freq(shape).inv_freq
    assert torch.equal(inv_freq, megatron_alone(shape))
    torch.testing.assert_close(inv_freq, by_transformers(shape), rtol=1e-6, atol=0)
    torch.testing.assert_close(inv_freq.double(), by_hand(shape), rtol=1e-6, atol=0)


def test_plain_rope_is_unscaled(megatron_world):
    shape = shape_with(None)
    torch.testing.assert_close(model_inv_freq(shape).inv_freq.double(), by_hand(shape), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "rope",
    [
        replace(CUSTOM, low_freq_factor=8.0),
        replace(CUSTOM, high_freq_factor=1.0),
        replace(CUSTOM, factor=0.0),
        replace(CUSTOM, original_max_position=0),
    ],
)
def test_meaningless_scaling_is_refused_naming_the_values(megatron_world, rope):
    from megatron_soda.models.gpt import build_gpt_model, transformer_config

    shape = shape_with(rope)
    named = rf"low_freq_factor={rope.low_freq_factor}, high_freq_factor={rope.high_freq_factor}"
    with pytest.raises(ValueError, match=named):
        build_gpt_model(shape, transformer_config(shape, attention_backend="sdpa"), attention_backend="sdpa")
