"""Every config file loads through the same flag machinery as the entry points, with the
config locked (a misspelt override is an error), and describes a model that builds."""

import glob
import os

import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from configs import ablations
from former_dfer_jax.data import sources
from former_dfer_jax.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    os.path.relpath(path, ROOT)
    for path in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
    if not path.endswith(('__init__.py', 'default.py', 'ablations.py'))
)
SPECS = [*CONFIG_FILES, *(f'configs/ablations.py:{v}' for v in ablations.table_variants())]


def load_config(spec: str, *overrides: str):
    """Parses a command line as `python -m former_dfer_jax.main --config=...` does."""
    argv = ['prog', f'--config={os.path.join(ROOT, spec)}', *overrides]
    flag_values = flags.FlagValues()
    # config_flags reads the overrides from sys.argv unless it is given the command line.
    config_flags.DEFINE_config_file(
        'config', None, 'config', flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


def test_the_expected_configs_exist():
    assert {
        'configs/dfew.py',
        'configs/dfew_paper.py',
        'configs/afew.py',
        'configs/ferv39k.py',
        'configs/mafw.py',
        'configs/synthetic.py',
    } <= set(CONFIG_FILES)


@pytest.mark.parametrize('spec', SPECS)
def test_config_loads_and_its_model_builds(spec):
    config = load_config(spec)
    for key in ('seed', 'batch_size', 'eval_batch_size', 'num_epochs', 'init_from'):
        assert key in config
    for key in ('name', 'root', 'fold', 'cache_dir', 'image_size', 'val_fraction'):
        assert key in config.data
    model = nnx.eval_shape(lambda: build_model(config.model, rngs=nnx.Rngs(0)))
    assert model.spec.num_frames == config.data.num_segments * config.data.segment_length


def test_a_misspelt_override_is_an_error():
    with pytest.raises(AttributeError, match='Did you mean "learning_rate"'):
        load_config('configs/dfew.py', '--config.optimizer.learnig_rate=0.1')


def test_image_size_and_frame_count_overrides_reach_the_model():
    config = load_config(
        'configs/dfew.py', '--config.data.image_size=64', '--config.data.num_segments=4'
    )
    assert config.model.image_size == 64
    assert config.model.num_frames == 8


def test_the_reference_recipe():
    config = load_config('configs/dfew.py')
    assert (config.batch_size, config.num_epochs) == (32, 100)
    opt = config.optimizer
    assert (opt.learning_rate, opt.momentum, opt.weight_decay) == (0.01, 0.9, 1e-4)
    assert (opt.lr_decay_every_epochs, opt.lr_decay_factor) == (40, 0.1)
    assert (config.model.spatial.depth, config.model.temporal.depth) == (1, 3)
    assert load_config('configs/dfew_paper.py').model.spatial.depth == 3
    afew = load_config('configs/afew.py')
    assert (afew.optimizer.learning_rate, afew.num_epochs, afew.data.name) == (0.001, 20, 'afew')


@pytest.mark.parametrize('spec', [s for s in SPECS if s != 'configs/own.py'])
def test_the_classifier_has_the_datasets_class_count(spec):
    config = load_config(spec)
    assert config.model.num_classes == len(sources.DATASET_CLASSES[config.data.name])


def test_own_videos_take_their_class_count_from_the_command_line():
    config = load_config('configs/own.py', '--config.model.num_classes=3')
    assert (config.data.name, config.data.fold, config.model.num_classes) == ('own', 0, 3)


def test_mafw_trains_eleven_classes_with_the_same_model_code():
    config = load_config('configs/mafw.py', '--config.data.root=/data/MAFW')
    assert (config.data.name, config.data.fold, config.data.face_crop) == ('mafw', 1, 'detect')
    assert config.model.num_classes == 11 == len(sources.class_names('mafw'))
    model = nnx.eval_shape(lambda: build_model(config.model, rngs=nnx.Rngs(0)))
    assert model.spec.num_classes == 11
    assert model.classifier.kernel.value.shape == (512, 11)
    # Faces cropped beforehand (extract_faces output) are read as they are.
    config = load_config(
        'configs/mafw.py',
        '--config.data.frames_root=/data/MAFW_faces',
        '--config.data.face_crop=none',
    )
    assert (config.data.frames_root, config.data.face_crop) == ('/data/MAFW_faces', 'none')
