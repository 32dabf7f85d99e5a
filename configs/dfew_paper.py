"""DFEW with the paper's depths: S-Former N = 3, T-Former M = 3 (Table 3, best row)."""

import ml_collections

from former_dfer_jax import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config.get_config()
    config.model.spatial.depth = 3
    return config
