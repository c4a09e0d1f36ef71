"""`make demo` (tools/demo.py), the README's first command, runs end to end and leaves what it says."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from megatron_soda.training.logger import iteration_records

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(400)
def test_demo_runs_end_to_end_exports_generates_speech_and_text_and_evaluates(tmp_path):
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
    tts = [json.loads(line) for line in open(out / "generated" / "tts" / "generations.jsonl")]
    asr = [json.loads(line) for line in open(out / "generated" / "asr" / "generations.jsonl")]
    assert len(tts) == len(asr) == 1
    # Structured decoding keeps the speech well-formed; a run cut at --max-new-tokens is only unclosed.
    assert all("not closed" in problem for problem in tts[0]["problems"])
    wave, rate = soundfile.read(tts[0]["wav"])
    assert rate == 24000 and len(wave) == tts[0]["frames"] * 1920 > 0
    assert "text" in asr[0] and "tts (--load)" in result.stdout and "asr (--hf)" in result.stdout
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert set(report["tasks"]) == {"swuggy", "twuggy", "asr"} and report["tasks"]["swuggy"]["n"] == 12
