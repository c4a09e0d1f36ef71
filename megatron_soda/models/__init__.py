"""Models: shapes and recipes (pure Python), the IsoFLOP grid, megatron-core specs, attention backends.

``presets`` and ``isoflop`` need no torch; the megatron-facing modules here are imported by path.
"""

from megatron_soda.models.isoflop import IsoFlopPoint, isoflop_grid, isoflop_shape
from megatron_soda.models.presets import (
    PRESETS,
    ModelShape,
    RopeScaling,
    TrainingRecipe,
    get_preset,
    soda_recipe,
)

__all__ = [
    "PRESETS",
    "ModelShape",
    "RopeScaling",
    "TrainingRecipe",
    "get_preset",
    "soda_recipe",
    "IsoFlopPoint",
    "isoflop_grid",
    "isoflop_shape",
]
