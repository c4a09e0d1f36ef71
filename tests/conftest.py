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

    # No RANK in the environment: a world of one over an in-memory store. (Setting RANK/MASTER_PORT
    # here would leak into every later subprocess of the session and point them at this store's port.)
    assert "RANK" not in os.environ, "the test process should not look like a torchrun rank"
    warnings.filterwarnings("ignore")
    parallel.initialize(parallel.ParallelLayout(), seed=7)
    yield
    parallel.destroy()
