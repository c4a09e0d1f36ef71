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
