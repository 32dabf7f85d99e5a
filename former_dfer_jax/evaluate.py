"""Evaluate one checkpoint on the test split (or another split).

    python -m former_dfer_jax.evaluate --config=configs/dfew.py --workdir=runs/dfew_fd1 \
        [--checkpoint=best|latest|PATH] [--split=test]

Prints the per-class / UAR / WAR table and writes it as JSON into the workdir
(`eval_<checkpoint>_<split>.json`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx

from former_dfer_jax import (
    checkpointing,
    cli,
    config_checks,
    data,
    metrics,
    sharding,
    steps,
)

EvalFn = Callable[[nnx.State, nnx.State, dict[str, jax.Array]], dict[str, jax.Array]]


def confusion_over_split(
    eval_fn: EvalFn,
    weights: tuple[nnx.State, nnx.State],
    config: ml_collections.ConfigDict,
    split: str,
) -> np.ndarray:
    """Confusion matrix over every clip of `split`, each clip once (padding masked out).

    `eval_fn(params, rest, batch)` is a jitted `steps.eval_step` and `weights` its
    (params, rest); batches are sharded over the global mesh.
    """
    batch_sharding = sharding.batch_sharded(sharding.make_mesh())
    num_classes = data.info(config).num_classes
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for batch in data.load(config, split):
        out = eval_fn(*weights, sharding.global_batch(batch, batch_sharding))
        confusion += np.asarray(jax.device_get(out['confusion']), np.int64)
    return confusion


def make_eval_fn(graphdef: nnx.GraphDef, num_classes: int) -> EvalFn:
    """`steps.eval_step` jitted for `graphdef` (an eval-mode graph), output replicated."""
    return jax.jit(
        functools.partial(steps.eval_step, graphdef=graphdef, num_classes=num_classes),
        out_shardings=sharding.replicated(sharding.make_mesh()),
    )


def evaluate_model(
    model: nnx.Module, config: ml_collections.ConfigDict, split: str = 'test'
) -> dict[str, Any]:
    """UAR / WAR / per-class recall / confusion matrix of `model` on `split`."""
    info = data.info(config)
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = jax.device_put((params, rest), sharding.replicated(sharding.make_mesh()))
    eval_fn = make_eval_fn(graphdef, info.num_classes)
    confusion = confusion_over_split(eval_fn, (params, rest), config, split)
    return metrics.summarize(confusion, info.class_names)


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, path: str, which: str = 'best', split: str = 'test'
) -> dict[str, Any]:
    """Metrics of the checkpoint at `path` (run dir + which, or a step dir) on `split`.

    The checkpoint must be of `config.model` (a CheckpointError lists the differences).
    """
    model, stored = checkpointing.load_model(path, which, model_config=config.model)
    summary = evaluate_model(model, config, split)
    summary.update({'checkpoint': stored.run_dir, 'step': stored.step, 'split': split})
    return summary


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    config_checks.validate(FLAGS.config)
    cli.setup()
    choice = FLAGS.checkpoint
    if choice in (checkpointing.BEST, checkpointing.LATEST):
        path, which, tag = FLAGS.workdir, choice, choice
    else:
        path, which, tag = choice, checkpointing.BEST, 'path'
    summary = evaluate_checkpoint(FLAGS.config, path, which, FLAGS.split)
    class_names = data.info(FLAGS.config).class_names
    if jax.process_index() == 0:
        out = os.path.join(FLAGS.workdir, f'eval_{tag}_step{summary["step"]}_{FLAGS.split}.json')
        with open(out, 'w') as f:
            json.dump(summary, f, indent=2)
        print(f'{FLAGS.split} split of {summary["checkpoint"]} at step {summary["step"]}, percent:')
        print(metrics.format_table({tag: summary}, class_names))
        print(f'Written to {out}')


def _define_flags() -> None:
    cli.define_config_flags(workdir_help='The run directory holding the checkpoints.')
    flags.DEFINE_string(
        'checkpoint', 'best', "'best', 'latest', or the path of a run or checkpoint step directory."
    )
    flags.DEFINE_enum('split', 'test', ['test', 'validation', 'train'], 'The split to evaluate.')


if __name__ == '__main__':
    _define_flags()
    cli.run(main)
