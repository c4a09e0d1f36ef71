"""The training benchmark runs end to end on CPU: ours and the transformers baseline train and are measured."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)
def test_bench_train_measures_ours_and_the_transformers_baseline_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_train.py"),
            "--model",
            "tiny",
            "--seq-length",
            "64",
            "--micro-batch-size",
            "2",
            "--global-batch-size",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--attention-backends",
            "sdpa",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert set(runs) == {"ours-sdpa", "hf-fp32"}
    for name, run in runs.items():
        assert run["error"] is None, (name, run["error"])
        assert math.isfinite(run["median_tokens_per_s"]) and run["median_tokens_per_s"] > 0, name
        assert run["loss_finite"] and run["loss_falls"], (name, run["losses"])
        assert len(run["losses"][0]) == 3  # one warmup and two timed steps
    assert math.isfinite(result["ratios"]["ours-sdpa"]["hf-fp32"])
    assert "| ours-sdpa |" in proc.stdout and "| hf-fp32 |" in proc.stdout  # the printed table
