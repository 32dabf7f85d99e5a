"""Input data: raw DFEW / AFEW / FERV39k / synthetic clips -> prepared TFDS records ->
deterministic, process-sharded tf.data batches.

    from former_dfer_jax import data
    data.info(config)                      # prepares on first use; sizes, steps, batches
    for batch in data.load(config, 'train', epoch=3, start_batch=120): ...

Modules: sources (raw layouts -> clip records), frames (prepare-time checks), builder
(TFDS), cache (prepare once, reuse), records (random access), sampling (the frame rule),
augment (crop / flip / resize), pipeline (tf.data), benchmark (input throughput),
synthetic_dataset / synthetic_faces (the generated demo dataset), face_extraction (raw
videos -> face-crop clip folders). Commands: prepare, synthetic, extract_faces.
"""

import importlib
from typing import TYPE_CHECKING

from former_dfer_jax.data.sources import CLASS_NAMES, NUM_CLASSES, SourceError

if TYPE_CHECKING:
    from former_dfer_jax.data.pipeline import DatasetInfo, info, load

__all__ = ['CLASS_NAMES', 'NUM_CLASSES', 'DatasetInfo', 'SourceError', 'info', 'load']


def __getattr__(name: str):
    # The pipeline pulls in TensorFlow and JAX; import it on first use only, so that
    # e.g. `from former_dfer_jax.data import sources` stays light.
    if name in ('DatasetInfo', 'info', 'load'):
        return getattr(importlib.import_module('former_dfer_jax.data.pipeline'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
