"""Your own labelled videos, face-cropped by `former_dfer_jax.data.extract_faces`.

    python -m former_dfer_jax.data.extract_faces --input=videos/ --output=/data/mine \
        --labels=labels.csv
    python -m former_dfer_jax.main --config=configs/own.py --workdir=runs/mine \
        --config.data.root=/data/mine --config.model.num_classes=N

N is the number of lines of /data/mine/classes.txt (extract_faces prints the command with
it filled in; a wrong N is refused with the right one named). The reference recipe
(former_dfer_jax/default_config.py) trains; add `--config.init_from=RUN` to fine-tune a DFEW model.
"""

import ml_collections

from former_dfer_jax import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config.get_config()
    config.data.name = 'own'
    config.data.fold = 0  # the one split of train.txt / test.txt
    return config
