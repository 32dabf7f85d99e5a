"""The ablation variants of the paper's Tables 1-3, on top of the reference recipe.

    python -m former_dfer_jax.main --config=configs/ablations.py:resnet18_gru ...
    python -m former_dfer_jax.main --config=configs/ablations.py:depths_3_6 ...

The variants are defined in `former_dfer_jax.ablations`: `depths_N_M` sets the S-Former
depth N and the T-Former depth M (any integers); the other variants keep the reference's
depths (S-Former N = 1, T-Former M = 3).
"""

from __future__ import annotations

import ml_collections

from former_dfer_jax import default_config
from former_dfer_jax.ablations import PAPER_DEPTHS, VARIANTS, apply_variant, table_variants

__all__ = ['PAPER_DEPTHS', 'VARIANTS', 'apply_variant', 'get_config', 'table_variants']


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The reference recipe with `variant` applied (`--config=configs/ablations.py:NAME`)."""
    if not variant:
        apply_variant(default_config.get_config(), '')  # raises, listing the valid names
    config = default_config.get_config()
    apply_variant(config, variant)
    return config
