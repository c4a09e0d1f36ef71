"""What a run reports: the metrics file's records across resumes, and the console's interval averages."""

import json

import pytest

from megatron_soda.training.logger import RunLogger, read_metrics


def test_a_resumed_metrics_file_skips_a_half_written_line_and_its_folder_is_made(tmp_path):
    path = tmp_path / "new" / "m.jsonl"
    RunLogger(active=True, metrics_file=str(path), run={"model": "tiny"}).close()
    with open(path, "a") as f:
        f.write(json.dumps({"iteration": 1, "lm loss": 5.0}) + "\n" + json.dumps({"iteration": 2, "lm loss": 4.0}))
        f.write("\n" + '{"iteration": 3, "lm lo')  # killed mid-line
    log = RunLogger(active=True, metrics_file=str(path), run={"model": "tiny"}, resumed_at=1)
    log.log(2, 5, {"lm loss": 3.5}, console=False)
    log.close()
    records = read_metrics(path)
    assert [r.get("iteration") for r in records if "lm loss" in r] == [1, 2] and records[0] == {
        "run": {"model": "tiny"}
    }
    assert records[-1]["lm loss"] == 3.5 and any("resume" in r for r in records)


def test_console_lines_average_the_interval_as_megatron_prints_them(tmp_path, capsys):
    log = RunLogger(active=True, metrics_file=str(tmp_path / "m.jsonl"))
    for iteration, loss in ((1, 4.0), (2, 2.0), (3, 3.0)):
        log.log(
            iteration,
            3,
            {"lm loss": loss, "consumed samples": 4 * iteration},
            console=iteration in (2, 3),
            average=True,
        )
    log.close()
    lines = capsys.readouterr().out.splitlines()
    assert "lm loss: 3.000000E+00" in lines[0] and "consumed samples: 8" in lines[0]  # mean of 4 and 2
    assert "lm loss: 3.000000E+00" in lines[1] and "consumed samples: 12" in lines[1]  # iteration 3 alone
    assert [r["lm loss"] for r in read_metrics(tmp_path / "m.jsonl") if "lm loss" in r] == [4.0, 2.0, 3.0]


def test_weights_and_biases_logs_offline_without_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = RunLogger(
        active=True,
        arguments={"optimizer.lr": 0.5},
        run={"model": "tiny"},
        wandb={"project": "soda", "name": "offline-test", "dir": str(tmp_path / "wb")},
    )
    log.log(1, 2, {"lm loss": 4.25, "data mix": {"speech": 0.9, "text": 0.1}}, console=False, average=True)
    log.close()
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    data = runs[0].read_bytes()
    assert b"lm loss" in data and b"data mix/speech" in data and b"optimizer.lr" in data
