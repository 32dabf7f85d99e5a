"""train_and_evaluate: the run a researcher leaves for a day must come back right.

One tiny synthetic run (4-frame clips of 32x32, depth-1 encoders) is shared by most tests;
the resume, fine-tuning and failure tests start their own runs from it.
"""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from former_dfer_jax import checkpointing, inference, train
from tests.tiny import TINY_RUN_EPOCHS as EPOCHS
from tests.tiny import env_with_devices, tiny_config


def _params(state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.merge_state(state.params, state.rest))]


@pytest.fixture
def finished_run(tiny_run):
    return tiny_run


def test_a_run_trains_every_step_and_writes_results_checkpoints_and_logs(finished_run):
    config, workdir, state = finished_run
    with open(os.path.join(workdir, train.RESULTS_FILE)) as f:
        results = json.load(f)
    steps_per_epoch = results['history'][0]['step']
    assert int(state.step) == EPOCHS * steps_per_epoch
    assert results['finished'] is True
    assert [h['epoch'] for h in results['history']] == [1, 2]
    assert results['selection_split'] == 'test' and 'reference protocol' in results['protocol']
    last = results['last']['test']
    assert last['num_clips'] == 7  # every test clip of the fold counted once
    assert 0.0 <= last['uar'] <= 1.0 and 0.0 <= last['war'] <= 1.0
    assert np.array(last['confusion_matrix']).shape == (7, 7)
    assert results['best']['epoch'] in (1, 2)
    assert checkpointing.read_config(workdir).model.to_dict() == config.model.to_dict()
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['best', 'latest']
    assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))


def test_the_learning_rate_and_loss_are_logged_per_epoch(finished_run):
    _, workdir, _ = finished_run
    with open(os.path.join(workdir, train.RESULTS_FILE)) as f:
        history = json.load(f)['history']
    assert all(np.isfinite(h['train_loss']) for h in history)
    assert history[0]['learning_rate'] == pytest.approx(0.01)


def test_a_finished_workdir_is_not_trained_again(finished_run):
    config, workdir, state = finished_run
    again = train.train_and_evaluate(config, workdir)
    assert int(again.step) == int(state.step)
    for a, b in zip(_params(state), _params(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_after_a_mid_epoch_stop_is_exact(finished_run, tmp_path):
    config, _, uninterrupted = finished_run
    steps_per_epoch = int(uninterrupted.step) // EPOCHS
    workdir = str(tmp_path / 'stopped')
    stopped = train.train_and_evaluate(config, workdir, stop_at_step=steps_per_epoch + 2)
    assert int(stopped.step) == steps_per_epoch + 2
    resumed = train.train_and_evaluate(config, workdir)
    assert int(resumed.step) == int(uninterrupted.step)
    for a, b in zip(_params(uninterrupted), _params(resumed), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise, BatchNorm statistics included


def test_a_workdir_of_another_model_is_refused_with_the_differences(finished_run):
    _, workdir, _ = finished_run
    other = tiny_config(num_epochs=EPOCHS)
    other.model.temporal.depth = 2
    with pytest.raises(train.TrainingError, match=r'model\.temporal\.depth: 1 .* vs 2'):
        train.train_and_evaluate(other, workdir)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(finished_run, tmp_path):
    config, source, _ = finished_run
    workdir = str(tmp_path / 'diverging')
    good = train.train_and_evaluate(tiny_config(num_epochs=1), workdir)
    diverging = tiny_config(num_epochs=2)
    diverging.optimizer.learning_rate = 1e30
    with pytest.raises(train.TrainingError, match='non-finite training loss'):
        train.train_and_evaluate(diverging, workdir)
    model = inference.load_model(workdir, 'latest')
    restored = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]
    for a, b in zip(_params(good), restored, strict=True):
        np.testing.assert_array_equal(a, b)
    del config, source


def test_fine_tuning_starts_from_the_checkpoint_weights(finished_run, tmp_path):
    _, source, trained = finished_run
    config = tiny_config(num_epochs=1)
    config.init_from = source
    config.optimizer.learning_rate = 0.0  # the weights must stay exactly those loaded
    config.optimizer.weight_decay = 0.0
    state = train.train_and_evaluate(config, str(tmp_path / 'finetune'))
    best = inference.load_model(source, 'best')
    expected = nnx.to_pure_dict(nnx.state(best, nnx.Param))
    got = nnx.to_pure_dict(state.params)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    del trained


def test_fine_tuning_can_reinitialise_the_classifier_for_a_new_class_count(finished_run, tmp_path):
    _, source, _ = finished_run
    config = tiny_config(num_epochs=1)
    config.init_from = source
    config.model.num_classes = 5
    with pytest.raises(train.TrainingError, match='reinit_classifier'):
        train.train_and_evaluate(config, str(tmp_path / 'refused'))
    del config


def test_stop_request_turns_sigterm_into_a_flag():
    with train.StopRequest() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested()


_DATA_PARALLEL_SCRIPT = """
import functools, sys
import jax, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from former_dfer_jax import data, steps, train
from former_dfer_jax.models import build_model
from tests.tiny import tiny_config

assert jax.device_count() == int(sys.argv[2])
config = tiny_config()
# Few steps at a small learning rate: the tiny model (BatchNorm over 16 values on its
# 1x1 layer4 map) amplifies the last-bit differences of another summation order ~10x per
# step, which would hide what this test checks.
config.optimizer.learning_rate = 0.001
NUM_STEPS = 4
mesh = train.make_mesh()
replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
schedule = steps.step_decay_schedule(config.optimizer, 100)
tx = steps.make_optimizer(config.optimizer, schedule)
state = steps.init_train_state(build_model(config.model, rngs=nnx.Rngs(0)), tx)
state = jax.device_put(state, replicated)
step = jax.jit(functools.partial(steps.train_step, tx=tx, schedule=schedule),
               donate_argnums=0, out_shardings=(replicated, replicated))
losses = []
for _, batch in zip(range(NUM_STEPS), data.load(config, 'train', epoch=0)):
    state, metrics = step(state, train.global_batch(batch, sharded))
    losses.append(float(metrics['loss']))
leaves = [np.asarray(x) for x in jax.tree.leaves(nnx.merge_state(state.params, state.rest))]
np.savez(sys.argv[1], np.array(losses), *leaves)
"""


def _train_on(devices: int, tmp_path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-step losses and final parameters of one tiny epoch on `devices` host devices
    (in a fresh process: the device count is fixed when JAX starts)."""
    out = tmp_path / f'devices_{devices}.npz'
    env = env_with_devices(devices)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, '-c', _DATA_PARALLEL_SCRIPT, str(out), str(devices)],
        check=True,
        env=env,
        cwd=root,
    )
    arrays = list(np.load(out).values())
    return arrays[0], arrays[1:]


def test_one_and_two_devices_give_the_same_training(tmp_path):
    (losses_1, params_1), (losses_2, params_2) = _train_on(1, tmp_path), _train_on(2, tmp_path)
    assert len(losses_1) == 4
    # BatchNorm statistics span the global batch, so only the summation order differs.
    np.testing.assert_allclose(losses_1, losses_2, rtol=1e-5)
    for a, b in zip(params_1, params_2, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
