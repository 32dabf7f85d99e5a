"""Evaluate one checkpoint on the test split (or another split).

    python -m former_dfer_jax.evaluate --config=configs/dfew.py --workdir=runs/dfew_fd1 \
        [--checkpoint=best|latest|PATH] [--split=test]

Prints the per-class / UAR / WAR table and writes it as JSON into the workdir
(`eval_<checkpoint>_<split>.json`).
"""

from __future__ import annotations

import json
import os

import jax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from former_dfer_jax import checkpointing, cli, data, inference, metrics, train
from former_dfer_jax.models import build_model


def evaluate_checkpoint(config, path: str, which: str = 'best', split: str = 'test') -> dict:
    """Metrics of the checkpoint at `path` (run dir + which, or a step dir) on `split`."""
    run_dir, _, step = checkpointing.resolve_checkpoint(path, which)
    differences = checkpointing.model_config_differences(
        checkpointing.read_config(run_dir).model, config.model
    )
    if differences:
        raise checkpointing.CheckpointError(
            f'{run_dir}: its model config differs from --config:\n  ' + '\n  '.join(differences)
        )
    model = build_model(config.model, rngs=nnx.Rngs(0))
    inference.restore_model_weights(model, path, which)
    summary = train.evaluate_model(model, config, split)
    summary.update({'checkpoint': run_dir, 'step': step, 'split': split})
    return summary


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    cli.setup()
    choice = FLAGS.checkpoint
    if choice in (checkpointing.BEST, checkpointing.LATEST):
        path, which, tag = FLAGS.workdir, choice, choice
    else:
        path, which, tag = choice, checkpointing.BEST, 'path'
    summary = evaluate_checkpoint(FLAGS.config, path, which, FLAGS.split)
    class_names = data.info(FLAGS.config).class_names
    if jax.process_index() == 0:
        out = os.path.join(FLAGS.workdir, f'eval_{tag}_step{summary["step"]}_{FLAGS.split}.json')
        with open(out, 'w') as f:
            json.dump(summary, f, indent=2)
        print(f'{FLAGS.split} split of {summary["checkpoint"]} at step {summary["step"]}, percent:')
        print(metrics.format_table({tag: summary}, class_names))
        print(f'Written to {out}')


def _define_flags() -> None:
    config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
    flags.DEFINE_string('workdir', None, 'The run directory holding the checkpoints.')
    flags.DEFINE_string(
        'checkpoint', 'best', "'best', 'latest', or the path of a run or checkpoint step directory."
    )
    flags.DEFINE_string('split', 'test', 'test | validation | train')
    flags.mark_flags_as_required(['config', 'workdir'])


if __name__ == '__main__':
    _define_flags()
    app.run(main)
