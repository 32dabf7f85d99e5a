"""The train command: a fine-tune from `init_from` starts from exactly the stored weights
(a checkpoint step directory of an earlier run or a converted PyTorch checkpoint), and a
DFEW run is compared with the authors' curve of its fold, from the first epoch to the report.

Each fine-tune trains at learning rate 0 and stops after its first step, so its parameters
are still those it started from.
"""

import os

import jax
import numpy as np
import pytest
from flax import nnx, traverse_util

from former_dfer_jax import convert_torch, inference, main
from former_dfer_jax.training import reference, train
from former_dfer_jax.training.results import RunResults
from tests.tiny import tiny_config


def _flat_params(tree) -> dict[tuple, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _stored_params(path: str) -> dict[tuple, np.ndarray]:
    return _flat_params(nnx.to_pure_dict(nnx.state(inference.open_run(path).model, nnx.Param)))


def _fine_tune_start(init_from: str, workdir: str) -> dict[tuple, np.ndarray]:
    """The parameters a fine-tune from `init_from` holds after one step at learning rate 0."""
    config = tiny_config(num_epochs=1)
    config.init_from = init_from
    config.optimizer.learning_rate = 0.0
    config.optimizer.weight_decay = 0.0
    state = train.train_and_evaluate(config, workdir, stop_at_step=1)
    return _flat_params(nnx.to_pure_dict(jax.device_get(state.params)))


def _assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))


def test_fine_tuning_from_a_step_directory_starts_from_that_step(tiny_run, tmp_path):
    _, run_dir, _ = tiny_run
    best_step = RunResults.read(run_dir).best.step
    latest = os.path.join(run_dir, 'checkpoints', 'latest')
    step = next(s for s in sorted(map(int, os.listdir(latest))) if s != best_step)
    step_dir = os.path.join(latest, str(step))
    expected = _stored_params(step_dir)
    best = _stored_params(run_dir)  # what the run directory alone would start from
    assert any(not np.array_equal(expected[k], best[k]) for k in expected)

    _assert_same(_fine_tune_start(step_dir, str(tmp_path / 'finetune')), expected)


def test_fine_tuning_from_a_converted_pytorch_checkpoint_starts_from_its_weights(tmp_path):
    pytest.importorskip('torch')
    from tests.test_convert_torch import make_torch_model, save_like_reference

    # The tiny model: 32 px frames give a 2 x 2 conv4 map (4 tokens), 4 frames, depths 1, 1.
    torch_model = make_torch_model(num_patches=4, num_frames=4, s_depth=1, t_depth=1, seed=3)
    checkpoint = str(tmp_path / 'model_best.pth')
    save_like_reference(torch_model, checkpoint)
    imported = str(tmp_path / 'imported')
    convert_torch.convert_and_save(checkpoint, imported, tiny_config())

    got = _fine_tune_start(imported, str(tmp_path / 'finetune'))

    _assert_same(got, _stored_params(imported))
    # And those are the PyTorch weights themselves ([out, in] linear layers transposed).
    torch_weights = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    np.testing.assert_array_equal(got[('classifier', 'kernel')], torch_weights['fc.weight'].T)
    np.testing.assert_array_equal(got[('classifier', 'bias')], torch_weights['fc.bias'])
    np.testing.assert_array_equal(
        got[('temporal', 'cls_token')].reshape(-1), torch_weights['t_former.cls_token'].reshape(-1)
    )


# A DFEW tree as its owners distribute it: 21 clips of 6 frames, 2 of each class in the
# training list of fold 1 (14 clips: 3 steps of 4), one of each in its test list.
DFEW_CLIPS = {i: (6, i % 7) for i in range(1, 22)}
DFEW_FOLD_1 = (list(range(1, 15)), list(range(15, 22)))


def test_a_dfew_run_is_compared_with_the_authors_fold_and_warned_once(
    tmp_path, raw_data, monkeypatch, capsys
):
    from tests.test_cli import REPO, run_entry_point
    from tests.test_train import _tensorboard_scalars

    root = raw_data.dfew(tmp_path / 'DFEW', DFEW_CLIPS, {1: DFEW_FOLD_1})
    workdir = tmp_path / 'run'
    # Forced below the authors' spread: a floor above any WAR.
    monkeypatch.setattr(reference, 'floor', lambda group, epoch: 1.01)
    warnings = []
    monkeypatch.setattr(train.logging, 'warning', lambda msg, *args: warnings.append(msg % args))
    overrides = {
        'data.root': root,
        'data.stored_frame_size': 0,
        'data.image_size': 32,
        'data.crop_area_min': 1.0,
        'data.num_segments': 2,
        'model.spatial.depth': 1,
        'model.temporal.depth': 1,
        'batch_size': 4,
        'eval_batch_size': 4,
        'num_epochs': 3,
        'log_every_steps': 2,
    }
    status = run_entry_point(
        main,
        f'--config={REPO}/configs/dfew.py',
        f'--workdir={workdir}',
        *(f'--config.{key}={value}' for key, value in overrides.items()),
    )
    assert status == 0
    results = RunResults.read(str(workdir))
    assert results.reference == {
        'run': 'DFEW-set1',
        'differences': [
            'epochs 3 (theirs 100)',
            'schedule constant (theirs x0.1 every 40 epochs)',
            'batch size 4 (theirs 32)',
            'frames 4 (theirs 16)',
            'image size 32 (theirs 112)',
        ],
        'note': '',
    }
    theirs = reference.curves()['DFEW-set1']
    assert [h['reference']['test_war'] for h in results.history] == [
        theirs.war(e) for e in (1, 2, 3)
    ]
    # The warning: once, at the first epoch, kept in results.json; the run went on.
    early = [w for w in warnings if w.startswith('Early warning')]
    assert len(early) == 1 and 'after epoch 1 ' in early[0] and 'face crops' in early[0]
    assert results.reference_warning.startswith('epoch 1: test WAR')
    assert results.finished and len(results.history) == 3
    # The authors' fold 1 as its own TensorBoard run, at our steps (3 per epoch).
    curve = _tensorboard_scalars(str(workdir / 'reference'))['test/war']
    assert curve == [
        (3, pytest.approx(0.213)),
        (6, pytest.approx(0.24508)),
        (9, pytest.approx(0.25577)),
    ]
    # The report: the reproduction table, the warning, the plot.
    printed = capsys.readouterr().out
    assert "Reproduction: this run vs the authors' log" in printed
    assert '| this run | DFEW-set1 | ' in printed and '| 3 / 100 |' in printed
    assert '66.21' in printed and '65.48' in printed  # their best and last WAR
    assert 'Early warning at epoch 1: ' in printed
    assert "Compared with the authors' DFEW-set1 log (recipe differs: epochs 3" in printed
    assert (workdir / 'reproduction.png').stat().st_size > 0
    assert f'Curves:       {workdir / "reproduction.png"}' in printed
