"""Model presets, SODA's training recipe and the IsoFLOP grid (docs/recipe.md "Models", "Training
hyperparameters", "Scaling law")."""

import dataclasses

import pytest

from megatron_soda.models.isoflop import (
    DEFAULT_BUDGETS,
    isoflop_grid,
    isoflop_shape,
    isoflop_widths,
    num_layers_for_width,
    sweep_beta2,
    sweep_learning_rate,
)
from megatron_soda.models.presets import PRESETS, ModelShape, get_preset, soda_recipe
from megatron_soda.tokenizer import SODA_LAYOUT
from megatron_soda.training.flops import forward_flops_per_token

SODA_TABLE = {  # docs/recipe.md "Models": non-embedding, total (untied), with the 144,644 vocabulary
    "soda-135m": (57_034_112, 205_149_568),
    "soda-600m": (440_467_456, 736_698_368),
    "soda-1.7b": (1_409_410_048, 2_001_871_872),
    "soda-4b": (3_633_511_936, 4_374_089_216),
}


@pytest.mark.parametrize("name", SODA_TABLE)
def test_soda_sizes_have_exactly_the_parameter_counts_of_the_soda_table(name):
    shape = PRESETS[name]
    assert not shape.tie_embeddings
    assert shape.vocab_size == SODA_LAYOUT.vocab_size
    assert (shape.num_non_embedding_parameters(), shape.num_parameters()) == SODA_TABLE[name]
    assert shape.num_parameters(include_embeddings=False) == SODA_TABLE[name][0]


def test_soda_sizes_share_the_architecture_constants():
    for name in SODA_TABLE:
        shape = PRESETS[name]
        assert (shape.norm_epsilon, shape.rotary_base, shape.max_position_embeddings) == (1e-5, 500_000, 4096)
        assert (shape.qk_layernorm, shape.swiglu, shape.bias) == (True, True, False)
        rope = shape.rope_scaling
        assert (rope.factor, rope.low_freq_factor, rope.high_freq_factor, rope.original_max_position) == (8, 1, 4, 8192)


def test_ablation_shapes_are_tied_multi_head_with_head_dim_hidden_over_heads():
    expected = {
        "ablation-30m": (8, 192, 2, 448),
        "ablation-50m": (12, 256, 4, 896),
        "ablation-75m": (16, 336, 4, 1024),
        "ablation-150m": (20, 512, 8, 1792),
        "ablation-300m": (22, 768, 12, 2688),
    }
    for name, (layers, hidden, heads, ffn) in expected.items():
        shape = PRESETS[name]
        assert (shape.num_layers, shape.hidden_size, shape.num_attention_heads, shape.ffn_hidden_size) == (
            layers,
            hidden,
            heads,
            ffn,
        )
        assert shape.num_query_groups == heads and shape.kv_channels * heads == hidden
        assert shape.tie_embeddings


def _hf_parameter_count(shape: ModelShape) -> int:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen3Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.ffn_hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_query_groups,
        head_dim=shape.kv_channels,
        tie_word_embeddings=shape.tie_embeddings,
        attention_bias=shape.bias,
    )
    with torch.device("meta"):
        model = transformers.Qwen3ForCausalLM(config)
    if shape.tie_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


@pytest.mark.parametrize("name", ["tiny", "ablation-30m", "soda-600m"])
@pytest.mark.parametrize("tied", [False, True])
def test_parameter_count_equals_transformers_qwen3_for_causal_lm(name, tied):
    shape = get_preset(name, tie_embeddings=tied)
    assert shape.num_parameters() == _hf_parameter_count(shape)


def test_parameter_count_with_attention_bias_equals_transformers():
    shape = get_preset("tiny", bias=True, vocab_size=1000)
    assert shape.num_parameters() == _hf_parameter_count(shape)


def test_tied_embeddings_are_counted_once():
    untied, tied = get_preset("tiny"), get_preset("tiny", tie_embeddings=True)
    assert untied.num_parameters() - tied.num_parameters() == SODA_LAYOUT.vocab_size * 64
    assert untied.num_non_embedding_parameters() == tied.num_non_embedding_parameters()


def test_padded_vocab_is_a_function_of_the_vocabulary_only():
    shape = PRESETS["soda-600m"]
    assert shape.padded_vocab_size() == 145_408  # 142 x 1024, serves TP 1, 2, 4, 8 alike
    assert all(PRESETS[name].padded_vocab_size() == 145_408 for name in PRESETS)
    assert get_preset("tiny", vocab_size=2047).padded_vocab_size() == 2048
    assert get_preset("tiny", vocab_size=2048).padded_vocab_size() == 3072  # the pad id needs a row
    assert get_preset("tiny", vocab_size=2049).padded_vocab_size(128) == 2176
    with pytest.raises(ValueError, match="multiple"):
        shape.padded_vocab_size(0)


def test_get_preset_applies_overrides_and_names_the_known_presets_when_asked_for_an_unknown_one():
    assert get_preset("tiny", vocab_size=5100).vocab_size == 5100
    assert PRESETS["tiny"].vocab_size == SODA_LAYOUT.vocab_size  # the registry is not modified
    with pytest.raises(KeyError, match="soda-135m.*tiny"):
        get_preset("soda-7b")
    with pytest.raises(TypeError):
        get_preset("tiny", hidden=3)


def test_invalid_shapes_are_refused():
    with pytest.raises(ValueError, match="num_query_groups"):
        get_preset("tiny", num_query_groups=3)
    with pytest.raises(ValueError, match="hidden_size"):
        get_preset("tiny", hidden_size=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["tiny"].num_layers = 3


@pytest.mark.parametrize(
    "name, lr", [("soda-4b", 2.683e-3), ("soda-1.7b", 3.0e-3), ("soda-600m", 4.243e-3), ("soda-135m", 4.243e-3)]
)
def test_soda_learning_rates_follow_the_width_rule(name, lr):
    recipe = soda_recipe(name)
    assert float(f"{recipe.lr:.4g}") == lr
    assert recipe.lr_width == (1024 if name == "soda-135m" else PRESETS[name].hidden_size)


def test_soda_recipe_constants():
    recipe = soda_recipe("soda-600m")
    assert recipe.train_steps == 238_419 == -(-500_000_000_000 // (512 * 4096))
    assert recipe.tokens_per_step == 512 * 4096
    assert (recipe.warmup_steps, recipe.decay_steps) == (23_841, 47_683)
    assert (recipe.adam_beta1, recipe.adam_beta2, recipe.adam_eps) == (0.98, 0.98, 1e-16)
    assert (recipe.weight_decay, recipe.adamc, recipe.clip_grad) == (0.033, True, 1.0)
    assert (recipe.z_loss_weight, recipe.min_lr, recipe.optimizer) == (1e-4, 0.0, "cautious")
    with pytest.raises(KeyError, match="soda-4b"):
        soda_recipe("tiny")


# --- IsoFLOP grid (docs/recipe.md "Scaling law") --------------------------------------------------


def test_isoflop_layers_follow_the_width_rule():
    # L = round(d / (64 + 4 log2 d - 7)): 128/85, 256/89, 384/91.3, 512/93, 1024/97, 2048/101
    assert [num_layers_for_width(d) for d in (128, 256, 384, 512, 1024, 2048)] == [2, 3, 4, 6, 11, 20]


def test_isoflop_shape_is_untied_multi_head_with_head_dim_128_and_ffn_4d():
    shape = isoflop_shape(1024)
    assert (shape.num_layers, shape.num_attention_heads, shape.num_query_groups, shape.kv_channels) == (11, 8, 8, 128)
    assert (shape.ffn_hidden_size, shape.tie_embeddings, shape.vocab_size) == (4096, False, SODA_LAYOUT.vocab_size)
    with pytest.raises(ValueError, match="multiples of 128"):
        isoflop_shape(200)


def test_isoflop_widths_step_by_256_only_above_9e18():
    assert isoflop_widths(1e18) == isoflop_widths(9e18) == list(range(128, 2049, 128))
    assert isoflop_widths(1e19) == [128, 384, 640, 896, 1152, 1408, 1664, 1920]  # 2048 is not on the 256 grid


def test_sweep_lr_is_capped_and_beta2_follows_the_batch():
    assert sweep_learning_rate(64, 1024) == pytest.approx(0.33 * 8 / 1024)
    assert sweep_learning_rate(512, 128) == 0.01
    assert sweep_beta2(128) == pytest.approx(0.98) and sweep_beta2(256) == pytest.approx(0.98**2)


def test_fixed_batch_grid_meets_each_budget_within_one_step_and_tokens_grow_with_budget():
    budgets = (1e18, 1e19, 1e20)
    points = isoflop_grid(budgets, batch_size=64, seq_len=4096, max_steps=None)
    for point in points:
        step_flops = forward_flops_per_token(point.shape, 4096) * 64 * 4096
        assert abs(point.forward_flops - point.budget) <= step_flops / 2
        assert point.training_flops == 3 * point.forward_flops
        assert point.tokens == point.train_steps * 64 * 4096
        assert point.learning_rate == sweep_learning_rate(64, point.width) <= 0.01
        assert (point.adam_beta1, point.adam_eps, point.weight_decay, point.z_loss_weight) == (0.95, 1e-15, 0.1, 0.0)
        assert point.non_embedding_parameters == point.shape.num_non_embedding_parameters()
        assert point.total_parameters == point.shape.num_parameters()
    for width in (384, 1152, 1920):  # on both width grids
        tokens = [p.tokens for b in budgets for p in points if p.budget == b and p.width == width]
        assert len(tokens) == 3 and tokens == sorted(tokens) and tokens[0] < tokens[-1]
    # at one budget, bigger models see fewer tokens
    at_1e19 = [p for p in points if p.budget == 1e19]
    assert [p.tokens for p in at_1e19] == sorted((p.tokens for p in at_1e19), reverse=True)


def test_default_grid_picks_batches_as_marin_did():
    points = isoflop_grid()
    assert {p.budget for p in points} == set(DEFAULT_BUDGETS)
    for p in points:
        flops_per_sequence = forward_flops_per_token(p.shape, p.seq_len) * p.seq_len
        exact = p.budget / (flops_per_sequence * 2**16)
        assert p.batch_size >= 8 and p.batch_size & (p.batch_size - 1) == 0
        # the power of two at or above the exact batch, unless halved to keep lr <= 0.01
        assert p.batch_size >= exact or 0.33 * (2 * p.batch_size) ** 0.5 / p.width > 0.01
        assert p.batch_size < 2 * exact
        assert p.learning_rate == 0.33 * p.batch_size**0.5 / p.width <= 0.01
        assert p.adam_beta2 == pytest.approx(0.98 ** (p.batch_size / 128))
        assert p.train_steps < 400_000
        assert abs(p.forward_flops - p.budget) <= 0.01 * p.budget
