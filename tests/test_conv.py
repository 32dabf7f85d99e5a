"""The CPU convolution and max-pool paths (models/conv.py) are lax's functions: values
and both gradients agree with lax.conv_general_dilated / reduce_window on the shapes the
model uses, including the small maps, the dropped padding-only taps and the chunked
kernel gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from former_dfer_jax.models import conv

DN = ('NHWC', 'HWIO', 'NHWC')


def _lax_conv(x, w, stride, pad):
    padding = ((pad, pad), (pad, pad))
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)


def _new_conv(x, w, stride, pad):
    return conv.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=DN
    )


@pytest.mark.parametrize(
    ('size', 'kernel', 'stride', 'pad'),
    [
        (1, 3, 1, 1),  # a 1x1 map: only the centre tap reads data
        (2, 3, 1, 1),  # smaller than the window: XLA would swap the operands
        (2, 3, 2, 1),
        (3, 3, 2, 1),
        (4, 3, 1, 1),
        (7, 3, 2, 1),
        (9, 7, 2, 3),  # the stem
        (2, 7, 2, 3),
        (5, 1, 2, 0),  # the downsample projection
        (1, 1, 1, 0),
        (8, 3, 1, 1),
    ],
)
@pytest.mark.parametrize('ynn', [True, False])
def test_conv_matches_lax(size, kernel, stride, pad, ynn, monkeypatch):
    # Both kernel-gradient paths: chunked patch GEMMs (YNNPACK convolutions on) and XLA's.
    monkeypatch.setattr(conv.xla_flags, 'ynn_convolutions_enabled', lambda: ynn)
    rng = np.random.default_rng(size * 100 + kernel * 10 + stride)
    x = jnp.asarray(rng.normal(size=(5, size, size, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 4, 6)), jnp.float32)
    y0, vjp0 = jax.vjp(lambda x, w: _lax_conv(x, w, stride, pad), x, w)
    y1, vjp1 = jax.vjp(jax.jit(lambda x, w: _new_conv(x, w, stride, pad)), x, w)
    g = jnp.asarray(rng.normal(size=y0.shape), jnp.float32)
    # Measured max abs error over these cases (values up to ~48): 1.4e-6 for the outputs,
    # 2.3e-5 for the gradients (summed over up to 5 x 8 x 8 positions); ~7x and ~2x.
    np.testing.assert_allclose(y1, y0, rtol=0, atol=1e-5)
    for got, want in zip(vjp1(g), vjp0(g), strict=True):
        np.testing.assert_allclose(got, want, atol=5e-5)


def test_kernel_gradient_in_chunks_with_a_remainder(monkeypatch):
    # 7 frames in chunks of 2: three loop steps and a tail of one frame.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(7, 6, 6, 3)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(7, 6, 6, 5)), jnp.float32)
    frame_bytes = 6 * 6 * 9 * 3 * 4
    monkeypatch.setattr(conv, 'PATCH_CHUNK_BYTES', 2 * frame_bytes)
    got = conv.kernel_gradient(x, g, (3, 3), (1, 1), ((1, 1), (1, 1)))
    _, vjp = jax.vjp(lambda w: _lax_conv(x, w, 1, 1), jnp.zeros((3, 3, 3, 5)))
    np.testing.assert_allclose(got, vjp(g)[0], atol=5e-5)  # measured 1.7e-5 (values < 39)


def test_live_taps():
    assert conv.live_taps(1, 3, 1, (1, 1)) == (1, 2)  # 1x1 map: the centre only
    assert conv.live_taps(2, 3, 2, (1, 1)) == (1, 3)  # one output at -1..1
    assert conv.live_taps(7, 3, 2, (1, 1)) == (0, 3)
    assert conv.live_taps(2, 7, 2, (3, 3)) == (3, 5)


@pytest.mark.parametrize(
    ('shape', 'window'),
    [
        ((2, 9, 9, 3), (3, 2, 1)),  # odd map
        ((3, 16, 16, 5), (3, 2, 1)),
        ((1, 1, 1, 2), (3, 2, 1)),
        ((2, 2, 3, 2), (3, 2, 1)),
        ((2, 8, 8, 3), (2, 2, 0)),  # other windows: the generic path
        ((2, 7, 7, 3), (3, 1, 1)),
    ],
)
@pytest.mark.parametrize('ties', [False, True])
def test_max_pool_matches_reduce_window(shape, window, ties):
    """Same values and the same gradient, which goes to the first maximum of each
    window (row-major) when several tie, e.g. the zeros after a ReLU."""
    kernel, stride, pad = window
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape).astype(np.float32)
    if ties:
        x = np.maximum(np.round(x * 2) / 2, 0)

    def reference(x):
        return lax.reduce_window(
            x,
            -jnp.inf,
            lax.max,
            (1, kernel, kernel, 1),
            (1, stride, stride, 1),
            ((0, 0), (pad, pad), (pad, pad), (0, 0)),
        )

    y0, vjp0 = jax.vjp(reference, jnp.asarray(x))
    y1, vjp1 = jax.vjp(jax.jit(lambda x: conv.max_pool(x, kernel, stride, pad)), jnp.asarray(x))
    g = jnp.asarray(rng.normal(size=y0.shape), jnp.float32)
    np.testing.assert_array_equal(y1, y0)
    # Measured 4.8e-7 (gradients < 5.4), ~2x below the limit.
    np.testing.assert_allclose(vjp1(g)[0], vjp0(g)[0], atol=1e-6)


def test_the_cpu_paths_are_chosen_by_the_lowering_platform():
    """One traced program holds both paths; `platform_branch` names what each platform runs:
    the CPU's custom-VJP convolution, anywhere else the plain lax one."""
    x = jnp.zeros((2, 2, 2, 4))  # a map smaller than the window: the CPU takes patches
    w = jnp.zeros((3, 3, 4, 6))
    jaxpr = jax.make_jaxpr(lambda x, w: _new_conv(x, w, 1, 1))(x, w).jaxpr
    (cond,) = [e for e in jaxpr.eqns if conv.platform_branch(e, 'cpu') is not None]
    cpu = [e.primitive.name for e in conv.platform_branch(cond, 'cpu').eqns]
    other = conv.platform_branch(cond, 'cuda').eqns
    assert 'custom_vjp_call' in cpu
    assert [e.primitive.name for e in other] == ['conv_general_dilated']
    assert other[0].invars[1].aval.shape == (3, 3, 4, 6)
    assert conv.platform_branch(other[0], 'cpu') is None  # not a platform conditional
