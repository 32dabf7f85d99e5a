"""Data parallelism: one ('data',) mesh over every device of every process.

Parameters and optimizer state are replicated; batches are split along 'data', each
process contributing the rows it read (its own shard of the dataset).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_KEYS = ('video', 'label', 'mask')


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D ('data',) mesh over every device of every process."""
    return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P('data'))


def global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's rows of a batch -> one array sharded over the global 'data' axis."""
    return {
        key: jax.make_array_from_process_local_data(sharding, value)
        for key, value in batch.items()
        if key in BATCH_KEYS
    }
