"""Sensitivity scans: how much a metric drops when ONE layer is pruned or quantized, no retraining.

`scans` runs them against the caller's `evaluate(model) -> float`, `table` holds the result,
`recipes` turns tables into a recipe within a tolerance.
"""

from deepzip.train.sensitivity.recipes import recipe_from_sensitivity, recipe_yaml
from deepzip.train.sensitivity.scans import prune_sensitivity, quantize_sensitivity
from deepzip.train.sensitivity.table import (
    DEFAULT_BITS,
    DEFAULT_SPARSITIES,
    SensitivityTable,
)

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_SPARSITIES",
    "SensitivityTable",
    "prune_sensitivity",
    "quantize_sensitivity",
    "recipe_from_sensitivity",
    "recipe_yaml",
]
