"""Checkpoint layout on disk (Orbax), shared by training, evaluation and the importers.

A run directory (a training workdir, or the output of `convert_torch`) holds::

    config.json                      the full config of the run (model config included)
    checkpoints/latest/<step>/       every epoch end and on preemption, a few kept
    checkpoints/best/<step>/         the best epoch by `config.checkpoint.best_metric`
    checkpoints/unreadable/          latest steps that failed to restore, set aside

Each step directory is an Orbax composite checkpoint with the items

* ``model``: the model's full NNX state as a pure dict (parameters and BatchNorm
  statistics), restorable on its own, which is all that inference and fine-tuning need;
* ``optimizer``: the optax state, in latest checkpoints only: a run resumes from its latest
  step, and nothing reads the best step's optimizer state, so it is not written twice;
* ``meta``: JSON: global step, epoch, metrics, and where the data stream stands.

Stored weights are read one way: `restore_model` restores the ``model`` item straight into
the abstract model of the stored config (`models.build_abstract_model`), and
`load_init_weights` copies it by path into a model of another config (fine-tuning).
`RunCheckpoints.restore_latest` resumes a run, falling back to older steps when the
newest cannot be read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging as std_logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx, traverse_util
from jax.experimental import multihost_utils

from former_dfer_jax import default_config, files
from former_dfer_jax.errors import UserError
from former_dfer_jax.models import build_abstract_model

CONFIG_FILE = 'config.json'
LATEST = 'latest'
BEST = 'best'
UNREADABLE = 'unreadable'


class CheckpointError(UserError):
    """A checkpoint that cannot be used as asked (missing, unreadable, or of another model)."""


@dataclasses.dataclass(frozen=True)
class StoredCheckpoint:
    """Where a loaded checkpoint came from: its run, manager directory, step and config."""

    run_dir: str
    directory: str
    step: int
    config: ml_collections.ConfigDict


@dataclasses.dataclass
class RestoredRun:
    """A training checkpoint restored for resuming (states as pure dicts / optax pytrees)."""

    step: int
    model_state: Any
    optimizer_state: Any
    meta: dict


# ---- Config beside the checkpoints -----------------------------------------------------


def config_path(run_dir: str) -> str:
    return os.path.join(run_dir, CONFIG_FILE)


def write_config(run_dir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `config` as JSON into `run_dir` (atomically: never a half-written file)."""
    os.makedirs(run_dir, exist_ok=True)
    files.write_text(config_path(run_dir), config.to_json(indent=2, sort_keys=True) + '\n')


def _add_missing_keys(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict):
    for key, value in defaults.items():
        if key not in config:
            config[key] = value
        elif isinstance(value, ml_collections.ConfigDict) and isinstance(
            config[key], ml_collections.ConfigDict
        ):
            _add_missing_keys(config[key], value)


def read_config(run_dir: str) -> ml_collections.ConfigDict:
    """Reads the config stored in `run_dir`; a clear error when there is none.

    Keys added to `default_config` since the run was written get their defaults, so
    that older runs still load (their stored values are never changed)."""

    path = config_path(run_dir)
    if not os.path.exists(path):
        raise CheckpointError(f'{path}: no config.json; is {run_dir!r} a run directory?')
    try:
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except json.JSONDecodeError as e:
        raise CheckpointError(f'{path}: not valid JSON ({e})') from e
    _add_missing_keys(config, default_config.get_config())
    return config


def model_config_differences(
    stored: ml_collections.ConfigDict, current: ml_collections.ConfigDict
) -> list[str]:
    """Lists the `model.*` keys whose values differ, as 'model.key: stored -> current'."""
    a = flatten_dict(stored.to_dict(), 'model')
    b = flatten_dict(current.to_dict(), 'model')
    return [
        f'{key}: {a.get(key, "<absent>")!r} (checkpoint) vs {b.get(key, "<absent>")!r} (config)'
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def flatten_dict(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} (with `prefix.` in front when given)."""
    flat = traverse_util.flatten_dict(dict(tree), sep='.')
    return {f'{prefix}.{key}' if prefix else key: value for key, value in flat.items()}


# ---- Managers ---------------------------------------------------------------------------


def _manager(
    directory: str, *, max_to_keep: int | None, best: bool = False, read_only: bool = False
) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        best_fn=(lambda metrics: metrics['value']) if best else None,
        best_mode='max',
        create=not read_only,
        read_only=read_only,
        # Orbax forces 0 on a read-only manager, with a warning each time otherwise.
        save_interval_steps=0 if read_only else 1,
        # Saves overlap with training; `wait_until_finished` before exiting.
        enable_async_checkpointing=not read_only,
    )
    with _without_read_only_warning():
        return ocp.CheckpointManager(
            os.path.abspath(directory),
            options=options,
            item_names=('model', 'optimizer', 'meta'),
        )


@contextlib.contextmanager
def _without_read_only_warning() -> Iterator[None]:
    """Orbax warns "Given directory is read only" for every read-only manager, which is how
    a run is opened for reading: nothing to act on, so not shown."""

    def keep(record: std_logging.LogRecord) -> bool:
        return 'Given directory is read only' not in record.getMessage()

    logger = std_logging.getLogger('absl')
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _describe_failure(error: BaseException) -> str:
    """One line for a failed restore: the innermost cause's first line, shortened.

    Orbax wraps TensorStore's precise error (which file, which byte range) in a generic
    one followed by a kilobytes-long TensorStore spec.
    """
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            break
        error = inner
    lines = str(error).strip().splitlines()
    line = f'{type(error).__name__}: {lines[0] if lines else "(no message)"}'
    return line if len(line) <= 300 else line[:297] + '...'


def _restore(directory: str, step: int, **items: Any) -> Any:
    """Restores `items` (name -> Orbax restore args) of one step with a read-only manager;
    a step that cannot be read is a CheckpointError naming it."""
    manager = _manager(directory, max_to_keep=None, read_only=True)
    try:
        return manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax / TensorStore raise many types; see restore_latest
        raise CheckpointError(
            f'{os.path.join(directory, str(step))}: cannot be restored ({_describe_failure(e)})'
        ) from e
    finally:
        manager.close()


class RunCheckpoints:
    """The latest and the best checkpoints of one run directory.

    A save that finds the disk full (Orbax reports it late, from its asynchronous writer,
    often as "Event loop is closed") raises one `files.NoSpaceError` naming the step that
    was not saved, the free space and the step that is intact, after removing the step's
    partial files: the same command resumes once space is freed.
    """

    def __init__(self, run_dir: str, *, keep_latest: int = 3):
        self.run_dir = run_dir
        root = os.path.join(run_dir, 'checkpoints')
        self.latest = _manager(os.path.join(root, LATEST), max_to_keep=keep_latest)
        self.best = _manager(os.path.join(root, BEST), max_to_keep=1, best=True)
        self._unconfirmed: list[int] = []  # steps whose (asynchronous) save may still fail
        self._no_space: files.NoSpaceError | None = None  # the first full disk, once known

    @contextlib.contextmanager
    def _reporting_full_disk(self) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            if not files.is_no_space(e) or isinstance(e, files.NoSpaceError):
                raise
            raise self._no_space_error() from e

    def _no_space_error(self) -> files.NoSpaceError:
        """Removes the partial step directories and describes what was kept (the same
        description however many of the managers' calls report the full disk)."""
        if self._no_space is not None:
            return self._no_space
        for manager in (self.latest, self.best):  # let the other save end, or fail, first
            with contextlib.suppress(Exception):
                manager.wait_until_finished()
        directories = (str(self.latest.directory), str(self.best.directory))
        for directory in directories if jax.process_index() == 0 else ():
            if os.path.isdir(directory):
                for name in os.listdir(directory):
                    if '.orbax-checkpoint-tmp' in name:
                        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        self.latest.reload()
        saved = set(self.latest.all_steps())
        lost = [s for s in self._unconfirmed if s not in saved]
        if lost or not self._unconfirmed:
            intact = max(saved - set(lost), default=None)
            what = f'checkpoint step {lost[0]}' if lost else 'a checkpoint'
            kept = f'step {intact} is intact' if intact is not None else 'no earlier checkpoint'
        else:  # the latest checkpoint is on disk: the best one's save failed
            step = self._unconfirmed[-1]
            what = f'the best checkpoint (step {step})'
            kept = f'the latest checkpoint, step {step}, is intact'
        self._unconfirmed = []
        self._no_space = files.no_space(what, directories[0], kept)
        return self._no_space

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(
        self,
        step: int,
        model_state: Any,
        optimizer_state: Any,
        meta: dict,
        *,
        best_value: float | None = None,
    ) -> None:
        """Saves the latest checkpoint, and the best one too (model and meta only) when
        `best_value` is given."""
        model = ocp.args.StandardSave(model_state)
        meta_args = ocp.args.JsonSave(meta)
        # Across processes, two managers finishing async saves together collide on
        # Orbax's shared barrier names: there, one manager's save at a time. A single
        # process keeps both in flight, overlapping with training.
        one_at_a_time = jax.process_count() > 1
        self._unconfirmed.append(step)
        with self._reporting_full_disk():
            if one_at_a_time:
                self.best.wait_until_finished()
            self.latest.save(
                step,
                args=ocp.args.Composite(
                    model=model, optimizer=ocp.args.StandardSave(optimizer_state), meta=meta_args
                ),
                force=True,
            )
            if best_value is not None:
                if one_at_a_time:
                    self.latest.wait_until_finished()
                self.best.save(
                    step,
                    args=ocp.args.Composite(model=model, meta=meta_args),
                    metrics={'value': float(best_value)},
                    force=True,
                )

    def restore_latest(self, model_target: Any, optimizer_target: Any) -> RestoredRun | None:
        """Restores the newest latest-checkpoint that can be read, for resuming.

        `model_target` / `optimizer_target` are pytrees of jax.ShapeDtypeStruct (see
        `abstract_like`). A step that fails to restore (a truncated or deleted file, a
        partial copy) is logged and the next older one tried; once one restores, the
        failed newer ones are moved to checkpoints/unreadable/ so that the resumed run can
        save those steps again. Returns None when there are no checkpoints at all; raises
        CheckpointError when there are some but none restores (then nothing is moved: a
        target that fits no step is more likely than every step being damaged).

        Assumes every process sees the same files (a shared file system), so that all of
        them fall back to the same step.
        """
        directory = str(self.latest.directory)
        steps = sorted(self.latest.all_steps(), reverse=True)
        if not steps:
            return None
        args = ocp.args.Composite(
            model=ocp.args.StandardRestore(model_target),
            optimizer=ocp.args.StandardRestore(optimizer_target),
            meta=ocp.args.JsonRestore(),
        )
        failed: list[int] = []
        reason = ''
        for step in steps:
            try:
                restored = self.latest.restore(step, args=args)
            # Broad on purpose: a damaged checkpoint surfaces as whatever TensorStore or
            # Orbax's asyncio machinery raises (a bare Exception for a truncated data file,
            # ValueError, FileNotFoundError, RuntimeError('Event loop is closed'), ...).
            # Not BaseException: Ctrl-C and SystemExit still stop the run.
            except Exception as e:
                reason = _describe_failure(e)
                logging.warning(
                    'Checkpoint step %d in %s cannot be restored (%s); trying an older step.',
                    step,
                    directory,
                    reason,
                )
                failed.append(step)
                continue
            self._set_aside(failed)
            return RestoredRun(
                step=step,
                model_state=restored.model,
                optimizer_state=restored.optimizer,
                meta=dict(restored.meta),
            )
        raise CheckpointError(
            f'{directory}: no checkpoint restores (steps {", ".join(map(str, failed))} tried; '
            f'last error: {reason}); resume with the config the run was started with (a '
            'changed optimizer.* also causes this), or move the checkpoints away to start afresh'
        )

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable latest steps out of the manager's directory: Orbax refuses to
        save a step that exists, and `latest_step()` must name the step resumed from."""
        if not steps:
            return
        if jax.process_index() == 0:
            root = os.path.join(self.run_dir, 'checkpoints', UNREADABLE)
            os.makedirs(root, exist_ok=True)
            for step in steps:
                target = os.path.join(root, f'{LATEST}_{step}')
                if os.path.exists(target):
                    target += time.strftime('_%Y%m%d-%H%M%S')
                shutil.move(os.path.join(str(self.latest.directory), str(step)), target)
                logging.warning(
                    'Moved unreadable checkpoint step %d to %s (delete it once inspected).',
                    step,
                    target,
                )
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices('former_dfer_set_aside_unreadable')
        self.latest.reload()

    def wait_until_finished(self) -> None:
        with self._reporting_full_disk():
            self.latest.wait_until_finished()
            self.best.wait_until_finished()
        self._unconfirmed = []

    def close(self) -> None:
        with self._reporting_full_disk():
            self.latest.close()
            self.best.close()


# ---- Model-only checkpoints (converted weights, inference, fine-tuning) ---------------


def save_model(
    run_dir: str,
    model: nnx.Module,
    config: ml_collections.ConfigDict,
    *,
    step: int = 0,
    meta: dict | None = None,
) -> None:
    """Writes `model` (parameters and BatchNorm statistics) as a run directory's latest
    checkpoint, with `config` beside it, so `inference.open_run(run_dir)` opens it."""
    write_config(run_dir, config)
    manager = _manager(os.path.join(run_dir, 'checkpoints', LATEST), max_to_keep=None)
    manager.save(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(model))),
            meta=ocp.args.JsonSave({'step': step, **(meta or {})}),
        ),
        force=True,
    )
    manager.wait_until_finished()
    manager.close()


def resolve_checkpoint(path: str, which: str = 'best') -> tuple[str, str, int]:
    """Finds (run dir, manager dir, step) for `path`.

    `path` is a run directory (then `which` picks 'best' or 'latest', falling back to
    the latest where no best exists) or one step directory inside it.
    """
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f'{path}: no such checkpoint or run directory')
    if os.path.exists(config_path(path)):
        if which not in (BEST, LATEST):
            raise CheckpointError(f"checkpoint choice {which!r}: expected 'best' or 'latest'")
        order = (BEST, LATEST) if which == BEST else (LATEST,)
        for name in order:
            directory = os.path.join(path, 'checkpoints', name)
            if os.path.isdir(directory):
                manager = _manager(directory, max_to_keep=None, read_only=True)
                step = manager.best_step() if name == BEST else manager.latest_step()
                if step is None and name == BEST:
                    step = manager.latest_step()
                manager.close()
                if step is not None:
                    return path, directory, step
        raise CheckpointError(f'{path}: holds a config.json but no {which} checkpoint')
    # A step directory: <run>/checkpoints/<latest|best>/<step>.
    step_name = os.path.basename(path)
    directory = os.path.dirname(path)
    run_dir = os.path.dirname(os.path.dirname(directory))
    if step_name.isdigit() and os.path.exists(config_path(run_dir)):
        return run_dir, directory, int(step_name)
    raise CheckpointError(
        f'{path}: neither a run directory (with config.json) nor a checkpoint step '
        'directory inside one (<run>/checkpoints/latest/<step>)'
    )


def restore_model(
    path: str, which: str = 'best', *, model_config: ml_collections.ConfigDict | None = None
) -> tuple[nnx.Module, StoredCheckpoint]:
    """The model stored at `path` (a run directory + `which`, or a step directory), built
    from the config stored beside it, in training mode as built; and where it came from.

    The weights are restored straight into the abstract model, so no random
    initialisation is computed (and compiled) only to be overwritten. With
    `model_config`, a stored model of another config is refused key by key rather than
    as a shape error deep inside Orbax.
    """
    run_dir, directory, step = resolve_checkpoint(path, which)
    config = read_config(run_dir)
    if model_config is not None:
        differences = model_config_differences(config.model, model_config)
        if differences:
            raise CheckpointError(
                f'{run_dir}: its checkpoint is of another model config than the one given '
                f'({"; ".join(differences)}); use the model settings it was trained with'
            )
    graphdef, state = nnx.split(build_abstract_model(config.model))
    target = abstract_like(nnx.to_pure_dict(state))
    restored = _restore(directory, step, model=ocp.args.StandardRestore(target))
    nnx.replace_by_pure_dict(state, restored.model)
    return nnx.merge(graphdef, state), StoredCheckpoint(run_dir, directory, step, config)


def load_init_weights(model: nnx.Module, path: str, *, reinit_classifier: bool) -> StoredCheckpoint:
    """Copies the weights stored at `path` (`config.init_from`: a run directory, whose best
    checkpoint or else latest is used, or a step directory) into `model` in place.

    The stored model config may differ as long as every variable of `model` is stored
    with its shape; with `reinit_classifier`, the classifier keeps its fresh values
    (e.g. for another class count). All problems are reported in one CheckpointError.
    """
    run_dir, directory, step = resolve_checkpoint(path, BEST)
    config = read_config(run_dir)
    # Restored without a target (the stored config may be another model's), so list
    # indices come back as str keys: match on str keys.
    stored_tree = _restore(directory, step, model=ocp.args.StandardRestore(None)).model
    stored = {
        tuple(map(str, key)): value
        for key, value in traverse_util.flatten_dict(stored_tree).items()
    }
    state = nnx.state(model)
    current = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    head = tuple(model.classifier_path()) if hasattr(model, 'classifier_path') else ()
    merged, problems = {}, []
    for key, value in current.items():
        name = '.'.join(map(str, key))
        is_head = bool(head) and key[: len(head)] == head
        loaded = stored.get(tuple(map(str, key)))
        if is_head and reinit_classifier:
            merged[key] = value
        elif loaded is None:
            problems.append(f'{name}: missing in the checkpoint')
        elif np.shape(loaded) != np.shape(value):
            hint = ' (set reinit_classifier=True for a new class count)' if is_head else ''
            problems.append(
                f'{name}: shape {list(np.shape(loaded))} in the checkpoint vs '
                f'{list(np.shape(value))} in the model{hint}'
            )
        else:
            merged[key] = loaded
    if problems:
        raise CheckpointError(
            f'init_from={path} ({directory}, step {step}) does not fit the model: '
            + '; '.join(problems)
        )
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(merged))
    nnx.update(model, state)
    return StoredCheckpoint(run_dir, directory, step, config)


def abstract_like(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """ShapeDtypeStructs of `tree` (optionally with a sharding), the target of a restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
