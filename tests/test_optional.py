"""The import guard for optional extras, exercised where they are absent."""

import pytest

from megatron_soda import optional


# wandb is a dev dependency (tests/test_logger.py exercises it); the others cannot install without CUDA.
@pytest.mark.parametrize("name", sorted(set(optional.PACKAGES) - {"wandb"}))
def test_absent_extra_is_reported_unavailable_and_required_with_instructions(name):
    if optional.available(name):
        pytest.skip(f"{name} is installed on this machine")
    assert optional.load(name) is None
    with pytest.raises(ImportError, match=f"FP8 training needs {name}.*install"):
        optional.require(name, "FP8 training")


def test_unknown_extra_is_an_error():
    with pytest.raises(KeyError, match="unknown optional package"):
        optional.load("cuda_magic")


def test_megatron_core_loads_without_wandb_while_everyone_else_still_imports_it():
    import subprocess
    import sys

    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
    probe = (
        "import sys, megatron_soda, megatron.core.inference.contexts.dynamic_context as d; "
        "print(d.HAVE_WANDB, 'wandb' in sys.modules); import wandb; print(wandb.__name__)"
    )
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.split() == ["False", "False", "wandb"], result.stderr[-2000:]
