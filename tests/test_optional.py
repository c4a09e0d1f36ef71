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


def test_megatron_core_builds_its_fusion_kernels_without_torch_compile():
    """The model imports without TorchDynamo or TorchInductor; the kernels stay plain functions and still compute."""
    import subprocess
    import sys

    probe = (
        "import sys, torch, megatron_soda.models.gpt, megatron.core.jit as jit; "
        "from megatron.core.fusions.fused_bias_swiglu import swiglu; "
        "print(sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules)); "
        "print(jit.jit_fuser is jit.noop_decorator); "
        "x = torch.randn(3, 4); print(torch.equal(swiglu(x), torch.nn.functional.silu(x[:, :2]) * x[:, 2:]))"
    )
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.split() == ["[]", "True", "True"], result.stderr[-2000:]
