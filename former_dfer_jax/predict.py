"""Emotions of any video, from the command line: face track -> sliding windows ->
Former-DFER -> JSON and pictures.

    python -m former_dfer_jax.predict --model=runs/dfew_fd1 --input=clip.mp4 --output=out/
    python -m former_dfer_jax.predict --model=runs/dfew_fd1 --input=videos/ --output=out/ \
        --annotate

`--input` is a video file, a folder of frames (`x_y.jpg`), or a folder of either. Per video,
`<output>/<video stem>/` gets `prediction.json`, `timeline.png`, `faces.png` (and
`annotated.mp4` with `--annotate`, and one `explain_<window>_<start>-<end>s.png` per window
with `--explain`: `explain`'s heatmap strip of the window's frames); a batch also gets
`<output>/summary.json`. The class names are the run's own. One predict at a time writes
into an output folder (`<output>/run.lock`, as the trainer's workdir lock): a second is
refused, naming the first; a read-only one is refused too, before the model is loaded.

How a video is predicted: `inference.predictor`; its files: `inference.prediction_plots`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from absl import app, flags

from former_dfer_jax import cli, files, run_lock
from former_dfer_jax.errors import UserError
from former_dfer_jax.inference import explanations, open_run
from former_dfer_jax.inference import predictor as predicting
from former_dfer_jax.inference.prediction_plots import write_prediction
from former_dfer_jax.inference.predictor import PredictError, Predictor
from former_dfer_jax.video import decode, faces

SUMMARY_FILE = 'summary.json'


def list_inputs(path: str) -> tuple[list[str], bool]:
    """The videos to predict and whether `path` is a batch (a folder of videos or of
    frame folders) rather than one video or one frames folder."""
    if not os.path.exists(path):
        raise PredictError(f'{path}: no such file or folder')
    if not os.path.isdir(path) or decode.is_video_path(path):
        return [path], False
    entries = sorted(os.path.join(path, name) for name in os.listdir(path))
    videos = [p for p in entries if decode.is_video_path(p)]
    if not videos:
        raise PredictError(
            f'{path}: neither a video, nor a folder of frames, nor a folder holding videos '
            'or frame folders'
        )
    return videos, True


def output_names(videos: Sequence[str]) -> list[str]:
    """One output folder name per video: its stem (a folder's name), made unique with
    _2, _3, ... in input order."""
    names, seen = [], set()
    for video in videos:
        stem = os.path.splitext(os.path.basename(os.path.normpath(video)))[0] or 'video'
        if os.path.isdir(video):
            stem = os.path.basename(os.path.normpath(video))
        stem = re.sub(r'[^\w.-]', '_', stem)
        name, k = stem, 2
        while name in seen:
            name, k = f'{stem}_{k}', k + 1
        seen.add(name)
        names.append(name)
    return names


def _speed_line(timings: dict[str, float], num_frames: int) -> str:
    def rate(seconds: float) -> str:
        return f'{num_frames / seconds:.0f}' if seconds > 0 else 'inf'

    return (
        f'{num_frames} frames: decode {rate(timings["decode"])} frames/s, detect + track '
        f'{rate(timings["detect"])} frames/s, align {rate(timings["align"])} frames/s, '
        f'model {rate(timings["model"])} frames/s; end to end {rate(timings["total"])} frames/s'
    )


def predict_paths(
    predictor: Predictor, input_path: str, output_dir: str, *, annotate: bool = False
) -> dict[str, Any]:
    """Predicts every video of `input_path` into `output_dir`; returns the summary
    ({'predicted': [...], 'failed': [{'video', 'error'}], 'warnings', 'num_frames',
    'timings_s'}).

    One video: its failure raises. A batch: a failing video is reported and the others
    go on; summary.json is written; raises only when none could be predicted.
    """
    videos, batch = list_inputs(input_path)
    totals = dict.fromkeys(('decode', 'detect', 'align', 'model', 'total'), 0.0)
    summary: dict[str, Any] = {'predicted': [], 'failed': [], 'warnings': []}
    num_frames = 0
    bar = files.progress(
        list(zip(videos, output_names(videos), strict=True)),
        desc='videos',
        unit='video',
        enabled=batch,
    )
    for video, name in bar:
        try:
            prediction = predictor.predict(video, progress=True)
            directory = os.path.join(output_dir, name)
            write_prediction(prediction, directory, annotate=annotate)
        except UserError as e:
            if not batch:
                raise
            bar.write(f'error: {e}', file=sys.stderr)
            summary['failed'].append({'video': video, 'error': str(e)})
            continue
        for warning in prediction.warnings:
            bar.write(f'warning: {warning}', file=sys.stderr)
        summary['warnings'].extend(prediction.warnings)
        clip = prediction.result['clip']
        bar.write(f'{video}: {clip["label"]} ({max(clip["probabilities"]):.2f}) -> {directory}')
        summary['predicted'].append({'video': video, 'output': directory, 'label': clip['label']})
        num_frames += prediction.result['num_frames']
        for key in totals:
            totals[key] += prediction.timings[key]
    summary['num_frames'] = num_frames
    summary['timings_s'] = totals
    if num_frames:
        print(_speed_line(totals, num_frames))
    if batch:
        os.makedirs(output_dir, exist_ok=True)
        files.write_json(os.path.join(output_dir, SUMMARY_FILE), summary, indent=1)
        print(
            f'{len(summary["predicted"])} of {len(videos)} videos predicted; '
            f'{len(summary["failed"])} failed'
        )
        for failure in summary['failed']:
            print(f'  failed: {failure["error"]}')
        if not summary['predicted']:
            raise PredictError(f'{input_path}: none of its {len(videos)} videos could be predicted')
    return summary


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    cli.setup()
    if FLAGS.detect_every < 1 or FLAGS.max_side < 12:
        raise PredictError(
            f'--detect_every={FLAGS.detect_every} (expected >= 1), --max_side={FLAGS.max_side} '
            '(expected >= 12)'
        )
    if FLAGS.explain_stage and not FLAGS.explain:
        raise PredictError(f'--explain_stage={FLAGS.explain_stage}: set --explain too')
    list_inputs(FLAGS.input)  # a missing input fails before the model is loaded
    with run_lock.output_lock(FLAGS.output, 'predict'):  # so does a locked or read-only one
        predictor = Predictor.from_run(
            open_run(FLAGS.model, FLAGS.checkpoint),
            window_s=FLAGS.window_s,
            stride_s=FLAGS.stride_s,
            batch_size=FLAGS.batch_size,
            face_options=faces.FaceOptions(
                detect_every=FLAGS.detect_every, max_side=FLAGS.max_side
            ),
            explain=FLAGS.explain,
            explain_stage=FLAGS.explain_stage,
        )
        print(f'warm-up (detector, model compilation): {predictor.warm_up():.1f} s')
        predict_paths(predictor, FLAGS.input, FLAGS.output, annotate=FLAGS.annotate)


def _define_flags() -> None:
    flags.DEFINE_string('model', None, 'A run directory or a checkpoint step directory.')
    flags.DEFINE_string('input', None, 'A video, a folder of frames, or a folder of those.')
    flags.DEFINE_string('output', None, 'Folder to write <video stem>/prediction.json etc. to.')
    flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint of a run.')
    flags.DEFINE_float('window_s', predicting.DEFAULT_WINDOW_S, 'Window length in seconds.')
    flags.DEFINE_float('stride_s', predicting.DEFAULT_STRIDE_S, 'Seconds between window starts.')
    flags.DEFINE_bool('annotate', False, 'Also write annotated.mp4 (box and label drawn).')
    flags.DEFINE_bool(
        'explain',
        False,
        'Also write explain_<window>_<start>-<end>s.png per window: frames, feature-map and '
        'Grad-CAM overlays, temporal importance (as the explain command draws them).',
    )
    flags.DEFINE_string(
        'explain_stage',
        '',
        f'Map --explain explains: {", ".join(explanations.STAGES)}; default sformer (conv5 '
        'without one).',
    )
    flags.DEFINE_integer('batch_size', predicting.DEFAULT_BATCH_SIZE, 'Windows per model call.')
    flags.DEFINE_integer(
        'detect_every',
        predicting.DEFAULT_DETECT_EVERY,
        'Run the detector every k-th frame (1 = all).',
    )
    flags.DEFINE_integer(
        'max_side',
        predicting.DEFAULT_MAX_SIDE,
        'Detect on a copy whose longer side is at most this.',
    )
    flags.mark_flags_as_required(['model', 'input', 'output'])


def entry_point() -> None:
    """The `former-dfer-predict` command (also `python -m former_dfer_jax.predict`)."""
    _define_flags()
    cli.run(main)


if __name__ == '__main__':
    entry_point()
