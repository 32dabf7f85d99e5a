"""inference.open_run: a stored run back as an eval-mode model with what using it needs."""

import numpy as np
import pytest

from former_dfer_jax import inference
from former_dfer_jax.training import checkpointing
from tests.tiny import random_clips


def test_open_run_returns_the_trained_model_in_eval_mode(tiny_run):
    config, workdir, state = tiny_run
    model = inference.open_run(workdir, 'latest').model
    clips = random_clips(config, 2)
    logits = np.asarray(model(clips))
    assert logits.shape == (2, 7)
    # The run's final weights, restored bit for bit, in the same eval-mode computation:
    # the logits are equal, not close (measured: bitwise equal).
    expected = np.asarray(state.model(train=False)(clips))
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(logits, np.asarray(model(clips)))  # no statistics update


def test_a_step_directory_can_be_loaded_directly(tiny_run):
    _, workdir, state = tiny_run
    run_dir, manager_dir, step = checkpointing.resolve_checkpoint(workdir, 'latest')
    assert (run_dir, step) == (workdir, int(state.step))
    model = inference.open_run(f'{manager_dir}/{step}').model
    assert model.spec.num_classes == 7


def test_predict_gives_the_softmax_of_the_models_logits(tiny_run):
    config, workdir, _ = tiny_run
    run = inference.open_run(workdir)
    model = run.model
    clips = random_clips(config, 3)
    probabilities = np.asarray(run.predict(clips))
    logits = np.asarray(model(clips), np.float64)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    assert probabilities.shape == (3, 7) and probabilities.dtype == np.float32
    # float32 softmax against the float64 one of the same logits: measured max abs error
    # 2.9e-8 (1 ulp; probabilities up to 0.43); 1.5e-7 is ~5x.
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1.5e-7)


def test_a_directory_that_is_no_run_is_explained(tmp_path):
    with pytest.raises(checkpointing.CheckpointError, match='neither a run directory'):
        inference.open_run(str(tmp_path))


def test_opening_a_run_logs_no_warning(tiny_run, caplog):
    _, workdir, _ = tiny_run
    with caplog.at_level('WARNING'):
        inference.open_run(workdir)
    assert not [r for r in caplog.records if r.levelname == 'WARNING'], caplog.text
