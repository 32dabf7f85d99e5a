"""Train and evaluate Former-DFER.

    python -m former_dfer_jax.main --config=configs/dfew.py --workdir=runs/dfew_fd1 \
        --config.data.root=/data/DFEW --config.data.fold=1

Re-running the same command in the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags

from former_dfer_jax import cli
from former_dfer_jax.training import metrics, reference, train
from former_dfer_jax.training.results import RunResults, results_path

REPRODUCTION_PLOT = 'reproduction.png'


def report(workdir: str) -> str:
    """The end-of-run summary: per-class / UAR / WAR table, ours vs the authors' log
    where there is one (with `reproduction.png`, written by `write_reproduction_plot`),
    and where things are."""
    results = RunResults.read(workdir)
    rows = {}
    if results.best:
        best = results.best
        rows[f'best epoch {best.epoch} (on {best.selected_on})'] = best.test
    if results.last:
        rows[f'last epoch {results.last.epoch}'] = results.last.test
    status = (
        'finished'
        if results.finished
        else ('stopped before the last epoch: run the same command again to resume')
    )
    lines = [
        f'Run {status}. Test split, percent:',
        metrics.format_table(rows, results.class_names),
    ]
    comparison = reference.Comparison.from_dict(results.reference)
    if comparison is not None:
        lines += [
            '',
            "Reproduction: this run vs the authors' log, test split:",
            reference.format_reproduction(
                reference.reproduction_rows({'this run': results}), [comparison]
            ),
        ]
        if results.reference_warning:
            lines.append(f'Early warning at {results.reference_warning}')
        if os.path.exists(os.path.join(workdir, REPRODUCTION_PLOT)):
            lines.append(f'Curves:       {os.path.join(workdir, REPRODUCTION_PLOT)}')
    lines += [
        '',
        f'Protocol:     {results.protocol}',
        f'Results:      {results_path(workdir)}',
        f'Checkpoints:  {workdir}/checkpoints (latest/ and best/)',
        f'TensorBoard:  tensorboard --logdir {workdir}',
    ]
    return '\n'.join(lines)


def write_reproduction_plot(workdir: str) -> None:
    """`reproduction.png`: the run's test WAR per epoch over the authors' curve."""
    results = RunResults.read(workdir)
    reference.plot_reproduction({'this run': results}, os.path.join(workdir, REPRODUCTION_PLOT))


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    cli.setup()
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if jax.process_index() == 0 and RunResults.read(FLAGS.workdir) is not None:
        write_reproduction_plot(FLAGS.workdir)
        print(report(FLAGS.workdir), flush=True)


def _define_flags() -> None:
    cli.define_config_flags(workdir_help='Directory for checkpoints, logs and results.')


def entry_point() -> None:
    """The `former-dfer-train` command (also `python -m former_dfer_jax.main`)."""
    _define_flags()
    cli.run(main)


if __name__ == '__main__':
    entry_point()
