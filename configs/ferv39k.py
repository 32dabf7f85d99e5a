"""FERV39k with the reference recipe."""

import ml_collections

from former_dfer_jax import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config.get_config()
    config.data.name = 'ferv39k'
    config.data.fold = 0  # one official train / test split
    return config
