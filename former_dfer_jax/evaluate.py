"""Evaluate one checkpoint on the test split (or another split).

    python -m former_dfer_jax.evaluate --config=configs/dfew.py --workdir=runs/dfew_fd1 \
        [--checkpoint=best|latest|PATH] [--split=test]

Prints the per-class / UAR / WAR table and writes it as JSON into the workdir
(`eval_<checkpoint>_<split>.json`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
from absl import app, flags

from former_dfer_jax import cli, files
from former_dfer_jax.inference import open_run
from former_dfer_jax.training import checkpointing, config_checks, metrics
from former_dfer_jax.training.evaluation import evaluate_model


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, path: str, which: str = 'best', split: str = 'test'
) -> dict[str, Any]:
    """Metrics of the checkpoint at `path` (run dir + which, or a step dir) on `split`.

    The checkpoint must be of `config.model` (a CheckpointError lists the differences).
    """
    run = open_run(path, which, model_config=config.model)
    summary = evaluate_model(run.model, config, split)
    summary.update({'checkpoint': run.run_dir, 'step': run.step, 'split': split})
    return summary


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    config_checks.validate(FLAGS.config)
    cli.setup()
    choice = FLAGS.checkpoint
    if choice in (checkpointing.BEST, checkpointing.LATEST):
        path, which, tag = FLAGS.workdir, choice, choice
    else:
        path, which, tag = choice, checkpointing.BEST, 'path'
    summary = evaluate_checkpoint(FLAGS.config, path, which, FLAGS.split)
    if jax.process_index() == 0:
        out = os.path.join(FLAGS.workdir, f'eval_{tag}_step{summary["step"]}_{FLAGS.split}.json')
        files.write_json(out, summary)
        print(f'{FLAGS.split} split of {summary["checkpoint"]} at step {summary["step"]}, percent:')
        print(metrics.format_table({tag: summary}, list(summary['per_class_recall'])))
        print(f'Written to {out}')


def _define_flags() -> None:
    cli.define_config_flags(workdir_help='The run directory holding the checkpoints.')
    flags.DEFINE_string(
        'checkpoint', 'best', "'best', 'latest', or the path of a run or checkpoint step directory."
    )
    flags.DEFINE_enum('split', 'test', ['test', 'validation', 'train'], 'The split to evaluate.')


def entry_point() -> None:
    """The `former-dfer-evaluate` command (also `python -m former_dfer_jax.evaluate`)."""
    _define_flags()
    cli.run(main)


if __name__ == '__main__':
    entry_point()
