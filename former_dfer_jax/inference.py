"""Load a trained or converted Former-DFER for inference.

from former_dfer_jax.inference import load_model
model = load_model('runs/dfew_fd1')          # eval mode, best checkpoint
logits = model(video)                          # video: [B, 16, 112, 112, 3] in [0, 1]
"""

from __future__ import annotations

import jax
from flax import nnx

from former_dfer_jax import checkpointing


def load_model(path: str, which: str = 'best') -> nnx.Module:
    """Returns the model stored at `path` (a run directory or a checkpoint step directory)
    in eval mode, built from the config stored beside it (see `checkpointing.load_model`)."""
    model, _ = checkpointing.load_model(path, which)
    model.eval()
    return model


def predict(model: nnx.Module, video: jax.Array) -> jax.Array:
    """Class probabilities for a batch of clips `[B, T, H, W, 3]` in [0, 1]."""
    return jax.nn.softmax(model(video), axis=-1)
