"""The pre-norm transformer encoder shared by the S-Former and the T-Former.

    x = x + Wo * MHSA(LN(x));  x = x + MLP(LN(x))

with a bias-free qkv projection split as [q | k | v], heads outer within each part.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from former_dfer_jax.models.layers import apply_dropout, dropout, layer_norm, linear


class Attention(nnx.Module):
    """Multi-head self-attention, scale head_dim ** -0.5, no mask."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        dropout_rate: float = 0.0,
        *,
        dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.qkv = linear(dim, 3 * inner, use_bias=False, dtype=dtype, rngs=rngs)
        # As the reference: a single head as wide as the input needs no output projection.
        project_out = not (num_heads == 1 and head_dim == dim)
        self.out = linear(inner, dim, dtype=dtype, rngs=rngs) if project_out else None
        self.dropout = dropout(dropout_rate, rngs=rngs) if project_out else None

    def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        b, n, _ = x.shape
        # [b, n, 3 * h * d] -> 3 x [b, n, h, d]: [q | k | v] outer, heads outer within each.
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def _weights(self, q: jax.Array, k: jax.Array) -> jax.Array:
        logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) * (self.head_dim**-0.5)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    def attention_weights(self, x: jax.Array) -> jax.Array:
        """The float32 attention weights [b, heads, queries, keys] (rows sum to 1)."""
        q, k, _ = self._qkv(x)
        return self._weights(q, k)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, _ = x.shape
        q, k, v = self._qkv(x)
        weights = self._weights(q, k).astype(v.dtype)
        out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, n, -1)
        if self.out is None:
            return out
        return apply_dropout(self.dropout, self.out(out))


class FeedForward(nnx.Module):
    """Linear -> GELU (tanh approximation, as the reference) -> Linear."""

    def __init__(
        self, dim: int, hidden_dim: int, dropout_rate: float = 0.0, *, dtype, rngs: nnx.Rngs
    ):
        self.fc1 = linear(dim, hidden_dim, dtype=dtype, rngs=rngs)
        self.fc2 = linear(hidden_dim, dim, dtype=dtype, rngs=rngs)
        self.dropout1 = dropout(dropout_rate, rngs=rngs)
        self.dropout2 = dropout(dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = apply_dropout(self.dropout1, jax.nn.gelu(self.fc1(x), approximate=True))
        return apply_dropout(self.dropout2, self.fc2(x))


class EncoderBlock(nnx.Module):
    """One pre-norm encoder layer: attention and feed-forward, each with a residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        mlp_dim: int,
        dropout_rate: float = 0.0,
        *,
        dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        self.attn_norm = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.attn = Attention(dim, num_heads, head_dim, dropout_rate, dtype=dtype, rngs=rngs)
        self.mlp_norm = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.mlp = FeedForward(dim, mlp_dim, dropout_rate, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TransformerEncoder(nnx.Module):
    """`depth` encoder blocks, no final LayerNorm: [B, N, dim] -> [B, N, dim]."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        head_dim: int,
        mlp_dim: int,
        dropout_rate: float = 0.0,
        *,
        dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        self.layers = nnx.List(
            [
                EncoderBlock(
                    dim, num_heads, head_dim, mlp_dim, dropout_rate, dtype=dtype, rngs=rngs
                )
                for _ in range(depth)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        return x

    def attention_maps(self, x: jax.Array) -> jax.Array:
        """Every layer's attention weights on input `x`: float32 [depth, B, heads, N, N]."""
        maps = []
        for layer in self.layers:
            maps.append(layer.attn.attention_weights(layer.attn_norm(x)))
            x = layer(x)
        return jnp.stack(maps)
