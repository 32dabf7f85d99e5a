"""Complexity (models.complexity): the MAC counter, XLA's count; and the flops command."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from former_dfer_jax import default_config, flops
from former_dfer_jax.models import build_abstract_model, complexity
from former_dfer_jax.models.temporal import GRU

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def conv_macs(side_out: int, cin: int, cout: int, k: int) -> int:
    return side_out * side_out * cin * cout * k * k


def resnet18_frame_macs() -> int:
    """Per 112x112 frame: conv1 at 56x56, layers at 28 / 14 / 7 / 4 (full windows)."""
    total = conv_macs(56, 3, 64, 7) + 4 * conv_macs(28, 64, 64, 3)
    for side, cin, cout in ((14, 64, 128), (7, 128, 256), (4, 256, 512)):
        total += conv_macs(side, cin, cout, 3) + 3 * conv_macs(side, cout, cout, 3)
        total += conv_macs(side, cin, cout, 1)  # projection shortcut
    return total


def encoder_macs(tokens: int, dim: int, inner: int, mlp: int, depth: int) -> int:
    linear = tokens * (dim * 3 * inner + inner * dim + 2 * dim * mlp)
    attention = 2 * tokens * tokens * inner  # q.k^T and attn.v
    return depth * (linear + attention)


def abstract_forward(model_config):
    model = build_abstract_model(model_config)
    model.eval()
    graphdef, state = nnx.split(model)
    spec = model.spec
    x = jax.ShapeDtypeStruct((1, spec.num_frames, spec.image_size, spec.image_size, 3), 'float32')
    return (lambda state, clips: nnx.merge(graphdef, state)(clips)), state, x


def small_network(x, w1, w2, wh, wo):
    """A conv, a grouped conv, attention's two products, a 3-step scan, a nested jit."""
    dn = ('NHWC', 'HWIO', 'NHWC')
    y = jax.lax.conv_general_dilated(x, w1, (2, 2), ((1, 1), (1, 1)), dimension_numbers=dn)
    y = jax.nn.relu(y)
    y = jax.lax.conv_general_dilated(
        y, w2, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn, feature_group_count=2
    )
    tokens = y.reshape(2, 16, 4)
    scores = jnp.einsum('bnd,bmd->bnm', tokens, tokens)
    out = jnp.einsum('bnm,bmd->bnd', jax.nn.softmax(scores, -1), tokens)

    def step(h, _):
        return jnp.tanh(h @ wh), None

    h, _ = jax.lax.scan(step, out.mean(1), None, length=3)
    return jax.jit(lambda h, w: h @ w)(h, wo)


def test_count_macs_of_a_small_network_worked_by_hand():
    shapes = [(2, 8, 8, 3), (3, 3, 3, 4), (3, 3, 2, 4), (4, 4), (4, 7)]
    args = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes]
    # Each product: output elements x multiply-adds per element; elementwise work
    # (relu, softmax, tanh, mean) is not counted.
    expected = (
        2 * 4 * 4 * 4 * (3 * 3 * 3)  # conv 3x3/2 pad 1: 8x8x3 -> 4x4x4, full windows: 3456
        + 2 * 4 * 4 * 4 * (3 * 3 * 2)  # 2 groups: each output sees 2 of the 4 inputs: 2304
        + 2 * 16 * 16 * 4  # q k^T over 16 tokens of 4: 2048
        + 2 * 16 * 4 * 16  # attention x v: 2048
        + 3 * (2 * 4 * 4)  # 3 scan steps of a [2, 4] x [4, 4] product: 96
        + 2 * 7 * 4  # the nested jit's [2, 4] x [4, 7] product: 56
    )
    assert expected == 10_008
    assert complexity.count_macs(small_network, *args) == expected


def test_count_macs_multiplies_scan_bodies_by_their_length():
    rnn = nnx.eval_shape(lambda: GRU(8, 6, dtype=jnp.float32, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(rnn)
    x = jax.ShapeDtypeStruct((2, 5, 8), jnp.float32)
    macs = complexity.count_macs(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert macs == 2 * 5 * 8 * 18 + 5 * (2 * 6 * 18)  # input projection + 5 steps


def test_macs_of_the_reference_model_at_112px():
    forward, state, x = abstract_forward(default_config.get_config().model)
    expected = (
        16 * resnet18_frame_macs()
        + 16 * encoder_macs(49, 256, 256, 512, depth=1)  # S-Former on 7x7 tokens
        + encoder_macs(17, 512, 512, 1024, depth=3)  # T-Former on 16 frames + class token
        + 512 * 7
    )
    assert complexity.count_macs(forward, state, x) == expected  # 8.296 G


def test_macs_of_resnet18_gru_are_the_papers_7_78_g():
    config = default_config.get_config()
    config.model.spatial.enabled = False
    config.model.temporal.kind = 'gru'
    macs = complexity.count_macs(*abstract_forward(config.model))
    assert macs == 16 * resnet18_frame_macs() + 2 * 16 * 512 * 3 * 512 + 512 * 7
    assert round(macs / 1e9, 2) == flops.PAPER_GFLOPS['resnet18_gru']


def test_ablation_rows_apply_each_variant_to_a_copy():
    base = default_config.get_config()
    snapshot = copy.deepcopy(base)
    rows = dict(flops.ablation_rows(base))
    assert base == snapshot
    assert rows['former_dfer'] is base
    assert rows['resnet18_gru'].model.temporal.kind == 'gru'
    assert rows['depths_6_3'].model.spatial.depth == 6
    assert len(rows) == 1 + 9 + 7


def test_format_table_lists_each_row():
    base = default_config.get_config()
    rows = flops.ablation_rows(base)[:2]
    results = [(n, c, {'params': 1_000, 'flops': 14e9, 'macs': 8e9}) for n, c in rows]
    text = flops.format_table(results)
    assert 'former_dfer' in text and 'resnet18_gru' in text and '7.78' in text
    assert 'ResNet18+S-Former@conv4' in text and 'GRU 512' in text


def test_command_line_reports_the_complexity_of_the_config():
    config = default_config.get_config()
    config.model.image_size = 32
    config.data.num_segments = 1  # 2 frames
    forward, state, x = abstract_forward(config.model)
    macs = complexity.count_macs(forward, state, x)

    result = subprocess.run(
        [
            sys.executable, '-m', 'former_dfer_jax.flops', '--config=configs/dfew.py',
            '--config.model.image_size=32', '--config.data.num_segments=1',
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert 'one clip of 2 frames of 32x32, eval mode' in out
    # 18,031,943 less the position embeddings of 45 spatial and 14 temporal positions.
    assert re.search(rf'parameters: +{18_031_943 - 45 * 256 - 14 * 512:,}\n', out)
    assert re.search(rf'MACs +\(conv \+ matmul.*\): {macs / 1e9:.3f} G', out)
    xla = float(re.search(r'FLOPs \(XLA cost analysis\): +([0-9.]+) G', out).group(1)) * 1e9
    assert re.search(rf'MACs +\(XLA FLOPs / 2\): +{xla / 2e9:.3f} G', out)
    # XLA counts a multiply-add as 2 but skips taps on the zero padding, which on these
    # 1x1 to 16x16 maps is most of a 3x3 window: between 1 and 2 flops per MAC here.
    assert macs < xla < 2 * macs


def test_compiled_flops_reads_every_form_of_xla_cost_analysis():
    class Compiled:
        def __init__(self, cost):
            self.cost = cost

        def cost_analysis(self):
            return self.cost

    assert complexity.compiled_flops(Compiled({'flops': 12.0})) == 12.0
    assert complexity.compiled_flops(Compiled([{'flops': 12.0}])) == 12.0  # older jax
    for unknown in (None, [], {}, {'flops': 0.0}):
        assert complexity.compiled_flops(Compiled(unknown)) is None


def test_model_complexity_fields(monkeypatch):
    # The compiled cost analysis is exercised by the command line test above; here only
    # how its result is reported (a stub compile keeps this test fast).
    class Compiled:
        def cost_analysis(self):
            return {'flops': 123.0}

    class Lowered:
        def compile(self):
            return Compiled()

    class Jitted:
        def __init__(self, fn):
            self.fn = fn

        def lower(self, *args):
            return Lowered()

    monkeypatch.setattr(complexity.jax, 'jit', Jitted)
    config = default_config.get_config()
    result = complexity.model_complexity(config.model)
    assert result == {
        'params': 18_031_943,
        'flops': 123,
        'macs': complexity.count_macs(*abstract_forward(config.model)),
        'input_shape': (1, 16, 112, 112, 3),
    }
