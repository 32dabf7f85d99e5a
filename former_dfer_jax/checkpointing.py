"""Checkpoint layout on disk (Orbax), shared by training, evaluation and the importers.

A run directory (a training workdir, or the output of `convert_torch`) holds::

    config.json                      the full config of the run (model config included)
    checkpoints/latest/<step>/       every epoch end and on preemption, a few kept
    checkpoints/best/<step>/         the best epoch by `config.checkpoint.best_metric`

Each step directory is an Orbax composite checkpoint with the items

* ``model``: the model's full NNX state as a pure dict (parameters and BatchNorm
  statistics), restorable on its own, which is all that inference and fine-tuning need;
* ``optimizer``: the optax state (training checkpoints only);
* ``meta``: JSON: global step, epoch, metrics, and where the data stream stands.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from former_dfer_jax.errors import UserError

CONFIG_FILE = 'config.json'
LATEST = 'latest'
BEST = 'best'


class CheckpointError(UserError):
    """A checkpoint that cannot be used as asked (missing, or of another model)."""


# ---- Config beside the checkpoints -----------------------------------------------------


def config_path(run_dir: str) -> str:
    return os.path.join(run_dir, CONFIG_FILE)


def write_config(run_dir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `config` as JSON into `run_dir` (atomically: never a half-written file)."""
    os.makedirs(run_dir, exist_ok=True)
    path = config_path(run_dir)
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(config.to_json(indent=2, sort_keys=True))
        f.write('\n')
    os.replace(tmp, path)


def read_config(run_dir: str) -> ml_collections.ConfigDict:
    """Reads the config stored in `run_dir`; a clear error when there is none."""
    path = config_path(run_dir)
    if not os.path.exists(path):
        raise CheckpointError(f'{path}: no config.json; is {run_dir!r} a run directory?')
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except json.JSONDecodeError as e:
        raise CheckpointError(f'{path}: not valid JSON ({e})') from e


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
    flat = {}
    for key, value in tree.items():
        name = f'{prefix}.{key}' if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_dict(value, name))
        else:
            flat[name] = value
    return flat


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
        # Saves overlap with training; `wait_until_finished` before exiting.
        enable_async_checkpointing=not read_only,
    )
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=options,
        item_names=('model', 'optimizer', 'meta'),
    )


class RunCheckpoints:
    """The latest and the best checkpoints of one run directory."""

    def __init__(self, run_dir: str, *, keep_latest: int = 3):
        self.run_dir = run_dir
        root = os.path.join(run_dir, 'checkpoints')
        self.latest = _manager(os.path.join(root, LATEST), max_to_keep=keep_latest)
        self.best = _manager(os.path.join(root, BEST), max_to_keep=1, best=True)

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
        """Saves the latest checkpoint, and the best one too when `best_value` is given."""
        args = ocp.args.Composite(
            model=ocp.args.StandardSave(model_state),
            optimizer=ocp.args.StandardSave(optimizer_state),
            meta=ocp.args.JsonSave(meta),
        )
        # Across processes, two managers finishing async saves together collide on
        # Orbax's shared barrier names: there, one manager's save at a time. A single
        # process keeps both in flight, overlapping with training.
        one_at_a_time = jax.process_count() > 1
        if one_at_a_time:
            self.best.wait_until_finished()
        self.latest.save(step, args=args, force=True)
        if best_value is not None:
            if one_at_a_time:
                self.latest.wait_until_finished()
            self.best.save(step, args=args, metrics={'value': float(best_value)}, force=True)

    def best_value(self) -> float | None:
        """The metric value of the kept best checkpoint, if any."""
        step = self.best.best_step()
        if step is None:
            return None
        meta = self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return meta.meta.get('best_value')

    def restore(
        self, step: int, abstract_model: Any, abstract_optimizer: Any
    ) -> tuple[Any, Any, dict]:
        """Restores (model state, optimizer state, meta) of a latest checkpoint."""
        restored = self.latest.restore(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(abstract_model),
                optimizer=ocp.args.StandardRestore(abstract_optimizer),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored.model, restored.optimizer, dict(restored.meta)

    def wait_until_finished(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
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
    checkpoint, with `config` beside it, so `inference.load_model(run_dir)` restores it."""
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


def restore_model_state(manager_dir: str, step: int, abstract_state: Any) -> Any:
    """Restores only the `model` item of one checkpoint into `abstract_state`'s shapes."""
    manager = _manager(manager_dir, max_to_keep=None, read_only=True)
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract_state))
        )
    finally:
        manager.close()
    return restored.model


def abstract_like(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """ShapeDtypeStructs of `tree` (optionally with a sharding), the target of a restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
