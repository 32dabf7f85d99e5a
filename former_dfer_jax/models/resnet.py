"""The ResNet trunk (BasicBlock, ResNet-18 / ResNet-34) in NHWC with PyTorch semantics.

Convolutions pad explicitly and symmetrically (PyTorch's `padding=k // 2`): Flax's 'SAME'
pads stride-2 convolutions asymmetrically and would shift every feature map.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from former_dfer_jax.models import conv as conv_ops
from former_dfer_jax.models.layers import KAIMING_NORMAL_FAN_OUT

STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # BasicBlocks per stage
STAGE_NAMES = ('layer1', 'layer2', 'layer3', 'layer4')
STAGE_WIDTHS = (64, 128, 256, 512)
BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_DECAY = 0.9  # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch


class BatchNorm(nnx.BatchNorm):
    """BatchNorm over the last (channel) axis with torch.nn.BatchNorm2d's training rule.

    Normalises with the biased batch variance but, as PyTorch does, updates the running
    variance with the unbiased one (n / (n - 1)). Statistics and the affine transform
    are computed in float32 whatever the compute dtype; the output has the input's dtype.
    `model.train()` / `model.eval()` toggle `use_running_average` as for nnx.BatchNorm.
    """

    def __init__(self, num_features: int, *, dtype: DTypeLike, rngs: nnx.Rngs):
        super().__init__(
            num_features,
            use_running_average=False,
            momentum=BATCH_NORM_DECAY,
            epsilon=BATCH_NORM_EPSILON,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            # One pass over the activations (E[x^2] - E[x]^2): these reductions are
            # memory-bound on CPU, and post-conv activations are near zero-mean.
            mean = jnp.mean(xf, axes)
            var = jnp.maximum(jnp.mean(jnp.square(xf), axes) - jnp.square(mean), 0.0)
            n = x.size // x.shape[-1]
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * lax.stop_gradient(mean)
            self.var[...] = m * self.var[...] + (1 - m) * lax.stop_gradient(unbiased)
        # Folded into one multiply-add per element.
        mul = self.scale[...] * lax.rsqrt(var + self.epsilon)
        add = self.bias[...] - mean * mul
        return (x.astype(jnp.float32) * mul + add).astype(x.dtype)


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int,
    padding: int,
    *,
    dtype: DTypeLike,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A bias-free NHWC convolution with symmetric explicit padding, kaiming-normal init.

    On CPU it runs through `models.conv` (see there); elsewhere it is plain lax.
    """
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=stride,
        padding=((padding, padding), (padding, padding)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=KAIMING_NORMAL_FAN_OUT,
        # lax.conv_general_dilated, with faster paths on XLA:CPU (same results).
        conv_general_dilated=conv_ops.conv_general_dilated,
        rngs=rngs,
    )


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """nn.MaxPool2d(3, stride=2, padding=1): the padding never wins (it is -inf)."""
    return conv_ops.max_pool(x, 3, 2, 1)


def feature_map_size(image_size: int, stage: str) -> int:
    """Side of the square feature map after `stage` ('stem', 'layer1'..'layer4')."""
    size = conv_ops.out_size(image_size, 7, 2, (3, 3))  # conv1
    size = conv_ops.out_size(size, 3, 2, (1, 1))  # max-pool
    if stage == 'stem':
        return size
    for index, name in enumerate(STAGE_NAMES):
        if index > 0:
            size = conv_ops.out_size(size, 3, 2, (1, 1))  # the stage's first conv, stride 2
        if name == stage:
            return size
    raise ValueError(f'unknown stage {stage!r}; expected stem or one of {STAGE_NAMES}')


class Downsample(nnx.Module):
    """The shortcut projection: 1x1 conv (with the block's stride) + BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, dtype, rngs):
        self.conv = conv(in_channels, out_channels, 1, stride, 0, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm(out_channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """Two 3x3 conv-BN layers with an identity (or projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, dtype: DTypeLike, rngs):
        self.conv1 = conv(in_channels, out_channels, 3, stride, 1, dtype=dtype, rngs=rngs)
        self.bn1 = BatchNorm(out_channels, dtype=dtype, rngs=rngs)
        self.conv2 = conv(out_channels, out_channels, 3, 1, 1, dtype=dtype, rngs=rngs)
        self.bn2 = BatchNorm(out_channels, dtype=dtype, rngs=rngs)
        needs_projection = stride != 1 or in_channels != out_channels
        self.downsample = (
            Downsample(in_channels, out_channels, stride, dtype=dtype, rngs=rngs)
            if needs_projection
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return nnx.relu(y + shortcut)


class ResNet(nnx.Module):
    """The BasicBlock ResNet trunk without its classifier: NHWC frames -> feature maps.

    Run it whole (`__call__`, the layer4 map) or stage by stage (`stem`, `stage`) so
    that an S-Former can sit between two stages.
    """

    def __init__(self, depth: int = 18, *, dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs):
        if depth not in STAGE_SIZES:
            raise ValueError(f'resnet depth {depth}: expected one of {sorted(STAGE_SIZES)}')
        self.conv1 = conv(3, 64, 7, 2, 3, dtype=dtype, rngs=rngs)
        self.bn1 = BatchNorm(64, dtype=dtype, rngs=rngs)
        sizes = STAGE_SIZES[depth]
        self.layer1 = self._stage(64, 64, sizes[0], 1, dtype=dtype, rngs=rngs)
        self.layer2 = self._stage(64, 128, sizes[1], 2, dtype=dtype, rngs=rngs)
        self.layer3 = self._stage(128, 256, sizes[2], 2, dtype=dtype, rngs=rngs)
        self.layer4 = self._stage(256, 512, sizes[3], 2, dtype=dtype, rngs=rngs)

    @staticmethod
    def _stage(in_channels, out_channels, num_blocks, stride, *, dtype, rngs) -> nnx.List:
        return nnx.List(
            [
                BasicBlock(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    stride if i == 0 else 1,
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(num_blocks)
            ]
        )

    def stem(self, x: jax.Array) -> jax.Array:
        """conv1 7x7/2 -> BN -> ReLU -> max-pool 3x3/2."""
        return max_pool_3x3_s2(nnx.relu(self.bn1(self.conv1(x))))

    def stage(self, name: str, x: jax.Array) -> jax.Array:
        """Runs the residual stage `name` ('layer1'..'layer4')."""
        if name not in STAGE_NAMES:
            raise ValueError(f'unknown stage {name!r}; expected one of {STAGE_NAMES}')
        for block in getattr(self, name):
            x = block(x)
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem(x)
        for name in STAGE_NAMES:
            x = self.stage(name, x)
        return x
