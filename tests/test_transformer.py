"""The encoder: attention layout ([q | k | v], heads outer), pre-norm block, init."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from former_dfer_jax.models import layers
from former_dfer_jax.models.former_dfer import count_parameters
from former_dfer_jax.models.transformer import Attention, EncoderBlock, TransformerEncoder


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_splits_qkv_as_q_k_v_with_heads_outer():
    heads, head_dim, dim, n = 3, 4, 10, 5
    attn = Attention(dim, heads, head_dim, dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, n, dim)).astype(np.float32)
    w = np.asarray(attn.qkv.kernel[...])  # [dim, 3 * heads * head_dim]
    assert w.shape == (dim, 3 * heads * head_dim) and attn.qkv.bias is None

    inner = heads * head_dim
    outs = []
    for h in range(heads):  # q = x @ W[:, :inner], head h = columns h*d:(h+1)*d
        cols = slice(h * head_dim, (h + 1) * head_dim)
        q = x @ w[:, :inner][:, cols]
        k = x @ w[:, inner : 2 * inner][:, cols]
        v = x @ w[:, 2 * inner :][:, cols]
        weights = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(head_dim))
        outs.append(weights @ v)
    expected = np.concatenate(outs, -1) @ np.asarray(attn.out.kernel[...]) + np.asarray(
        attn.out.bias[...]
    )
    # Measured max abs error 6.0e-8 against this float32 numpy oracle (|out| < 0.42);
    # 5e-7 is ~8x.
    np.testing.assert_allclose(nnx.jit(attn)(jnp.asarray(x)), expected, rtol=0, atol=5e-7)


def test_single_head_as_wide_as_the_input_has_no_output_projection():
    # As the reference's `project_out`.
    def build(heads, head_dim):
        return nnx.eval_shape(lambda: Attention(8, heads, head_dim, dtype=jnp.float32,
                                                rngs=nnx.Rngs(0)))  # fmt: skip

    assert build(1, 8).out is None
    assert build(2, 8).out is not None
    assert build(1, 4).out is not None


def test_encoder_block_is_pre_norm_with_tanh_gelu():
    dim = 6
    block = EncoderBlock(dim, 2, 3, 12, dtype=jnp.float32, rngs=nnx.Rngs(1))
    x = np.random.default_rng(1).normal(size=(1, 4, dim)).astype(np.float32)

    def layer_norm(v):
        mean, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mean) / np.sqrt(var + 1e-5)  # scale 1, bias 0 at init

    def gelu_tanh(v):
        return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))

    got, attn = nnx.jit(lambda b, v, n: (b(v), b.attn(n)))(
        block, jnp.asarray(x), jnp.asarray(layer_norm(x))
    )
    h = x + np.asarray(attn)
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    hidden = gelu_tanh(layer_norm(h) @ np.asarray(fc1.kernel[...]) + np.asarray(fc1.bias[...]))
    expected = h + hidden @ np.asarray(fc2.kernel[...]) + np.asarray(fc2.bias[...])
    # Measured max abs error 1.5e-7 (|out| < 2.1); 1e-6 is ~7x.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_encoder_parameter_counts():
    # Per layer: 2 LayerNorms + qkv (no bias) + out + MLP. The reference's S-Former
    # (256, 8x32, MLP 512) and T-Former (512, 8x64, MLP 1024) layers:
    s = nnx.eval_shape(lambda: TransformerEncoder(256, 1, 8, 32, 512, rngs=nnx.Rngs(0),
                                                  dtype=jnp.float32))  # fmt: skip
    t = nnx.eval_shape(lambda: TransformerEncoder(512, 3, 8, 64, 1024, rngs=nnx.Rngs(0),
                                                  dtype=jnp.float32))  # fmt: skip
    assert count_parameters(s) == 538_880 - 49 * 256
    assert count_parameters(t) == 6_312_960 - 18 * 512


def test_linear_and_layer_norm_init_as_pytorch_defaults():
    fan_in = 1024
    dense = layers.linear(fan_in, 2048, dtype=jnp.float32, rngs=nnx.Rngs(0))
    bound = 1 / math.sqrt(fan_in)
    kernel, bias = np.asarray(dense.kernel[...]), np.asarray(dense.bias[...])
    for values in (kernel, bias):  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.99 * bound
    # 2.1M uniform draws: the sample std's own spread is ~0.03%; measured 0.034% off, and
    # 0.2% is ~6 sigma.
    np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=0.002)
    norm = layers.layer_norm(16, dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert norm.epsilon == 1e-5
    np.testing.assert_array_equal(norm.scale[...], np.ones(16, np.float32))
    np.testing.assert_array_equal(norm.bias[...], np.zeros(16, np.float32))


def test_normal_params_are_standard_normal():
    values = np.asarray(layers.normal_param(nnx.Rngs(0), (1, 49, 256))[...])
    # 12,544 draws: the sample mean's spread is 0.009 and the std's 0.006; measured 0.001
    # and 0.012 (2 sigma) off, within 0.02.
    np.testing.assert_allclose([values.mean(), values.std()], [0.0, 1.0], atol=0.02)
    assert jax.numpy.dtype(values.dtype) == jnp.float32
