"""Fixtures shared by test modules."""

import os
import tempfile
import warnings

import pytest


def pytest_configure(config):
    # Records of scanned datasets (pretrain's data check) go to a temporary folder, not ~/.cache.
    os.environ.setdefault("MEGATRON_SODA_CACHE", tempfile.mkdtemp(prefix="megatron_soda_cache_"))


# Under pytest-xdist (``make test`` runs two workers) a module's tests run on one worker, so its
# module-scoped fixtures are built once; the modules that use the real SLURM cluster share one worker, as
# one cluster (slurmctld's ports) serves a machine. The longest groups start first, so that the last
# to finish is a short one.
SLURM_MODULES = ("tests/test_cluster_preprocess.py", "tests/test_isoflop_sweep.py", "tests/test_stopping.py")
LONG_GROUPS = ("slurm", "tests/test_pretrain.py", "tests/test_bench_generate.py", "tests/test_parallel.py")


def test_group(nodeid: str) -> str:
    module = nodeid.split("::")[0]
    return "slurm" if module in SLURM_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Whole groups to a worker, in the order workers collect them (xdist's ``loadgroup`` reads marks that
    pytest 9.2 no longer passes on). Other ``--dist`` modes (each, worksteal, ...) are xdist's own."""
    if config.getvalue("dist") not in ("load", "loadscope", "loadfile", "loadgroup"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return test_group(nodeid)

    config.option.loadscopereorder = False
    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()) and test_group(item.nodeid) != "slurm":
            raise pytest.UsageError(f"{item.nodeid} uses the SLURM cluster: list its module in SLURM_MODULES")
    if "PYTEST_XDIST_WORKER" in os.environ:  # the order a worker collects is the order groups are sent
        rank = {group: i for i, group in enumerate(LONG_GROUPS)}
        items.sort(key=lambda item: rank.get(test_group(item.nodeid), len(LONG_GROUPS)))


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
    from tests.learned import learned_once

    return learned_once(tmp_path_factory)


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
