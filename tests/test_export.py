"""GPU readiness, checked on any host: the jitted train and eval steps export for CUDA
(`jax.export`, platforms=['cuda']) in float32 and bfloat16, the CUDA program takes the plain
lax convolutions and pooling (the CPU paths of models/conv.py are chosen by the lowering
platform, not by the host's backend), and the benchmark's train and eval paths run without
TensorFlow or clu (a GPU host may have neither)."""

from __future__ import annotations

import collections
import functools
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export

from former_dfer_jax.models import build_model
from former_dfer_jax.models import conv as conv_ops
from former_dfer_jax.training import steps
from tests.tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 2


def _steps(compute_dtype: str = 'float32'):
    """(jitted train step, jitted eval step, abstract args of each) for the tiny model."""
    config = tiny_config()
    config.model.compute_dtype = compute_dtype
    schedule = steps.step_decay_schedule(config.optimizer, 10)
    tx = steps.make_optimizer(config.optimizer, schedule)
    state = jax.eval_shape(  # shapes only: no weights computed
        lambda: steps.init_train_state(build_model(config.model, rngs=nnx.Rngs(0)), tx)
    )
    m = config.model
    video = jax.ShapeDtypeStruct((BATCH, m.num_frames, m.image_size, m.image_size, 3), jnp.float32)
    label = jax.ShapeDtypeStruct((BATCH,), jnp.int32)
    mask = jax.ShapeDtypeStruct((BATCH,), jnp.bool_)
    train = jax.jit(functools.partial(steps.train_step, tx=tx, schedule=schedule), donate_argnums=0)
    evaluate = jax.jit(
        functools.partial(steps.eval_step, graphdef=state.eval_graphdef, num_classes=m.num_classes)
    )
    return {
        'train': (train, (state, {'video': video, 'label': label})),
        'eval': (
            evaluate,
            (state.params, state.rest, {'video': video, 'label': label, 'mask': mask}),
        ),
    }


def _stablehlo(fn, args, platforms) -> str:
    exported = export.export(fn, platforms=platforms)(*args)
    assert exported.platforms == tuple(platforms)
    return exported.mlir_module()


_CONVOLUTION = 'stablehlo.convolution'


def _convolutions_and_pooling(text: str) -> dict:
    """What tells the two paths apart: every convolution's operand and result types (the
    CPU path turns small-map convolutions into patch GEMMs with other kernels, and drops
    padding-only taps), and the pooling ops (its max-pool gradient has no
    select_and_scatter)."""
    types = r':\s*\((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)'
    convolutions = [
        re.search(types, line).groups() for line in text.splitlines() if _CONVOLUTION in line
    ]
    ops = collections.Counter(re.findall(r'stablehlo\.(reduce_window|select_and_scatter)\b', text))
    return {
        'convolutions': sorted(convolutions),
        'reduce_window': ops['reduce_window'],
        'select_and_scatter': ops['select_and_scatter'],
    }


def _plain_lax(monkeypatch) -> None:
    """models/conv.py as on a GPU: the plain lax convolution and pooling everywhere."""
    monkeypatch.setattr(conv_ops, 'on_cpu', lambda cpu, other, *args: other(*args))


@pytest.mark.parametrize('compute_dtype', ['float32', 'bfloat16'])
def test_export_train_and_eval_steps_for_cuda(compute_dtype):
    for what, (fn, args) in _steps(compute_dtype).items():
        text = _stablehlo(fn, args, ['cuda'])
        found = _convolutions_and_pooling(text)
        # ResNet-18: 20 convolutions; the train step adds each one's kernel gradient and
        # all but the stem's input gradient (the video is not differentiated).
        assert len(found['convolutions']) == (20 if what == 'eval' else 59), what
        dtype = 'bf16' if compute_dtype == 'bfloat16' else 'f32'
        for lhs, rhs, out in found['convolutions']:
            assert all(t.endswith(f'x{dtype}>') for t in (lhs, rhs, out)), (what, lhs, rhs)


@pytest.mark.parametrize('what', ['train', 'eval'])
def test_cuda_export_takes_the_plain_lax_paths(what, monkeypatch):
    fn, args = _steps()[what]
    cuda = _convolutions_and_pooling(_stablehlo(fn, args, ['cuda']))
    cpu = _convolutions_and_pooling(_stablehlo(fn, args, ['cpu']))
    _plain_lax(monkeypatch)
    fn, args = _steps()[what]  # traced again, now with the plain paths only
    plain = _convolutions_and_pooling(_stablehlo(fn, args, ['cpu']))
    assert cuda == plain
    # ...and the host's own lowering still takes the CPU paths (at 32 px, layer3's 2x2
    # and layer4's 1x1 maps go through patches; the max-pool gradient has no scatter).
    assert cpu['convolutions'] != plain['convolutions']
    if what == 'train':
        assert (plain['select_and_scatter'], cpu['select_and_scatter']) == (1, 0)


def test_export_for_cpu_and_cuda_runs_on_cpu_as_the_jitted_function():
    """One program for both platforms (the CPU paths in a platform conditional) computes on
    the CPU what the jitted function does: a convolution on a map smaller than its window
    and a max-pool, and their gradients (custom VJPs on the CPU)."""
    dn = ('NHWC', 'HWIO', 'NHWC')

    def loss(x, w):
        y = conv_ops.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
        return jnp.sum(conv_ops.max_pool(y, 3, 2, 1) ** 2)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 2, 2, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    exported = export.export(fn, platforms=['cpu', 'cuda'])(x, w)
    assert exported.platforms == ('cpu', 'cuda')
    for got, want in zip(
        jax.tree.leaves(exported.call(x, w)), jax.tree.leaves(fn(x, w)), strict=True
    ):
        # The same CPU program compiled twice: only another summation order may differ.
        np.testing.assert_allclose(got, want, rtol=1e-6)


# Blocks the packages a GPU host may lack before anything is imported.
_BLOCKED = textwrap.dedent(
    """
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in {'tensorflow', 'tensorflow_datasets', 'clu'}:
                raise ModuleNotFoundError(f'{name} is blocked (a GPU host may not have it)')
            return None

    sys.meta_path.insert(0, Blocked())
    """
)


def test_benchmark_train_and_eval_paths_import_without_tensorflow_and_clu_export_ready():
    # "export_ready" in the name: `pytest -k "cuda or export"` selects the GPU-readiness set.
    # The subprocess imports the benchmark's modules and traces and lowers its train and
    # eval steps (the model built with shapes only), with TensorFlow and clu unimportable.
    script = _BLOCKED + textwrap.dedent(
        """
        import functools
        import jax
        from flax import nnx
        from former_dfer_jax import default_config
        from former_dfer_jax import benchmark
        from former_dfer_jax.training import config_checks
        from former_dfer_jax.training import steps
        from former_dfer_jax.models import build_model

        config = default_config.get_config()
        config.data.image_size = 32
        config.data.num_segments = 2
        config.data.segment_length = 2
        config.model.spatial.depth = 1
        config.model.temporal.depth = 1
        config_checks.validate(config)  # as the benchmark CLI does first
        batch = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), benchmark.random_batch(config, 2, 0)
        )
        schedule = steps.step_decay_schedule(config.optimizer, 10)
        tx = steps.make_optimizer(config.optimizer, schedule)
        state = jax.eval_shape(
            lambda: steps.init_train_state(build_model(config.model, rngs=nnx.Rngs(0)), tx)
        )
        for what in ('train', 'eval'):
            jitted, args = benchmark.step_function(config, what, state, tx, schedule, batch)
            jitted.lower(*args)
        leaked = sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'clu'})
        assert not leaked, leaked
        """
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run(
        [sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
