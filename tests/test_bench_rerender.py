"""The re-rendering benchmark runs end to end on CPU (its --quick smoke run) and finds the re-render byte-identical."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(240)
def test_bench_rerender_quick_measures_preprocessing_and_each_rerender(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_rerender.py"), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["identical"] and [r["job"] for r in result["rows"]] == ["preprocess", "rerender", "rerender"]
    assert all(r["utt_per_s"] > 0 and r["tokens_per_s"] > 0 for r in result["rows"])
    assert "| rerender | original: 8 codebooks, both orders |" in proc.stdout
