"""Convolution and max pooling tuned for XLA:CPU, the same functions as lax's.

`nnx.Conv(..., conv_general_dilated=conv_general_dilated)` and `max_pool` use them. The
CPU paths are chosen by the platform the program is lowered for (`lax.platform_dependent`),
not by the host's default backend: a program lowered or exported for a GPU (`jax.export`
with platforms=['cuda'], on any host) runs `lax.conv_general_dilated` / `lax.reduce_window`
and their own gradients, as does anything but a plain NHWC x HWIO convolution (no dilation,
one feature group). On CPU they avoid three slow paths of XLA:CPU (jaxlib 0.10.2, 2 AMD
EPYC cores (AVX2), Former-DFER train step; numbers from `python -m former_dfer_jax.benchmark`
and per-layer timings):

* Small maps. When the kernel window holds more taps than the input map has positions
  (a 3x3 kernel on a 2x2 or 1x1 map: layer3 / layer4 at 32-64 px), XLA's algebraic
  simplifier swaps the two operands; the swapped convolution has no fast CPU kernel and
  runs as a naive loop (~0.5 GFLOP/s: 5 s for one 3x3 512->512 conv of 128 2x2 maps, the
  reason 48 px trained 6x slower than 32 px). The same happens to the input gradient of
  a convolution whose output map is that small. Those convolutions run here as patches
  (im2col) times the kernel, a 1x1 convolution that XLA runs as a GEMM and never swaps.
  Kernel taps that only ever read zero padding (a 3x3 kernel on a 1x1 map reads its
  centre only) are dropped first: they add exact zeros, and their gradient is zero.
* Kernel gradients under YNNPACK. JAX differentiates a convolution w.r.t. its kernel
  into a convolution whose window is the whole output-gradient map (28 x 28 in layer1 at
  112 px). XLA:CPU hands convolutions to YNNPACK by default, which runs these at ~4
  GFLOP/s (1 s for one layer1 conv at 112 px, batch 4). XLA's own (Eigen) convolution is
  ~20x faster, and `former_dfer_jax.xla_flags` turns YNNPACK convolutions off; when they
  are on (that flag not set), the kernel gradient runs here as GEMMs of patches chunks
  small enough to stay in cache, g^T @ patches(x) summed over frame chunks.
* Max-pool gradient. XLA:CPU expands select_and_scatter (JAX's rule for the gradient of
  reduce_window max) into a scatter over iotas, ~0.5 s per step at 112 px. `max_pool`
  materialises each window's first maximum and scatters with dense selects and pads.

Every path computes the same float32 sums as lax's, in another order (|diff| ~1e-6).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from former_dfer_jax import xla_flags

Padding = tuple[tuple[int, int], tuple[int, int]]
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def on_cpu(cpu: Callable[..., jax.Array], other: Callable[..., jax.Array], *args) -> jax.Array:
    """`cpu(*args)` where the computation is lowered for (and runs on) the CPU, else
    `other(*args)`. Decided at lowering, not by the default backend at trace time, so that
    exporting for CUDA (`jax.export`, platforms=['cuda']) on a CPU host takes `other`."""
    return lax.platform_dependent(*args, cpu=cpu, default=other)


def platform_branch(eqn, platform: str):
    """The jaxpr that `platform` runs of a `lax.platform_dependent` conditional (such as
    `on_cpu`'s) in a traced program; None for any other equation. For code that walks a
    jaxpr (MAC counts, tests) and should see one platform's program, not every platform's."""
    platforms = eqn.params.get('branches_platforms')
    if eqn.primitive.name != 'cond' or platforms is None:
        return None
    for branch, names in zip(eqn.params['branches'], platforms, strict=True):
        if names is None or platform in names:  # None: the default branch
            return branch.jaxpr
    raise ValueError(f'no branch for platform {platform!r} (branches: {platforms})')


def out_size(size: int, kernel: int, stride: int, padding: tuple[int, int]) -> int:
    """Output length of a convolution or pooling window along one axis."""
    return (size + padding[0] + padding[1] - kernel) // stride + 1


def live_taps(size: int, kernel: int, stride: int, padding: tuple[int, int]) -> tuple[int, int]:
    """[first, last + 1) of the kernel taps along one axis that read at least one input
    element (not padding) for some output position."""
    out = out_size(size, kernel, stride, padding)
    live = [
        tap
        for tap in range(kernel)
        if any(0 <= o * stride + tap - padding[0] < size for o in range(out))
    ]
    if not live:  # every tap reads padding only: keep one, the output is zeros anyway
        return 0, 1
    return live[0], live[-1] + 1


def extract_patches(
    x: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int], padding: Padding
) -> jax.Array:
    """im2col: [N, H, W, C] -> [N, Ho, Wo, kh * kw * C], taps ordered (kh, kw, C) as an
    HWIO kernel flattens. Padding may be negative (crops), as in lax.conv."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = kernel_hw, strides
    ho = out_size(h, kh, sh, padding[0])
    wo = out_size(w, kw, sw, padding[1])
    zero = jnp.zeros((), x.dtype)
    xp = lax.pad(x, zero, ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
    cols = [
        lax.slice(
            xp,
            (0, i, j, 0),
            (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _xla_conv(x, kernel, strides, padding, precision):
    return lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=_NHWC, precision=precision
    )


def _patches_conv(x, kernel, strides, padding, precision):
    """The convolution as patches (im2col) times the kernel: a 1x1 convolution of the
    patches, which XLA runs as a GEMM and never swaps."""
    kh, kw, c, o = kernel.shape
    patches = extract_patches(x, (kh, kw), strides, padding)
    return _xla_conv(
        patches, kernel.reshape(1, 1, kh * kw * c, o), (1, 1), ((0, 0), (0, 0)), precision
    )


def xla_swaps_operands(spatial: Sequence[int], kernel_hw: Sequence[int]) -> bool:
    """Whether XLA's algebraic simplifier would swap a convolution's operands: when the
    kernel window has more taps than the input has positions (see the module doc)."""
    return kernel_hw[0] * kernel_hw[1] > spatial[0] * spatial[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _cpu_conv(x, kernel, strides, padding, precision):
    if xla_swaps_operands(x.shape[1:3], kernel.shape[:2]):
        return _patches_conv(x, kernel, strides, padding, precision)
    return _xla_conv(x, kernel, strides, padding, precision)


def _cpu_conv_fwd(x, kernel, strides, padding, precision):
    return _cpu_conv(x, kernel, strides, padding, precision), (x, kernel)


def _cpu_conv_bwd(strides, padding, precision, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    # Input gradient: XLA's transposed convolution reads g as its input map, so it is
    # swapped (slow) when g's map is smaller than the kernel window.
    if xla_swaps_operands(g.shape[1:3], (kh, kw)):
        # Patch gradients g @ kernel^T, as one dot contracting the kernel's output dim (no
        # transposed copy of the kernel), then the transpose of the patch extraction.
        dpatches = lax.dot_general(
            g, kernel.reshape(-1, kernel.shape[-1]), (((3,), (1,)), ((), ())), precision
        )
        _, vjp = jax.vjp(lambda x: extract_patches(x, (kh, kw), strides, padding), x)
    else:
        dpatches = g
        _, vjp = jax.vjp(lambda x: _xla_conv(x, kernel, strides, padding, precision), x)
    (dx,) = vjp(dpatches)
    # Kernel gradient: XLA's own (Eigen) convolution is fast; YNNPACK's is not.
    if xla_flags.ynn_convolutions_enabled():
        dkernel = kernel_gradient(x, g, (kh, kw), strides, padding, precision)
    else:
        _, vjp = jax.vjp(lambda k: _xla_conv(x, k, strides, padding, precision), kernel)
        (dkernel,) = vjp(g)
    return dx, dkernel.astype(kernel.dtype)


# The kernel gradient's patches are built and consumed a few frames at a time, in chunks of
# about this many bytes, so that they stay in cache (memory bandwidth is the limit on CPU).
PATCH_CHUNK_BYTES = 4 << 20


def kernel_gradient(x, g, kernel_hw, strides, padding, precision=None) -> jax.Array:
    """d(conv)/d(kernel) . g as GEMMs: sum over frame chunks of g^T @ patches(x) -> HWIO.

    g^T @ patches (rather than patches^T @ g) keeps the large operand, the patches, in the
    layout the GEMM reads; only the small g chunk is transposed.
    """
    n, c = x.shape[0], x.shape[-1]
    kh, kw = kernel_hw
    o = g.shape[-1]
    frame_bytes = g.shape[1] * g.shape[2] * kh * kw * c * x.dtype.itemsize
    chunk = max(1, min(n, PATCH_CHUNK_BYTES // max(frame_bytes, 1)))

    def partial(x, g):  # [O, kh * kw * C]
        return lax.dot_general(
            g,
            extract_patches(x, kernel_hw, strides, padding),
            (((0, 1, 2), (0, 1, 2)), ((), ())),
            precision=precision,
            preferred_element_type=jnp.float32,
        )

    steps, tail = divmod(n, chunk)
    total = partial(x[:chunk], g[:chunk])
    if steps > 1:
        body_n = steps * chunk
        xs = x[chunk:body_n].reshape(steps - 1, chunk, *x.shape[1:])
        gs = g[chunk:body_n].reshape(steps - 1, chunk, *g.shape[1:])
        total, _ = lax.scan(lambda acc, xg: (acc + partial(*xg), None), total, (xs, gs))
    if tail:
        total = total + partial(x[n - tail :], g[n - tail :])
    return total.T.reshape(kh, kw, c, o)


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def cpu_conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    precision=None,
) -> jax.Array:
    """NHWC x HWIO convolution with explicit padding, by the CPU-friendly paths above."""
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    # Drop the taps that only read padding (exact zeros): shrink the kernel, shift the
    # padding so every remaining tap reads what it read before.
    (kh, kw) = kernel.shape[:2]
    rows = live_taps(x.shape[1], kh, strides[0], padding[0])
    cols = live_taps(x.shape[2], kw, strides[1], padding[1])
    if rows != (0, kh) or cols != (0, kw):
        out_h = out_size(x.shape[1], kh, strides[0], padding[0])
        out_w = out_size(x.shape[2], kw, strides[1], padding[1])
        kernel = kernel[rows[0] : rows[1], cols[0] : cols[1]]
        padding = tuple(
            _shifted_padding(size, first, last, stride, pad, out)
            for size, (first, last), stride, pad, out in (
                (x.shape[1], rows, strides[0], padding[0], out_h),
                (x.shape[2], cols, strides[1], padding[1], out_w),
            )
        )
    return _cpu_conv(x, kernel, strides, padding, precision)


def _shifted_padding(size, first, last, stride, pad, out) -> tuple[int, int]:
    """Padding for the taps [first, last) alone, keeping the output size `out`."""
    low = pad[0] - first
    high = (out - 1) * stride + (last - first) - size - low
    return low, high


def _is_plain_2d(lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, padding):
    if feature_group_count != 1 or isinstance(padding, str):
        return False
    if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
        return False
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
    return tuple(dimension_numbers) == _NHWC


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    **kwargs,
) -> jax.Array:
    """`lax.conv_general_dilated` with the CPU paths for plain 2-D NHWC convolutions."""
    plain = (
        lhs.ndim == 4
        and batch_group_count == 1
        and preferred_element_type is None
        and not kwargs.get('out_sharding')
        and lhs.dtype == rhs.dtype
        and _is_plain_2d(
            lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, padding
        )
    )
    extra = {}
    if preferred_element_type is not None:
        extra['preferred_element_type'] = preferred_element_type
    plain_lax = functools.partial(
        lax.conv_general_dilated,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        **extra,
        **kwargs,
    )
    if not plain:
        return plain_lax(lhs, rhs)
    cpu = functools.partial(cpu_conv, strides=window_strides, padding=padding, precision=precision)
    return on_cpu(cpu, plain_lax, lhs, rhs)


# ---- Max pooling ----------------------------------------------------------------------------


def _pool_padding(size: int, kernel: int, stride: int, pad: int) -> tuple[int, int, int]:
    """(output size, low, high) padding so that every output's window is in range."""
    out = out_size(size, kernel, stride, (pad, pad))
    return out, pad, (out - 1) * stride + kernel - size - pad


def _reduce_window_max(x, kernel, stride, pad):
    return lax.reduce_window(
        x,
        -jnp.inf,  # a Python scalar: lets JAX use the differentiable max monoid
        lax.max,
        window_dimensions=(1, kernel, kernel, 1),
        window_strides=(1, stride, stride, 1),
        padding=((0, 0), (pad, pad), (pad, pad), (0, 0)),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_cpu(x, kernel, stride, pad):
    return _reduce_window_max(x, kernel, stride, pad)


def _max_pool_cpu_fwd(x, kernel, stride, pad):
    y = _reduce_window_max(x, kernel, stride, pad)
    return y, (x, y)


def _first_max_tap(x, y, kernel, stride, pad):
    """Per window: the tap index (row-major, 0..kernel**2-1) of its first maximum.

    Computed a few frames at a time in a loop: XLA does not fuse across a loop boundary,
    so the result is materialised once instead of being recomputed inside each consumer.
    """
    n, h, w, c = x.shape
    ho, wo = y.shape[1:3]
    _, lo_h, hi_h = _pool_padding(h, kernel, stride, pad)
    _, lo_w, hi_w = _pool_padding(w, kernel, stride, pad)

    def first_tap(x, y):
        pads = ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0))
        xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), pads)
        first = jnp.full(y.shape, kernel * kernel, jnp.int32)
        for t in reversed(range(kernel * kernel)):
            i, j = divmod(t, kernel)
            limit = (x.shape[0], i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c)
            tap = lax.slice(xp, (0, i, j, 0), limit, (1, stride, stride, 1))
            first = jnp.where(tap == y, t, first)
        return first

    chunks = next((d for d in range(2, n + 1) if n % d == 0), 1)
    xs = x.reshape(chunks, n // chunks, h, w, c)
    ys = y.reshape(chunks, n // chunks, ho, wo, c)
    _, first = lax.scan(lambda _, xy: (None, first_tap(*xy)), None, (xs, ys))
    return first.reshape(y.shape)


def _scatter_3x3_s2(first, g, h, w):
    """The pool gradient for kernel 3, stride 2, padding 1, by input-position parity.

    Input row r = 2 * oh + i - 1 gets tap row i of window row oh: even rows tap 1 of
    window r / 2; odd rows tap 2 of window (r - 1) / 2 and tap 0 of window (r + 1) / 2
    (columns alike). Four dense planes, interleaved: no strided scatter."""
    n, ho, wo, c = g.shape
    zero = jnp.zeros((), g.dtype)

    def tap(i, j):
        return jnp.where(first == 3 * i + j, g, zero)

    def next_row(a):  # a[:, oh + 1] at oh, zero past the end
        return lax.pad(a[:, 1:], zero, ((0, 0, 0), (0, 1, 0), (0, 0, 0), (0, 0, 0)))

    def next_col(a):
        return lax.pad(a[:, :, 1:], zero, ((0, 0, 0), (0, 0, 0), (0, 1, 0), (0, 0, 0)))

    def row_taps(i):  # (even columns, odd columns) of the input rows fed by tap row i
        return tap(i, 1), tap(i, 2) + next_col(tap(i, 0))

    even_even, even_odd = row_taps(1)
    (bottom_even, bottom_odd), (top_even, top_odd) = row_taps(2), row_taps(0)
    odd_even = bottom_even + next_row(top_even)
    odd_odd = bottom_odd + next_row(top_odd)
    rows_even = jnp.stack([even_even, even_odd], axis=3)  # [n, ho, wo, 2, c]
    rows_odd = jnp.stack([odd_even, odd_odd], axis=3)
    dx = jnp.stack([rows_even, rows_odd], axis=2).reshape(n, 2 * ho, 2 * wo, c)
    return dx[:, :h, :w]


def _scatter_generic(first, g, h, w, kernel, stride, pad):
    """The pool gradient for any window: one strided pad (a scatter) per tap."""
    n, ho, wo, c = g.shape
    _, lo_h, hi_h = _pool_padding(h, kernel, stride, pad)
    _, lo_w, hi_w = _pool_padding(w, kernel, stride, pad)
    hp, wp = h + lo_h + hi_h, w + lo_w + hi_w
    zero = jnp.zeros((), g.dtype)
    dxp = None
    for i in range(kernel):
        for j in range(kernel):
            part = lax.pad(
                jnp.where(first == i * kernel + j, g, zero),
                zero,
                (
                    (0, 0, 0),
                    (i, hp - i - (ho - 1) * stride - 1, stride - 1),
                    (j, wp - j - (wo - 1) * stride - 1, stride - 1),
                    (0, 0, 0),
                ),
            )
            dxp = part if dxp is None else dxp + part
    return lax.slice(dxp, (0, lo_h, lo_w, 0), (n, lo_h + h, lo_w + w, c))


def _max_pool_cpu_bwd(kernel, stride, pad, residuals, g):
    """Routes each output's gradient to the first maximum of its window (row-major), as
    XLA's select_and_scatter (JAX's own rule) and PyTorch's max_pool2d do. XLA:CPU runs
    select_and_scatter as a scatter over iotas (~0.5 s per train step at 112 px); here it
    is a materialised first-maximum index and dense selects / pads that XLA fuses."""
    x, y = residuals
    h, w = x.shape[1:3]
    first = _first_max_tap(x, y, kernel, stride, pad)
    if (kernel, stride, pad) == (3, 2, 1):
        return (_scatter_3x3_s2(first, g, h, w),)
    return (_scatter_generic(first, g, h, w, kernel, stride, pad),)


_max_pool_cpu.defvjp(_max_pool_cpu_fwd, _max_pool_cpu_bwd)


def max_pool(x: jax.Array, kernel: int, stride: int, pad: int) -> jax.Array:
    """nn.MaxPool2d(kernel, stride, pad) on NHWC: -inf padding, which never wins. The
    gradient goes to the first maximum of each window; on CPU by the fused rule above."""
    return on_cpu(
        lambda x: _max_pool_cpu(x, kernel, stride, pad),
        lambda x: _reduce_window_max(x, kernel, stride, pad),
        x,
    )
