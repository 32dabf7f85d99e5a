"""The files of a video's prediction: prediction.json, timeline.png, faces.png, and on
request annotated.mp4 and one explain picture per window.

    from former_dfer_jax.inference import prediction_plots
    paths = prediction_plots.write_prediction(prediction, 'out/clip', annotate=True)
"""

from __future__ import annotations

import fractions
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from former_dfer_jax import files
from former_dfer_jax.inference.explanation_plots import plot_clip
from former_dfer_jax.inference.predictor import PredictError, Prediction
from former_dfer_jax.video import decode

PREDICTION_FILE = 'prediction.json'
ANNOTATED_FILE = 'annotated.mp4'


def _missing_spans(result: dict[str, Any]) -> list[tuple[float, float]]:
    """(start, end) seconds of the runs of frames without a face."""
    frames = result['frames']
    frame_s = 1.0 / result['fps']
    spans, begin = [], None
    for i, frame in enumerate(frames):
        if frame['face'] is None and begin is None:
            begin = frame['time_s']
        if frame['face'] is not None and begin is not None:
            spans.append((begin, frame['time_s']))
            begin = None
        if i == len(frames) - 1 and begin is not None:
            spans.append((begin, frame['time_s'] + frame_s))
    return spans


def plot_timeline(result: dict[str, Any], path: str) -> None:
    """Class probabilities over time (one point per window, at its centre, held flat to
    the first window's start and the last one's end), the face-missing spans shaded."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    windows = result['windows']
    probs = np.array([w['probabilities'] for w in windows])
    missing = _missing_spans(result)
    figure, axes = plt.subplots(figsize=(9, 3.6), dpi=100)
    try:
        for start, end in missing:
            axes.axvspan(start, end, color='0.85', lw=0)
        centres = [(w['start_s'] + w['end_s']) / 2 for w in windows]
        x = [windows[0]['start_s'], *centres, windows[-1]['end_s']]
        y = np.concatenate([probs[:1], probs, probs[-1:]])
        for c, name in enumerate(result['class_names']):
            (line,) = axes.plot(x, y[:, c], label=name)
            axes.plot(centres, probs[:, c], 'o', ms=3, color=line.get_color())
        if missing:
            axes.fill_between([], [], color='0.85', label='no face')
        end = result['frames'][-1]['time_s'] + 1.0 / result['fps']
        axes.set_xlim(result['frames'][0]['time_s'], end)
        axes.set_ylim(0, 1)
        axes.set_xlabel('time (s)')
        axes.set_ylabel('probability')
        label = result['clip']['label']
        share = max(result['clip']['probabilities'])
        axes.set_title(f'{os.path.basename(result["video"])}: {label} ({share:.0%})', fontsize=10)
        axes.legend(loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
        figure.tight_layout()
        with files.atomic_path(path) as tmp:
            figure.savefig(tmp)
    finally:
        plt.close(figure)


def contact_sheet(prediction: Prediction, *, tile: int = 112, columns: int = 8) -> Image.Image:
    """One aligned crop per window (its middle sampled frame), captioned with the
    window's span and label: the windows of `prediction.sheet_crops` (`sheet_windows`:
    at most 32, evenly chosen)."""
    result = prediction.result
    windows = result['windows']
    chosen = sorted(prediction.sheet_crops)
    columns = min(columns, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    caption = 28
    sheet = Image.new('RGB', (columns * tile, rows * (tile + caption)), 'white')
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for n, w in enumerate(chosen):
        window, crop = windows[w], prediction.sheet_crops[w]
        x, y = (n % columns) * tile, (n // columns) * (tile + caption)
        sheet.paste(Image.fromarray(crop).resize((tile, tile), Image.Resampling.BILINEAR), (x, y))
        probs = window['probabilities']
        best = int(np.argmax(probs))
        span = f'{window["start_s"]:.1f}-{window["end_s"]:.1f} s'
        draw.text((x + 3, y + tile + 1), span, fill='black', font=font)
        label = f'{result["class_names"][best][:12]} {probs[best]:.2f}'
        draw.text((x + 3, y + tile + 14), label, fill='black', font=font)
    return sheet


def _probabilities_at(result: dict[str, Any]) -> Callable[[float], np.ndarray | None]:
    """time -> mean probabilities of the windows covering it (None where none does)."""
    spans = np.array([[w['start_s'], w['end_s']] for w in result['windows']])
    probs = np.array([w['probabilities'] for w in result['windows']])

    def at(t: float) -> np.ndarray | None:
        inside = (spans[:, 0] <= t + 1e-9) & (t < spans[:, 1] - 1e-9)
        return probs[inside].mean(axis=0) if inside.any() else None

    return at


def write_annotated(result: dict[str, Any], video_path: str, path: str) -> None:
    """The video re-encoded as H.264 MP4 with the face box and the current label drawn
    (the mean of the windows covering each frame; 'no prediction' elsewhere): one more
    decode pass, one frame at a time."""
    import av

    at = _probabilities_at(result)
    names = result['class_names']
    w, h = result['size']
    w, h = w - w % 2, h - h % 2  # yuv420p needs even sides
    rate = fractions.Fraction(result['fps']).limit_denominator(1001)
    font = ImageFont.load_default(size=max(12, h // 24))
    faces_by_index = {f['index']: f['face'] for f in result['frames']}
    with files.atomic_path(path) as tmp, av.open(tmp, 'w') as container:
        stream = container.add_stream('libx264', rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
        stream.options = {'preset': 'veryfast', 'crf': '23'}
        for frame in decode.read_frames(video_path, fps_for_frames_dir=result['fps']):
            image = Image.fromarray(frame.image[:h, :w])
            draw = ImageDraw.Draw(image)
            face = faces_by_index.get(frame.index)
            if face is not None:
                draw.rectangle(face['box'], outline=(0, 255, 0), width=max(2, h // 180))
            probs = at(frame.time_s)
            text = 'no prediction'
            if probs is not None:
                best = int(np.argmax(probs))
                text = f'{names[best]} {probs[best]:.2f}'
            draw.text((8, 8), text, fill=(255, 255, 0), font=font, stroke_width=2,
                      stroke_fill=(0, 0, 0))  # fmt: skip
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def explain_file_name(index: int, window: dict[str, Any], num_windows: int) -> str:
    """`explain_<index>_<start>-<end>s.png` of window `index` of prediction.json's
    'windows' (from 0, zero-padded to 3 digits or as many as the count needs, so the
    names sort in time order), its span in seconds to 0.1 s: explain_003_12.0-14.0s.png."""
    digits = max(3, len(str(num_windows - 1)))
    return f'explain_{index:0{digits}d}_{window["start_s"]:.1f}-{window["end_s"]:.1f}s.png'


def write_explanations(prediction: Prediction, directory: str) -> dict[str, str]:
    """One `plot_clip` picture per window (`explain_file_name`): its sampled frames at the
    model's input size (`prediction.window_frames`), their feature-map and Grad-CAM
    overlays, and the temporal importance (occlusion; T-Former attention rollout) under
    them. Returns the paths by file stem."""
    if prediction.explanations is None:
        raise PredictError('this prediction has no explanations: use Predictor(explain=True)')
    result = prediction.result
    windows = result['windows']
    video = os.path.basename(result['video'])
    paths = {}
    pictures = zip(windows, prediction.explanations, prediction.window_frames, strict=True)
    for i, (window, picture, clip) in enumerate(pictures):
        name = explain_file_name(i, window, len(windows))
        frames = clip / 255.0
        indices = ', '.join(str(f) for f in window['frame_indices'])
        heading = (
            f'{video}: window {i}, {window["start_s"]:.2f}-{window["end_s"]:.2f} s '
            f'(frames {indices})'
        )
        path = os.path.join(directory, name)
        plot_clip(frames, [picture], path, heading)  # written through files.atomic_path
        paths[os.path.splitext(name)[0]] = path
    return paths


def write_prediction(
    prediction: Prediction, directory: str, *, annotate: bool = False
) -> dict[str, str]:
    """Writes prediction.json, timeline.png, faces.png (and annotated.mp4; and with the
    explanations of Predictor(explain=True), `write_explanations`' pictures) into
    `directory`; returns their paths by name."""
    os.makedirs(directory, exist_ok=True)
    paths = {
        'prediction': os.path.join(directory, PREDICTION_FILE),
        'timeline': os.path.join(directory, 'timeline.png'),
        'faces': os.path.join(directory, 'faces.png'),
    }
    files.write_json(paths['prediction'], prediction.result, indent=1)
    plot_timeline(prediction.result, paths['timeline'])
    with files.atomic_path(paths['faces']) as tmp:
        contact_sheet(prediction).save(tmp)
    if annotate:
        paths['annotated'] = os.path.join(directory, ANNOTATED_FILE)
        write_annotated(prediction.result, prediction.result['video'], paths['annotated'])
    if prediction.explanations is not None:
        paths.update(write_explanations(prediction, directory))
    return paths
