"""FormerDFER: the reference model's size, the config, the forward contract, variants."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import ablations
from former_dfer_jax import default_config
from former_dfer_jax.models import (
    FormerDFER,
    ModelSpec,
    SpatialSpec,
    TemporalSpec,
    build_model,
    conv,
    count_parameters,
)
from former_dfer_jax.models.temporal import GRU, LSTM, TFormer

# Small enough to run in a test: 32x32 frames (layer3 map 2x2, layer4 map 1x1), 2 frames.
TINY = ModelSpec(image_size=32, num_frames=2)
REFERENCE = ModelSpec()


@functools.cache
def abstract(spec: ModelSpec = REFERENCE) -> FormerDFER:
    """The model's structure and shapes, no weights allocated (shared: do not mutate)."""
    return nnx.eval_shape(lambda: FormerDFER(spec, rngs=nnx.Rngs(0)))


def variant_spec(variant: str) -> ModelSpec:
    config = ablations.get_config(variant)
    return ModelSpec.from_config(config.model)


def with_random_weights(model: FormerDFER, seed: int = 0) -> FormerDFER:
    """A concrete copy of an abstract model with random weights of sensible scale.

    Drawn with numpy: a real init (`FormerDFER(spec, rngs=...)`) compiles one XLA
    program per weight shape, which would dominate these tests' time. The layer tests
    check the real initialisers.
    """
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(model)

    def draw(name, x):
        if name in ('scale', 'var'):  # BatchNorm / LayerNorm scale, BatchNorm variance
            value = rng.uniform(0.5, 1.5, x.shape)
        elif name in ('bias', 'mean', 'input_bias', 'hidden_bias'):
            value = rng.normal(0.0, 0.1, x.shape)
        elif name in ('pos_embedding', 'cls_token'):
            value = rng.normal(0.0, 1.0, x.shape)
        else:  # kernels: He-normal over fan-in
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(x.shape[:-1])), x.shape)
        return jnp.asarray(value, x.dtype)

    flat = nnx.to_flat_state(state)
    values = [(path, var.replace(draw(path[-1], var))) for path, var in flat]
    return nnx.merge(graphdef, nnx.from_flat_state(values))


@pytest.fixture(scope='module')
def tiny_model() -> FormerDFER:
    return with_random_weights(abstract(TINY))


def clips(batch: int = 2, spec: ModelSpec = TINY, seed: int = 0) -> jax.Array:
    shape = (batch, spec.num_frames, spec.image_size, spec.image_size, 3)
    return jax.random.uniform(jax.random.key(seed), shape)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
    model = nnx.merge(graphdef, state)
    return model(x), nnx.state(model)


def apply(model: nnx.Module, x: jax.Array) -> tuple[jax.Array, nnx.State]:
    """A pure, jitted call, as the training step makes it: (logits, new state)."""
    return _apply(*nnx.split(model), x)


# ---- The reference model ---------------------------------------------------------------


def test_default_model_has_the_reference_parameter_count():
    model = build_model_abstract(default_config.get_config().model)
    assert count_parameters(model) == 18_031_943
    assert count_parameters(model.spatial.trunk) == 11_176_512
    assert count_parameters(model.spatial.s_former) == 538_880
    assert count_parameters(model.temporal) == 6_312_960
    assert count_parameters(model.classifier) == 3_591
    # BatchNorm statistics are state, not parameters: 20 BatchNorms x (mean, var).
    assert len(jax.tree.leaves(nnx.state(model, nnx.BatchStat))) == 40
    assert model.spatial.s_former.pos_embedding.shape == (1, 49, 256)
    assert model.temporal.cls_token.shape == (1, 1, 512)
    assert model.temporal.pos_embedding.shape == (1, 17, 512)


def build_model_abstract(model_config) -> FormerDFER:
    return nnx.eval_shape(lambda: build_model(model_config, rngs=nnx.Rngs(0)))


def test_spec_defaults_are_configs_default():
    assert ModelSpec.from_config(default_config.get_config().model) == ModelSpec()


def test_parameters_and_batch_statistics_are_float32_in_bfloat16_models():
    model = abstract(dataclasses.replace(TINY, compute_dtype='bfloat16'))
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model))}
    assert dtypes == {jnp.dtype(jnp.float32)}


# ---- Config -------------------------------------------------------------------------------


def test_unknown_config_keys_are_errors():
    config = default_config.get_config()
    config.model.spatial.unlock()
    config.model.spatial.dept = 3
    with pytest.raises(ValueError, match=r"unknown model.spatial keys \['dept'\]"):
        build_model(config.model, rngs=nnx.Rngs(0))


def test_invalid_config_values_are_reported_together():
    with pytest.raises(ValueError) as error:
        ModelSpec(
            resnet_depth=50,
            compute_dtype='float16',
            spatial=SpatialSpec(stage='layer2'),
            temporal=TemporalSpec(kind='tcn', pooling='max', depth=0),
        )
    for text in ('resnet_depth=50', "compute_dtype='float16'", "spatial.stage='layer2'",
                 "temporal.kind='tcn'", "temporal.pooling='max'", 'temporal.depth=0'):  # fmt: skip
        assert text in str(error.value)


# ---- Forward -------------------------------------------------------------------------------


def test_wrong_clip_shape_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match=r'expected clips of shape \[B, 2, 32, 32, 3\]'):
        tiny_model(jnp.zeros((1, 3, 32, 32, 3)))


def test_logits_clips_are_independent_and_frames_share_the_cs_former(tiny_model):
    tiny_model.eval()
    x = clips(2)
    logits, _ = apply(tiny_model, x)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits)) and not np.allclose(logits[0], logits[1])
    swapped, _ = apply(tiny_model, x[::-1])
    # Measured: bitwise equal. 1e-5 is ~10 float32 ulps of these logits (|logit| ~12),
    # room for kernels whose rounding depends on a row's place in the batch.
    np.testing.assert_allclose(swapped, logits[::-1], atol=1e-5)
    # Frames are folded into the batch: each of the trunk's 20 convolutions runs once,
    # on all 2 x 2 frames, with the same (shared) kernel.
    graphdef, state = nnx.split(tiny_model)
    jaxpr = jax.make_jaxpr(lambda s, v: nnx.merge(graphdef, s)(v))(state, x).jaxpr
    convs = [e for e in _all_eqns(jaxpr) if e.primitive.name == 'conv_general_dilated']
    assert len(convs) == 20
    assert convs[0].invars[0].aval.shape == (4, 32, 32, 3)


@functools.partial(jax.jit, static_argnums=0)
def _train_step(graphdef, state, x):
    # As the training step: merge at the jit level, differentiate the module.
    model = nnx.merge(graphdef, state)

    def loss(model):
        logits = model(x)
        return jnp.sum(logits**2), logits

    grads, logits = nnx.grad(loss, has_aux=True)(model)
    stem_mean = model.spatial.trunk.conv1(x.reshape(-1, *x.shape[2:])).mean(axis=(0, 1, 2))
    return logits, grads, nnx.state(model, nnx.BatchStat), stem_mean


def test_train_mode_uses_and_updates_batch_statistics_and_trains_every_parameter(tiny_model):
    x = clips(2)
    tiny_model.eval()
    eval_logits, eval_state = apply(tiny_model, x)
    before = nnx.state(tiny_model, nnx.BatchStat)
    jax.tree.map(np.testing.assert_array_equal, before, nnx.state(eval_state, nnx.BatchStat))

    tiny_model.train()
    train_logits, grads, after, batch_mean = _train_step(*nnx.split(tiny_model), x)
    tiny_model.eval()

    assert not np.allclose(train_logits, eval_logits)  # batch statistics, not running ones
    # running = 0.9 * running + 0.1 * batch statistic (the stem BatchNorm's mean here).
    # Measured max abs error 3.0e-8 (1 ulp of the ~0.3 means); 2e-7 is ~7x that.
    np.testing.assert_allclose(
        after['spatial']['trunk']['bn1']['mean'][...],
        0.9 * before['spatial']['trunk']['bn1']['mean'][...] + 0.1 * batch_mean,
        rtol=0,
        atol=2e-7,
    )
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after)
    assert all(jax.tree.leaves(changed))  # every BatchNorm's mean and var moved
    # Gradients reach all 109 parameters (none detached or unused).
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert len(leaves) == 109
    assert [jax.tree_util.keystr(p) for p, g in leaves if not np.any(np.asarray(g))] == []


def test_bfloat16_computes_in_bfloat16_and_returns_float32(tiny_model):
    spec = dataclasses.replace(TINY, compute_dtype='bfloat16')
    model = nnx.merge(nnx.graphdef(abstract(spec)), nnx.state(tiny_model))  # same weights
    model.eval()
    tiny_model.eval()
    x = clips(2)
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, v: nnx.merge(graphdef, s)(v))(state, x).jaxpr
    products = [
        eqn
        for eqn in _all_eqns(jaxpr)
        if eqn.primitive.name in ('conv_general_dilated', 'dot_general')
    ]
    assert len(products) > 20
    assert {v.aval.dtype for eqn in products for v in eqn.invars} == {jnp.dtype(jnp.bfloat16)}
    logits, _ = apply(model, x)
    reference, _ = apply(tiny_model, x)
    assert logits.dtype == jnp.float32
    # bf16 keeps 8 significant bits (~0.4% per rounding). Measured max |bf16 - f32| here:
    # 1.26% of max |logit| (1.0-1.9% over 3 weight x 2 clip seeds); 5% is ~4x this case.
    np.testing.assert_allclose(logits, reference, atol=0.05 * float(np.abs(reference).max()))


def _all_eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        branch = conv.platform_branch(eqn, 'cpu')  # the program the CPU runs, not every one
        if branch is not None:
            yield from _all_eqns(branch)
            continue
        for value in eqn.params.values():
            inner = getattr(value, 'jaxpr', None)
            if inner is not None:
                yield from _all_eqns(getattr(inner, 'jaxpr', inner))


# ---- Ablation variants -----------------------------------------------------------------------


def test_baselines_have_the_expected_sizes():
    gru = 3 * (512 * 512 * 2 + 2 * 512)  # torch.nn.GRU(512, 512)
    lstm = 4 * (512 * 512 * 2 + 2 * 512)
    trunk18, trunk34, fc = 11_176_512, 21_284_672, 512 * 7 + 7
    s_former = 538_880
    expected = {
        'resnet18_gru': trunk18 + gru + fc,
        'resnet18_lstm': trunk18 + lstm + fc,
        'resnet34_gru': trunk34 + gru + fc,
        'resnet18_sformer_gru': trunk18 + s_former + gru + fc,
        'resnet18_tformer': trunk18 + 6_312_960 + fc,
        'no_spatial_pe': 18_031_943 - 49 * 256,
        'no_temporal_pe': 18_031_943 - 17 * 512,
        'temporal_mean': 18_031_943 - 512 - 512,  # no class token, 16 positions
    }
    for variant, params in expected.items():
        assert count_parameters(abstract(variant_spec(variant))) == params, variant


def test_variant_structure():
    m = abstract(variant_spec('resnet18_gru'))
    assert m.spatial.s_former is None and isinstance(m.temporal, GRU)
    assert isinstance(abstract(variant_spec('resnet18_lstm')).temporal, LSTM)
    m = abstract(variant_spec('resnet34_gru'))
    assert [len(getattr(m.spatial.trunk, f'layer{i}')) for i in range(1, 5)] == [3, 4, 6, 3]
    m = abstract(variant_spec('sformer_after_conv5'))
    assert m.spatial.stage == 'layer4'
    assert m.spatial.s_former.pos_embedding.shape == (1, 16, 512)  # 4x4 layer4 map
    assert m.spatial.s_former.encoder.layers[0].attn.qkv.kernel.shape == (512, 3 * 8 * 64)
    m = abstract(variant_spec('temporal_mean'))
    assert isinstance(m.temporal, TFormer) and m.temporal.cls_token is None
    assert m.temporal.pos_embedding.shape == (1, 16, 512)
    assert abstract(variant_spec('no_spatial_pe')).spatial.s_former.pos_embedding is None
    assert abstract(variant_spec('no_temporal_pe')).temporal.pos_embedding is None
    m = abstract(variant_spec('depths_3_6'))
    assert (len(m.spatial.s_former.encoder.layers), len(m.temporal.encoder.layers)) == (3, 6)


@pytest.mark.parametrize('variant', ablations.table_variants())
def test_every_variant_traces_to_logits(variant):
    graphdef, state = nnx.split(abstract(variant_spec(variant)))
    x = jax.ShapeDtypeStruct((2, 16, 112, 112, 3), jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert out.shape == (2, 7) and out.dtype == jnp.float32


@pytest.mark.parametrize('kind', ['gru', 'lstm'])
def test_recurrent_baselines_match_torch(kind):
    torch = pytest.importorskip('torch', reason='the PyTorch oracle needs torch')
    torch.manual_seed(0)
    hidden, features, frames = 6, 5, 4
    ref = (torch.nn.GRU if kind == 'gru' else torch.nn.LSTM)(features, hidden, batch_first=True)
    rnn = (GRU if kind == 'gru' else LSTM)(features, hidden, dtype=jnp.float32, rngs=nnx.Rngs(0))
    bound = 1 / np.sqrt(hidden)  # torch's init, ours too
    assert np.abs(np.asarray(rnn.hidden_kernel[...])).max() <= bound
    rnn.input_kernel[...] = jnp.asarray(ref.weight_ih_l0.detach().numpy().T)
    rnn.hidden_kernel[...] = jnp.asarray(ref.weight_hh_l0.detach().numpy().T)
    rnn.input_bias[...] = jnp.asarray(ref.bias_ih_l0.detach().numpy())
    rnn.hidden_bias[...] = jnp.asarray(ref.bias_hh_l0.detach().numpy())
    x = np.random.default_rng(0).normal(size=(3, frames, features)).astype(np.float32)
    with torch.no_grad():
        _, state = ref(torch.tensor(x))
    last = (state if kind == 'gru' else state[0])[0].numpy()  # final hidden state
    # Measured max abs error 8.2e-8 (GRU and LSTM, states of |h| < 0.6); 5e-7 is ~6x.
    np.testing.assert_allclose(nnx.jit(rnn)(jnp.asarray(x)), last, rtol=0, atol=5e-7)
