"""inference.load_model: a stored run back as an eval-mode model that gives logits."""

import numpy as np
import pytest

from former_dfer_jax import checkpointing, inference
from tests.tiny import random_clips


def test_load_model_returns_the_trained_model_in_eval_mode(tiny_run):
    config, workdir, state = tiny_run
    model = inference.load_model(workdir, 'latest')
    clips = random_clips(config, 2)
    logits = np.asarray(model(clips))
    assert logits.shape == (2, 7)
    expected = np.asarray(state.model(train=False)(clips))  # the run's final weights
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(logits, np.asarray(model(clips)))  # no statistics update


def test_a_step_directory_can_be_loaded_directly(tiny_run):
    _, workdir, state = tiny_run
    run_dir, manager_dir, step = checkpointing.resolve_checkpoint(workdir, 'latest')
    assert (run_dir, step) == (workdir, int(state.step))
    model = inference.load_model(f'{manager_dir}/{step}')
    assert model.spec.num_classes == 7


def test_predict_gives_probabilities(tiny_run):
    config, workdir, _ = tiny_run
    probabilities = np.asarray(
        inference.predict(inference.load_model(workdir), random_clips(config, 3))
    )
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


def test_a_directory_that_is_no_run_is_explained(tmp_path):
    with pytest.raises(checkpointing.CheckpointError, match='neither a run directory'):
        inference.load_model(str(tmp_path))
