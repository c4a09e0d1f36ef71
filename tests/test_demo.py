"""`make demo` (tools/demo.py), the README's first command, runs end to end and leaves what it says."""

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_soda.training.logger import iteration_records

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(400)
def test_demo_runs_end_to_end_and_exports_a_model_transformers_loads(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "demo.py"), "--output-dir", str(out), "--train-iters", "6"],
        capture_output=True,
        text=True,
        timeout=380,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo finished" in result.stdout
    losses = [record["lm loss"] for record in iteration_records(out / "train_metrics.jsonl")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert (out / "checkpoint" / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (out / "hf" / name).exists(), name
    assert "new tokens are audio codes" in result.stdout
