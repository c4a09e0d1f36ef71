"""The one import of the C++ extension, with an error that says how to build it."""

try:
    from megatron_soda import _C  # noqa: F401
except ImportError as error:  # pragma: no cover - only on a tree that was never built
    raise ImportError(
        "megatron_soda's C++ extension (megatron_soda._C) is not built. "
        "Run `make install` (or `pip install --no-build-isolation -e .`) in the repository root."
    ) from error

__all__ = ["_C"]
