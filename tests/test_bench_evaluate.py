"""The scoring benchmark runs end to end on CPU: ours, the one-item transformers loop and megatron are
timed on the same items and give the same scores (``bench/bench_evaluate.py --quick``: tiny model, 8 items)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_scoring_benchmark_times_three_engines_and_checks_their_scores_agree(tmp_path):
    out, results = tmp_path / "evaluate.json", tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\nSomething else.\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_evaluate.py"),
            "--quick",
            "--threads",
            "1",
            "--json",
            str(out),
            "--results",
            str(results),
        ],
        cwd=tmp_path,
        env={**env, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["config"]["quick"] and result["config"]["model"] == "tiny"
    assert result["device"]["dtype"] == "fp32" and result["threads"] == 1
    items = result["items"]
    assert items["count"] == 8 and items["audio"] == 4 and items["text"] == 4
    assert items["padded_tokens"] >= items["tokens"] > items["targets"] > 0
    engines = result["engines"]
    assert set(engines) == {"ours", "loop", "megatron"}
    for name, run in engines.items():
        assert run["error"] is None, (name, run["error"])
        assert len(run["seconds"]) == 1
        for key in ("median_items_per_s", "median_tokens_per_s"):
            assert run[key] > 0 and math.isfinite(run[key]), (name, key)
        assert run["median_tokens_per_s"] == pytest.approx(run["median_items_per_s"] * items["tokens"] / 8)
    for name in ("ours", "megatron"):
        assert result["ratios"][name] == pytest.approx(
            engines[name]["median_items_per_s"] / engines["loop"]["median_items_per_s"]
        )
        # the same scores as scoring one item per forward: padding and batching change nothing (fp32)
        assert result["agreement"][name] < 1e-4, result["agreement"]
    assert result["agreement"]["ok"] and result["agreement"]["tolerance"] == 1e-4
    low, high = result["agreement"]["score_range"]
    assert low <= high < 0
    # the output layer was scaled to a trained model's entropy before saving
    assert result["output_scale"] > 1 and result["entropy"] == pytest.approx(3.0, abs=0.05)
    assert any("3x the one-item loop" in line for line in result["targets"])
    text = results.read_text()
    assert text.startswith("# Benchmarks\n\nSomething else.\n")  # the rest of the file is kept
    assert "## Likelihood scoring" in text and "| ours |" in text and "| loop |" in text and "| megatron |" in text
    assert text.count("<!-- BEGIN bench_evaluate results") == 1
