"""DFEW, one fold, the reference recipe (S-Former depth 1 as in the authors' code).

    python -m former_dfer_jax.main --config=configs/dfew.py --workdir=runs/dfew_fd1 \
        --config.data.root=/data/DFEW --config.data.fold=1
"""

import ml_collections

from former_dfer_jax import default_config


def get_config() -> ml_collections.ConfigDict:
    return default_config.get_config()
