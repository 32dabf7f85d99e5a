"""Load a trained or converted Former-DFER for inference.

from former_dfer_jax.inference import load_model
model = load_model('runs/dfew_fd1')          # eval mode, best checkpoint
logits = model(video)                          # video: [B, 16, 112, 112, 3] in [0, 1]
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from flax import nnx

from former_dfer_jax import checkpointing
from former_dfer_jax.models import build_model


def build_abstract_model(model_config: ml_collections.ConfigDict) -> nnx.Module:
    """The model's structure without allocating its weights (shapes only)."""
    return nnx.eval_shape(lambda: build_model(model_config, rngs=nnx.Rngs(0)))


def restore_model_weights(model: nnx.Module, path: str, which: str = 'best') -> dict[str, Any]:
    """Loads the weights stored at `path` into `model` in place; returns the stored meta.

    The checkpoint's model config must equal the model's structure: a different one is
    reported key by key rather than as a shape error deep inside Orbax.
    """
    run_dir, manager_dir, step = checkpointing.resolve_checkpoint(path, which)
    state = nnx.state(model)
    abstract = checkpointing.abstract_like(nnx.to_pure_dict(state))
    restored = checkpointing.restore_model_state(manager_dir, step, abstract)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return {'run_dir': run_dir, 'step': step}


def load_model(path: str, which: str = 'best') -> nnx.Module:
    """Returns the model stored at `path` (a run directory or a checkpoint step directory)
    in eval mode, built from the config stored beside it.

    The weights are restored straight into the model's abstract structure, so no random
    initialisation is computed (and compiled) only to be overwritten.
    """
    run_dir, manager_dir, step = checkpointing.resolve_checkpoint(path, which)
    config = checkpointing.read_config(run_dir)
    graphdef, state = nnx.split(build_abstract_model(config.model))
    target = checkpointing.abstract_like(nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, checkpointing.restore_model_state(manager_dir, step, target))
    model = nnx.merge(graphdef, state)
    model.eval()
    return model


def predict(model: nnx.Module, video: jax.Array) -> jax.Array:
    """Class probabilities for a batch of clips `[B, T, H, W, 3]` in [0, 1]."""
    return jax.nn.softmax(model(video), axis=-1)
