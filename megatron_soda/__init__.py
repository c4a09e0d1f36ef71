"""megatron-soda: discrete audio foundation models (SODA recipe) on megatron-core."""

__version__ = "0.1.0"
