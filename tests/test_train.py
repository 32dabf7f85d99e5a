"""train_and_evaluate: the run a researcher leaves for a day must come back right.

One tiny synthetic run (4-frame clips of 32x32, depth-1 encoders, 7 steps per epoch) is
shared by most tests; the resume, fine-tuning and failure tests start their own runs.
"""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from former_dfer_jax import inference
from former_dfer_jax.models import build_model
from former_dfer_jax.training import checkpointing, reference, steps, train
from former_dfer_jax.training.results import RunResults
from tests.tiny import TINY_RUN_EPOCHS as EPOCHS
from tests.tiny import env_with_devices, relative_difference, tiny_config

STEPS_PER_EPOCH = 7  # 28 training clips of fold 1, batch 4


def _params(state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.merge_state(state.params, state.rest))]


def _assert_same_weights(a, b) -> None:
    for x, y in zip(_params(a), _params(b), strict=True):
        np.testing.assert_array_equal(x, y)  # bitwise, BatchNorm statistics included


def _latest_steps(workdir: str) -> list[int]:
    return sorted(
        int(name)
        for name in os.listdir(os.path.join(workdir, 'checkpoints', 'latest'))
        if name.isdigit()
    )


def _resume_step(config, workdir: str) -> int:
    """The step a new run in `workdir` starts from."""
    ckpts = checkpointing.RunCheckpoints(workdir, keep_latest=config.checkpoint.keep_latest)
    tx = steps.make_optimizer(config.optimizer, steps.step_decay_schedule(config.optimizer, 7))
    try:
        return int(train.initial_state(config, workdir, ckpts, tx).train.step)
    finally:
        ckpts.close()


def test_a_run_trains_every_step_and_writes_results_checkpoints_and_logs(tiny_run):
    config, workdir, state = tiny_run
    results = RunResults.read(workdir)
    assert int(state.step) == EPOCHS * STEPS_PER_EPOCH
    assert results.finished is True
    assert [h['epoch'] for h in results.history] == [1, 2]
    assert [h['step'] for h in results.history] == [7, 14]
    assert results.selection_split == 'test' and 'reference protocol' in results.protocol
    last = results.last.test
    assert results.last.step == 14
    assert last['num_clips'] == 7  # every test clip of the fold counted once
    confusion = np.array(last['confusion_matrix'])
    assert confusion.shape == (7, 7) and confusion.sum(axis=1).tolist() == [1] * 7
    # One test clip per class: WAR (correct / clips) and UAR (mean recall) are both the
    # fraction of the diagonal.
    assert last['war'] == pytest.approx(np.trace(confusion) / 7, rel=1e-12)
    assert last['uar'] == pytest.approx(np.trace(confusion) / 7, rel=1e-12)
    best = max(results.history, key=lambda h: h['test']['war'])  # the first of equals
    assert (results.best.epoch, results.best.selection_value) == (
        best['epoch'],
        best['test']['war'],
    )
    assert results.best.selected_on == 'test war'
    assert checkpointing.read_config(workdir).model.to_dict() == config.model.to_dict()
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['best', 'latest']
    assert _latest_steps(workdir) == [7, 14]  # keep_latest=2
    assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))


def test_every_evaluated_epoch_keeps_its_difference_to_the_authors_curve(tiny_run):
    _, workdir, _ = tiny_run
    results = RunResults.read(workdir)
    # The synthetic stand-in has DFEW's folds: fold 1 is compared with DFEW-set1, noted.
    assert results.reference['run'] == 'DFEW-set1' and 'not DFEW' in results.reference['note']
    assert 'batch size 4 (theirs 32)' in results.reference['differences']
    theirs = reference.curves()['DFEW-set1']
    for record in results.history:
        assert record['reference']['test_war'] == theirs.war(record['epoch'])
        assert record['reference']['test_war_difference'] == pytest.approx(
            record['test']['war'] - theirs.war(record['epoch'])
        )
        assert record['test']['loss'] > 0  # the mean test cross-entropy
    line = train._epoch_line(results.history[0], tiny_config(num_epochs=EPOCHS))
    assert "authors' WAR 21.30% (ours " in line


def test_the_authors_curve_is_its_own_tensorboard_run_on_our_steps(tiny_run):
    _, workdir, _ = tiny_run
    ours = _tensorboard_scalars(workdir)
    theirs = _tensorboard_scalars(os.path.join(workdir, 'reference'))
    tags = {'train/loss', 'train/accuracy', 'train/learning_rate', 'test/war', 'test/loss'}
    assert tags <= set(ours) and set(theirs) == tags
    # Epoch e of the authors at our step of epoch e's end (7 steps an epoch), 2 epochs.
    assert [step for step, _ in theirs['test/war']] == [7, 14]
    assert [value for _, value in theirs['test/war']] == pytest.approx([0.213, 0.24508])
    assert [step for step, _ in ours['test/war']] == [7, 14]


def test_the_learning_rate_and_loss_are_logged_per_epoch(tiny_run):
    _, workdir, _ = tiny_run
    history = RunResults.read(workdir).history
    assert all(np.isfinite(h['train_loss']) and 0 <= h['train_accuracy'] <= 1 for h in history)
    assert [h['learning_rate'] for h in history] == pytest.approx([0.01, 0.01])


def test_a_finished_workdir_is_not_trained_again(tiny_run):
    config, workdir, state = tiny_run
    again = train.train_and_evaluate(config, workdir)
    assert int(again.step) == int(state.step)
    _assert_same_weights(state, again)


@pytest.mark.parametrize(
    ('stop_at', 'every_steps', 'kept'),
    [
        (STEPS_PER_EPOCH + 2, 0, [7, 9]),  # mid-epoch
        # On a periodic save step (saves at 3, 6, 7, 9): saved once, no crash; keep_latest=2.
        (STEPS_PER_EPOCH + 2, 3, [7, 9]),
        (STEPS_PER_EPOCH, 0, [7]),  # on an epoch's last step: evaluated, saved once
    ],
    ids=['mid-epoch', 'on-a-save-step', 'on-an-epoch-end'],
)
def test_a_stop_at_any_step_saves_there_and_the_resumed_run_is_exact(
    tiny_run, tmp_path, stop_at, every_steps, kept
):
    config, _, uninterrupted = tiny_run
    config = tiny_config(num_epochs=EPOCHS)
    config.checkpoint.every_steps = every_steps
    workdir = str(tmp_path / 'stopped')
    stopped = train.train_and_evaluate(config, workdir, stop_at_step=stop_at)
    assert int(stopped.step) == stop_at
    assert _latest_steps(workdir) == kept
    assert _resume_step(config, workdir) == stop_at  # from the stop, not an epoch end
    epochs_done = stop_at // STEPS_PER_EPOCH
    assert len(RunResults.read(workdir).history) == epochs_done
    resumed = train.train_and_evaluate(config, workdir)
    assert int(resumed.step) == int(uninterrupted.step)
    _assert_same_weights(uninterrupted, resumed)
    assert RunResults.read(workdir).history == RunResults.read(tiny_run[1]).history


def test_sigterm_makes_the_loop_save_and_return(tmp_path, monkeypatch):
    signal_before = 4
    batches = train.train_batches

    def batches_then_sigterm(config, first_step):
        for step, batch in enumerate(batches(config, first_step), first_step + 1):
            if step == signal_before:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    monkeypatch.setattr(train, 'train_batches', batches_then_sigterm)
    workdir = str(tmp_path / 'sigterm')
    state = train.train_and_evaluate(tiny_config(), workdir)
    assert int(state.step) == signal_before  # the step under way when the signal came
    assert _latest_steps(workdir) == [signal_before]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler given back


def test_a_second_ctrl_c_stops_at_once():
    with train.StopRequest() as stop:
        assert not stop.should_stop(1, sync_point=True)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.should_stop(2, sync_point=False)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def _tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] of the event files in `logdir` (images: value None)."""
    import tensorflow as tf

    scalars: dict[str, list] = {}
    for name in sorted(os.listdir(logdir)):
        if name.startswith('events.out.tfevents'):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
                for value in event.summary.value:
                    number = tf.make_ndarray(value.tensor) if value.HasField('tensor') else None
                    scalar = float(number) if number is not None and number.ndim == 0 else None
                    scalars.setdefault(value.tag, []).append((event.step, scalar))
    return scalars


def _tensorboard_tags(logdir: str) -> set[str]:
    return set(_tensorboard_scalars(logdir))


def test_a_validation_split_picks_the_best_epoch_by_uar_among_the_evaluated_ones(tmp_path):
    config = tiny_config(num_epochs=3)
    config.data.val_fraction = 0.25
    config.checkpoint.best_metric = 'uar'
    config.eval_every_epochs = 2
    workdir = str(tmp_path / 'validated')
    train.train_and_evaluate(config, workdir)
    results = RunResults.read(workdir)
    assert results.selection_split == 'validation' and 'validation protocol' in results.protocol
    assert [h['epoch'] for h in results.history] == [1, 2, 3]
    evaluated = [h for h in results.history if 'test' in h]
    assert [h['epoch'] for h in evaluated] == [2, 3]  # every second epoch, and the last
    best = max(evaluated, key=lambda h: h['validation']['uar'])  # the first of equals
    assert results.best.epoch == best['epoch'] and results.best.selected_on == 'validation uar'
    assert results.best.selection_value == best['validation']['uar']
    assert results.best.test['war'] == best['test']['war']  # its test numbers are reported
    assert results.last.epoch == 3
    tags = _tensorboard_tags(workdir)
    expected = {'train/loss', 'train/accuracy', 'train/learning_rate', 'test/war', 'test/uar'}
    expected |= {'validation/uar', 'test/recall/happiness', 'test/confusion_matrix'}
    expected |= {'test/loss', 'validation/loss'}
    assert expected <= tags


def test_a_read_only_workdir_is_refused_before_any_work(tmp_path, monkeypatch):
    from former_dfer_jax.errors import UserError
    from tests.test_run_lock import read_only

    workdir = tmp_path / 'run'
    workdir.mkdir()
    read_only(monkeypatch, workdir)
    monkeypatch.setattr(train.data, 'info', lambda config: pytest.fail('data opened'))
    with pytest.raises(UserError) as caught:
        train.train_and_evaluate(tiny_config(), str(workdir))
    assert str(caught.value) == (f'{workdir}: cannot write to this workdir (Read-only file system)')


def test_a_workdir_of_another_model_is_refused_with_the_differences(tiny_run):
    _, workdir, _ = tiny_run
    other = tiny_config(num_epochs=EPOCHS)
    other.model.temporal.depth = 2
    with pytest.raises(train.TrainingError, match=r'model\.temporal\.depth: 1 .* vs 2'):
        train.train_and_evaluate(other, workdir)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / 'diverging')
    good = train.train_and_evaluate(tiny_config(num_epochs=1), workdir)
    diverging = tiny_config(num_epochs=2)
    diverging.optimizer.learning_rate = 1e30
    with pytest.raises(train.TrainingError, match=r'non-finite training loss at step (8|9) '):
        train.train_and_evaluate(diverging, workdir)
    assert _latest_steps(workdir) == [STEPS_PER_EPOCH]
    model = inference.open_run(workdir, 'latest').model
    restored = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]
    for a, b in zip(_params(good), restored, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fine_tuning_starts_from_the_checkpoint_weights(tiny_run, tmp_path):
    _, source, _ = tiny_run
    config = tiny_config(num_epochs=1)
    config.init_from = source
    config.optimizer.learning_rate = 0.0  # the weights must stay exactly those loaded
    config.optimizer.weight_decay = 0.0
    state = train.train_and_evaluate(config, str(tmp_path / 'finetune'))
    best = inference.open_run(source, 'best').model
    expected = nnx.to_pure_dict(nnx.state(best, nnx.Param))
    got = nnx.to_pure_dict(state.params)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fine_tuning_from_another_class_count_reinitialises_the_classifier(tmp_path):
    # A "pre-trained" 5-class model, fine-tuned on the 7-class synthetic set.
    source_config = tiny_config()
    source_config.model.num_classes = 5
    source = build_model(source_config.model, rngs=nnx.Rngs(123))
    checkpointing.save_model(str(tmp_path / 'source'), source, source_config)
    config = tiny_config(num_epochs=1)
    config.init_from = str(tmp_path / 'source')
    config.optimizer.learning_rate = 0.0
    config.optimizer.weight_decay = 0.0
    with pytest.raises(checkpointing.CheckpointError, match='reinit_classifier'):
        train.train_and_evaluate(config, str(tmp_path / 'refused'))
    config.reinit_classifier = True
    state = train.train_and_evaluate(config, str(tmp_path / 'finetune'))
    fresh = build_model(config.model, rngs=nnx.Rngs(config.seed))
    got = nnx.to_pure_dict(state.params)
    for part, want in (('spatial', source), ('temporal', source), ('classifier', fresh)):
        expected = nnx.to_pure_dict(nnx.state(getattr(want, part), nnx.Param))
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got[part]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.shape(got['classifier']['kernel']) == (512, 7)


# Why the device-count tests compare single steps, not trajectories: ReLU and max-pool are
# not differentiable at their kinks, and a rounding-level change of the forward pass (the
# order of a cross-device sum) moves a few of the ~4e5 activations of a tiny step across
# one. Each crossing changes the trunk's gradient by up to 2.3e-2 relative (measured: the
# same step after a 1-ulp random perturbation of the parameters), and training carries
# it on: from the same start, 1 and 2 devices drift apart by 1e-2 in four steps on some
# CPUs. So each step is compared from the same state, group by group, with tolerances
# measured on 7 steps of the tiny run (1 vs 2 devices / 1-ulp perturbation / the bug
# "BatchNorm statistics per device", relative norms):
#   loss                                    <= 2.3e-7        -> rtol 1e-5
#   temporal + classifier gradients (smooth) 5e-7 / 1.4e-6 / >= 9e-2   -> 1e-4
#   spatial gradients (below the kinks)      3e-6 / 2.3e-2 / >= 1.5    -> 0.1
#   BatchNorm running statistics (continuous in the forward pass)  4.9e-8   -> 1e-5
HEAD_GRADIENT_RTOL = 1e-4
BATCH_STATS_RTOL = 1e-5
SPATIAL_GRADIENT_RTOL = 0.1

_DEVICE_COUNT_SCRIPT = """
import functools, sys
import jax, numpy as np, optax
from flax import nnx
from jax.sharding import Mesh
from former_dfer_jax import data
from former_dfer_jax.training import sharding, steps
from former_dfer_jax.models import build_model
from tests.tiny import tiny_config
from tests.tiny import gradient_groups

assert jax.device_count() == 2
config = tiny_config()
schedule = steps.step_decay_schedule(config.optimizer, 100)
tx = steps.make_optimizer(config.optimizer, schedule)
state = steps.init_train_state(build_model(config.model, rngs=nnx.Rngs(0)), tx)

def train_step_on(devices):
    mesh = Mesh(np.array(devices), ('data',))
    replicated, batch_sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    step = jax.jit(functools.partial(steps.train_step, tx=tx, schedule=schedule),
                   out_shardings=(replicated, replicated))
    return lambda state, batch: step(jax.device_put(state, replicated),
                                     sharding.global_batch(batch, batch_sharded))

on_devices = {1: train_step_on(jax.devices()[:1]), 2: train_step_on(jax.devices()[:2])}
out = {}
for k, batch in zip(range(3), data.load(config, 'train', epoch=0)):
    for devices, train_step in on_devices.items():
        new, metrics = train_step(state, batch)
        out[f'{k}/{devices}/loss'] = np.asarray(metrics['loss'])
        trace = optax.tree_utils.tree_get(new.opt_state, 'trace')  # the momentum = gradients
        for group, values in gradient_groups(trace).items():
            out[f'{k}/{devices}/{group}'] = values
        out[f'{k}/{devices}/batch_stats'] = np.concatenate(
            [np.ravel(x) for x in jax.tree.leaves(new.rest)])
        next_state = new if devices == 1 else next_state
    state = next_state  # both device counts take the next step from the same state
np.savez(sys.argv[1], **out)
"""


def test_one_and_two_devices_compute_the_same_train_step(tmp_path):
    out = tmp_path / 'steps.npz'
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, '-c', _DEVICE_COUNT_SCRIPT, str(out)],
        check=True,
        env=env_with_devices(2),
        cwd=root,
    )
    values = dict(np.load(out))
    for k in range(3):
        one = {key.split('/')[2]: v for key, v in values.items() if key.startswith(f'{k}/1/')}
        two = {key.split('/')[2]: v for key, v in values.items() if key.startswith(f'{k}/2/')}
        # BatchNorm statistics span the global batch: only the summation order differs.
        np.testing.assert_allclose(two['loss'], one['loss'], rtol=1e-5)
        assert relative_difference(one['batch_stats'], two['batch_stats']) < BATCH_STATS_RTOL
        assert relative_difference(one['head'], two['head']) < HEAD_GRADIENT_RTOL
        assert relative_difference(one['spatial'], two['spatial']) < SPATIAL_GRADIENT_RTOL
