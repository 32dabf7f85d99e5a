"""Explain a trained model: where it looks in each frame, which frames it relies on, and how
its clip vectors group.

    python -m former_dfer_jax.explain --model=runs/synthetic [--compare=runs/synthetic_gru] \\
        --split=test --output=explain/synthetic [--clips=3] [--stage=sformer]

writes into --output `features.npz` (features, labels, predictions, probabilities,
clip_ids: one row per clip of the split), `tsne.png` (one panel per model),
`heatmaps/<class>/<clip>.png` (the --clips most confident and most confused clips of each
class: frames, feature-map and Grad-CAM overlays, temporal importance; the --compare
model's rows above) with `heatmaps/index.csv`, and a TensorBoard projector export into
each run (<run>/plugins/org_tensorflow_tensorboard_projector/: `tensorboard --logdir RUN`,
Projector tab). Class names are the run's own. On the synthetic dataset,
`--ground_truth=conv3,sformer` also measures the heatmaps' mass on the generator's face /
feature / occluder masks (ground_truth.json). One explain at a time writes into an output
folder (`<output>/run.lock`, as the trainer's workdir lock): a second is refused, naming
the first; a read-only one is refused too, before any run is opened.

The explanations themselves are in `inference.explanations`, the pictures in
`inference.explanation_plots`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import app, flags

from former_dfer_jax import cli, files, run_lock
from former_dfer_jax.inference import Run, open_run
from former_dfer_jax.inference import explanation_plots as plots
from former_dfer_jax.inference import explanations as ex
from former_dfer_jax.inference.batches import padded_batches


@dataclasses.dataclass
class _Explained:
    """An opened run, the stage it is explained at, and its jitted functions."""

    run: Run
    name: str
    stage: str
    features: Callable[..., Any]
    explain: Callable[..., Any]


def _open(path: str, which: str, stage: str) -> _Explained:
    run = open_run(path, which)
    stage = stage or ex.default_stage(run.model.spec)
    ex.check_stage(run.model.spec, stage)
    return _Explained(
        run=run,
        name=run.name,
        stage=stage,
        features=ex.bind(run.model, ex.clip_features),
        explain=ex.bind(run.model, ex.explain_clips, stage=stage),
    )


def _split_pass(runs: list[_Explained], split: str, extremes: ex.Extremes) -> dict[str, Any]:
    """Every clip of `split` once through each run (the first run's data config); the
    extremes of the last run (the one explained) collected on the way."""
    ours = runs[-1].name

    def offer(videos: np.ndarray, labels: np.ndarray, outs: dict[str, Any]) -> None:
        extremes.offer_batch(videos, labels, outs[ours]['probabilities'])

    fns = {run.name: run.features for run in runs}
    return ex.split_outputs(fns, runs[0].run.config, split, progress=True, on_batch=offer)


def _write_features(path: str, runs: list[_Explained], split: dict[str, Any]) -> None:
    ours = split['runs'][runs[-1].name]
    arrays = {
        'features': ours['features'],
        'labels': split['labels'],
        'predictions': ours['predictions'],
        'probabilities': ours['probabilities'],
        'clip_ids': split['clip_ids'],
    }
    if len(runs) > 1:
        theirs = split['runs'][runs[0].name]
        arrays.update(
            {f'compare_{k}': theirs[k] for k in ('features', 'probabilities', 'predictions')}
        )
    with files.atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def _write_tsne(path: str, runs: list[_Explained], split: dict[str, Any], name: str, seed: int):
    labels = split['labels']
    panels = {}
    for run in runs:
        r = split['runs'][run.name]
        accuracy = 100 * float(np.mean(r['predictions'] == labels))
        title = f'{run.name}: {name}, {len(labels)} clips, accuracy {accuracy:.1f}%'
        panels[title] = (plots.tsne(r['features'], seed), labels)
    plots.plot_tsne(panels, runs[-1].run.class_names, path)


def _write_projectors(runs: list[_Explained], split: dict[str, Any], name: str) -> None:
    for run in runs:
        r, names = split['runs'][run.name], run.run.class_names
        metadata = {
            'label': [names[c] for c in split['labels']],
            'prediction': [names[c] for c in r['predictions']],
            'clip_id': list(split['clip_ids']),
        }
        plots.write_projector(run.run.run_dir, r['features'], metadata, name=f'features_{name}')


def _write_heatmaps(
    directory: str,
    runs: list[_Explained],
    split: dict[str, Any],
    extremes: ex.Extremes,
    *,
    batch_size: int,
    target: str,
) -> int:
    """The pictures of the selected clips and heatmaps/index.csv; returns their number."""
    selected = extremes.selected()
    if not selected:
        return 0
    names = runs[-1].run.class_names
    ours = split['runs'][runs[-1].name]
    batch_size = max(1, min(batch_size, len(selected)))  # a fixed batch: compiled once
    videos = np.stack([extremes.videos[row] for row, _, _ in selected])
    labels = split['labels'][[row for row, _, _ in selected]]
    batches = padded_batches((videos, labels), batch_size)
    total = math.ceil(len(selected) / batch_size)
    index, start = [], 0
    for n, (video, label_batch) in files.progress(batches, desc='Heatmaps', total=total):
        args = (video, label_batch) if target == 'label' else (video,)
        outs = {run.name: jax.device_get(run.explain(*args)) for run in runs}
        for i, (row, label, kind) in enumerate(selected[start : start + n]):
            pictures = []
            for run in runs:
                e, r = outs[run.name], split['runs'][run.name]
                title = (
                    f'{run.name} [{run.stage}]: predicted {names[r["predictions"][row]]}, '
                    f'p({names[label]}) = {r["probabilities"][row, label]:.2f}; '
                    f'maps of {names[int(e["class_index"][i])]}'
                )
                pictures.append(plots.clip_picture(e, i, title))
            clip, p_true = split['clip_ids'][row], float(ours['probabilities'][row, label])
            folder = os.path.join(directory, names[label])
            os.makedirs(folder, exist_ok=True)
            which = 'most confident' if kind == 'confident' else 'most confused'
            heading = f'clip {clip} ({names[label]}): {which}, p = {p_true:.2f}'
            plots.plot_clip(video[i], pictures, os.path.join(folder, f'{clip}.png'), heading)
            predicted = names[ours['predictions'][row]]
            index.append([names[label], clip, kind, f'{p_true:.4f}', predicted])
        start += n
    with files.atomic_path(os.path.join(directory, 'index.csv')) as tmp, open(tmp, 'w') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(['class', 'clip_id', 'kind', 'p_true', 'predicted'])
        writer.writerows(sorted(index))
    return len(index)


def _write_ground_truth(path: str, runs: list[_Explained], split: str, stages: list[str]) -> str:
    """`synthetic_heatmap_shares` of every run (the stages it has) as JSON; a table."""
    results = {}
    header = '| run | stage | map | on the face | on the features | on the occluder |'
    lines = [header, '|---|---|---|---|---|---|']

    def row(name: str, stage: str, kind: str, r: dict) -> str:
        cells = [
            '-' if r[g] is None else f'{100 * r[g]:.1f} ± {100 * (r[g + "_se"] or 0):.1f}'
            for g in ex.GROUND_TRUTH
        ]
        return '| ' + ' | '.join([name, stage, kind, *cells]) + ' |'

    for run in runs:
        model = run.run.model
        own = [s for s in stages if s != 'sformer' or model.spec.spatial.enabled]
        results[run.name] = ex.synthetic_heatmap_shares(
            model, run.run.config, own, split, progress=True
        )
        for stage in own:
            for kind, r in results[run.name][stage].items():
                lines.append(row(run.name, stage, kind, r))
    first = next(iter(results.values()))
    lines.append(row('flat map (region area)', '', '', first['area']))
    lines.append(f'({first["clips"]} clips, {first["occluded_clips"]} with an occluder)')
    files.write_json(path, results, indent=1)
    return '\n'.join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    FLAGS = flags.FLAGS
    cli.setup()
    started = time.perf_counter()
    for stage in FLAGS.ground_truth:
        if stage not in ex.STAGES:
            raise ex.ExplainError(
                f'--ground_truth: stage {stage!r}: expected {", ".join(ex.STAGES)}'
            )
    with run_lock.output_lock(FLAGS.output, 'explain'):
        runs = [_open(FLAGS.model, FLAGS.checkpoint, FLAGS.stage)]
        if FLAGS.compare:
            baseline = _open(FLAGS.compare, FLAGS.checkpoint, FLAGS.compare_stage)
            if baseline.name == runs[0].name:
                baseline.name += ' (compare)'
            ex.check_comparable(runs[0].run, baseline.run)
            runs.insert(0, baseline)  # drawn above the explained model

        extremes = ex.Extremes(FLAGS.clips)
        split = _split_pass(runs, FLAGS.split, extremes)
        _write_features(os.path.join(FLAGS.output, 'features.npz'), runs, split)
        tsne_started = time.perf_counter()
        _write_tsne(os.path.join(FLAGS.output, 'tsne.png'), runs, split, FLAGS.split, FLAGS.seed)
        tsne_seconds = time.perf_counter() - tsne_started
        _write_projectors(runs, split, FLAGS.split)
        pictures = _write_heatmaps(
            os.path.join(FLAGS.output, 'heatmaps'),
            runs,
            split,
            extremes,
            batch_size=FLAGS.batch_size,
            target=FLAGS.target,
        )
        if FLAGS.ground_truth:
            table = _write_ground_truth(
                os.path.join(FLAGS.output, 'ground_truth.json'),
                runs,
                FLAGS.split,
                FLAGS.ground_truth,
            )
            print(f'Heatmap mass on the ground truth, percent ({FLAGS.split} split):\n{table}')
        print(
            f'{len(split["labels"])} clips of {FLAGS.split}: features.npz, tsne.png '
            f'(t-SNE {tsne_seconds:.1f} s), {pictures} heatmap pictures in {FLAGS.output}; '
            f'projector: tensorboard --logdir {runs[-1].run.run_dir} '
            f'({time.perf_counter() - started:.0f} s in all)'
        )


def _define_flags() -> None:
    flags.DEFINE_string('model', None, 'Run directory (or checkpoint step directory) to explain.')
    flags.DEFINE_string('compare', None, 'A baseline run on the same data, drawn above it.')
    flags.DEFINE_enum('split', 'test', ['test', 'validation'], 'The split to explain.')
    flags.DEFINE_string('output', None, 'Directory for features.npz, tsne.png and heatmaps/.')
    flags.DEFINE_integer('clips', 3, 'Most confident and most confused clips per class drawn.')
    flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint of the runs.')
    flags.DEFINE_string(
        'stage', '', f'Map to explain: {", ".join(ex.STAGES)}; default sformer (conv5 without one).'
    )
    flags.DEFINE_string('compare_stage', '', 'The same for the --compare run.')
    flags.DEFINE_enum('target', 'predicted', list(ex.TARGETS), 'The class the maps explain.')
    flags.DEFINE_integer('batch_size', 8, 'Clips per explanation batch (Grad-CAM: gradients).')
    flags.DEFINE_integer('seed', 0, 't-SNE seed.')
    flags.DEFINE_list(
        'ground_truth',
        [],
        'Synthetic data only: stages (e.g. conv3,conv4,sformer) whose heatmap mass on the '
        "generator's face / feature / occluder masks goes to ground_truth.json.",
    )
    flags.mark_flags_as_required(['model', 'output'])


def entry_point() -> None:
    """The `former-dfer-explain` command (also `python -m former_dfer_jax.explain`)."""
    _define_flags()
    cli.run(main)


if __name__ == '__main__':
    entry_point()
