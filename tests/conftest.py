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


@pytest.fixture(scope="session")
def learned(tmp_path_factory):
    """A tiny model trained until it knows one utterance by heart, its tokenizer, the utterance's wav and
    codes, and the checkpoint's Hugging Face export (``tests/learned.py``); trained once per session."""
    from tests.learned import train_learned

    return train_learned(tmp_path_factory.mktemp("learned"))


@pytest.fixture
def our_model(learned):
    """The learned checkpoint loaded for generation and scoring (a world of one for the test)."""
    from megatron_soda.convert.solo import one_process_group
    from megatron_soda.inference.engine import MegatronGenerator
    from megatron_soda.inference.loading import load_megatron_model

    with one_process_group(megatron_parallel=True, purpose="generation"):
        model, shape, _ = load_megatron_model(learned["root"] / "ckpt", learned["layout"].vocab_size)
        yield MegatronGenerator(model, learned["layout"], shape.vocab_size)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node SLURM cluster (tests/slurm.py), started once and stopped cleanly."""
    from tests import slurm

    if not slurm.available():
        pytest.skip(slurm.MISSING)
    cluster = slurm.SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()
