"""megatron-soda: discrete audio foundation models (SODA recipe) on megatron-core."""

__version__ = "0.1.0"

from megatron_soda.optional import adjust_megatron_core_imports

adjust_megatron_core_imports()
