"""evaluate: metrics of one stored checkpoint, equal to what training recorded."""

import numpy as np
import pytest

from former_dfer_jax import checkpointing, evaluate
from former_dfer_jax.results import EpochResult, RunResults
from tests.tiny import tiny_config


def _recorded(workdir: str, which: str) -> EpochResult:
    return getattr(RunResults.read(workdir), which)


def test_the_latest_checkpoint_scores_what_the_last_epoch_recorded(tiny_run):
    config, workdir, _ = tiny_run
    summary = evaluate.evaluate_checkpoint(config, workdir, 'latest')
    recorded = _recorded(workdir, 'last')
    assert summary['step'] == recorded.step
    np.testing.assert_array_equal(summary['confusion_matrix'], recorded.test['confusion_matrix'])
    assert summary['war'] == recorded.test['war']  # the same counts, the same division


def test_the_best_checkpoint_is_the_recorded_best_epoch(tiny_run):
    config, workdir, _ = tiny_run
    summary = evaluate.evaluate_checkpoint(config, workdir, 'best')
    recorded = _recorded(workdir, 'best')
    assert summary['step'] == recorded.step
    assert summary['war'] == recorded.test['war']  # the same counts, the same division


def test_a_checkpoint_of_another_model_is_refused(tiny_run):
    _, workdir, _ = tiny_run
    other = tiny_config()
    other.model.spatial.enabled = False
    with pytest.raises(checkpointing.CheckpointError, match=r'model\.spatial\.enabled'):
        evaluate.evaluate_checkpoint(other, workdir, 'latest')


def test_a_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(checkpointing.CheckpointError, match='no such checkpoint'):
        evaluate.evaluate_checkpoint(tiny_config(), str(tmp_path / 'nothing'), 'best')


def test_a_run_directory_without_checkpoints_is_named(tmp_path):
    config = tiny_config()
    checkpointing.write_config(str(tmp_path), config)  # a run that never saved a step
    with pytest.raises(checkpointing.CheckpointError, match='no best checkpoint') as caught:
        evaluate.evaluate_checkpoint(config, str(tmp_path), 'best')
    assert str(tmp_path) in str(caught.value)
