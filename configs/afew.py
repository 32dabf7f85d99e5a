"""AFEW: fine-tune from a DFEW fold-1 checkpoint (lr 0.001, 20 epochs).

    python -m former_dfer_jax.main --config=configs/afew.py --workdir=runs/afew \
        --config.data.root=/data/AFEW_Face --config.init_from=runs/dfew_fd1
"""

import ml_collections

from former_dfer_jax import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config.get_config()
    config.data.name = 'afew'
    config.data.fold = 0  # AFEW has one split: train / validation
    config.num_epochs = 20
    config.optimizer.learning_rate = 0.001
    config.optimizer.lr_decay_every_epochs = 20
    config.init_from = ''  # set on the command line: a DFEW checkpoint
    return config
