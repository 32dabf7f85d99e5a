"""cross_validate: five folds, resumable, summarised per fold and pooled (Table 4 layout)."""

import json
import os

import numpy as np
import pytest

from former_dfer_jax import cross_validate, metrics
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


def test_finished_folds_are_skipped(cv_workdir):
    before = {
        fold: os.path.getmtime(
            os.path.join(cross_validate.fold_dir(cv_workdir, fold), 'results.json')
        )
        for fold in FOLDS
    }
    cross_validate.run_folds(tiny_config(), cv_workdir, FOLDS)
    after = {
        fold: os.path.getmtime(
            os.path.join(cross_validate.fold_dir(cv_workdir, fold), 'results.json')
        )
        for fold in FOLDS
    }
    assert before == after


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


def test_an_unfinished_fold_is_named(cv_workdir, tmp_path):
    with pytest.raises(ValueError, match=r'folds \[2\]'):
        cross_validate.summarize(str(tmp_path), [2])
    del cv_workdir
