"""megatron-soda: discrete audio foundation models (SODA recipe) on megatron-core."""

__version__ = "0.1.0"

from megatron_soda.optional import skip_wandb_for_megatron_core

skip_wandb_for_megatron_core()
