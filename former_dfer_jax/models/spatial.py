"""The per-frame CS-Former: ResNet trunk with the S-Former inside, one vector per frame."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from former_dfer_jax.models.layers import normal_param
from former_dfer_jax.models.resnet import STAGE_NAMES, STAGE_WIDTHS, ResNet
from former_dfer_jax.models.transformer import TransformerEncoder

# Called as tap(name, value) at each named point of the forward pass; returns the value to
# carry on with (the same one to observe, value + delta to take a gradient there).
Tap = Callable[[str, jax.Array], jax.Array]
S_FORMER_POINT = 's_former'  # the tap point of the S-Former's output map


def no_tap(name: str, value: jax.Array) -> jax.Array:
    """The default tap: the plain forward pass."""
    del name
    return value


class SFormer(nnx.Module):
    """Transformer over the tokens of one feature map: [N, h, w, c] -> [N, h, w, c].

    The h * w positions become tokens (row-major, as the reference flattens (h w)),
    plus a learnable position embedding; no class token.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        depth: int,
        num_heads: int,
        head_dim: int,
        mlp_dim: int,
        dropout_rate: float = 0.0,
        position_embedding: bool = True,
        *,
        dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        self.pos_embedding = (
            normal_param(rngs, (1, num_tokens, dim)) if position_embedding else None
        )
        self.encoder = TransformerEncoder(
            dim, depth, num_heads, head_dim, mlp_dim, dropout_rate, dtype=dtype, rngs=rngs
        )

    def __call__(self, fmap: jax.Array) -> jax.Array:
        n, h, w, c = fmap.shape
        x = fmap.reshape(n, h * w, c)
        if self.pos_embedding is not None:
            x = x + self.pos_embedding[...].astype(x.dtype)
        return self.encoder(x).reshape(n, h, w, c)


class CSFormer(nnx.Module):
    """Frames [N, H, W, 3] -> features [N, 512]: ResNet stages, the S-Former after
    `stage` ('layer3' as the reference, or 'layer4'), then global average pooling."""

    def __init__(
        self,
        *,
        resnet_depth: int = 18,
        s_former: SFormer | None = None,
        stage: str = 'layer3',
        dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if stage not in STAGE_NAMES:
            raise ValueError(f'S-Former stage {stage!r}: expected one of {STAGE_NAMES}')
        self.trunk = ResNet(resnet_depth, dtype=dtype, rngs=rngs)
        self.s_former = s_former
        self.stage = stage

    @staticmethod
    def stage_width(stage: str) -> int:
        """Channels of the feature map after `stage`, the S-Former's token width there."""
        return STAGE_WIDTHS[STAGE_NAMES.index(stage)]

    def __call__(self, frames: jax.Array, tap: Tap = no_tap) -> jax.Array:
        """`tap` sees each stage's output map ('layer1'..'layer4', NHWC) and the
        S-Former's ('s_former', after the stage it follows), for explanations."""
        x = self.trunk.stem(frames)
        for name in STAGE_NAMES:
            x = tap(name, self.trunk.stage(name, x))
            if self.s_former is not None and name == self.stage:
                x = tap(S_FORMER_POINT, self.s_former(x))
        return jnp.mean(x, axis=(1, 2))
