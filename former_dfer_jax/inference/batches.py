"""One jitted function over any number of clips, in fixed-size batches.

The last batch is padded (with copies of its last clip) to the batch size, so one program
is compiled whatever the number of clips, and the padded rows are dropped from the output.
predict and explain run their models through it (evaluation over a dataset split pads and
masks in the tf.data pipeline instead: `data.load`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from former_dfer_jax.errors import UserError


def padded_batches(
    arrays: tuple[np.ndarray, ...], batch_size: int
) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
    """(n valid rows, arrays cut to `batch_size` rows, the last batch padded by repeating
    its last row) over the leading axis of `arrays` (all of one length)."""
    if batch_size < 1:
        raise UserError(f'batch_size={batch_size}: expected >= 1')
    total = len(arrays[0])
    for start in range(0, total, batch_size):
        chunk = tuple(a[start : start + batch_size] for a in arrays)
        n = len(chunk[0])
        if n < batch_size:
            chunk = tuple(
                np.concatenate([c, np.repeat(c[-1:], batch_size - n, axis=0)]) for c in chunk
            )
        yield n, chunk


def run_batched(fn: Callable[..., Any], *arrays: np.ndarray, batch_size: int) -> Any:
    """`fn(*batch)` (jitted: a fixed `batch_size` compiles once) over the rows of `arrays`,
    padded batches trimmed back; the outputs' pytree of arrays concatenated on axis 0.

    With no rows, returns None."""
    outputs = []
    for n, chunk in padded_batches(arrays, batch_size):
        out = jax.device_get(fn(*chunk))
        outputs.append(jax.tree.map(lambda x, n=n: np.asarray(x)[:n], out))
    if not outputs:
        return None
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
