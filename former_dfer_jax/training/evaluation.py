"""Metrics of a model on a split: the evaluation the trainer runs each epoch and the
`evaluate` command runs on a stored checkpoint."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from former_dfer_jax import data
from former_dfer_jax.training import metrics, sharding, steps

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
