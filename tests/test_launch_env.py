"""The launch environment: torchrun's variables as they are, plain srun's derived from SLURM's, one clear
error when they contradict each other (a real 2-task srun job training the torchrun run's losses is in
tests/test_stopping.py, where it is also signalled and requeued); a late rank meets the timeout."""

import pytest

from megatron_soda.launch_env import LaunchError, apply, detect, expand_nodelist

SRUN = {
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
}


def test_plain_srun_gives_torch_its_variables():
    environ = dict(SRUN)
    found = apply(environ)
    assert (found.launcher, found.rank, found.world_size, found.local_rank) == ("srun", 3, 8, 1)
    assert environ["RANK"] == "3" and environ["WORLD_SIZE"] == "8" and environ["LOCAL_RANK"] == "1"
    assert environ["MASTER_ADDR"] == "gpu07" and environ["MASTER_PORT"] == str(20000 + 4242)
    assert detect({**SRUN, "MASTER_PORT": "1234"}).master_port == 1234


def test_torchrun_wins_inside_an_allocation_and_a_single_process_is_a_world_of_one():
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "9"}
    assert detect({**SRUN, **torchrun}).launcher == "torchrun"
    assert detect({"SLURM_JOB_ID": "5", "SLURM_PROCID": "0"}).launcher == "none"  # sbatch's batch script
    environ = {}
    assert apply(environ).launcher == "none" and environ == {}


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"RANK": "0"}, "not WORLD_SIZE, MASTER_ADDR, MASTER_PORT"),
        ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "9"}, "rank 2 is not within a world of 2"),
        ({**SRUN, "SLURM_NTASKS": "two"}, "SLURM_NTASKS='two' is not a whole number"),
        ({**SRUN, "SLURM_PROCID": "8"}, "rank 8 is not within a world of 8"),
        ({k: v for k, v in SRUN.items() if k != "SLURM_JOB_NODELIST"}, "no master host"),
    ],
)
def test_contradicting_launch_variables_are_one_clear_error(environ, message):
    with pytest.raises(LaunchError, match=message):
        detect(environ)


def test_slurm_host_lists_expand_in_order():
    assert expand_nodelist("gpu[01-03,7],login") == ["gpu01", "gpu02", "gpu03", "gpu7", "login"]
    assert expand_nodelist("node[9-10]-ib") == ["node9-ib", "node10-ib"]
    assert expand_nodelist("vm") == ["vm"]


def test_a_rank_that_waits_past_the_distributed_timeout_fails_instead_of_hanging():
    import re

    from tests.dist import start

    procs = start("timeout_worker.py", 2, 0.05, 120)  # 3 s allowed; rank 1 two minutes late
    try:
        log = procs[0].communicate(timeout=60)[0]
    finally:
        for proc in procs:
            proc.kill()
    assert procs[0].returncode == 3, log[-2000:]
    waited = float(re.search(r"failed after ([\d.]+) s: .*Timed out waiting 3000ms", log).group(1))
    assert 2.5 <= waited < 30
