"""A tiny but complete training config for tests: the synthetic dataset at its smallest
(35 clips, 5 folds x 7 classes), 4-frame clips of 32x32, depth-1 encoders, batch 4."""

import os

import jax
import ml_collections
import numpy as np

from configs import synthetic
from former_dfer_jax.training import steps, train


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
    config.optimizer.name = 'sgd'
    config.optimizer.learning_rate = 0.01
    config.optimizer.lr_decay_every_epochs = 100
    config.checkpoint.keep_latest = 2
    for key, value in overrides.items():
        config[key] = value
    return config


TINY_RUN_EPOCHS = 2


def train_tiny_run(workdir: str) -> tuple[ml_collections.ConfigDict, str, steps.TrainState]:
    """A finished 2-epoch tiny run in `workdir`: (config, workdir, final state)."""
    config = tiny_config(num_epochs=TINY_RUN_EPOCHS)
    return config, workdir, train.train_and_evaluate(config, workdir)


def random_clips(config: ml_collections.ConfigDict, batch: int, seed: int = 0) -> np.ndarray:
    """Random clips of the config's shape, values in [0, 1]."""
    size = config.data.image_size
    frames = config.data.num_segments * config.data.segment_length
    return np.random.default_rng(seed).random((batch, frames, size, size, 3), np.float32)


def env_with_devices(devices: int) -> dict[str, str]:
    """os.environ for a subprocess with `devices` CPU devices, keeping the XLA flags the
    project sets (another convolution algorithm would change the last bits)."""
    flags = os.environ.get('XLA_FLAGS', '')
    return dict(os.environ, XLA_FLAGS=f'{flags} --xla_force_host_platform_device_count={devices}')


def gradient_groups(tree) -> dict[str, np.ndarray]:
    """A params-shaped tree as two flat vectors: 'head' (temporal + classifier: smooth
    functions of the forward pass) and 'spatial' (the trunk and S-Former, below the ReLU
    and max-pool kinks; see test_train for why the two are compared differently)."""

    def flat(parts):
        return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(parts)])

    return {'head': flat([tree['temporal'], tree['classifier']]), 'spatial': flat(tree['spatial'])}


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||a||."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


# An own dataset of 11 classes whose names are none of DFEW's or MAFW's: a run trained on it
# shows whether a tool takes the class names from the run.
OWN_CLASS_NAMES = (
    'calm',
    'amused',
    'bored',
    'curious',
    'embarrassed',
    'proud',
    'relieved',
    'confused',
    'tense',
    'moved',
    'sleepy',
)


def write_own_dataset(root: str, clips_per_class: int = 2, num_frames: int = 8) -> str:
    """extract_faces' output layout: <root>/<clip>/<clip>_<k>.jpg, classes.txt, train.txt and
    test.txt; `clips_per_class` training and one test clip per class, 32x32 frames."""
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, 'classes.txt'), 'w') as f:
        f.writelines(f'{name}\n' for name in OWN_CLASS_NAMES)
    rng = np.random.default_rng(0)
    lists: dict[str, list[str]] = {'train.txt': [], 'test.txt': []}
    for label in range(len(OWN_CLASS_NAMES)):
        for k in range(clips_per_class + 1):
            clip = f'c{label:02d}_{k}'
            os.makedirs(os.path.join(root, clip), exist_ok=True)
            for t in range(num_frames):
                pixels = rng.integers(0, 256, (32, 32, 3), np.uint8)
                pixels[..., 0] = 20 * label  # the class shows in the red channel
                Image.fromarray(pixels).save(os.path.join(root, clip, f'{clip}_{t + 1}.jpg'))
            split = 'test.txt' if k == clips_per_class else 'train.txt'
            lists[split].append(f'{clip} {num_frames} {label}')
    for name, lines in lists.items():
        with open(os.path.join(root, name), 'w') as f:
            f.writelines(f'{line}\n' for line in lines)
    return root


def own_config(root: str) -> ml_collections.ConfigDict:
    """`tiny_config` on the own dataset at `root` (configs/own.py's settings)."""
    from configs import own

    config = tiny_config()
    config.data = own.get_config().data
    config.data.root = root
    config.data.image_size = 32
    config.data.stored_frame_size = 0
    config.data.crop_area_min = 1.0
    config.data.num_segments = 2
    config.data.segment_length = 2
    config.model.num_classes = len(OWN_CLASS_NAMES)
    return config


def train_own_run(directory: str) -> tuple[ml_collections.ConfigDict, str]:
    """A finished 1-epoch run of 11 own classes: (config, run dir); the dataset beside it
    in `directory`/data, the run in `directory`/run."""
    config = own_config(write_own_dataset(os.path.join(directory, 'data')))
    workdir = os.path.join(directory, 'run')
    train.train_and_evaluate(config, workdir)
    return config, workdir
