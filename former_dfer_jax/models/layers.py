"""Layer factories with the reference code's (PyTorch's) initialisation and numerics.

Flax and PyTorch differ in default initialisers, LayerNorm epsilon and padding rules;
every layer of the model is built here so those choices live in one place.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

# torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2 / fan_out)
# with fan_out = out_channels * kh * kw; HWIO kernels put out_channels last (out_axis=-1).
KAIMING_NORMAL_FAN_OUT = jax.nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# torch.nn.Linear's weight init, kaiming_uniform_(a=sqrt(5)), is U(-b, b) with
# b = 1 / sqrt(fan_in): variance_scaling's uniform limit is sqrt(3 * scale / fan_in).
TORCH_LINEAR_KERNEL = jax.nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')

LAYER_NORM_EPSILON = 1e-5  # PyTorch's default (Flax's is 1e-6)


def symmetric_uniform(bound: float) -> jax.nn.initializers.Initializer:
    """U(-bound, bound), PyTorch's init for Linear biases and recurrent weights."""

    def init(key: jax.Array, shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    dtype: DTypeLike,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A Dense layer initialised as torch.nn.Linear; float32 params, `dtype` compute."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=TORCH_LINEAR_KERNEL,
        bias_init=symmetric_uniform(1.0 / math.sqrt(in_features)),
        rngs=rngs,
    )


def layer_norm(dim: int, *, dtype: DTypeLike, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm as torch.nn.LayerNorm (eps 1e-5, weight 1, bias 0).

    Flax computes the statistics in float32 whatever `dtype` is.
    """
    return nnx.LayerNorm(
        dim, epsilon=LAYER_NORM_EPSILON, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )


def normal_param(rngs: nnx.Rngs, shape: tuple[int, ...]) -> nnx.Param:
    """A parameter drawn from N(0, 1), as torch.randn (position embeddings, class token)."""
    return nnx.Param(jax.random.normal(rngs.params(), shape, jnp.float32))


def dropout(rate: float, *, rngs: nnx.Rngs) -> nnx.Dropout | None:
    """A Dropout layer, or None for rate 0 (the reference): no RNG state in the model."""
    return nnx.Dropout(rate, rngs=rngs) if rate > 0 else None


def apply_dropout(layer: nnx.Dropout | None, x: jax.Array) -> jax.Array:
    return x if layer is None else layer(x)
