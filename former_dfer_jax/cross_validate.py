"""5-fold cross-validation on DFEW, and the summary in the layout of the paper's Table 4.

    python -m former_dfer_jax.cross_validate --config=configs/dfew.py --workdir=runs/dfew_cv

Fold k trains in `workdir/fold_k`. Re-running resumes: finished folds are skipped and an
interrupted fold resumes from its latest checkpoint. The summary (`summary.json`,
`summary.md`, `confusion_matrix_{best,last}.png`, and where the folds have the authors'
curves to compare with (DFEW, the synthetic stand-in) the reproduction table in
summary.md and `reproduction.png`) is written when every fold is done, and can be
rebuilt alone with `--summarize_only`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags, logging

from former_dfer_jax import cli, files
from former_dfer_jax.errors import UserError
from former_dfer_jax.training import config_checks, metrics, reference, train
from former_dfer_jax.training.results import RunResults


class CrossValidationError(UserError, ValueError):
    """The summary was asked for before every fold finished."""


def fold_dir(workdir: str, fold: int) -> str:
    return os.path.join(workdir, f'fold_{fold}')


def fold_results(workdir: str, fold: int) -> RunResults | None:
    """The fold's results if the fold finished, else None."""
    results = RunResults.read(fold_dir(workdir, fold))
    return results if results is not None and results.finished else None


def run_folds(config, workdir: str, folds: Sequence[int]) -> None:
    """Trains every fold of `folds` that has not finished yet. Every fold's config is
    validated before the first fold starts."""
    fold_configs = {}
    for fold in folds:
        fold_configs[fold] = config.copy_and_resolve_references()
        fold_configs[fold].data.fold = fold
        config_checks.validate(fold_configs[fold])
    for fold, fold_config in fold_configs.items():
        if fold_results(workdir, fold) is not None:
            logging.info('Fold %d already finished; skipping.', fold)
            continue
        logging.info('=== Fold %d -> %s', fold, fold_dir(workdir, fold))
        train.train_and_evaluate(fold_config, fold_dir(workdir, fold))
        if fold_results(workdir, fold) is None:
            raise SystemExit(f'Fold {fold} stopped before finishing; re-run to resume.')


def summarize(workdir: str, folds: Sequence[int]) -> dict:
    """Per-fold, mean-over-folds and pooled metrics for the best and the last epochs.

    Pooled = every fold's test predictions together (summed confusion matrices), the
    paper's protocol; the mean over folds is what the authors' logs average.
    'reproduction': ours vs the authors' logs (`reference.reproduction_rows`), and
    'reference_warnings': the early warnings the folds gave.
    """
    per_fold = {fold: fold_results(workdir, fold) for fold in folds}
    missing = [fold for fold, results in per_fold.items() if results is None]
    if missing:
        raise CrossValidationError(
            f'{workdir}: folds {missing} have not finished; run without --summarize_only'
        )
    first = next(iter(per_fold.values()))
    class_names = first.class_names
    summary: dict = {'folds': list(folds), 'class_names': class_names, 'protocol': first.protocol}
    for which in ('best', 'last'):
        chosen = {fold: getattr(results, which) for fold, results in per_fold.items()}
        rows = {f'fold {fold}': epoch.test for fold, epoch in chosen.items()}
        pooled = sum(np.array(row['confusion_matrix']) for row in rows.values())
        summary[which] = {
            'per_fold': rows,
            'epochs': {f'fold {fold}': epoch.epoch for fold, epoch in chosen.items()},
            'pooled': metrics.summarize(pooled, class_names),
            'mean_over_folds': {
                'uar': float(np.mean([row['uar'] for row in rows.values()])),
                'war': float(np.mean([row['war'] for row in rows.values()])),
            },
        }
    summary['reproduction'] = reference.reproduction_rows(
        {f'fold {fold}': results for fold, results in per_fold.items()},
        pooled={which: summary[which]['pooled'] for which in ('best', 'last')},
    )
    summary['reference_comparisons'] = [r.reference for r in per_fold.values() if r.reference]
    summary['reference_warnings'] = {
        f'fold {fold}': r.reference_warning for fold, r in per_fold.items() if r.reference_warning
    }
    return summary


def write_summary(workdir: str, summary: dict) -> None:
    """summary.json, summary.md (Table 4 layout, then the reproduction table), one
    confusion-matrix picture each, and reproduction.png (every fold's test WAR per epoch
    over the authors' curves)."""
    files.write_json(os.path.join(workdir, 'summary.json'), summary)
    class_names = summary['class_names']
    parts = [
        f'# Cross-validation summary ({len(summary["folds"])} folds)',
        '',
        summary['protocol'],
        '',
    ]
    for which in ('best', 'last'):
        block = summary[which]
        rows = dict(block['per_fold'])
        rows['pooled (all folds)'] = block['pooled']
        parts += [
            f'## {which} epoch per fold, test split, percent',
            '',
            metrics.format_table(rows, class_names),
            '',
            f'Mean over folds: UAR {100 * block["mean_over_folds"]["uar"]:.2f}, '
            f'WAR {100 * block["mean_over_folds"]["war"]:.2f}.',
            '',
        ]
        figure = metrics.confusion_matrix_figure(
            np.array(block['pooled']['confusion_matrix']),
            class_names,
            f'{which} epoch, pooled over {len(summary["folds"])} folds',
        )
        metrics.save_figure(figure, os.path.join(workdir, f'confusion_matrix_{which}.png'))
    table = reference.format_reproduction(
        summary.get('reproduction', {}),
        [reference.Comparison.from_dict(r) for r in summary.get('reference_comparisons', [])],
    )
    if table:
        parts += ["## Reproduction: ours vs the authors' logs", '', table, '']
        for fold, warning in summary.get('reference_warnings', {}).items():
            parts += [f'Early warning, {fold}: {warning}', '']
        runs = {f'fold {fold}': fold_results(workdir, fold) for fold in summary['folds']}
        if all(runs.values()):
            reference.plot_reproduction(runs, os.path.join(workdir, 'reproduction.png'))
            parts += ['Curves: reproduction.png', '']
    files.write_text(os.path.join(workdir, 'summary.md'), '\n'.join(parts))


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    try:
        folds = [int(f) for f in FLAGS.folds]
    except ValueError:
        raise app.UsageError(f'--folds={",".join(FLAGS.folds)}: expected integers') from None
    cli.setup()
    if not FLAGS.summarize_only:
        run_folds(FLAGS.config, FLAGS.workdir, folds)
    if jax.process_index() == 0:
        summary = summarize(FLAGS.workdir, folds)
        write_summary(FLAGS.workdir, summary)
        with open(os.path.join(FLAGS.workdir, 'summary.md')) as f:
            print(f.read())


def _define_flags() -> None:
    cli.define_config_flags(workdir_help='Directory holding fold_1 .. fold_5.')
    flags.DEFINE_list('folds', ['1', '2', '3', '4', '5'], 'Folds to run.')
    flags.DEFINE_bool('summarize_only', False, 'Only rebuild the summary from finished folds.')


def entry_point() -> None:
    """The `former-dfer-cross-validate` command (`python -m former_dfer_jax.cross_validate`)."""
    _define_flags()
    cli.run(main)


if __name__ == '__main__':
    entry_point()
