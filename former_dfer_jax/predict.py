"""Emotions of any video: face track -> sliding windows -> Former-DFER -> JSON and pictures.

    python -m former_dfer_jax.predict --model=runs/dfew_fd1 --input=clip.mp4 --output=out/
    python -m former_dfer_jax.predict --model=runs/dfew_fd1 --input=videos/ --output=out/ \
        --annotate

`--input` is a video file, a folder of frames (`x_y.jpg`), or a folder of either. Per video,
`<output>/<video stem>/` gets `prediction.json`, `timeline.png`, `faces.png` (and
`annotated.mp4` with `--annotate`, and one `explain_<window>_<start>-<end>s.png` per window
with `--explain`: `explain`'s heatmap strip of the window's frames); a batch also gets
`<output>/summary.json`.

The face pipeline is `former_dfer_jax.video` (decode, detect, track, align to 256 x 256 as
DFEW's crops). Windows of `window_s` seconds every `stride_s` seconds are laid over the
video; a window is classified when the face was found in at least half of its frames,
from U x V of those face frames picked by the reference's *test* sampling rule
(`data.sampling`), each resized to the model's input as the prepare + eval pipeline
resizes DFEW's 256 x 256 crops (PIL bilinear, whole uint8 levels, / 255). The clip result
is the mean of the window probabilities. A video shorter than a window is one window;
a video where no window qualifies but some frames show a face is one window over those
frames (with a warning).

    from former_dfer_jax import predict
    model, settings = predict.load('runs/dfew_fd1')
    result = predict.predict_video(model, 'clip.mp4', settings=settings)
    result['clip']['label'], result['clip']['probabilities']

    predictor = predict.Predictor(model, settings, explain=True)  # + the explain pictures
    predict.write_prediction(predictor.predict('clip.mp4'), 'out/clip')
"""

from __future__ import annotations

import dataclasses
import fractions
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from PIL import Image, ImageDraw, ImageFont

from former_dfer_jax import cli
from former_dfer_jax import explain as explaining
from former_dfer_jax.data import sampling, sources
from former_dfer_jax.errors import UserError
from former_dfer_jax.training import checkpointing
from former_dfer_jax.video import decode, detect, faces, track

# DFEW's clips are 11..847 frames, median 70 (10% / 90%: 42 / 124), i.e. about 1.5-5 s and
# typically 2-3 s of film: a 2 s window is the length of clip the model was trained on,
# and a 1 s stride gives each moment two overlapping opinions.
DEFAULT_WINDOW_S = 2.0
DEFAULT_STRIDE_S = 1.0
# A window is classified when the face shows in at least this fraction of its frames
# (DFEW dropped the frames without a face, so its clips are "mostly a face").
MIN_FACE_FRACTION = 0.5
DEFAULT_BATCH_SIZE = 4
# The settings measured to keep predict above real time on 2 cores (see the README part):
# MTCNN on a 320-pixel copy every 5th frame, the track filling the frames between.
DEFAULT_DETECT_EVERY = 5
DEFAULT_MAX_SIDE = 320
RESULT_KEYS = (
    'video',
    'fps',
    'num_frames',
    'size',
    'class_names',
    'frames',
    'windows',
    'clip',
)
ANNOTATED_FILE = 'annotated.mp4'


class PredictError(UserError):
    """A video that cannot be predicted, or predict settings that do not work."""


# ---- The model and what it needs to know ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """What predicting needs beside the weights: class names and the U x V sampling."""

    class_names: tuple[str, ...]
    num_segments: int
    segment_length: int


def _default_settings(model: nnx.Module) -> ModelSettings:
    """Settings for a bare model: DFEW's class names for 7 classes, V = 2 (the reference)."""
    spec = model.spec
    names = sources.CLASS_NAMES if spec.num_classes == len(sources.CLASS_NAMES) else ()
    names = names or tuple(f'class_{i}' for i in range(spec.num_classes))
    v = 2 if spec.num_frames % 2 == 0 else 1
    return ModelSettings(tuple(names), spec.num_frames // v, v)


def class_names_of(run_dir: str, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The class names of a run: its results.json (what training reported), else its
    dataset's (`sources.class_names`: a user's own classes.txt), else class_<i>."""
    num_classes = int(config.model.num_classes)
    results = os.path.join(run_dir, 'results.json')
    if os.path.exists(results):
        try:
            with open(results) as f:
                names = json.load(f).get('class_names') or []
        except (OSError, json.JSONDecodeError):
            names = []
        if len(names) == num_classes:
            return tuple(names)
    data = config.get('data', ml_collections.ConfigDict())
    try:
        names = sources.class_names(
            data.get('name', 'dfew'),
            root=data.get('root', ''),
            annotation_dir=data.get('annotation_dir', ''),
        )
    except sources.SourceError:  # e.g. an own dataset's classes.txt moved away
        names = ()
    if len(names) == num_classes:
        return tuple(names)
    return tuple(f'class_{i}' for i in range(num_classes))


def settings_of(run_dir: str, config: ml_collections.ConfigDict) -> ModelSettings:
    """The ModelSettings of a stored run (its config.json beside the checkpoints)."""
    u, v = int(config.data.num_segments), int(config.data.segment_length)
    if u * v != int(config.model.num_frames):
        raise PredictError(
            f'{run_dir}: data.num_segments x data.segment_length = {u} x {v} is not '
            f'model.num_frames = {config.model.num_frames}'
        )
    return ModelSettings(class_names_of(run_dir, config), u, v)


def load(path: str, which: str = 'best') -> tuple[nnx.Module, ModelSettings]:
    """The model at `path` (a run directory, `which` = best | latest, or a checkpoint step
    directory) in eval mode, and its ModelSettings."""
    model, stored = checkpointing.restore_model(path, which)
    model.eval()
    return model, settings_of(stored.run_dir, stored.config)


def _explain_in_eval_mode(model: nnx.Module, clips: jax.Array, *, stage: str) -> dict:
    model.eval()  # on the copy `explain.bind` merges: the caller's model is left as it is
    return explaining.explain_clips(model, clips.astype(jnp.float32) / 255.0, stage=stage)


# What a window's explanation keeps of `explain.explain_clips`' output; the heatmaps as
# float16 (plenty for the 256 colours they are drawn with, half the memory).
_EXPLANATION_KEYS = ('feature_heatmap', 'grad_cam', 'occlusion', 'frame_importance', 'class_index')


class _Classifier:
    """The jitted model over batches of uint8 clips; the last batch padded to batch_size,
    so one program is compiled whatever the number of windows. With `explain_stage`,
    `explain.explain_clips` also runs on each batch (one more jitted call per batch)."""

    def __init__(self, model: nnx.Module, batch_size: int, explain_stage: str | None = None):
        if batch_size < 1:
            raise PredictError(f'batch_size={batch_size}: expected >= 1')
        self.batch_size = batch_size
        graphdef, self._state = nnx.split(model)

        def forward(state: nnx.State, clips: jax.Array) -> jax.Array:
            module = nnx.merge(graphdef, state)
            module.eval()  # on this copy: the caller's model is left as it is
            return jax.nn.softmax(module(clips.astype(jnp.float32) / 255.0), axis=-1)

        self._forward = jax.jit(forward)
        self._explain = None
        if explain_stage is not None:
            self._explain = explaining.bind(model, _explain_in_eval_mode, stage=explain_stage)

    def __call__(self, clips: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        """uint8 [n, T, S, S, 3] -> float32 probabilities [n, C], and (with an explain
        stage; else None) the clips' explanations: `_EXPLANATION_KEYS` arrays [n, ...].

        The probabilities are the forward program's whether or not explanations are made,
        so --explain leaves prediction.json as it is."""
        out, explained = [], []
        for start in range(0, len(clips), self.batch_size):
            chunk = clips[start : start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:
                pad = np.repeat(chunk[-1:], self.batch_size - n, axis=0)
                chunk = np.concatenate([chunk, pad])
            chunk = jnp.asarray(chunk)
            out.append(np.asarray(self._forward(self._state, chunk))[:n])
            if self._explain is not None:
                e = jax.device_get(self._explain(chunk))
                explained.append({k: np.asarray(e[k])[:n] for k in _EXPLANATION_KEYS if k in e})
        probabilities = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
        if self._explain is None or not explained:
            return probabilities, None
        merged = {k: np.concatenate([e[k] for e in explained]) for k in explained[0]}
        for k in ('feature_heatmap', 'grad_cam'):
            merged[k] = merged[k].astype(np.float16)
        return probabilities, merged


# ---- Windows ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Window:
    """A time span and the positions (in the video's frame list) of its face frames."""

    start_s: float
    end_s: float
    face_frames: np.ndarray  # int positions into the frame list, time order


def window_starts(start: float, duration: float, window_s: float, stride_s: float) -> list[float]:
    """Starts of windows of `window_s` every `stride_s` over [start, start + duration); the
    last one is moved back to end with the video, so the tail is covered. A video no longer
    than a window is one window."""
    if duration <= window_s + 1e-9:
        return [start]
    count = math.ceil((duration - window_s) / stride_s - 1e-9) + 1
    return [start + min(i * stride_s, duration - window_s) for i in range(count)]


def plan_windows(
    times: np.ndarray,
    has_face: np.ndarray,
    fps: float,
    window_s: float,
    stride_s: float,
    min_face_fraction: float = MIN_FACE_FRACTION,
) -> tuple[list[Window], bool]:
    """The windows to classify, and whether the fallback (one window over all face
    frames, because no regular window had enough of them) was taken.

    `times`: each decoded frame's time in seconds; `has_face`: whether its face was found.
    A window holds the frames with start <= time < end; it is kept when at least
    `min_face_fraction` of them (and at least one) show the face.
    """
    times = np.asarray(times, np.float64)
    has_face = np.asarray(has_face, bool)
    if not has_face.any():
        return [], False
    frame_s = 1.0 / fps
    start = float(times[0])
    duration = float(times[-1]) - start + frame_s
    windows = []
    for s in window_starts(start, duration, window_s, stride_s):
        e = s + min(window_s, duration)
        inside = np.flatnonzero((times >= s - 1e-9) & (times < e - 1e-9))
        face = inside[has_face[inside]]
        if len(face) >= 1 and len(face) >= min_face_fraction * len(inside):
            windows.append(Window(s, e, face))
    if windows:
        return windows, False
    face = np.flatnonzero(has_face)
    return [Window(float(times[face[0]]), float(times[face[-1]]) + frame_s, face)], True


# ---- Resizing as the eval pipeline does -------------------------------------------------


def resize_crops(crops: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 [n, s, s, 3] aligned crops -> uint8 [n, S, S, 3] at the model's input size.

    As DFEW's 256 x 256 crops reach the model: resized with PIL's bilinear filter at
    prepare time (`data.frames`, stored_frame_size = image_size), then fed unchanged by
    the eval pipeline; with stored_frame_size 0 the eval pipeline's antialiased bilinear
    resize is within one level of this.
    """
    if crops.shape[1:3] == (image_size, image_size):
        return crops
    out = np.empty((len(crops), image_size, image_size, 3), np.uint8)
    for i, crop in enumerate(crops):
        image = Image.fromarray(crop).resize((image_size, image_size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(image)
    return out


# ---- Prediction -------------------------------------------------------------------------


@dataclasses.dataclass
class Prediction:
    """A video's result (`result`: the prediction.json content) and what the pictures and
    the report need beside it."""

    result: dict[str, Any]
    crops: np.ndarray  # uint8 [n, s, s, 3] aligned crops, time order
    crop_frames: np.ndarray  # int [n] frame index of each crop
    window_crops: list[np.ndarray]  # per window: crop positions sampled
    warnings: list[str]
    timings: dict[str, float]  # seconds: decode, detect, align, model, total
    # Per window (with Predictor(explain=True)): what its explain picture draws.
    explanations: list[explaining.ClipPicture] | None = None


class Predictor:
    """One model, detector and set of options, reused over many videos (one compile)."""

    def __init__(
        self,
        model: nnx.Module,
        settings: ModelSettings | None = None,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        stride_s: float = DEFAULT_STRIDE_S,
        batch_size: int = DEFAULT_BATCH_SIZE,
        face_options: faces.FaceOptions | None = None,
        detector: Any = None,
        explain: bool = False,
        explain_stage: str = '',
    ):
        """`explain`: also explain every window (`explain.explain_clips` on the map of
        `explain_stage`, default `explain.default_stage`: the S-Former's, else conv5) for
        `write_prediction` to draw; costs about T + 2 forward passes per window more."""
        if not window_s > 0 or not stride_s > 0:
            raise PredictError(f'window_s={window_s}, stride_s={stride_s}: expected both > 0')
        self.model = model
        self.settings = settings or _default_settings(model)
        spec = model.spec
        if len(self.settings.class_names) != spec.num_classes:
            raise PredictError(
                f'{len(self.settings.class_names)} class names for a model of '
                f'{spec.num_classes} classes'
            )
        if self.settings.num_segments * self.settings.segment_length != spec.num_frames:
            raise PredictError(
                f'sampling {self.settings.num_segments} x {self.settings.segment_length} '
                f'frames for a model of {spec.num_frames} frames'
            )
        self.window_s, self.stride_s = float(window_s), float(stride_s)
        self.face_options = face_options or faces.FaceOptions(
            detect_every=DEFAULT_DETECT_EVERY, max_side=DEFAULT_MAX_SIDE
        )
        # One detector for every video (MTCNN is built once, on first use).
        self.detector = detector or self.face_options.detector()
        self.explain_stage = None
        if explain:
            self.explain_stage = explain_stage or explaining.default_stage(spec)
            explaining.check_stage(spec, self.explain_stage)
        self.classifier = _Classifier(model, batch_size, self.explain_stage)

    def warm_up(self) -> float:
        """Builds the detector and compiles the model (and the explanations) on blank
        input, so that the timings of the videos are the steady state's; returns the
        seconds it took."""
        started = time.perf_counter()
        self.detector.detect(np.zeros((128, 128, 3), np.uint8))
        spec = self.model.spec
        self.classifier(
            np.zeros((1, spec.num_frames, spec.image_size, spec.image_size, 3), np.uint8)
        )
        return time.perf_counter() - started

    def predict(self, path: str, *, progress: bool = False) -> Prediction:
        """Predicts one video (file or frames folder); VideoError / PredictError name it."""
        started = time.perf_counter()
        video = faces.extract_face_video(
            path, self.face_options, detector=self.detector, progress=progress
        )
        info, frames = video.info, video.frames
        warnings: list[str] = []
        if video.tracking.other_tracks:
            warnings.append(
                f'{path}: {len(video.tracking.other_tracks)} other face track(s) besides the '
                f'main subject; predicting the main one (the longest, most confident)'
            )
        if len(frames) == 1:
            warnings.append(f'{path}: a single frame: the model sees one still image')

        model_started = time.perf_counter()
        times = np.array([f['time_s'] for f in frames], np.float64)
        has_face = np.array([f['face'] is not None for f in frames], bool)
        windows, fallback = plan_windows(times, has_face, info.fps, self.window_s, self.stride_s)
        if not windows:  # extract_face_video raises first; kept as a guard
            raise PredictError(f'{path}: no face found in any frame')
        if fallback:
            warnings.append(
                f'{path}: the face was found in only {int(has_face.sum())} of {len(frames)} '
                f'frames, too few for any {self.window_s:g} s window to show it in '
                f'{MIN_FACE_FRACTION:.0%} of its frames; predicting one window over those frames'
            )
        position_of_frame = {int(f['index']): i for i, f in enumerate(frames)}
        crop_of_position = np.full(len(frames), -1, np.int64)
        for c, index in enumerate(video.crop_frames):
            crop_of_position[position_of_frame[int(index)]] = c
        small = resize_crops(video.crops, self.model.spec.image_size)
        u, v = self.settings.num_segments, self.settings.segment_length
        window_crops = []
        for window in windows:
            crops_here = crop_of_position[window.face_frames]
            crops_here = crops_here[crops_here >= 0]
            picked = sampling.sample_frame_indices(len(crops_here), u, v, train=False)
            window_crops.append(crops_here[picked])
        probabilities, explained = self.classifier(np.stack([small[c] for c in window_crops]))
        model_s = time.perf_counter() - model_started

        names = list(self.settings.class_names)
        explanations = None
        if explained is not None:
            explanations = []
            for i, probs in enumerate(probabilities):
                best = int(np.argmax(probs))
                title = (
                    f'[{self.explain_stage}]: predicted {names[best]} ({probs[best]:.2f}); '
                    f'maps of {names[int(explained["class_index"][i])]}'
                )
                explanations.append(explaining.clip_picture(explained, i, title))
        mean = probabilities.mean(axis=0)
        result = {
            'video': os.path.abspath(path),
            'fps': float(info.fps),
            'num_frames': len(frames),
            'size': [int(info.size[0]), int(info.size[1])],
            'class_names': names,
            'frames': [
                {'index': int(f['index']), 'time_s': float(f['time_s']), 'face': f['face']}
                for f in frames
            ],
            'windows': [
                {
                    'start_s': round(w.start_s, 6),
                    'end_s': round(w.end_s, 6),
                    'frame_indices': [int(i) for i in video.crop_frames[c]],
                    'probabilities': [float(p) for p in probs],
                }
                for w, c, probs in zip(windows, window_crops, probabilities, strict=True)
            ],
            'clip': {
                'label': names[int(np.argmax(mean))],
                'probabilities': [float(p) for p in mean],
            },
        }
        timings = {k: float(video.timings.get(k, 0.0)) for k in ('decode', 'detect', 'align')}
        timings['detect'] += float(video.timings.get('track', 0.0))
        timings['model'] = model_s
        timings['total'] = time.perf_counter() - started
        for warning in warnings:
            logging.warning('%s', warning)
        return Prediction(
            result, video.crops, video.crop_frames, window_crops, warnings, timings, explanations
        )


def predict_video(
    model: nnx.Module,
    path: str,
    *,
    settings: ModelSettings | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    stride_s: float = DEFAULT_STRIDE_S,
    batch_size: int = DEFAULT_BATCH_SIZE,
    face_options: faces.FaceOptions | None = None,
    detector: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The prediction.json content for the video (or frames folder) at `path`.

    `model`: from `inference.load_model` or `load` (whose `settings` give the run's class
    names and U x V; without them: DFEW's names for 7 classes, V = 2). To predict many
    videos with one compiled model, use `Predictor`.
    """
    predictor = Predictor(
        model,
        settings,
        window_s=window_s,
        stride_s=stride_s,
        batch_size=batch_size,
        face_options=face_options,
        detector=detector,
    )
    return predictor.predict(path, progress=progress).result


# ---- Pictures and files ----------------------------------------------------------------


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
    figure, axes = plt.subplots(figsize=(9, 3.6), dpi=100)
    try:
        for start, end in _missing_spans(result):
            axes.axvspan(start, end, color='0.85', lw=0)
        centres = [(w['start_s'] + w['end_s']) / 2 for w in windows]
        x = [windows[0]['start_s'], *centres, windows[-1]['end_s']]
        y = np.concatenate([probs[:1], probs, probs[-1:]])
        for c, name in enumerate(result['class_names']):
            (line,) = axes.plot(x, y[:, c], label=name)
            axes.plot(centres, probs[:, c], 'o', ms=3, color=line.get_color())
        if _missing_spans(result):
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
        figure.savefig(path)
    finally:
        plt.close(figure)


def contact_sheet(
    prediction: Prediction, *, tile: int = 112, max_tiles: int = 32, columns: int = 8
) -> Image.Image:
    """One aligned crop per window (its middle sampled frame), captioned with the
    window's span and label; at most `max_tiles` windows, evenly chosen."""
    result = prediction.result
    windows = result['windows']
    chosen = np.unique(np.linspace(0, len(windows) - 1, min(len(windows), max_tiles)).round())
    columns = min(columns, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    caption = 28
    sheet = Image.new('RGB', (columns * tile, rows * (tile + caption)), 'white')
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for n, w in enumerate(chosen.astype(int)):
        window = windows[w]
        crops = prediction.window_crops[w]
        crop = prediction.crops[crops[len(crops) // 2]]
        x, y = (n % columns) * tile, (n // columns) * (tile + caption)
        sheet.paste(Image.fromarray(crop).resize((tile, tile), Image.Resampling.BILINEAR), (x, y))
        probs = window['probabilities']
        best = int(np.argmax(probs))
        draw.text(
            (x + 3, y + tile + 1),
            f'{window["start_s"]:.1f}-{window["end_s"]:.1f} s',
            fill='black',
            font=font,
        )
        draw.text(
            (x + 3, y + tile + 14),
            f'{result["class_names"][best][:12]} {probs[best]:.2f}',
            fill='black',
            font=font,
        )
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
    (the mean of the windows covering each frame; 'no prediction' elsewhere)."""
    import av

    at = _probabilities_at(result)
    names = result['class_names']
    w, h = result['size']
    w, h = w - w % 2, h - h % 2  # yuv420p needs even sides
    rate = fractions.Fraction(result['fps']).limit_denominator(1001)
    font = ImageFont.load_default(size=max(12, h // 24))
    faces_by_index = {f['index']: f['face'] for f in result['frames']}
    tmp = f'{path}.tmp-{os.getpid()}.mp4'
    try:
        with av.open(tmp, 'w') as container:
            stream = container.add_stream('libx264', rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
            stream.options = {'preset': 'veryfast', 'crf': '23'}
            for frame in decode.read_frames(video_path):
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
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_json(data: Any, path: str) -> None:
    folder = os.path.dirname(path) or '.'
    with tempfile.NamedTemporaryFile('w', dir=folder, suffix='.tmp', delete=False) as f:
        json.dump(data, f, indent=1)
        f.write('\n')
    os.replace(f.name, path)


def explain_file_name(index: int, window: dict[str, Any], num_windows: int) -> str:
    """`explain_<index>_<start>-<end>s.png` of window `index` of prediction.json's
    'windows' (from 0, zero-padded to 3 digits or as many as the count needs, so the
    names sort in time order), its span in seconds to 0.1 s: explain_003_12.0-14.0s.png."""
    digits = max(3, len(str(num_windows - 1)))
    return f'explain_{index:0{digits}d}_{window["start_s"]:.1f}-{window["end_s"]:.1f}s.png'


def write_explanations(prediction: Prediction, directory: str) -> dict[str, str]:
    """One `explain.plot_clip` picture per window (`explain_file_name`): its sampled
    frames at the model's input size, their feature-map and Grad-CAM overlays, and the
    temporal importance (occlusion; T-Former attention rollout) under them. Returns the
    paths by file stem."""
    if prediction.explanations is None:
        raise PredictError('this prediction has no explanations: use Predictor(explain=True)')
    result = prediction.result
    windows = result['windows']
    video = os.path.basename(result['video'])
    paths = {}
    for i, (window, picture) in enumerate(zip(windows, prediction.explanations, strict=True)):
        name = explain_file_name(i, window, len(windows))
        size = picture.grad_cam.shape[-1]
        frames = resize_crops(prediction.crops[prediction.window_crops[i]], size) / 255.0
        indices = ', '.join(str(f) for f in window['frame_indices'])
        heading = (
            f'{video}: window {i}, {window["start_s"]:.2f}-{window["end_s"]:.2f} s '
            f'(frames {indices})'
        )
        path = os.path.join(directory, name)
        explaining.plot_clip(frames, [picture], path, heading)
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
        'prediction': os.path.join(directory, 'prediction.json'),
        'timeline': os.path.join(directory, 'timeline.png'),
        'faces': os.path.join(directory, 'faces.png'),
    }
    _write_json(prediction.result, paths['prediction'])
    plot_timeline(prediction.result, paths['timeline'])
    contact_sheet(prediction).save(paths['faces'])
    if annotate:
        paths['annotated'] = os.path.join(directory, ANNOTATED_FILE)
        write_annotated(prediction.result, prediction.result['video'], paths['annotated'])
    if prediction.explanations is not None:
        paths.update(write_explanations(prediction, directory))
    return paths


# ---- Inputs -----------------------------------------------------------------------------


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
    ({'predicted': [...], 'failed': [{'video', 'error'}], 'timings', 'num_frames'}).

    One video: its failure raises. A batch: a failing video is reported and the others
    go on; summary.json is written; raises only when none could be predicted.
    """
    from tqdm import tqdm

    videos, batch = list_inputs(input_path)
    names = output_names(videos)
    totals = dict.fromkeys(('decode', 'detect', 'align', 'model', 'total'), 0.0)
    summary: dict[str, Any] = {'predicted': [], 'failed': [], 'warnings': []}
    num_frames = 0
    bar = tqdm(
        list(zip(videos, names, strict=True)), desc='videos', unit='video', disable=not batch
    )
    for video, name in bar:
        try:
            prediction = predictor.predict(video, progress=True)
            directory = os.path.join(output_dir, name)
            write_prediction(prediction, directory, annotate=annotate)
        except UserError as e:
            if not batch:
                raise
            tqdm.write(f'error: {e}', file=sys.stderr)
            summary['failed'].append({'video': video, 'error': str(e)})
            continue
        for warning in prediction.warnings:
            tqdm.write(f'warning: {warning}', file=sys.stderr)
        summary['warnings'].extend(prediction.warnings)
        clip = prediction.result['clip']
        tqdm.write(f'{video}: {clip["label"]} ({max(clip["probabilities"]):.2f}) -> {directory}')
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
        _write_json(summary, os.path.join(output_dir, 'summary.json'))
        print(
            f'{len(summary["predicted"])} of {len(videos)} videos predicted; '
            f'{len(summary["failed"])} failed'
        )
        for failure in summary['failed']:
            print(f'  failed: {failure["error"]}')
        if not summary['predicted']:
            raise PredictError(f'{input_path}: none of its {len(videos)} videos could be predicted')
    return summary


# ---- Benchmark --------------------------------------------------------------------------


def synthetic_face_video(
    path: str, *, seconds: float = 10.0, fps: int = 30, size: tuple[int, int] = (640, 360)
) -> None:
    """Writes an H.264 video of a real face (scikit-image's astronaut, a 128-pixel patch)
    moving over a textured canvas along a Lissajous path of period 10 s (up to ~5 pixels
    a frame at 30 fps)."""
    import av

    try:
        from skimage import data as skimage_data
    except ImportError as e:
        raise PredictError(
            "the predict benchmark draws scikit-image's astronaut: pip install "
            'scikit-image (see requirements-dev.txt)'
        ) from e
    face = Image.fromarray(skimage_data.astronaut()[20:220, 130:330]).resize((128, 128))
    w, h = size
    rng = np.random.default_rng(0)
    canvas = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
    background = Image.fromarray(canvas).resize((w, h), Image.Resampling.BILINEAR)
    n, period = round(seconds * fps), 10.0 * fps
    with av.open(path, 'w') as container:
        stream = container.add_stream('libx264', rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
        for i in range(n):
            phase = 2 * math.pi * i / period
            x = int((w - 128) * (0.5 + 0.4 * math.sin(phase)))
            y = int((h - 128) * (0.5 + 0.4 * math.sin(2 * phase)))
            image = background.copy()
            image.paste(face, (x, y))
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def benchmark_predict(
    config: ml_collections.ConfigDict | None = None,
    *,
    seconds: float = 10.0,
    detect_every: int = DEFAULT_DETECT_EVERY,
    max_side: int = DEFAULT_MAX_SIDE,
    window_s: float = DEFAULT_WINDOW_S,
    stride_s: float = DEFAULT_STRIDE_S,
    batch_size: int = DEFAULT_BATCH_SIZE,
    compare_every_frame: bool = True,
) -> dict[str, Any]:
    """Times `Predictor.predict` end to end on a generated 640 x 360, 30 fps H.264 video
    of `seconds` with the model of `config` (default: `default_config`, the reference's
    Former-DFER at 112 x 112, random weights); frames/s per stage.

    A first, untimed run on a 1 s clip compiles the model and builds MTCNN. Reported:
    frames/s of each stage (decoded frames over that stage's seconds) and end to end,
    and the process CPU seconds (on a shared machine, wall time depends on the others'
    load; CPU time much less). With `compare_every_frame`, the boxes are compared (IoU)
    with MTCNN run on every frame at full resolution: the accuracy given up for speed.
    """
    from former_dfer_jax.models import build_model

    if config is None:
        from former_dfer_jax import default_config

        config = default_config.get_config()
    model = build_model(config.model, rngs=nnx.Rngs(0))
    model.eval()
    settings = ModelSettings(
        tuple(f'class_{i}' for i in range(config.model.num_classes)),
        int(config.data.num_segments),
        int(config.data.segment_length),
    )
    options = faces.FaceOptions(detect_every=detect_every, max_side=max_side)
    predictor = Predictor(
        model,
        settings,
        window_s=window_s,
        stride_s=stride_s,
        batch_size=batch_size,
        face_options=options,
    )
    with tempfile.TemporaryDirectory() as tmp:
        warm, video = os.path.join(tmp, 'warm.mp4'), os.path.join(tmp, 'video.mp4')
        synthetic_face_video(warm, seconds=1.0)
        synthetic_face_video(video, seconds=seconds)
        predictor.predict(warm)
        cpu = time.process_time()
        prediction = predictor.predict(video)
        cpu = time.process_time() - cpu
        reference = None
        if compare_every_frame:
            reference = faces.extract_face_video(
                video,
                faces.FaceOptions(detect_every=1, max_side=10_000),
                detector=detect.MtcnnDetector(max_side=10_000),
            ).frames
    timings = prediction.timings
    n = prediction.result['num_frames']
    rates = {k: round(n / s, 1) if s > 0 else float('inf') for k, s in timings.items()}
    rates['end_to_end'] = rates.pop('total')
    out: dict[str, Any] = {
        'what': 'predict',
        'video': f'640x360, 30 fps, {seconds:g} s ({n} frames), H.264',
        'detect_every': detect_every,
        'max_side': max_side,
        'windows': len(prediction.result['windows']),
        'face_frames': sum(f['face'] is not None for f in prediction.result['frames']),
        'cpu_count': os.cpu_count(),
        'frames_per_s': rates,
        'seconds': {k: round(v, 3) for k, v in timings.items()},
        'cpu_seconds': round(cpu, 3),
        'frames_per_cpu_s': round(n / cpu, 1),
    }
    if reference is not None:
        boxes = [None if f['face'] is None else f['face']['box'] for f in reference]
        out['iou_vs_every_frame_full_size'] = iou_stats(prediction.result['frames'], boxes)
    return out


def iou_stats(frames: Sequence[dict], boxes: Sequence[Sequence[float] | None]) -> dict:
    """IoU of each frame's box with a reference box, over the frames where both exist;
    frames where only one of the two has a face are counted apart."""
    pairs = [
        (None if f['face'] is None else f['face']['box'], b)
        for f, b in zip(frames, boxes, strict=True)
    ]
    values = np.array([track.iou(a, b) for a, b in pairs if a is not None and b is not None])
    out: dict[str, Any] = {
        'frames': len(values),
        'only_one_has_a_face': sum((a is None) != (b is None) for a, b in pairs),
    }
    if len(values):
        out.update(
            mean=round(float(values.mean()), 4),
            p10=round(float(np.percentile(values, 10)), 4),
            min=round(float(values.min()), 4),
        )
    return out


# ---- Command line -----------------------------------------------------------------------

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
    model, settings = load(FLAGS.model, FLAGS.checkpoint)
    options = faces.FaceOptions(detect_every=FLAGS.detect_every, max_side=FLAGS.max_side)
    predictor = Predictor(
        model,
        settings,
        window_s=FLAGS.window_s,
        stride_s=FLAGS.stride_s,
        batch_size=FLAGS.batch_size,
        face_options=options,
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
    flags.DEFINE_float('window_s', DEFAULT_WINDOW_S, 'Window length in seconds.')
    flags.DEFINE_float('stride_s', DEFAULT_STRIDE_S, 'Seconds between window starts.')
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
        f'Map --explain explains: {", ".join(explaining.STAGES)}; default sformer (conv5 '
        'without one).',
    )
    flags.DEFINE_integer('batch_size', DEFAULT_BATCH_SIZE, 'Windows per model call.')
    flags.DEFINE_integer(
        'detect_every', DEFAULT_DETECT_EVERY, 'Run the detector every k-th frame (1 = all).'
    )
    flags.DEFINE_integer(
        'max_side', DEFAULT_MAX_SIDE, 'Detect on a copy whose longer side is at most this.'
    )
    flags.mark_flags_as_required(['model', 'input', 'output'])


if __name__ == '__main__':
    _define_flags()
    cli.run(main)
