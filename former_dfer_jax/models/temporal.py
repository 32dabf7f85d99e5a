"""Temporal models over the per-frame features [B, T, D] -> one clip vector [B, D'].

The T-Former (the paper's), and the GRU / LSTM of the paper's baselines (Table 1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from former_dfer_jax.models.layers import normal_param, symmetric_uniform
from former_dfer_jax.models.transformer import TransformerEncoder

POOLINGS = ('class_token', 'mean')


class TFormer(nnx.Module):
    """Transformer over the frames. With pooling 'class_token' (the reference) a learnable
    class token is prepended and its final state is the output; with 'mean' the output
    is the mean of the frame tokens. No final LayerNorm."""

    def __init__(
        self,
        dim: int,
        num_frames: int,
        depth: int,
        num_heads: int,
        head_dim: int,
        mlp_dim: int,
        dropout_rate: float = 0.0,
        position_embedding: bool = True,
        pooling: str = 'class_token',
        *,
        dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        if pooling not in POOLINGS:
            raise ValueError(f'T-Former pooling {pooling!r}: expected one of {POOLINGS}')
        self.pooling = pooling
        use_cls = pooling == 'class_token'
        self.cls_token = normal_param(rngs, (1, 1, dim)) if use_cls else None
        num_tokens = num_frames + int(use_cls)
        self.pos_embedding = (
            normal_param(rngs, (1, num_tokens, dim)) if position_embedding else None
        )
        self.encoder = TransformerEncoder(
            dim, depth, num_heads, head_dim, mlp_dim, dropout_rate, dtype=dtype, rngs=rngs
        )

    def tokens(self, x: jax.Array) -> jax.Array:
        """The encoder's input: [class token,] frame features + position embedding."""
        b, _, d = x.shape
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, d))
            x = jnp.concatenate([cls, x], axis=1)
        if self.pos_embedding is not None:
            x = x + self.pos_embedding[...].astype(x.dtype)
        return x

    def attention_maps(self, x: jax.Array) -> jax.Array:
        """Attention weights of every layer on frame features `x` [B, T, D]: float32
        [depth, B, heads, N, N], token 0 the class token when there is one."""
        return self.encoder.attention_maps(self.tokens(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.encoder(self.tokens(x))
        return x[:, 0] if self.cls_token is not None else jnp.mean(x, axis=1)


class _Recurrent(nnx.Module):
    """A one-layer recurrent net with PyTorch's gate layout and init (all weights and
    both biases U(-1/sqrt(H), 1/sqrt(H))); returns the last hidden state.

    The input projection of all frames is one matmul; only the recurrent part runs in
    `lax.scan` over time. Kernels are stored [in, gates * H] (PyTorch: [gates * H, in]).
    """

    num_gates: int

    def __init__(self, in_features: int, hidden_size: int, *, dtype: DTypeLike, rngs: nnx.Rngs):
        self.hidden_size = hidden_size
        self.dtype = dtype
        init = symmetric_uniform(1.0 / math.sqrt(hidden_size))
        width = self.num_gates * hidden_size
        self.input_kernel = nnx.Param(init(rngs.params(), (in_features, width)))
        self.hidden_kernel = nnx.Param(init(rngs.params(), (hidden_size, width)))
        self.input_bias = nnx.Param(init(rngs.params(), (width,)))
        self.hidden_bias = nnx.Param(init(rngs.params(), (width,)))

    def _cell(self, carry, gates_x, w_h, b_h):
        raise NotImplementedError

    def _initial_carry(self, batch: int):
        raise NotImplementedError

    def _output(self, carry) -> jax.Array:
        raise NotImplementedError

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self.dtype
        gates_x = (
            jnp.dot(
                x.astype(dt),
                self.input_kernel[...].astype(dt),
                preferred_element_type=jnp.float32,
            )
            + self.input_bias[...]
        )
        w_h = self.hidden_kernel[...].astype(dt)
        b_h = self.hidden_bias[...]

        def step(carry, g):
            return self._cell(carry, g, w_h, b_h), None

        carry, _ = lax.scan(step, self._initial_carry(x.shape[0]), jnp.swapaxes(gates_x, 0, 1))
        return self._output(carry).astype(dt)

    def _hidden_gates(self, h: jax.Array, w_h: jax.Array, b_h: jax.Array) -> jax.Array:
        return jnp.dot(h.astype(w_h.dtype), w_h, preferred_element_type=jnp.float32) + b_h


class GRU(_Recurrent):
    """torch.nn.GRU (one layer): gates [r | z | n];
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h."""

    num_gates = 3

    def _initial_carry(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.hidden_size), jnp.float32)

    def _output(self, h: jax.Array) -> jax.Array:
        return h

    def _cell(self, h, gates_x, w_h, b_h):
        gates_h = self._hidden_gates(h, w_h, b_h)
        xr, xz, xn = jnp.split(gates_x, 3, axis=-1)
        hr, hz, hn = jnp.split(gates_h, 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        return (1.0 - z) * n + z * h


class LSTM(_Recurrent):
    """torch.nn.LSTM (one layer): gates [i | f | g | o]; c' = f c + i g, h' = o tanh(c')."""

    num_gates = 4

    def _initial_carry(self, batch: int) -> tuple[jax.Array, jax.Array]:
        zeros = jnp.zeros((batch, self.hidden_size), jnp.float32)
        return zeros, zeros

    def _output(self, carry: tuple[jax.Array, jax.Array]) -> jax.Array:
        return carry[0]

    def _cell(self, carry, gates_x, w_h, b_h):
        h, c = carry
        gates = gates_x + self._hidden_gates(h, w_h, b_h)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, c
