"""cross_validate: five folds, resumable, summarised per fold and pooled (Table 4 layout)."""

import json
import os

import numpy as np
import pytest

from former_dfer_jax import cross_validate, data
from former_dfer_jax.training import metrics, train
from former_dfer_jax.training.results import EpochResult, RunResults
from tests.test_cli import REPO, run_entry_point
from tests.tiny import tiny_config

FOLDS = [1, 2, 3, 4, 5]


@pytest.fixture(scope='module')
def cv_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('cv'))
    cross_validate.run_folds(tiny_config(), workdir, FOLDS)
    return workdir


def test_every_fold_trains_in_its_own_directory(cv_workdir):
    for fold in FOLDS:
        results = cross_validate.fold_results(cv_workdir, fold)
        assert results is not None and results.finished
        with open(os.path.join(cross_validate.fold_dir(cv_workdir, fold), 'config.json')) as f:
            assert json.load(f)['data']['fold'] == fold


def _no_training(config, workdir, **kwargs):
    pytest.fail(f'trained in {workdir} although nothing was left to train')


def test_finished_folds_are_skipped(cv_workdir, monkeypatch):
    monkeypatch.setattr(train, 'train_and_evaluate', _no_training)
    cross_validate.run_folds(tiny_config(), cv_workdir, FOLDS)


def test_an_interrupted_fold_resumes_where_it_stopped(cv_workdir, tmp_path, monkeypatch):
    workdir = str(tmp_path / 'cv')
    config = tiny_config()
    config.data.fold = 1
    train.train_and_evaluate(config, cross_validate.fold_dir(workdir, 1), stop_at_step=3)
    starts = []  # (epoch, first batch) of every training epoch the input pipeline starts
    load = data.load

    def recording_load(config, split, **kwargs):
        if split == 'train':
            starts.append((kwargs.get('epoch'), kwargs.get('start_batch')))
        return load(config, split, **kwargs)

    monkeypatch.setattr(data, 'load', recording_load)
    cross_validate.run_folds(tiny_config(), workdir, [1])
    assert starts == [(0, 3)]  # from batch 3 of the first epoch on, not from the start
    resumed = cross_validate.fold_results(workdir, 1)
    straight = cross_validate.fold_results(cv_workdir, 1)  # the same fold, never stopped
    assert resumed.history == straight.history
    assert resumed.last == straight.last


def test_the_summary_pools_every_test_clip_once(cv_workdir):
    summary = cross_validate.summarize(cv_workdir, FOLDS)
    cross_validate.write_summary(cv_workdir, summary)
    for which in ('best', 'last'):
        block = summary[which]
        pooled = np.array(block['pooled']['confusion_matrix'])
        # The synthetic set's 35 clips: each is in exactly one fold's test split.
        assert pooled.sum() == 35
        per_fold = sum(np.array(r['confusion_matrix']) for r in block['per_fold'].values())
        np.testing.assert_array_equal(pooled, per_fold)
        assert block['pooled']['war'] == pytest.approx(metrics.war(pooled))
        mean_war = np.mean([r['war'] for r in block['per_fold'].values()])
        assert block['mean_over_folds']['war'] == pytest.approx(mean_war)
    with open(os.path.join(cv_workdir, 'summary.md')) as f:
        table = f.read()
    assert '| fold 5 |' in table and '| pooled (all folds) |' in table
    assert 'UAR | WAR |' in table
    for which in ('best', 'last'):
        assert os.path.getsize(os.path.join(cv_workdir, f'confusion_matrix_{which}.png')) > 0


def test_the_summary_compares_every_fold_with_the_authors_log(cv_workdir):
    summary = cross_validate.summarize(cv_workdir, FOLDS)
    cross_validate.write_summary(cv_workdir, summary)
    rows = summary['reproduction']
    labels = [f'fold {k}' for k in FOLDS]
    assert list(rows) == [*labels, 'mean over folds', 'pooled (all folds)']
    assert [rows[label]['reference'] for label in labels] == [f'DFEW-set{k}' for k in FOLDS]
    their_best = [rows[label]['best']['reference_war'] for label in labels]
    assert np.mean(their_best) == pytest.approx(0.65701)  # the paper's 65.70
    assert rows['mean over folds']['best']['reference_war'] == pytest.approx(0.65701)
    assert rows['mean over folds']['last']['reference_war'] == pytest.approx(0.651622)
    for which in ('best', 'last'):
        pooled = rows['pooled (all folds)'][which]
        assert pooled['war'] == summary[which]['pooled']['war']
        assert pooled['uar'] == summary[which]['pooled']['uar']
        assert rows['fold 2'][which]['war'] == summary[which]['per_fold']['fold 2']['war']
    with open(os.path.join(cv_workdir, 'summary.md')) as f:
        text = f.read()
    assert "## Reproduction: ours vs the authors' logs" in text
    assert '| fold 3 | DFEW-set3 | ' in text
    assert '| mean over folds | mean | - | ' in text
    assert 'The synthetic stand-in is not DFEW' in text
    assert os.path.getsize(os.path.join(cv_workdir, 'reproduction.png')) > 0


# Two folds of a 3-class problem, [true, predicted] counts of their test clips, chosen so
# that pooling (summed matrices) and the mean over folds give different numbers.
CLASSES = ['a', 'b', 'c']
BEST = {1: [[2, 1, 0], [0, 3, 0], [1, 0, 1]], 2: [[1, 0, 0], [1, 1, 0], [0, 0, 4]]}
LAST = {1: [[3, 0, 0], [0, 3, 0], [0, 0, 2]], 2: [[0, 1, 0], [0, 2, 0], [0, 0, 4]]}
BEST_EPOCHS, LAST_EPOCHS = {1: 3, 2: 5}, {1: 6, 2: 6}


def _finished_folds(workdir: str) -> str:
    """fold_1 and fold_2 of `workdir`, finished, with the BEST / LAST test matrices."""
    for fold in (1, 2):
        best = metrics.summarize(np.array(BEST[fold]), CLASSES)
        last = metrics.summarize(np.array(LAST[fold]), CLASSES)
        results = RunResults(
            protocol='test-split selection (the reference protocol)',
            selection_split='test',
            selection_metric='war',
            class_names=CLASSES,
            workdir=cross_validate.fold_dir(workdir, fold),
            best=EpochResult(BEST_EPOCHS[fold], 10 * BEST_EPOCHS[fold], best, 'test war', 0.5),
            last=EpochResult(LAST_EPOCHS[fold], 10 * LAST_EPOCHS[fold], last),
            finished=True,
        )
        os.makedirs(results.workdir)
        results.write(results.workdir)
    return workdir


def test_the_pooled_metrics_are_those_of_the_summed_confusion_matrices(tmp_path):
    summary = cross_validate.summarize(_finished_folds(str(tmp_path)), [1, 2])
    best, last = summary['best']['pooled'], summary['last']['pooled']
    # best: [[3, 1, 0], [1, 4, 0], [1, 0, 5]]: 12 of 15 right; recalls 3/4, 4/5, 5/6.
    assert best['confusion_matrix'] == [[3, 1, 0], [1, 4, 0], [1, 0, 5]]
    assert best['war'] == pytest.approx(12 / 15)
    assert best['uar'] == pytest.approx((3 / 4 + 4 / 5 + 5 / 6) / 3)
    assert best['per_class_recall'] == pytest.approx({'a': 3 / 4, 'b': 4 / 5, 'c': 5 / 6})
    # last: [[3, 1, 0], [0, 5, 0], [0, 0, 6]]: 14 of 15 right; recalls 3/4, 1, 1.
    assert last['confusion_matrix'] == [[3, 1, 0], [0, 5, 0], [0, 0, 6]]
    assert last['war'] == pytest.approx(14 / 15)
    assert last['uar'] == pytest.approx((3 / 4 + 1 + 1) / 3)


def test_the_mean_over_folds_averages_each_folds_metrics(tmp_path):
    summary = cross_validate.summarize(_finished_folds(str(tmp_path)), [1, 2])
    # best: fold 1 WAR 6/8, UAR (2/3 + 1 + 1/2) / 3; fold 2 WAR 6/7, UAR (1 + 1/2 + 1) / 3.
    assert summary['best']['mean_over_folds'] == pytest.approx(
        {'war': (6 / 8 + 6 / 7) / 2, 'uar': ((2 / 3 + 1 + 1 / 2) / 3 + (1 + 1 / 2 + 1) / 3) / 2}
    )
    # last: fold 1 all right; fold 2 WAR 6/7, UAR (0 + 1 + 1) / 3.
    assert summary['last']['mean_over_folds'] == pytest.approx(
        {'war': (1 + 6 / 7) / 2, 'uar': (1 + 2 / 3) / 2}
    )
    assert summary['best']['epochs'] == {'fold 1': 3, 'fold 2': 5}
    assert summary['last']['epochs'] == {'fold 1': 6, 'fold 2': 6}
    assert summary['best']['per_fold']['fold 2']['confusion_matrix'] == BEST[2]


def test_summarize_only_rebuilds_the_summary_without_training(tmp_path, capsys, monkeypatch):
    workdir = _finished_folds(str(tmp_path))
    monkeypatch.setattr(train, 'train_and_evaluate', _no_training)
    status = run_entry_point(
        cross_validate,
        f'--config={REPO}/configs/synthetic.py',
        f'--workdir={workdir}',
        '--folds=1,2',
        '--summarize_only',
    )
    assert status == 0
    printed = capsys.readouterr().out
    # best: UAR (143/180 pooled, 7/9 mean), WAR (4/5 pooled, 45/56 mean), in percent.
    assert '| pooled (all folds) | 75.00 | 80.00 | 83.33 | 79.44 | 80.00 |' in printed
    assert 'Mean over folds: UAR 77.78, WAR 80.36.' in printed
    assert 'Reproduction' not in printed  # folds without the authors' curve to compare with
    with open(os.path.join(workdir, 'summary.md')) as f:
        assert f.read() in printed
    with open(os.path.join(workdir, 'summary.json')) as f:
        assert json.load(f) == json.loads(json.dumps(cross_validate.summarize(workdir, [1, 2])))
    for which in ('best', 'last'):
        assert os.path.getsize(os.path.join(workdir, f'confusion_matrix_{which}.png')) > 0


def test_summarize_only_names_the_folds_that_have_not_finished(tmp_path, capsys, monkeypatch):
    workdir = _finished_folds(str(tmp_path))
    monkeypatch.setattr(train, 'train_and_evaluate', _no_training)  # folds 3-5 stay undone
    config = f'--config={REPO}/configs/synthetic.py'
    status = run_entry_point(cross_validate, config, f'--workdir={workdir}', '--summarize_only')
    assert status == 1
    assert capsys.readouterr().err.endswith(
        f'error: {workdir}: folds [3, 4, 5] have not finished; run without --summarize_only\n'
    )


def test_an_unfinished_fold_is_named(cv_workdir, tmp_path):
    with pytest.raises(ValueError, match=r'folds \[2\]'):
        cross_validate.summarize(str(tmp_path), [2])
    del cv_workdir
