"""Training from `init_from`: a fine-tune starts from exactly the stored weights, whether
they are a checkpoint step directory of an earlier run or a converted PyTorch checkpoint.

Each fine-tune trains at learning rate 0 and stops after its first step, so its parameters
are still those it started from.
"""

import os

import jax
import numpy as np
import pytest
from flax import nnx, traverse_util

from former_dfer_jax import convert_torch, inference
from former_dfer_jax.training import train
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
