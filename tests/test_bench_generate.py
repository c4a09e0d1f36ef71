"""The GPU session's one-call ``all`` sequence, and in it the generation benchmark, run end to end on CPU.

``bash bench/gpu_session.sh smoke`` runs ``all``'s steps with tiny settings and CUDA hidden, among them
``bench/bench_generate.py --quick`` (and, last, ``bench/bench_evaluate.py --quick``); one run serves both
tests (two runs would not fit the time), so neither the script nor the benchmark rots between GPU windows.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("gpu", "build", "data", "pretrain-dense", "pretrain-packed", "train", "preprocess", "generate", "evaluate")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_session_out")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_session.sh"), "smoke"],
        cwd=ROOT,
        env={**env, "OUT": str(out), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=330,
    )
    return proc, out


@pytest.mark.timeout(360)
def test_smoke_mode_runs_every_step_of_all_and_ends_with_one_summary_table(smoke):
    proc, out = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.rindex("| step | status |") :]  # the table is what the script prints last
    rows = {m[0]: m[1] for m in re.findall(r"^\| (\S+) \| ([^|]+) \| \d+ \|", table, re.MULTILINE)}
    assert list(rows) == list(STEPS), table
    assert rows["gpu"].strip() == "skipped (no CUDA)", table
    for step in STEPS[1:]:
        assert rows[step].strip() == "ok", (step, table, proc.stdout[-3000:])
    assert table.strip() in (out / "summary.md").read_text()
    assert (out / "details.tar.gz").stat().st_size > 0
    assert "tokens/s" in table and "x realtime" in table and "entropy" in table  # headlines were read
    assert "items/s" in table and "max score diff" in table  # bench_evaluate's


@pytest.mark.timeout(360)
def test_generation_benchmark_reports_both_engines_a_ratio_and_the_entropy(smoke):
    proc, out = smoke
    result = json.loads((out / "bench_generate.json").read_text())
    assert result["config"]["quick"] and result["device"]["dtype"] == "fp32"
    assert set(result["batches"]) == {"1", "4"}
    for batch, entry in result["batches"].items():
        for engine in ("ours", "transformers"):
            run = entry[engine]
            assert run["error"] is None, (batch, engine, run["error"])
            assert run["median_tokens_per_s"] > 0 and math.isfinite(run["median_tokens_per_s"])
            # every prompt got exactly --new-tokens (8), no stop ids
            assert run["new_tokens"] == [8 * max(int(batch), 2)]
        assert entry["ratio"] == pytest.approx(
            entry["ours"]["median_tokens_per_s"] / entry["transformers"]["median_tokens_per_s"]
        )
    realism = result["realism"]
    # The output layer was scaled to the target entropy, and the export carries it: same logits.
    assert result["output_scale"] > 1 and result["unscaled"]["mean_entropy"] > 11
    assert realism["ours"]["mean_entropy"] == pytest.approx(3.0, abs=0.05)
    assert realism["transformers"]["mean_entropy"] == pytest.approx(realism["ours"]["mean_entropy"], abs=1e-3)
    assert realism["max_abs_logit_diff"] < 1e-3
    assert 1 <= realism["ours"]["mean_nucleus"] < 1000 and realism["generated"]["mean_entropy"] > 0
    section = (out / "RESULTS-generate.md").read_text()
    assert section.startswith("## Generation") and "| 1 | ours |" in section and "| 4 | transformers |" in section
