"""checkpointing: one way to load stored weights, and resuming past damaged checkpoints."""

import errno
import gc
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx, traverse_util

from former_dfer_jax import files
from former_dfer_jax.models import build_model
from former_dfer_jax.training import checkpointing, steps, train
from former_dfer_jax.training.checkpointing import CheckpointError, RunCheckpoints
from tests.tiny import TINY_RUN_EPOCHS, tiny_config

KEEP_LATEST = 2  # tests/tiny.py: checkpoints/latest holds the last two steps

# A failed Orbax restore leaves TensorStore reads behind that complete after their event
# loop has closed, reported whenever they are garbage-collected (during a later test of
# this module, too): noise from inside Orbax, not a failure of the code under test. The
# fixture collects them while still in this module.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


@pytest.fixture(autouse=True)
def _collect_orbax_leftovers():
    yield
    gc.collect()


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """(config, a copy of the tiny run's workdir, its final state): free to damage."""
    config, workdir, state = tiny_run
    copy = str(tmp_path / 'run')
    shutil.copytree(workdir, copy)
    return config, copy, state


def _latest_dir(workdir: str) -> str:
    return os.path.join(workdir, 'checkpoints', checkpointing.LATEST)


def _steps(workdir: str) -> list[int]:
    return sorted(int(name) for name in os.listdir(_latest_dir(workdir)) if name.isdigit())


def _largest_file(directory: str) -> str:
    files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
    return max(files, key=os.path.getsize)


def _targets(state: steps.TrainState):
    return (
        checkpointing.abstract_like(steps.model_state_dict(state)),
        checkpointing.abstract_like(state.opt_state),
    )


def _restore_latest(workdir: str, state: steps.TrainState):
    ckpts = RunCheckpoints(workdir, keep_latest=KEEP_LATEST)
    try:
        return ckpts.restore_latest(*_targets(state)), ckpts.latest_step()
    finally:
        ckpts.close()


def _flat(tree) -> dict:
    return {tuple(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _assert_is_step(model_state, workdir: str, step: int) -> None:
    model, _ = checkpointing.restore_model(os.path.join(_latest_dir(workdir), str(step)))
    expected = _flat(nnx.to_pure_dict(nnx.state(model)))
    actual = _flat(model_state)
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg=str(key))


# ---- Resuming ---------------------------------------------------------------------------


def test_resuming_restores_the_latest_step(run_copy):
    _, workdir, state = run_copy
    restored, _ = _restore_latest(workdir, state)
    assert restored.step == int(state.step) == _steps(workdir)[-1]
    final = _flat(steps.model_state_dict(state))
    for key, value in _flat(restored.model_state).items():
        np.testing.assert_array_equal(value, final[key], err_msg=str(key))


def test_a_truncated_latest_checkpoint_resumes_from_the_previous_step_with_a_warning(
    run_copy, caplog
):
    _, workdir, state = run_copy
    previous, latest = _steps(workdir)
    largest = _largest_file(os.path.join(_latest_dir(workdir), str(latest)))
    with open(largest, 'r+b') as f:
        f.truncate(os.path.getsize(largest) // 2)

    with caplog.at_level('WARNING'):
        restored, latest_step = _restore_latest(workdir, state)

    assert restored.step == previous
    _assert_is_step(restored.model_state, workdir, previous)
    warnings = [r.getMessage() for r in caplog.records if 'cannot be restored' in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert f'step {latest} in {_latest_dir(workdir)}' in warnings[0]
    assert '\n' not in warnings[0]
    # Set aside, so the resumed run can save that step again and resumes from `previous`.
    assert latest_step == previous and _steps(workdir) == [previous]
    assert os.path.isdir(os.path.join(workdir, 'checkpoints', 'unreadable', f'latest_{latest}'))


def test_a_latest_checkpoint_with_a_deleted_file_resumes_from_the_previous_step(run_copy, caplog):
    _, workdir, state = run_copy
    previous, latest = _steps(workdir)
    os.remove(_largest_file(os.path.join(_latest_dir(workdir), str(latest))))
    with caplog.at_level('WARNING'):
        restored, _ = _restore_latest(workdir, state)
    assert restored.step == previous
    assert f'step {latest}' in caplog.text


def test_the_resumed_run_can_save_the_step_that_was_unreadable_again(run_copy):
    _, workdir, state = run_copy
    _, latest = _steps(workdir)
    shutil.rmtree(os.path.join(_latest_dir(workdir), str(latest), 'model'))
    ckpts = RunCheckpoints(workdir, keep_latest=KEEP_LATEST)
    try:
        restored = ckpts.restore_latest(*_targets(state))
        ckpts.save(latest, restored.model_state, restored.optimizer_state, {'step': latest})
        ckpts.wait_until_finished()
        assert ckpts.latest_step() == latest
    finally:
        ckpts.close()


def test_when_every_step_is_unreadable_one_error_names_the_directory_and_steps(run_copy):
    _, workdir, state = run_copy
    stored = _steps(workdir)
    for step in stored:
        with open(_largest_file(os.path.join(_latest_dir(workdir), str(step))), 'wb') as f:
            f.write(b'not a checkpoint')
    with pytest.raises(CheckpointError) as caught:
        _restore_latest(workdir, state)
    message = str(caught.value)
    assert _latest_dir(workdir) in message and '\n' not in message
    assert all(str(step) in message for step in stored)
    assert _steps(workdir) == stored  # nothing set aside when nothing restores


def test_a_run_without_checkpoints_has_nothing_to_resume(tmp_path):
    ckpts = RunCheckpoints(str(tmp_path))
    try:
        assert ckpts.restore_latest({}, {}) is None
    finally:
        ckpts.close()


def test_the_best_checkpoint_holds_no_optimizer_state(tmp_path):
    ckpts = RunCheckpoints(str(tmp_path))
    weights, optimizer = {'w': np.ones(3, np.float32)}, {'m': np.zeros(3, np.float32)}
    try:
        ckpts.save(5, weights, optimizer, {'step': 5}, best_value=0.5)
        ckpts.wait_until_finished()
    finally:
        ckpts.close()
    best = os.path.join(tmp_path, 'checkpoints', checkpointing.BEST, '5')
    latest = os.path.join(tmp_path, 'checkpoints', checkpointing.LATEST, '5')
    assert os.path.isdir(os.path.join(best, 'model'))
    assert not os.path.exists(os.path.join(best, 'optimizer'))
    assert os.path.isdir(os.path.join(latest, 'optimizer'))


# ---- Loading a stored model -------------------------------------------------------------


def test_restore_model_returns_the_stored_model_and_where_it_came_from(tiny_run):
    config, workdir, state = tiny_run
    model, stored = checkpointing.restore_model(workdir, 'latest', model_config=config.model)
    assert (stored.run_dir, stored.step) == (workdir, int(state.step))
    assert stored.directory == _latest_dir(workdir)
    assert stored.config.model.to_dict() == config.model.to_dict()
    final = _flat(steps.model_state_dict(state))
    for key, value in _flat(nnx.to_pure_dict(nnx.state(model))).items():
        np.testing.assert_array_equal(value, final[key], err_msg=str(key))


def test_restore_model_refuses_another_model_config_naming_the_run_and_keys(tiny_run):
    config, workdir, _ = tiny_run
    other = config.model.copy_and_resolve_references()
    other.temporal.depth = 2
    with pytest.raises(CheckpointError, match=r'model\.temporal\.depth: 1 .* vs 2') as caught:
        checkpointing.restore_model(workdir, model_config=other)
    assert workdir in str(caught.value)


# ---- Fine-tuning from a stored model ----------------------------------------------------


def _model_with_classes(num_classes: int) -> nnx.Module:
    config = tiny_config()
    config.model.num_classes = num_classes
    return build_model(config.model, rngs=nnx.Rngs(1))


def test_fine_tuning_for_a_new_class_count_keeps_the_trunk_and_the_fresh_classifier(tiny_run):
    _, workdir, _ = tiny_run
    model = _model_with_classes(5)
    fresh = _flat(nnx.to_pure_dict(nnx.state(model)))
    source, _ = checkpointing.restore_model(workdir, 'best')
    trained = _flat(nnx.to_pure_dict(nnx.state(source)))

    stored = checkpointing.load_init_weights(model, workdir, reinit_classifier=True)

    assert stored.run_dir == workdir
    loaded = _flat(nnx.to_pure_dict(nnx.state(model)))
    head = tuple(model.classifier_path())
    assert loaded.keys() == fresh.keys()
    for key, value in loaded.items():
        expected = fresh[key] if key[: len(head)] == head else trained[key]
        np.testing.assert_array_equal(value, expected, err_msg=str(key))
    assert loaded[(*head, 'kernel')].shape[-1] == 5
    assert any(not np.array_equal(fresh[k], trained[k]) for k in fresh if k[0] != head[0])


def test_fine_tuning_for_a_new_class_count_without_reinit_classifier_is_explained(tiny_run):
    _, workdir, _ = tiny_run
    _, _, step = checkpointing.resolve_checkpoint(workdir, 'best')
    with pytest.raises(CheckpointError) as caught:
        checkpointing.load_init_weights(_model_with_classes(5), workdir, reinit_classifier=False)
    message = str(caught.value)
    assert f'init_from={workdir}' in message and f'step {step}' in message
    assert 'classifier.kernel' in message and 'classifier.bias' in message
    assert 'set reinit_classifier=True for a new class count' in message


LAYER_1 = ('temporal', 'encoder', 'layers', '1')


def test_fine_tuning_reports_every_missing_variable_at_once(tiny_run):
    _, workdir, _ = tiny_run
    config = tiny_config()
    config.model.temporal.depth = 2  # a second T-Former layer the checkpoint lacks
    model = build_model(config.model, rngs=nnx.Rngs(0))
    with pytest.raises(CheckpointError, match='missing in the checkpoint') as caught:
        checkpointing.load_init_weights(model, workdir, reinit_classifier=False)
    message = str(caught.value)
    layer = [k for k in _flat(nnx.to_pure_dict(nnx.state(model))) if k[:4] == LAYER_1]
    assert len(layer) > 1 and message.count('missing in the checkpoint') == len(layer)
    assert all('.'.join(k) in message for k in layer)


# ---- Config helpers ---------------------------------------------------------------------


def test_flatten_dict_joins_nested_keys_with_dots_under_a_prefix():
    tree = {'a': {'b': 1, 'c': {'d': 2}}, 'e': 3}
    assert checkpointing.flatten_dict(tree) == {'a.b': 1, 'a.c.d': 2, 'e': 3}
    assert checkpointing.flatten_dict(tree, 'model') == {
        'model.a.b': 1,
        'model.a.c.d': 2,
        'model.e': 3,
    }


def test_a_run_written_before_a_config_key_existed_reads_with_that_keys_default(tmp_path):
    from former_dfer_jax import default_config

    stored = default_config.get_config()
    stored.data.root = '/data/DFEW'
    del stored.data['face_crop']  # a key added after this run was written
    checkpointing.write_config(str(tmp_path), stored)
    config = checkpointing.read_config(str(tmp_path))
    assert config.data.face_crop == default_config.get_config().data.face_crop
    assert config.data.root == '/data/DFEW'  # stored values are kept


# ---- A full disk ----------------------------------------------------------------------------


def _disk_full_at(monkeypatch, workdir: str, failing_step: int) -> None:
    """Orbax's save of `failing_step` finds no space: it leaves a partial step directory
    and surfaces the ENOSPC as its asyncio machinery does, wrapped in another error."""
    real_save = ocp.CheckpointManager.save

    def save(manager, step, *args, **kwargs):
        if step != failing_step:
            return real_save(manager, step, *args, **kwargs)
        partial = os.path.join(str(manager.directory), f'{step}.orbax-checkpoint-tmp-1')
        os.makedirs(os.path.join(partial, 'model'))
        try:
            raise OSError(errno.ENOSPC, 'No space left on device')
        except OSError:
            raise RuntimeError('Event loop is closed')  # noqa: B904 (as Orbax surfaces it)

    monkeypatch.setattr(ocp.CheckpointManager, 'save', save)


def test_a_full_disk_during_a_save_is_one_line_and_the_same_command_resumes_to_the_same_end(
    tiny_run, tmp_path, monkeypatch
):
    _, _, uninterrupted = tiny_run
    config = tiny_config(num_epochs=TINY_RUN_EPOCHS)
    workdir = str(tmp_path / 'run')
    last = int(uninterrupted.step)
    first_epoch_end = last // TINY_RUN_EPOCHS
    _disk_full_at(monkeypatch, workdir, last)

    with pytest.raises(files.NoSpaceError) as caught:
        train.train_and_evaluate(config, workdir)

    latest = _latest_dir(workdir)
    message = str(caught.value)
    assert '\n' not in message
    assert message.startswith(f'checkpoint step {last} not saved: no space left on {latest} (')
    assert message.endswith(
        f' free); step {first_epoch_end} is intact; free space and run the same command again'
    )
    assert os.listdir(latest) == [str(first_epoch_end)]  # the partial step is gone
    monkeypatch.undo()  # space freed

    resumed = train.train_and_evaluate(config, workdir)

    assert int(resumed.step) == last
    expected = _flat(steps.model_state_dict(uninterrupted))
    for key, value in _flat(steps.model_state_dict(resumed)).items():
        np.testing.assert_array_equal(value, expected[key], err_msg=str(key))


def test_every_later_call_that_meets_the_full_disk_reports_the_same_line(tmp_path, monkeypatch):
    ckpts = RunCheckpoints(str(tmp_path / 'run'), keep_latest=KEEP_LATEST)

    def full(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, 'No space left on device')
        except OSError:
            raise RuntimeError('Event loop is closed')  # noqa: B904 (as Orbax surfaces it)

    state = {'w': np.zeros(3, np.float32)}
    monkeypatch.setattr(ckpts.latest, 'save', full)
    with pytest.raises(files.NoSpaceError) as first:
        ckpts.save(5, state, state, {'step': 5})
    monkeypatch.setattr(ckpts.latest, 'wait_until_finished', full)  # as the finally meets it
    with pytest.raises(files.NoSpaceError) as again:
        ckpts.wait_until_finished()
    assert str(again.value) == str(first.value)
    assert str(first.value).startswith('checkpoint step 5 not saved: no space left on ')
    assert 'no earlier checkpoint' in str(first.value)
    monkeypatch.undo()
    ckpts.close()


def test_a_full_disk_met_by_the_best_checkpoint_alone_names_it_and_the_latest_kept(
    tmp_path, monkeypatch
):
    ckpts = RunCheckpoints(str(tmp_path / 'run'), keep_latest=KEEP_LATEST)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    state = {'w': np.zeros(3, np.float32)}
    monkeypatch.setattr(ckpts.best, 'save', full)
    with pytest.raises(files.NoSpaceError) as caught:
        ckpts.save(5, state, state, {'step': 5}, best_value=0.5)
        ckpts.wait_until_finished()
    assert str(caught.value).startswith('the best checkpoint (step 5) not saved: no space left')
    assert 'the latest checkpoint, step 5, is intact' in str(caught.value)
    monkeypatch.undo()
    ckpts.close()
