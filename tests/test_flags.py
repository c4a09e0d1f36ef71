"""The one flag mechanism: dataclass fields become Megatron-LM-style flags and YAML settings."""

from dataclasses import dataclass, field
from typing import List, Optional

import pytest

from megatron_soda.flags import FlagParser, as_flat_dict, flag
from megatron_soda.training.plan import parse_train_config


@dataclass
class Inner:
    lr: float = 1e-3
    """peak learning rate."""
    name: str = field(default="cautious", metadata=flag("--optimizer", choices=("adamw", "cautious")))
    """which optimizer."""


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    num_layers: Optional[int] = None
    """layers."""
    num_layers_per_virtual_pipeline_stage: Optional[int] = None
    """layers per chunk."""
    use_thing: bool = True
    """a switch that defaults on."""
    paths: List[str] = field(default_factory=list)
    """inputs."""


def test_nested_fields_become_flat_megatron_flags():
    config = FlagParser(Outer).parse(["--lr", "0.5", "--optimizer", "adamw", "--paths", "a", "b"])
    assert config.inner.lr == 0.5 and config.inner.name == "adamw" and config.paths == ["a", "b"]
    assert as_flat_dict(config)["inner.lr"] == 0.5


def test_abbreviated_flags_are_refused_not_taken_for_a_longer_one(capsys):
    parser = FlagParser(Outer)
    assert parser.parse(["--num-layers", "3"]).num_layers == 3
    with pytest.raises(SystemExit) as exit_info:
        parser.parse(["--num-layers-per", "3"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --num-layers-per" in capsys.readouterr().err


def test_booleans_can_be_turned_off_on_the_command_line():
    parser = FlagParser(Outer)
    assert parser.parse([]).use_thing is True
    assert parser.parse(["--no-use-thing"]).use_thing is False


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        FlagParser(Outer).parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "peak learning rate. (default: 0.001)" in text and "(default: True)" in text and "(default: none)" in text


def test_yaml_nested_or_flat_and_flags_win(tmp_path):
    (tmp_path / "nested.yaml").write_text("inner:\n  lr: 0.25\nnum_layers: 4\n")
    (tmp_path / "flat.yaml").write_text("lr: 0.125\n--optimizer: adamw\nuse-thing: false\n")
    parser = FlagParser(Outer, config_file=True)
    nested = parser.parse(["--config", tmp_path / "nested.yaml", "--num-layers", "6"])
    assert nested.inner.lr == 0.25 and nested.num_layers == 6
    flat = parser.parse(["--config", tmp_path / "flat.yaml"])
    assert flat.inner.lr == 0.125 and flat.inner.name == "adamw" and flat.use_thing is False


@pytest.mark.parametrize(
    "text, message",
    [
        ("lrr: 1\n", "unknown setting 'lrr'"),
        ("inner:\n  lr: fast\n", "'fast' is not valid"),
        ("optimizer: sgd\n", "choose from adamw, cautious"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_bad_yaml_exits_2_naming_the_file_and_setting(tmp_path, capsys, text, message):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        FlagParser(Outer, config_file=True).parse(["--config", tmp_path / "run.yaml"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"--config {tmp_path / 'run.yaml'}" in err and message in err


def test_two_fields_claiming_one_flag_is_a_programming_error():
    @dataclass
    class Clash:
        inner: Inner = field(default_factory=Inner)
        lr: float = 0.1

    with pytest.raises(TypeError, match="both claim --lr"):
        FlagParser(Clash)


def test_training_config_reads_megatron_flag_names():
    config = parse_train_config(
        [
            "--data-path",
            "x",
            "--tensor-model-parallel-size",
            "2",
            "--lr",
            "1e-3",
            "--no-load-optim",
            "--finetune",
            "--num-layers",
            "4",
            "--hidden-size",
            "64",
            "--num-attention-heads",
            "4",
            "--untie-embeddings-and-output-weights",
        ]
    )
    assert config.parallel.tensor_model_parallel_size == 2 and config.optimizer.lr == 1e-3
    assert config.checkpoint.load_optim is False and config.checkpoint.finetune is True
    shape = config.model.shape(vocab_size=1000, seq_length=128)
    assert (shape.num_layers, shape.hidden_size, shape.kv_channels, shape.tie_embeddings) == (4, 64, 16, False)
    assert config.recipe is None  # a custom shape brings no recipe


def test_soda_preset_with_a_shape_flag_is_a_custom_shape_without_the_recipe():
    config = parse_train_config(["--model", "soda-135m", "--num-layers", "4"])
    assert config.recipe is None and config.optimizer.lr == 3e-4
    assert config.model.shape(vocab_size=1000, seq_length=128).num_layers == 4


def test_finetune_never_takes_the_soda_recipe():
    config = parse_train_config(["--model", "soda-600m", "--finetune", "--load", "x", "--lr", "1e-5"])
    assert config.recipe is None and config.training.train_iters is None and config.optimizer.lr == 1e-5


def test_training_yaml_sections_are_sections_even_where_a_flag_has_their_name(tmp_path):
    """`model:` and `optimizer:` are sections of TrainConfig although --model and --optimizer are flags."""
    (tmp_path / "run.yaml").write_text(
        "model:\n  num_layers: 4\n  hidden_size: 64\n  num_attention_heads: 4\noptimizer:\n  lr: 0.001\n"
        "  name: adamw\ntraining:\n  train_iters: 10\n"
    )
    config = parse_train_config(["--config", tmp_path / "run.yaml", "--data-path", "x"])
    assert (config.model.num_layers, config.optimizer.lr, config.optimizer.name) == (4, 1e-3, "adamw")
    assert config.training.train_iters == 10 and config.model.preset is None


@pytest.mark.parametrize("value", ["true", "2.7"])
def test_yaml_refuses_a_boolean_or_fraction_for_a_whole_number(tmp_path, capsys, value):
    (tmp_path / "run.yaml").write_text(f"num_layers: {value}\n")
    with pytest.raises(SystemExit):
        FlagParser(Outer, config_file=True).parse(["--config", tmp_path / "run.yaml"])
    assert "num_layers" in capsys.readouterr().err


def test_train_tokens_replace_the_recipes_steps_and_both_together_are_refused():
    from megatron_soda.training.plan import check_settings

    config = parse_train_config(["--model", "soda-135m", "--train-tokens", "2097152"])
    assert config.recipe == "soda (soda-135m)" and config.training.num_iterations() == 1  # 512 x 4096 per step
    both = parse_train_config(["--data-path", "x", "--train-iters", "5", "--train-tokens", "100"])
    with pytest.raises(ValueError, match="not --train-iters and --train-tokens"):
        check_settings(both, 1)


def test_rope_scaling_flags_switch_and_set_the_llama3_scaling():
    plain = parse_train_config(["--model", "tiny", "--no-use-rope-scaling"]).model.shape(1000, 128)
    scaled = parse_train_config(["--model", "tiny", "--rope-scaling-factor", "4"]).model.shape(1000, 128)
    assert plain.rope_scaling is None and scaled.rope_scaling.factor == 4.0
    assert scaled.rope_scaling.low_freq_factor == 1.0 and scaled.rope_scaling.original_max_position == 8192
