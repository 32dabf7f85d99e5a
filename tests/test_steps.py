"""The optimizer and schedule follow torch.optim.SGD + StepLR exactly."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from former_dfer_jax.models import build_model
from former_dfer_jax.training import steps
from tests.tiny import random_clips, tiny_config


def _opt_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(
            name='sgd',
            learning_rate=0.1,
            momentum=0.9,
            weight_decay=1e-2,
            lr_decay_every_epochs=2,
            lr_decay_factor=0.1,
        )
    )
    config.update(overrides)
    return config


def test_schedule_steps_down_at_epoch_boundaries_like_steplr():
    schedule = steps.step_decay_schedule(_opt_config(), steps_per_epoch=3)
    lrs = [float(schedule(jnp.asarray(i))) for i in range(13)]
    # epochs 0-1 (steps 0..5): 0.1; epochs 2-3 (6..11): 0.01; epoch 4: 0.001
    np.testing.assert_allclose(lrs[:6], 0.1, rtol=1e-6)
    np.testing.assert_allclose(lrs[6:12], 0.01, rtol=1e-6)
    np.testing.assert_allclose(lrs[12], 0.001, rtol=1e-6)


def test_sgd_with_coupled_weight_decay_matches_torch():
    torch = pytest.importorskip('torch')
    config = _opt_config()
    steps_per_epoch = 2
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5,)).astype(np.float32)
    grads = [rng.normal(size=(5,)).astype(np.float32) for _ in range(8)]

    w_t = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.SGD(
        [w_t], lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )
    sched = torch.optim.lr_scheduler.StepLR(
        opt, step_size=config.lr_decay_every_epochs, gamma=config.lr_decay_factor
    )
    for i, g in enumerate(grads):
        opt.zero_grad()
        w_t.grad = torch.tensor(g)
        opt.step()
        if (i + 1) % steps_per_epoch == 0:
            sched.step()

    schedule = steps.step_decay_schedule(config, steps_per_epoch)
    tx = steps.make_optimizer(config, schedule)
    w = jnp.asarray(w0)
    state = tx.init(w)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, updates)
    np.testing.assert_allclose(np.asarray(w), w_t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_cross_entropy_is_mean_negative_log_likelihood():
    logits = jnp.array([[2.0, 0.0], [0.0, 0.0]])
    labels = jnp.array([0, 1])
    expected = (-np.log(np.exp(2) / (np.exp(2) + 1)) + np.log(2)) / 2
    assert float(steps.cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_adamw_matches_torch_adamw():
    torch = pytest.importorskip('torch')
    config = _opt_config(name='adamw', learning_rate=0.01)
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(4,)).astype(np.float32)
    grads = [rng.normal(size=(4,)).astype(np.float32) for _ in range(5)]
    w_t = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.AdamW([w_t], lr=config.learning_rate, weight_decay=config.weight_decay)
    for g in grads:
        opt.zero_grad()
        w_t.grad = torch.tensor(g)
        opt.step()
    tx = steps.make_optimizer(config, steps.step_decay_schedule(config, steps_per_epoch=100))
    w = jnp.asarray(w0)
    state = tx.init(w)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, updates)
    np.testing.assert_allclose(np.asarray(w), w_t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_an_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match=r"optimizer\.name='adam'"):
        steps.make_optimizer(_opt_config(name='adam'), lambda count: 0.1)


def test_a_bfloat16_train_step_keeps_parameters_optimizer_state_and_statistics_in_float32():
    config = tiny_config()
    config.model.compute_dtype = 'bfloat16'
    schedule = steps.step_decay_schedule(config.optimizer, steps_per_epoch=7)
    tx = steps.make_optimizer(config.optimizer, schedule)
    state = steps.init_train_state(build_model(config.model, rngs=nnx.Rngs(0)), tx)
    batch = {
        'video': jnp.asarray(random_clips(config, 2)),
        'label': jnp.asarray([0, 3]),
    }
    state, out = jax.jit(functools.partial(steps.train_step, tx=tx, schedule=schedule))(
        state, batch
    )
    for tree in (state.params, state.rest, state.opt_state):
        assert {x.dtype for x in jax.tree.leaves(tree) if x.ndim} == {np.dtype(np.float32)}
    assert out['loss'].dtype == jnp.float32 and np.isfinite(float(out['loss']))
