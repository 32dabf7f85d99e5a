"""evaluate: metrics of one stored checkpoint, equal to what training recorded."""

import json
import os
import shutil

import numpy as np
import pytest

from former_dfer_jax import evaluate
from former_dfer_jax.training import checkpointing
from former_dfer_jax.training.results import EpochResult, RunResults
from tests.test_cli import run_entry_point
from tests.tiny import OWN_CLASS_NAMES, tiny_config


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


def test_evaluate_checkpoint_path_scores_that_step_and_writes_eval_path_step_split_json(
    tiny_run, tmp_path, capsys
):
    _, source, _ = tiny_run
    # A copy without best/: only the step directory itself names the first epoch's step.
    run_dir = str(tmp_path / 'run')
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns(checkpointing.BEST))
    history = RunResults.read(run_dir).history
    first_epoch = history[0]  # 'best' and 'latest' would both be the last epoch's
    step_dir = os.path.join(run_dir, 'checkpoints', 'latest', str(first_epoch['step']))
    config_file = tmp_path / 'tiny.py'  # the tiny run's config as a config file
    config_file.write_text('from tests.tiny import tiny_config\n\nget_config = tiny_config\n')
    out_dir = tmp_path / 'out'
    out_dir.mkdir()

    status = run_entry_point(
        evaluate, f'--config={config_file}', f'--workdir={out_dir}', f'--checkpoint={step_dir}'
    )

    assert status == 0
    out = out_dir / f'eval_path_step{first_epoch["step"]}_test.json'
    assert os.listdir(out_dir) == [out.name]
    with open(out) as f:
        written = json.load(f)
    assert (written['checkpoint'], written['step'], written['split']) == (
        run_dir,
        first_epoch['step'],
        'test',
    )
    assert written['war'] == first_epoch['test']['war']
    assert written['uar'] == first_epoch['test']['uar']
    printed = capsys.readouterr().out
    assert f'test split of {run_dir} at step {first_epoch["step"]}, percent:' in printed
    assert f'Written to {out}' in printed


def test_an_own_run_of_11_classes_is_reported_with_its_class_names(own_run, tmp_path, capsys):
    config, run_dir = own_run
    config_file = tmp_path / 'own.py'
    config_file.write_text(
        'from tests.tiny import own_config\n\n'
        f'def get_config():\n    return own_config({config.data.root!r})\n'
    )
    workdir = str(tmp_path / 'run')
    shutil.copytree(run_dir, workdir)

    status = run_entry_point(evaluate, f'--config={config_file}', f'--workdir={workdir}')

    assert status == 0
    (written,) = (name for name in os.listdir(workdir) if name.startswith('eval_best'))
    with open(os.path.join(workdir, written)) as f:
        summary = json.load(f)
    assert tuple(summary['per_class_recall']) == OWN_CLASS_NAMES
    assert np.shape(summary['confusion_matrix']) == (11, 11)
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith('|'))
    assert [cell.strip() for cell in header.strip('|').split('|')][1:12] == list(OWN_CLASS_NAMES)
