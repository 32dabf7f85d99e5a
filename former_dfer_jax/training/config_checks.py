"""Config values checked before any work starts (no dataset prepared, no model compiled).

    config_checks.validate(config)  # raises ConfigError naming each bad key

Every problem found is one line `<key>=<value>: <what is allowed>`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import ml_collections

from former_dfer_jax.data import sources
from former_dfer_jax.data.sources import DATASETS, FACE_CROPS
from former_dfer_jax.errors import UserError
from former_dfer_jax.models import ModelSpec
from former_dfer_jax.training import steps

# data.fold per dataset, as the sources define them: DFEW (and the synthetic set in its
# layout) and MAFW have folds 1..5; AFEW, FERV39k and a user's own clips have one split,
# fold 0.
FOLDS: dict[str, tuple[int, ...]] = {
    'dfew': (1, 2, 3, 4, 5),
    'synthetic': (1, 2, 3, 4, 5),
    'mafw': (1, 2, 3, 4, 5),
    'afew': (0,),
    'ferv39k': (0,),
    'own': (0,),
}
BEST_METRICS = ('war', 'uar')


class ConfigError(UserError, ValueError):
    """A config value out of its allowed range."""


def _at_least(minimum: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= minimum), f'expected an integer >= {minimum}'


def _one_of(allowed: tuple) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in allowed), f'expected one of {", ".join(map(repr, allowed))}'


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    'data.name': _one_of(DATASETS),
    'data.face_crop': _one_of(FACE_CROPS),
    'data.num_segments': _at_least(1),
    'data.segment_length': _at_least(1),
    'data.val_fraction': ((lambda v: 0 <= v < 1), 'expected 0 <= value < 1'),
    'data.crop_area_min': ((lambda v: 0 < v <= 1), 'expected 0 < value <= 1'),
    'batch_size': _at_least(1),
    'eval_batch_size': _at_least(1),
    'num_epochs': _at_least(1),
    'log_every_steps': _at_least(1),
    'eval_every_epochs': _at_least(1),
    'optimizer.name': _one_of(steps.OPTIMIZERS),
    'optimizer.learning_rate': ((lambda v: v >= 0), 'expected >= 0'),
    'checkpoint.every_steps': _at_least(0),
    'checkpoint.best_metric': _one_of(BEST_METRICS),
    'checkpoint.keep_latest': _at_least(1),
}


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for part in key.split('.'):
        node = node[part]
    return node


def _passes(check: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(check(value))
    except TypeError:  # e.g. None where a number belongs
        return False


def _data_problems(config: ml_collections.ConfigDict) -> list[str]:
    """The classifier must have the data's class count; frames_root is MAFW's only."""
    data, problems = config.data, []
    if data.frames_root and data.name != 'mafw':
        problems.append(f"data.frames_root={data.frames_root!r}: only read for data.name='mafw'")
    if data.name not in DATASETS:
        return problems  # reported by its rule
    try:
        names = sources.class_names(data.name, root=data.root, annotation_dir=data.annotation_dir)
    except sources.SourceError:
        return problems  # 'own' without its classes.txt: preparing will name the file
    num_classes = config.model.num_classes
    if num_classes != len(names):
        where = f'{data.name} has'
        if data.name == 'own':
            folder = data.annotation_dir or data.root
            where = f'{os.path.join(folder, sources.OWN_CLASSES_FILE)} lists'
        problems.append(
            f'model.num_classes={num_classes!r}: {where} {len(names)} classes '
            f'({", ".join(names)}); set model.num_classes={len(names)}'
        )
    return problems


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError listing every bad value of `config`, one line each."""
    problems = [
        f'{key}={_get(config, key)!r}: {allowed}'
        for key, (check, allowed) in _RULES.items()
        if not _passes(check, _get(config, key))
    ]
    name, fold = config.data.name, config.data.fold
    if name in FOLDS and fold not in FOLDS[name]:
        allowed = ', '.join(map(str, FOLDS[name]))
        problems.append(f'data.fold={fold!r}: {name} has folds {allowed}')
    problems += _data_problems(config)
    try:
        ModelSpec.from_config(config.model)
    except ValueError as e:
        lines = str(e).splitlines()
        # ModelSpec lists its problems under a heading, keys relative to config.model.
        if len(lines) > 1 and lines[0] == 'invalid model config:':
            problems += [f'model.{line.strip()}' for line in lines[1:]]
        else:
            problems += lines
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f'{len(problems)} invalid config values:\n  ' + '\n  '.join(problems))
