"""A tiny but complete training config for tests: the synthetic dataset at its smallest
(35 clips, 5 folds x 7 classes), 4-frame clips of 32x32, depth-1 encoders, batch 4."""

import ml_collections

from configs import synthetic


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    config = synthetic.get_config()
    config.data.synthetic.num_clips = 35
    config.data.synthetic.image_size = 32
    config.data.synthetic.min_frames = 6
    config.data.synthetic.max_frames = 12
    config.data.image_size = 32
    config.data.num_segments = 2
    config.data.segment_length = 2
    config.model.spatial.depth = 1
    config.model.temporal.depth = 1
    config.batch_size = 4
    config.eval_batch_size = 4
    config.num_epochs = 1
    config.log_every_steps = 2
    config.optimizer.learning_rate = 0.01
    config.optimizer.lr_decay_every_epochs = 100
    config.checkpoint.keep_latest = 2
    for key, value in overrides.items():
        config[key] = value
    return config
