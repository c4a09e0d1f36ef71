"""Multi-node torchrun on one machine: two agents (``--nnodes 2``, c10d rendezvous) of two processes each
train at TP=2 x PP=2 and give the single process's losses, from the same weights (a fresh initialization
draws each pipeline stage's layers from its own RNG stream, so both runs start from one checkpoint)."""

import os
import subprocess
import sys

import pytest

from megatron_soda.training.logger import iteration_records
from tests.dist import free_port
from tests.test_pretrain import pretrain_process


def training_args(learned, metrics):
    return [
        *("--model", "tiny", "--tokenizer", learned["root"] / "tok", "--data-path", learned["root"] / "utterance"),
        *("--split", "100,0,0", "--seq-length", 64, "--micro-batch-size", 2, "--global-batch-size", 4),
        *("--train-iters", 3, "--lr-decay-style", "constant", "--metrics-file", metrics, "--skip-data-validation"),
    ]


@pytest.mark.timeout(600)
def test_two_torchrun_agents_of_two_processes_train_the_single_process_losses(learned, tmp_path):
    start = ("--load", learned["root"] / "ckpt", "--finetune")
    pretrain_process(*training_args(learned, tmp_path / "single.jsonl"), *start)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"
    endpoint = f"127.0.0.1:{free_port()}"
    layout = ("--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2")
    agents = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2"),
                *("--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two"),
                *("-m", "megatron_soda.pretrain", *map(str, training_args(learned, tmp_path / "nodes.jsonl"))),
                *layout,
                *map(str, start),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    logs = [agent.communicate(timeout=500)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(log[-3000:] for log in logs)
    single, nodes = (iteration_records(tmp_path / f"{name}.jsonl") for name in ("single", "nodes"))
    assert len(nodes) == 3
    assert [r["lm loss"] for r in nodes] == pytest.approx([r["lm loss"] for r in single], rel=1e-5, abs=0)
    run = (tmp_path / "nodes.jsonl").read_text().splitlines()[0]
    assert '"tensor": 2' in run and '"pipeline": 2' in run and '"world_size": 4' in run
