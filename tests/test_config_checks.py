"""config_checks.validate: every shipped config passes; each bad value is refused before any
work starts, with its key, its value and what is allowed."""

import re

import pytest

from former_dfer_jax import default_config
from former_dfer_jax.data import sources
from former_dfer_jax.errors import UserError
from former_dfer_jax.training import config_checks
from former_dfer_jax.training.config_checks import ConfigError
from tests.test_configs import SPECS, load_config


@pytest.mark.parametrize('spec', SPECS)
def test_every_shipped_config_validates(spec):
    config_checks.validate(load_config(spec))


def _set(config, key: str, value) -> None:
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
        node = node[parent]
    node[leaf] = value


@pytest.mark.parametrize(
    ('key', 'value', 'allowed'),
    [
        (
            'data.name',
            'kinetics',
            "expected one of 'dfew', 'afew', 'ferv39k', 'synthetic', 'mafw', 'own'",
        ),
        ('data.face_crop', 'mtcnn', "expected one of 'none', 'detect'"),
        ('data.fold', 9, 'dfew has folds 1, 2, 3, 4, 5'),
        ('data.fold', 0, 'dfew has folds 1, 2, 3, 4, 5'),
        ('batch_size', 0, 'expected an integer >= 1'),
        ('eval_batch_size', -4, 'expected an integer >= 1'),
        ('num_epochs', 0, 'expected an integer >= 1'),
        ('log_every_steps', 0, 'expected an integer >= 1'),
        ('eval_every_epochs', 0, 'expected an integer >= 1'),
        ('checkpoint.every_steps', -1, 'expected an integer >= 0'),
        ('checkpoint.best_metric', 'accuracy', "expected one of 'war', 'uar'"),
        ('checkpoint.keep_latest', 0, 'expected an integer >= 1'),
        ('optimizer.name', 'adam', "expected one of 'sgd', 'adamw'"),
        ('optimizer.learning_rate', -0.1, 'expected >= 0'),
        ('data.val_fraction', 1.0, 'expected 0 <= value < 1'),
        ('data.val_fraction', -0.1, 'expected 0 <= value < 1'),
        ('data.crop_area_min', 0.0, 'expected 0 < value <= 1'),
        ('data.crop_area_min', 1.5, 'expected 0 < value <= 1'),
        ('data.num_segments', 0, 'expected an integer >= 1'),
        ('data.segment_length', 0, 'expected an integer >= 1'),
        ('model.spatial.depth', 0, 'expected >= 1'),
        ('model.resnet_depth', 50, 'expected one of [18, 34]'),
    ],
)
def test_a_bad_value_is_refused_naming_its_key_value_and_what_is_allowed(key, value, allowed):
    config = default_config.get_config()
    _set(config, key, value)
    with pytest.raises(ConfigError) as error:
        config_checks.validate(config)
    # One line per problem (a zero segment count also makes model.num_frames zero).
    lines = str(error.value).splitlines()
    assert f'{key}={value!r}: {allowed}' in [line.strip() for line in lines], lines


def test_the_folds_follow_each_dataset():
    for name, fold in (('afew', 0), ('own', 0), ('ferv39k', 0), ('synthetic', 5), ('dfew', 1)):
        config = default_config.get_config()
        config.data.name, config.data.fold = name, fold
        config_checks.validate(config)
    config.data.name = 'afew'
    with pytest.raises(ConfigError, match=r'^data\.fold=1: afew has folds 0$'):
        config_checks.validate(config)
    config = default_config.get_config()
    config.data.name, config.data.fold, config.model.num_classes = 'mafw', 5, 11
    config_checks.validate(config)
    config.data.fold = 0
    with pytest.raises(ConfigError, match=r'^data\.fold=0: mafw has folds 1, 2, 3, 4, 5$'):
        config_checks.validate(config)


def test_the_fold_rules_are_those_of_the_annotation_lists():
    assert set(config_checks.FOLDS) == set(sources.DATASETS)
    for name, folds in config_checks.FOLDS.items():
        assert {str(f) for f in folds} == set(sources._LIST_FILES[name]), name


def test_the_classifier_must_have_the_datas_class_count():
    config = default_config.get_config()
    config.data.name = 'mafw'  # num_classes stays 7
    with pytest.raises(ConfigError) as error:
        config_checks.validate(config)
    assert str(error.value) == (
        'model.num_classes=7: mafw has 11 classes (happiness, sadness, neutral, anger, '
        'surprise, disgust, fear, contempt, anxiety, helplessness, disappointment); '
        'set model.num_classes=11'
    )


def test_own_clips_take_the_class_count_from_their_classes_txt(tmp_path):
    config = default_config.get_config()
    config.data.name, config.data.fold, config.data.root = 'own', 0, str(tmp_path)
    config_checks.validate(config)  # no classes.txt yet: preparing names the missing file
    (tmp_path / 'classes.txt').write_text('calm\nexcited\nnot sure\n')
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f'model.num_classes=7: {tmp_path}/classes.txt lists 3 classes '
            '(calm, excited, not sure); set model.num_classes=3'
        ),
    ):
        config_checks.validate(config)
    config.model.num_classes = 3
    config_checks.validate(config)
    lists = tmp_path / 'lists'  # data.annotation_dir, when set, holds the lists
    lists.mkdir()
    (lists / 'classes.txt').write_text('a\nb\n')
    config.data.annotation_dir = str(lists)
    with pytest.raises(ConfigError, match=re.escape(f'{lists}/classes.txt lists 2 classes')):
        config_checks.validate(config)


def test_frames_root_is_only_read_for_mafw():
    config = default_config.get_config()
    config.data.frames_root = '/data/faces'
    with pytest.raises(
        ConfigError,
        match=re.escape("data.frames_root='/data/faces': only read for data.name='mafw'"),
    ):
        config_checks.validate(config)


def test_an_unknown_model_key_is_refused():
    config = default_config.get_config()
    config.model.spatial.dept = 3
    with pytest.raises(ConfigError, match=re.escape("unknown model.spatial keys ['dept']")):
        config_checks.validate(config)


def test_every_problem_is_listed_one_per_line_under_a_count():
    config = default_config.get_config()
    config.batch_size, config.optimizer.name = 0, 'adam'
    with pytest.raises(ConfigError) as error:
        config_checks.validate(config)
    assert str(error.value) == (
        '2 invalid config values:\n'
        '  batch_size=0: expected an integer >= 1\n'
        "  optimizer.name='adam': expected one of 'sgd', 'adamw'"
    )
    assert isinstance(error.value, UserError)
