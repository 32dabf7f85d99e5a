"""The embedded demo: Former-DFER trained from scratch on the synthetic DFEW-format dataset.

    python -m former_dfer_jax.main --config=configs/synthetic.py --workdir=runs/synthetic

With data.root = '' the clips are generated once (`former_dfer_jax.data.synthetic`) into
<cache dir>/synthetic/<hash of data.synthetic>/raw, then prepared and reused. To look at them,
or to write them elsewhere:

    python -m former_dfer_jax.data.synthetic --output=/tmp/synthetic_dfew
    python -m former_dfer_jax.main --config=configs/synthetic.py --workdir=runs/synthetic \
        --config.data.root=/tmp/synthetic_dfew
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    data = config.data
    data.name = 'synthetic'
    data.root = ''  # '' = generate into the cache dir (from data.synthetic below)
    data.fold = 1  # the synthetic set has DFEW's 5 folds
    data.image_size = 48  # frames fed to the model (shared with model.image_size)

    # Every key is a keyword argument of synthetic.generate_dataset; changing any of them
    # generates (and prepares) a new dataset.
    data.synthetic = synthetic = ml_collections.ConfigDict()
    synthetic.num_clips = 700  # 100 per class; each fold tests 140 and trains on 560
    synthetic.image_size = 48  # frames are drawn and stored at this size
    synthetic.seed = 0
    synthetic.min_frames = 12  # clip lengths are DFEW-like (right-skewed), squeezed into
    synthetic.max_frames = 48  # [min_frames, max_frames]: ~27 frames on average
    synthetic.imbalance = False  # True: DFEW's class frequencies (disgust rare)
    synthetic.difficulty = 1.0  # nuisance strength: 0 none .. 1 default .. 2

    # Training: first draft for 2 CPU cores (to be tuned).
    config.batch_size = 16
    config.eval_batch_size = 32
    config.num_epochs = 15
    config.optimizer.lr_decay_every_epochs = 10
    config.log_every_steps = 10
    return config
