"""The ResNet trunk: PyTorch padding, BatchNorm semantics, shapes, init, sizes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from former_dfer_jax.models import resnet
from former_dfer_jax.models.former_dfer import count_parameters


def test_stride_2_convolutions_pad_symmetrically_like_pytorch():
    # A 3x3 stride-2 conv whose kernel picks the top-left tap: with PyTorch's padding 1
    # on both sides, output (i, j) reads input (2i - 1, 2j - 1); Flax's 'SAME' would pad
    # only after and read (2i, 2j).
    conv = resnet.conv(1, 1, 3, 2, 1, dtype=jnp.float32, rngs=nnx.Rngs(0))
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[0, 0] = 1.0
    conv.kernel[...] = jnp.asarray(kernel)
    x = jnp.arange(1.0, 37.0).reshape(1, 6, 6, 1)
    y = conv(x)[0, :, :, 0]
    expected = np.zeros((3, 3), np.float32)
    expected[1:, 1:] = np.asarray(x)[0, 1:5:2, 1:5:2, 0]
    np.testing.assert_array_equal(y, expected)


def test_max_pool_padding_never_wins():
    x = -jnp.arange(1.0, 17.0).reshape(1, 4, 4, 1)  # all negative: zero padding would win
    y = resnet.max_pool_3x3_s2(x)[0, :, :, 0]
    # Windows centred on (0, 0), (0, 2), (2, 0), (2, 2) over rows/cols -1..1 and 1..3.
    np.testing.assert_array_equal(y, [[-1.0, -2.0], [-5.0, -6.0]])


def _stage_shapes(x):
    trunk = resnet.ResNet(18, rngs=nnx.Rngs(0))
    shapes = [trunk.stem(x)]
    for name in resnet.STAGE_NAMES:
        shapes.append(trunk.stage(name, shapes[-1]))
    return shapes


# Map sides after the stem (conv1 7x7/2 pad 3, then max-pool 3x3/2 pad 1) and layers 1-4
# (layer1 stride 1; layers 2-4 open with a 3x3/2 pad 1 conv), worked by hand with
# out = floor((in + 2 pad - k) / stride) + 1, i.e. floor((in - 1) / 2) + 1 for all three
# stride-2 windows:
#   112: conv1 floor(111/2)+1 = 56, pool floor(55/2)+1 = 28, 28, floor(27/2)+1 = 14,
#        floor(13/2)+1 = 7, floor(6/2)+1 = 4 (the reference's 7x7 tokens and 4x4 layer4)
#   100: conv1 floor(99/2)+1 = 50, pool floor(49/2)+1 = 25, 25, floor(24/2)+1 = 13,
#        floor(12/2)+1 = 7, floor(6/2)+1 = 4
#    48: conv1 floor(47/2)+1 = 24, pool floor(23/2)+1 = 12, 12, floor(11/2)+1 = 6,
#        floor(5/2)+1 = 3, floor(2/2)+1 = 2
#    32: conv1 floor(31/2)+1 = 16, pool floor(15/2)+1 = 8, 8, floor(7/2)+1 = 4,
#        floor(3/2)+1 = 2, floor(1/2)+1 = 1
MAP_SIDES = {  # image size -> (stem, layer1, layer2, layer3, layer4)
    112: (28, 28, 14, 7, 4),
    100: (25, 25, 13, 7, 4),
    48: (12, 12, 6, 3, 2),
    32: (8, 8, 4, 2, 1),
}


@pytest.mark.parametrize('image_size', sorted(MAP_SIDES))
def test_feature_map_sizes_are_the_hand_computed_ones(image_size):
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    shapes = [y.shape for y in jax.eval_shape(_stage_shapes, x)]
    sides = MAP_SIDES[image_size]
    widths = (64, *resnet.STAGE_WIDTHS)
    assert shapes == [(1, side, side, width) for side, width in zip(sides, widths, strict=True)]
    names = ('stem', *resnet.STAGE_NAMES)
    assert tuple(resnet.feature_map_size(image_size, name) for name in names) == sides


@pytest.mark.parametrize(
    'depth, blocks, params', [(18, (2, 2, 2, 2), 11_176_512), (34, (3, 4, 6, 3), 21_284_672)]
)
def test_trunk_depths(depth, blocks, params):
    # torchvision's resnet18 / resnet34 without the 1000-way fc (513,000 parameters).
    trunk = nnx.eval_shape(lambda: resnet.ResNet(depth, rngs=nnx.Rngs(0)))
    assert tuple(len(getattr(trunk, n)) for n in resnet.STAGE_NAMES) == blocks
    assert count_parameters(trunk) == params
    # Projection shortcuts exactly on the first block of layers 2-4.
    has_projection = [
        [block.downsample is not None for block in getattr(trunk, n)] for n in resnet.STAGE_NAMES
    ]
    assert has_projection == [[i == 0 and s > 0 for i in range(b)] for s, b in enumerate(blocks)]


def test_unknown_depth_is_refused():
    with pytest.raises(ValueError, match='resnet depth 50'):
        resnet.ResNet(50, rngs=nnx.Rngs(0))


def test_conv_init_is_kaiming_normal_fan_out_and_bn_starts_at_identity():
    conv = resnet.conv(256, 512, 3, 1, 1, dtype=jnp.float32, rngs=nnx.Rngs(0))
    kernel = np.asarray(conv.kernel[...])
    assert kernel.shape == (3, 3, 256, 512)  # HWIO
    # 1.18M draws: the sample std's own spread is ~0.07% (1 / sqrt(2 n)); measured 0.04%
    # off, and 0.3% is ~4 sigma.
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (512 * 9)), rtol=0.003)
    assert abs(kernel.mean()) < 1e-4
    assert np.abs(kernel).max() > 4 * kernel.std()  # a normal, not a truncated normal
    bn = resnet.BatchNorm(8, dtype=jnp.float32, rngs=nnx.Rngs(0))
    for name, value in (('scale', 1), ('bias', 0), ('mean', 0), ('var', 1)):
        np.testing.assert_array_equal(getattr(bn, name)[...], np.full(8, value, np.float32))


def test_batch_norm_matches_torch_in_training_and_eval():
    torch = pytest.importorskip('torch', reason='the PyTorch oracle needs torch')
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (4, 5, 6, 8)).astype(np.float32)  # NHWC
    bn = resnet.BatchNorm(8, dtype=jnp.float32, rngs=nnx.Rngs(0))
    scale, bias = rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.2, 8)
    bn.scale[...] = jnp.asarray(scale, jnp.float32)
    bn.bias[...] = jnp.asarray(bias, jnp.float32)
    ref = torch.nn.BatchNorm2d(8)  # eps 1e-5, momentum 0.1
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(scale))
        ref.bias.copy_(torch.tensor(bias))
    x_torch = torch.tensor(x.transpose(0, 3, 1, 2))

    # Measured against torch: outputs (|y| < 4.6) 1.4e-6 in training and 7.2e-7 in eval;
    # running mean and variance 3.8e-7 and 9.1e-7 relative, on AMD EPYC (AVX-512). The
    # limits are ~7-14x those: AVX2 machines reduce in another order (narrower vectors),
    # and these one-pass statistics cancel, so their rounding moves more than the outputs'.
    for _ in range(2):  # training: batch statistics, running averages updated
        y = bn(jnp.asarray(x))
        y_ref = ref(x_torch).detach().numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], ref.running_mean.numpy(), rtol=5e-6)
    np.testing.assert_allclose(bn.var[...], ref.running_var.numpy(), rtol=1e-5)  # unbiased

    bn.eval()
    ref.eval()
    x2 = x[:1] * 0.5
    y = bn(jnp.asarray(x2))
    y_ref = ref(torch.tensor(x2.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-5)
