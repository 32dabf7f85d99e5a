"""Raw videos -> DFEW-style folders of aligned face crops (and, with labels, training lists).

    python -m former_dfer_jax.data.extract_faces --input=videos/ --output=/data/mine \\
        [--labels=labels.csv] [--workers=2]

The work is `data.face_extraction.extract` (its docstring says what is written where);
this command reads the flags and prints a summary of the report.
"""

import os
import sys
from typing import Any

from absl import app, flags

from former_dfer_jax import cli
from former_dfer_jax.data.face_extraction import (
    DEFAULT_MIN_FRAMES,
    REPORT_FILE,
    ExtractError,
    ExtractSettings,
    extract,
)
from former_dfer_jax.video.faces import FaceOptions


def print_summary(report: dict[str, Any], root: str) -> None:
    extracted, existing, failed = report['extracted'], report['existing'], report['failed']
    earlier = report.get('from_earlier_runs', [])
    others = f'; {len(earlier)} more from earlier runs on other videos' if earlier else ''
    print(
        f'{len(extracted)} clips extracted, {len(existing)} already there, {len(failed)} failed'
        f'{others} (report: {os.path.join(root, REPORT_FILE)})'
    )
    if report['frames_per_s']:
        per_worker = report['frames_per_s_per_worker']
        print(
            f'{report["decoded_frames"]} frames in {report["wall_s"]:.1f} s: '
            f'{report["frames_per_s"]:.1f} frames/s ({per_worker:.1f} per worker)'
        )
    for failure in failed:
        print(f'  failed: {failure["reason"]}', file=sys.stderr)
    for where in report.get('labels_not_found', []):
        print(f'  labelled but not found under --input: {where}', file=sys.stderr)
    if report.get('not_labelled'):
        print(f'  {len(report["not_labelled"])} videos not in --labels were skipped')
    if 'lists' in report:
        counts = report['lists']
        print(
            f'{len(report["class_names"])} classes; train.txt {counts.get("train", 0)} clips, '
            f'test.txt {counts.get("test", 0)} clips. Train with:'
        )
        print(
            '  python -m former_dfer_jax.main --config=configs/dfew.py --workdir=runs/mine \\\n'
            f'      --config.data.name=own --config.data.root={os.path.abspath(root)} '
            f'--config.data.fold=0 \\\n'
            f'      --config.model.num_classes={len(report["class_names"])}'
        )


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    try:
        face_options = FaceOptions(
            crop_size=FLAGS.crop_size, detect_every=FLAGS.detect_every, max_side=FLAGS.max_side
        )
    except ValueError as e:
        raise ExtractError(str(e)) from e
    settings = ExtractSettings(
        workers=FLAGS.workers,
        min_frames=FLAGS.min_frames,
        face_options=face_options,
        test_fraction=FLAGS.test_fraction,
        seed=FLAGS.seed,
        classes=tuple(c for c in FLAGS.classes or () if c.strip()),
    )
    report = extract(FLAGS.input, FLAGS.output, settings, labels=FLAGS.labels)
    print_summary(report, FLAGS.output)


def _define_flags() -> None:
    flags.DEFINE_string(
        'input', None, 'Folder of videos (and frame folders), searched recursively.'
    )
    flags.DEFINE_string('output', None, 'ROOT: the clip folders, lists and report go here.')
    flags.DEFINE_string('labels', '', 'CSV video,label[,split]: also write training lists.')
    flags.DEFINE_integer('workers', 1, 'Processes over videos (each with its own detector).')
    flags.DEFINE_integer('min_frames', DEFAULT_MIN_FRAMES, 'Fewer face frames: the video fails.')
    flags.DEFINE_integer('crop_size', 256, 'Side of the aligned crops (DFEW: 256).')
    flags.DEFINE_integer('detect_every', 1, 'Run the detector every k-th frame (1 = all).')
    flags.DEFINE_integer('max_side', 640, 'Detect on a copy whose longer side is at most this.')
    flags.DEFINE_float('test_fraction', 0.2, 'Test share per class where the CSV has no split.')
    flags.DEFINE_integer('seed', 0, 'Seed of that split.')
    flags.DEFINE_list('classes', [], 'Class order (label i = i-th name); default: sorted labels.')
    flags.mark_flags_as_required(['input', 'output'])


def entry_point() -> None:
    """The `former-dfer-extract-faces` command (also `python -m
    former_dfer_jax.data.extract_faces`)."""
    _define_flags()
    cli.run(main)


if __name__ == '__main__':
    entry_point()
