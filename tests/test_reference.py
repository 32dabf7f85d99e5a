"""The authors' packaged curves against figures read off their logs by hand, the matching
of runs to curves, the warning margin, and the reproduction rows."""

import os
import tomllib

import ml_collections
import numpy as np
import pytest

from configs import afew, dfew, dfew_paper, mafw, own, synthetic
from former_dfer_jax.training import reference
from former_dfer_jax.training.results import EpochResult, RunResults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (run, the log's 0-based epoch) -> (test WAR %, test loss, train loss, train acc %, lr, s)
FROM_THE_LOGS = {
    ('DFEW-set1', 0): (21.300, 1.8072, 1.9360, 21.327, 0.01, 108.6),
    ('DFEW-set1', 5): (36.313, 1.6034, 1.7256, 28.297, 0.01, 107.6),
    ('DFEW-set3', 76): (66.154, 0.9612, 0.9257, 65.002, 0.001, 96.1),
    ('DFEW-set3', 80): (65.128, 0.9637, 0.9079, 66.194, 0.0001, 95.7),
    ('AFEW', 5): (50.919, 1.3794, 1.3903, 47.619, 0.001, 21.4),
    ('AFEW', 19): (48.294, 1.4073, 1.1859, 54.762, 0.001, 20.5),
}


@pytest.mark.parametrize(('run', 'log_epoch'), list(FROM_THE_LOGS))
def test_the_packaged_figures_are_those_of_the_logs(run, log_epoch):
    war, test_loss, train_loss, train_acc, lr, seconds = FROM_THE_LOGS[run, log_epoch]
    curve = reference.curves()[run]
    epoch = log_epoch + 1  # ours are 1-based
    assert curve.war(epoch) == pytest.approx(war / 100)
    assert curve.scalars(epoch) == pytest.approx(
        {
            'test/war': war / 100,
            'test/loss': test_loss,
            'train/loss': train_loss,
            'train/accuracy': train_acc / 100,
            'train/learning_rate': lr,
        }
    )
    assert curve.epoch_seconds[log_epoch] == pytest.approx(seconds)


def test_the_best_and_last_epochs_give_the_papers_numbers():
    dfew_runs = reference.group('DFEW')
    assert [c.name for c in dfew_runs] == [f'DFEW-set{k}' for k in range(1, 6)]
    # The logs' best epochs 90, 83, 76, 91, 87 (0-based), WAR 66.21 / 64.08 / 66.15 / ...
    assert [c.best_epoch - 1 for c in dfew_runs] == [90, 83, 76, 91, 87]
    best = [c.war(c.best_epoch) for c in dfew_runs]
    assert np.round(100 * np.array(best), 2).tolist() == [66.21, 64.08, 66.15, 65.03, 67.04]
    assert round(100 * np.mean(best), 2) == 65.70  # the paper's WAR
    assert round(100 * np.mean([c.war(100) for c in dfew_runs]), 2) == 65.16
    afew_run = reference.curves()['AFEW']
    assert (afew_run.num_epochs, afew_run.best_epoch - 1) == (20, 5)
    assert round(100 * afew_run.war(afew_run.best_epoch), 2) == 50.92  # the paper's AFEW WAR
    assert afew_run.war(21) is None and afew_run.war(0) is None


def test_every_logged_war_is_a_whole_number_of_test_clips():
    for name, curve in reference.curves().items():
        correct = 100 * curve.test_war * reference.TEST_CLIPS[name] / 100
        assert np.abs(correct - np.round(correct)).max() < 0.02, name


def test_the_recipes_agree_with_the_logged_learning_rates():
    for name, recipe in reference.RECIPES.items():
        for curve in reference.group(name):
            lr = curve.learning_rate
            assert curve.num_epochs == recipe['epochs']
            assert lr[0] == recipe['learning rate']
            drops = [e for e in range(1, len(lr)) if lr[e] != lr[e - 1]]
            expected = [] if recipe['schedule'] == 'constant' else [40, 80]
            assert drops == expected and all(lr[e] == lr[e - 1] * 0.1 for e in drops)


def test_the_warning_margin_is_twice_the_epoch_to_epoch_noise():
    noise = reference.noise('DFEW')
    assert noise == pytest.approx({0.01: 0.04598, 0.001: 0.007358, 0.0001: 0.003561}, abs=1e-5)
    assert reference.noise('AFEW') == pytest.approx({0.001: 0.01922}, abs=1e-5)
    # After epoch 10 the folds were at 37.20-41.92%: the floor is 37.20 - 2 x 4.60.
    assert reference.spread('DFEW', 10) == pytest.approx((0.3720, 0.41923))
    assert reference.floor('DFEW', 10) == pytest.approx(0.3720 - 2 * 0.04598, abs=1e-5)
    assert reference.floor('DFEW', 101) is None
    # None of the authors' own runs ever falls below it.
    for name in reference.RECIPES:
        for curve in reference.group(name):
            for epoch in range(1, curve.num_epochs + 1):
                assert curve.war(epoch) >= reference.floor(name, epoch)


def _config(module, **data) -> ml_collections.ConfigDict:
    config = module.get_config()
    config.data.update(data)
    return config


def test_runs_are_matched_to_the_authors_curve_of_their_fold():
    for module in (dfew, dfew_paper):
        for fold in range(1, 6):
            comparison = reference.match(_config(module, fold=fold))
            assert comparison == reference.Comparison(f'DFEW-set{fold}')
            assert comparison.describe() == (
                f"Compared with the authors' DFEW-set{fold} log (the authors' recipe)."
            )
    fine_tune = _config(afew)
    fine_tune.init_from = 'runs/dfew_fd1'
    assert reference.match(fine_tune) == reference.Comparison('AFEW')
    assert reference.match(_config(afew)).differences == ('init scratch (theirs a DFEW model)',)
    for module in (mafw, own):
        assert reference.match(module.get_config()) is None
    assert reference.match(_config(dfew, name='ferv39k', fold=0)) is None


def test_a_run_off_the_recipe_says_which_settings_differ():
    config = _config(dfew, fold=2)
    config.num_epochs, config.batch_size = 60, 64
    config.optimizer.learning_rate = 0.02
    assert reference.match(config).differences == (
        'epochs 60 (theirs 100)',
        'learning rate 0.02 (theirs 0.01)',
        'batch size 64 (theirs 32)',
    )
    demo = reference.match(synthetic.get_config())
    assert demo.run == 'DFEW-set1' and 'not DFEW' in demo.note
    assert 'optimizer adamw (theirs sgd)' in demo.differences
    assert 'not DFEW' in demo.describe()


def test_the_warning_names_the_causes_below_the_floor_only():
    comparison = reference.Comparison('DFEW-set3')
    assert comparison.warning(10, 0.2801) is None
    warning = comparison.warning(10, 0.25)
    assert warning.startswith('test WAR 25.00% after epoch 10 is below')
    assert '37.20-41.92% over their 5 DFEW folds' in warning and 'floor 28.00%' in warning
    for cause in ('face crops', 'frame order', 'normalisation', 'recipe'):
        assert cause in warning
    assert warning.endswith('The run goes on.')
    assert comparison.warning(101, 0.0) is None  # past the authors' last epoch


def _results(run: str | None, best: tuple[int, float], last: tuple[int, float]) -> RunResults:
    def epoch(number: int, war: float) -> EpochResult:
        return EpochResult(number, 10 * number, {'war': war, 'uar': war - 0.1})

    return RunResults(
        protocol='',
        selection_split='test',
        selection_metric='war',
        class_names=[],
        workdir='',
        best=epoch(*best),
        last=epoch(*last),
        finished=True,
        reference={'run': run, 'differences': [], 'note': ''} if run else None,
    )


def test_the_reproduction_rows_compare_per_fold_mean_and_pooled():
    runs = {
        'fold 1': _results('DFEW-set1', (5, 0.6), (9, 0.5)),
        'fold 2': _results('DFEW-set2', (7, 0.7), (9, 0.6)),
    }
    pooled = {'best': {'war': 0.65, 'uar': 0.55}, 'last': {'war': 0.55, 'uar': 0.45}}
    rows = reference.reproduction_rows(runs, pooled)
    assert list(rows) == ['fold 1', 'fold 2', 'mean over folds', 'pooled (all folds)']
    fold1 = rows['fold 1']
    assert fold1['best'] == pytest.approx(
        {
            'epoch': 5,
            'war': 0.6,
            'uar': 0.5,
            'reference_epoch': 91,
            'reference_war': 0.6621,
            'difference': 0.6 - 0.6621,
        }
    )
    assert fold1['last']['reference_epoch'] == 100
    assert fold1['last']['reference_war'] == pytest.approx(0.65483)
    assert rows['mean over folds']['best']['reference_war'] == pytest.approx((0.6621 + 0.64075) / 2)
    # Pooled: their correct clips over their test clips (2338 and 2341).
    theirs = (0.6621 * 2338 + 0.64075 * 2341) / (2338 + 2341)
    assert rows['pooled (all folds)']['best'] == pytest.approx(
        {'war': 0.65, 'uar': 0.55, 'reference_war': theirs, 'difference': 0.65 - theirs}
    )
    table = reference.format_reproduction(rows, [reference.Comparison('DFEW-set1')])
    assert (
        '| fold 1 | DFEW-set1 | 5 / 91 | 60.00 | 66.21 | -6.21 | 9 / 100 | 50.00 | 65.48 |' in table
    )
    assert '| pooled (all folds) | pooled | - |' in table and 'no UAR' in table
    # A run without a reference is left out, and so are the mean and pooled rows.
    runs['fold 3'] = _results(None, (1, 0.1), (1, 0.1))
    assert list(reference.reproduction_rows(runs, pooled)) == ['fold 1', 'fold 2']
    assert reference.format_reproduction({}, []) == ''


def test_the_curves_ship_as_package_data():
    with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
        package_data = tomllib.load(f)['tool']['setuptools']['package-data']
    assert 'reference_logs.csv' in package_data['former_dfer_jax.training']
    path = os.path.join(REPO, 'former_dfer_jax', 'training', 'reference_logs.csv')
    with open(path) as f:
        head = f.read(300)
    assert 'github.com/zengqunzhao/Former-DFER' in head and 'log/AFEW-log.txt' in head
