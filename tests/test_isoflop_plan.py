"""The IsoFLOP planner (megatron_soda/scaling/plan.py): SODA's 59-run grid to the row, Marin's 7 targets on
request, trainer configs that pretrain reads back as the planned run, and the SLURM array script."""

import csv

import pytest

from megatron_soda.models.isoflop import MARIN_TARGETS, isoflop_shape
from megatron_soda.scaling.launch import LaunchConfig, LaunchSettings, launch_slurm, slurm_script
from megatron_soda.scaling.plan import PlanConfig, PlanSettings, plan_points, write_plan
from megatron_soda.tokenizer import SODA_LAYOUT
from megatron_soda.training.plan import parse_train_config


def test_default_plan_is_sodas_59_runs_each_within_one_percent_of_its_budget():
    points = plan_points(PlanSettings(), SODA_LAYOUT.vocab_size)
    assert len(points) == 59 and not any(p.target for p in points)
    assert sorted({p.budget for p in points}) == [1e18, 3e18, 6e18, 1e19, 3e19, 6e19, 1e20]
    assert all(abs(p.forward_flops / p.budget - 1) <= 0.01 for p in points)
    # the pinned row: forward budget 3e18 (the paper's 9e18 training FLOPs), width 768
    row = next(p for p in points if p.budget == 3e18 and p.width == 768)
    assert (row.shape.num_layers, row.shape.num_attention_heads, row.batch_size, row.train_steps) == (8, 6, 32, 48_244)
    assert row.learning_rate == pytest.approx(0.33 * 32**0.5 / 768) and row.adam_beta2 == pytest.approx(0.98**0.25)


def test_with_targets_adds_marins_seven_larger_runs():
    points = plan_points(PlanSettings(with_targets=True), SODA_LAYOUT.vocab_size)
    targets = [(p.budget, p.width) for p in points if p.target]
    assert len(points) == 66 and targets == list(MARIN_TARGETS)
    biggest = next(p for p in points if p.target and p.width == 3072)
    assert biggest.shape.num_layers == 30 and round(biggest.total_parameters / 1e9, 2) == 5.42  # Marin's "5.42B"
    assert all(abs(p.forward_flops / p.budget - 1) <= 0.01 for p in points)
    with pytest.raises(ValueError, match="needs --family soda"):
        plan_points(PlanSettings(family="cpu", with_targets=True), 1000)


def test_plan_table_states_both_flop_conventions_and_configs_train_the_planned_run(tmp_path):
    plan = write_plan(PlanConfig(str(tmp_path), PlanSettings()))
    rows = list(csv.DictReader(open(tmp_path / "plan.csv")))
    assert len(rows) == len(plan["runs"]) == 59
    row = next(r for r in plan["runs"] if r["name"] == "3e18-d768")
    assert row["budget_training"] == 9e18 and abs(row["flops_training"] / 9e18 - 1) < 0.01
    assert row["flops_6nd"] == 6 * row["non_embedding_parameters"] * row["tokens"] < row["flops_training"]
    assert row["parameters"] > row["non_embedding_parameters"]  # total N counts embeddings and LM head
    config = parse_train_config(["--config", str(tmp_path / row["config"])])
    assert config.model.shape(SODA_LAYOUT.vocab_size, 4096) == isoflop_shape(768)
    t, o, s = config.training, config.optimizer, config.schedule
    assert (t.global_batch_size, t.train_iters, t.seq_length, t.z_loss_weight) == (32, 48_244, 4096, 0.0)
    assert (o.name, o.adamc, o.adam_beta1, o.adam_eps, o.weight_decay) == ("cautious", True, 0.95, 1e-15, 0.1)
    assert o.lr == pytest.approx(row["lr"]) and o.adam_beta2 == pytest.approx(row["adam_beta2"])
    assert (s.lr_decay_style, s.lr_warmup_fraction, s.lr_decay_fraction) == ("wsd", 0.1, 0.2)
    assert config.eval.eval_interval == 48_244 and config.checkpoint.load == config.checkpoint.save


def test_slurm_array_script_runs_one_plan_row_per_task(tmp_path, monkeypatch):
    write_plan(PlanConfig(str(tmp_path), PlanSettings(budgets=[1e18])))
    settings = LaunchSettings(
        data_path=["0.95", "data/speech", "0.05", "data/text"], nproc_per_node=8, slurm=True, slurm_max_parallel=4
    )
    script = slurm_script(LaunchConfig(str(tmp_path), settings))
    assert "#SBATCH --array=0,1,2,3,4,5,6%4" in script and "#SBATCH --gpus-per-node=8" in script
    assert '--runs "$SLURM_ARRAY_TASK_ID"' in script and "--nproc-per-node 8" in script
    assert "--data-path 0.95 data/speech 0.05 data/text" in script
    chosen = slurm_script(LaunchConfig(str(tmp_path), LaunchSettings(runs=["1e18-d768", "0"], slurm=True)))
    assert "#SBATCH --array=0,4\n" in chosen
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(ValueError, match="no sbatch"):
        launch_slurm(LaunchConfig(str(tmp_path), LaunchSettings(slurm=True, submit=True)), log=lambda m: None)
    assert (tmp_path / "slurm" / "isoflop.sbatch").read_text() == chosen.replace("0,4", "0,1,2,3,4,5,6")
