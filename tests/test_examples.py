"""The launch scripts in examples/ check their variables and pass pretrain --dry-run with the real entry
point, so none drifts from the flags; each size's stated memory is the dry run's estimate."""

import os
import re
import subprocess
import sys

import pytest

from tests.dist import ROOT

SIZES = ("135m", "600m", "1.7b", "4b")


def run(script, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environment.update(PYTHON=sys.executable, **env)
    return subprocess.run(
        ["bash", ROOT / "examples" / script], env=environment, capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def stated_memory(size):
    table = (ROOT / "examples" / "soda_sizes.sh").read_text()
    return float(re.search(rf"{re.escape(size)}\) MODEL=\S+ .* MEMORY_GIB=([\d.]+)", table).group(1))


@pytest.mark.parametrize("size", SIZES)
def test_each_soda_size_plans_on_a_node_of_eight_gpus_with_the_memory_it_states(size):
    result = run("pretrain.sh", SIZE=size, DATA="0.95 data/speech 0.05 data/text", DRY_RUN="1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"recipe: soda (soda-{size})" in result.stdout and "DP=8 = 8 ranks" in result.stdout
    total = float(re.search(r"total\s+([\d.]+) GiB", result.stdout).group(1))
    assert total == pytest.approx(stated_memory(size), abs=0.1) and total < 80


def test_the_slurm_script_plans_its_nodes_and_every_script_names_a_missing_variable():
    result = run("pretrain.sbatch", SIZE="600m", DATA="data/speech", DRY_RUN="1", NODES="2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DP=16 = 16 ranks" in result.stdout
    assert "SIZE" in run("pretrain.sbatch", DATA="x").stderr
    for script in ("pretrain.sh", "pretrain.sbatch"):
        missing = run(script, SIZE="600m", DATA="x")
        assert missing.returncode != 0 and "TOKENIZER" in missing.stderr
    wrong = run("pretrain.sh", SIZE="9b", DATA="x", TOKENIZER="t")
    assert wrong.returncode == 2 and "135m, 600m, 1.7b, 4b" in wrong.stderr
    outside = run("pretrain.sbatch", SIZE="600m", DATA="x", TOKENIZER="t")  # not under sbatch
    assert outside.returncode != 0 and "sbatch" in outside.stderr


def test_the_isoflop_sweep_example_plans_and_writes_its_array_job(tmp_path):
    tokenizer = tmp_path / "tok"
    from megatron_soda.tokenizer import build_soda_tokenizer, save_soda_tokenizer, train_bpe

    save_soda_tokenizer(build_soda_tokenizer(train_bpe(["a small text"] * 4, vocab_size=270)), tokenizer)
    result = run(
        "isoflop_sweep.sh", DATA="data/speech", TOKENIZER=str(tokenizer), STUDY=str(tmp_path / "s"), DRY_RUN="1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = len(list((tmp_path / "s" / "configs").glob("*.yaml")))
    script = (tmp_path / "s" / "slurm" / "isoflop.sbatch").read_text()
    assert runs > 50 and f"--array={','.join(map(str, range(runs)))}%16" in script
    assert "DATA" in run("isoflop_sweep.sh", TOKENIZER="t").stderr


def test_the_export_example_checks_a_checkpoint_without_writing(learned, tmp_path):
    result = run(
        "export_and_evaluate.sh",
        LOAD=str(learned["root"] / "ckpt"),
        TOKENIZER=str(learned["root"] / "tok"),
        OUT=str(tmp_path / "export"),
        DRY_RUN="1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model.embed_tokens.weight" in result.stdout and not (tmp_path / "export").exists()
    assert "EVAL_DATA" in run("export_and_evaluate.sh", LOAD="x", TOKENIZER="t", CODEC_PATH="c").stderr
