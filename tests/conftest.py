"""Fixtures shared by test modules."""

import os
import tempfile
import warnings

import pytest


def pytest_configure(config):
    # Records of scanned datasets (pretrain's data check) go to a temporary folder, not ~/.cache.
    os.environ.setdefault("MEGATRON_SODA_CACHE", tempfile.mkdtemp(prefix="megatron_soda_cache_"))


@pytest.fixture(scope="module")
def megatron_world():
    """One gloo process with megatron-core's model-parallel groups (TP=1, PP=1): what building, running
    and checkpointing a model in the test process needs."""
    from megatron_soda.training import parallel
    from tests.dist import free_port

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    warnings.filterwarnings("ignore")
    parallel.initialize(parallel.ParallelLayout(), seed=7)
    yield
    parallel.destroy()
