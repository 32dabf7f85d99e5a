"""Emotions of any video: face track -> sliding windows -> Former-DFER -> a result dict.

The face pipeline is `former_dfer_jax.video` (decode, detect, track, align to 256 x 256 as
DFEW's crops). Windows of `window_s` seconds every `stride_s` seconds are laid over the
video; a window is classified when the face was found in at least half of its frames,
from U x V of those face frames picked by the reference's *test* sampling rule
(`data.sampling`), each resized to the model's input as the prepare + eval pipeline
resizes DFEW's 256 x 256 crops (PIL bilinear, whole uint8 levels, / 255). The clip result
is the mean of the window probabilities. A video shorter than a window is one window;
a video where no window qualifies but some frames show a face is one window over those
frames (with a warning).

    from former_dfer_jax.inference import open_run, predictor
    run = open_run('runs/dfew_fd1')
    result = predictor.predict_video(run, 'clip.mp4')     # the prediction.json content
    result['clip']['label'], result['clip']['probabilities']

    many = predictor.Predictor.from_run(run, explain=True)  # one compile, many videos
    prediction = many.predict('clip.mp4')          # .result, .sheet_crops, .explanations

Memory does not grow with the video: pass 1 of the face pipeline (`faces.track_faces`)
keeps only boxes and landmarks, the windows are planned from its times, and pass 2's
crops (`faces.aligned_crops`) stream through a `CropBuffer` that holds, at the model's
input size, only the sampled frames of the windows still open; each batch of completed
windows goes through the jitted model as it fills.

`prediction_plots.write_prediction(prediction, 'out/clip')` writes its files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from PIL import Image

from former_dfer_jax.data.sampling import sample_frame_indices
from former_dfer_jax.errors import UserError
from former_dfer_jax.inference import explanations
from former_dfer_jax.inference.batches import run_batched
from former_dfer_jax.inference.explanation_plots import ClipPicture, clip_picture
from former_dfer_jax.inference.runs import Run, default_class_names
from former_dfer_jax.video import faces

# DFEW's clips are 11..847 frames, median 70 (10% / 90%: 42 / 124), i.e. about 1.5-5 s and
# typically 2-3 s of film: a 2 s window is the length of clip the model was trained on,
# and a 1 s stride gives each moment two overlapping opinions.
DEFAULT_WINDOW_S = 2.0
DEFAULT_STRIDE_S = 1.0
# A window is classified when the face shows in at least this fraction of its frames
# (DFEW dropped the frames without a face, so its clips are "mostly a face").
MIN_FACE_FRACTION = 0.5
DEFAULT_BATCH_SIZE = 4
SHEET_TILES = 32  # windows shown in faces.png
# The settings measured to keep predict above real time on 2 cores (docs/predict.md, "Speed"):
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


class PredictError(UserError):
    """A video that cannot be predicted, or predict settings that do not work."""


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


class CropBuffer:
    """The sampled frames of the windows not yet complete, resized as they arrive.

    `window_frames`: per window, in time order, the frame indices its clip samples (in
    clip order, repeats allowed). `add` each aligned crop of the stream in frame order; it
    returns the windows completed by it, in window order, as (window number, uint8
    [T, S, S, 3] clip). A frame is held from its arrival until the last window using it
    completes, so at most the frames of the windows overlapping the current time are
    held (`peak`: the most held at once), whatever the video's length.
    """

    def __init__(self, window_frames: Sequence[np.ndarray], image_size: int):
        self.window_frames = [np.asarray(f, np.int64) for f in window_frames]
        self.image_size = image_size
        self._users: dict[int, int] = {}  # frame index -> windows still needing it
        for frames in self.window_frames:
            for i in set(frames.tolist()):
                self._users[i] = self._users.get(i, 0) + 1
        self._ends = [int(f.max()) for f in self.window_frames]
        self._next = 0  # the first window not yet returned
        self.frames: dict[int, np.ndarray] = {}
        self.peak = 0

    @property
    def done(self) -> bool:
        """Whether every window was returned."""
        return self._next == len(self.window_frames)

    def add(self, index: int, crop: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Takes frame `index`'s aligned crop (kept only if a window samples it)."""
        if index in self._users:
            self.frames[index] = resize_crops(crop[None], self.image_size)[0]
            self.peak = max(self.peak, len(self.frames))
        completed = []
        while not self.done and self._ends[self._next] <= index:
            w, frames = self._next, self.window_frames[self._next]
            completed.append((w, np.stack([self.frames[i] for i in frames.tolist()])))
            for i in set(frames.tolist()):
                self._users[i] -= 1
                if not self._users[i]:
                    del self._users[i], self.frames[i]
            self._next += 1
        return completed


# ---- The classifier over windows -------------------------------------------------------

# What a window's explanation keeps of `explain_clips`' output; the heatmaps as float16
# (plenty for the 256 colours they are drawn with, half the memory).
_EXPLANATION_KEYS = ('feature_heatmap', 'grad_cam', 'occlusion', 'frame_importance', 'class_index')


def _probabilities(model: nnx.Module, clips: jax.Array) -> jax.Array:
    model.eval()  # on the copy `bind` merges: the caller's model is left as it is
    return jax.nn.softmax(model(clips.astype(jnp.float32) / 255.0), axis=-1)


def _explain_in_eval_mode(model: nnx.Module, clips: jax.Array, *, stage: str) -> dict:
    model.eval()
    out = explanations.explain_clips(model, clips.astype(jnp.float32) / 255.0, stage=stage)
    return {k: out[k] for k in _EXPLANATION_KEYS if k in out}


class _Classifier:
    """The jitted model over uint8 clips in fixed-size batches (`run_batched`: one program
    whatever the number of windows). With `explain_stage`, `explain_clips` also runs on
    each batch (one more jitted program)."""

    def __init__(self, model: nnx.Module, batch_size: int, explain_stage: str | None = None):
        self.batch_size = batch_size
        self._forward = explanations.bind(model, _probabilities)
        self._explain = None
        if explain_stage is not None:
            self._explain = explanations.bind(model, _explain_in_eval_mode, stage=explain_stage)

    def __call__(self, clips: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        """uint8 [n, T, S, S, 3] -> float32 probabilities [n, C], and (with an explain
        stage; else None) the clips' explanations: `_EXPLANATION_KEYS` arrays [n, ...].

        The probabilities are the forward program's whether or not explanations are made,
        so --explain leaves prediction.json as it is."""
        probabilities = run_batched(self._forward, clips, batch_size=self.batch_size)
        if self._explain is None:
            return probabilities, None
        explained = run_batched(self._explain, clips, batch_size=self.batch_size)
        for k in ('feature_heatmap', 'grad_cam'):
            explained[k] = explained[k].astype(np.float16)
        return probabilities, explained


# ---- Prediction -------------------------------------------------------------------------


@dataclasses.dataclass
class Prediction:
    """A video's result (`result`: the prediction.json content) and what the pictures and
    the report need beside it (a bounded amount: no crop of every frame)."""

    result: dict[str, Any]
    # Window number -> the aligned crop of its middle sampled frame, for the windows
    # `sheet_windows` picks (faces.png).
    sheet_crops: dict[int, np.ndarray]
    warnings: list[str]
    timings: dict[str, float]  # seconds: decode, detect, align, model, total
    # Per window (with Predictor(explain=True)): what its explain picture draws, and its
    # sampled frames at the model's input size (uint8 [T, S, S, 3]).
    explanations: list[ClipPicture] | None = None
    window_frames: list[np.ndarray] | None = None
    buffer_peak: int = 0  # the most resized crops held at once (`CropBuffer.peak`)


def sheet_windows(num_windows: int, max_tiles: int = SHEET_TILES) -> list[int]:
    """The windows faces.png shows: at most `max_tiles`, evenly chosen."""
    chosen = np.linspace(0, num_windows - 1, min(num_windows, max_tiles)).round()
    return [int(w) for w in np.unique(chosen)]


@dataclasses.dataclass
class _Streamed:
    """What `Predictor._classify` gathers over the crop stream."""

    probabilities: Any  # per window [C]; stacked to [windows, C] at the end
    pictures: list[ClipPicture] | None  # with explain
    clips: list[np.ndarray] | None  # with explain: each window's [T, S, S, 3] clip
    sheet_crops: dict[int, np.ndarray]
    buffer_peak: int = 0
    model_s: float = 0.0  # seconds resizing and in the model


class Predictor:
    """One model, detector and set of options, reused over many videos (one compile)."""

    def __init__(
        self,
        model: nnx.Module,
        *,
        class_names: Sequence[str] | None = None,
        sampling: tuple[int, int] | None = None,
        window_s: float = DEFAULT_WINDOW_S,
        stride_s: float = DEFAULT_STRIDE_S,
        batch_size: int = DEFAULT_BATCH_SIZE,
        face_options: faces.FaceOptions | None = None,
        detector: Any = None,
        explain: bool = False,
        explain_stage: str = '',
    ):
        """`model` in eval mode (`Predictor.from_run` takes a run's model, names and
        sampling). `class_names`: default `default_class_names` of the model's classes;
        `sampling`: (U, V) segments x frames per clip, default V = 2 where the model's
        frame count is even, else 1. `explain`: also explain every window (`explain_clips`
        on the map of `explain_stage`, default `default_stage`: the S-Former's, else conv5)
        for `prediction_plots.write_prediction` to draw; costs about T + 2 forward passes
        per window more."""
        if not window_s > 0 or not stride_s > 0:
            raise PredictError(f'window_s={window_s}, stride_s={stride_s}: expected both > 0')
        if batch_size < 1:
            raise PredictError(f'batch_size={batch_size}: expected >= 1')
        spec = model.spec
        self.model = model
        self.class_names = tuple(class_names or default_class_names(spec.num_classes))
        if sampling is None:
            v = 2 if spec.num_frames % 2 == 0 else 1
            sampling = (spec.num_frames // v, v)
        self.num_segments, self.segment_length = (int(n) for n in sampling)
        if len(self.class_names) != spec.num_classes:
            raise PredictError(
                f'{len(self.class_names)} class names for a model of {spec.num_classes} classes'
            )
        if self.num_segments * self.segment_length != spec.num_frames:
            raise PredictError(
                f'sampling {self.num_segments} x {self.segment_length} frames for a model of '
                f'{spec.num_frames} frames'
            )
        self.window_s, self.stride_s = float(window_s), float(stride_s)
        self.face_options = face_options or faces.FaceOptions(
            detect_every=DEFAULT_DETECT_EVERY, max_side=DEFAULT_MAX_SIDE
        )
        # One detector for every video (MTCNN is built once, on first use).
        self.detector = detector or self.face_options.detector()
        self.explain_stage = None
        if explain:
            self.explain_stage = explain_stage or explanations.default_stage(spec)
            explanations.check_stage(spec, self.explain_stage)
        self.classifier = _Classifier(model, batch_size, self.explain_stage)

    @classmethod
    def from_run(cls, run: Run, **options: Any) -> Predictor:
        """A Predictor of `run`'s model with its class names and U x V sampling;
        `options`: the other keywords of `Predictor`."""
        sampling = (run.num_segments, run.segment_length)
        return cls(run.model, class_names=run.class_names, sampling=sampling, **options)

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
        track = faces.track_faces(
            path, self.face_options, detector=self.detector, progress=progress
        )
        frames = track.frames
        warnings: list[str] = []
        if track.tracking.other_tracks:
            warnings.append(
                f'{path}: {len(track.tracking.other_tracks)} other face track(s) besides the '
                f'main subject; predicting the main one (the longest, most confident)'
            )
        if len(frames) == 1:
            warnings.append(f'{path}: a single frame: the model sees one still image')

        times = np.array([f['time_s'] for f in frames], np.float64)
        has_face = np.array([f['face'] is not None for f in frames], bool)
        windows, fallback = plan_windows(
            times, has_face, track.info.fps, self.window_s, self.stride_s
        )
        if not windows:  # track_faces raises first; kept as a guard
            raise PredictError(f'{path}: no face found in any frame')
        if fallback:
            warnings.append(
                f'{path}: the face was found in only {int(has_face.sum())} of {len(frames)} '
                f'frames, too few for any {self.window_s:g} s window to show it in '
                f'{MIN_FACE_FRACTION:.0%} of its frames; predicting one window over those frames'
            )
        index_of = np.array([f['index'] for f in frames], np.int64)
        window_frames = []  # per window: the frame indices of its clip, by the test rule
        for w in windows:
            picked = sample_frame_indices(
                len(w.face_frames), self.num_segments, self.segment_length, train=False
            )
            window_frames.append(index_of[w.face_frames[picked]])
        streamed = self._classify(track, window_frames, progress)
        spans = [(w.start_s, w.end_s) for w in windows]
        result = prediction_result(
            path, track, spans, window_frames, streamed.probabilities, self.class_names
        )
        timings = {k: float(track.timings[k]) for k in ('decode', 'detect', 'align')}
        timings['detect'] += float(track.timings['track'])
        timings['model'] = streamed.model_s
        timings['total'] = time.perf_counter() - started
        for warning in warnings:
            logging.warning('%s', warning)
        return Prediction(
            result,
            streamed.sheet_crops,
            warnings,
            timings,
            streamed.pictures,
            streamed.clips,
            streamed.buffer_peak,
        )

    def _classify(
        self, track: faces.FaceTrack, window_frames: list[np.ndarray], progress: bool
    ) -> _Streamed:
        """Pass 2 of the face pipeline through a `CropBuffer`, each batch of completed
        windows classified as it fills (the batches `run_batched` would cut from all the
        windows at once: the same numbers)."""
        buffer = CropBuffer(window_frames, self.model.spec.image_size)
        sheet: dict[int, list[int]] = {}  # frame index -> the sheet windows it is the middle of
        for w in sheet_windows(len(window_frames)):
            sheet.setdefault(int(window_frames[w][len(window_frames[w]) // 2]), []).append(w)
        explain = self.explain_stage is not None
        out = _Streamed([], [] if explain else None, [] if explain else None, {})
        pending = []

        def classify() -> None:
            clips = np.stack(pending)
            probs, explained = self.classifier(clips)
            out.probabilities.extend(probs)
            if explain:
                out.pictures.extend(self._picture(explained, i, p) for i, p in enumerate(probs))
                out.clips.extend(clips)
            pending.clear()

        for crop in faces.aligned_crops(track, progress=progress):
            for w in sheet.get(crop.index, ()):
                out.sheet_crops[w] = crop.image
            t = time.perf_counter()
            for _, clip in buffer.add(crop.index, crop.image):
                pending.append(clip)
                if len(pending) == self.classifier.batch_size:
                    classify()
            out.model_s += time.perf_counter() - t
        t = time.perf_counter()
        if pending:
            classify()
        out.model_s += time.perf_counter() - t
        if not buffer.done:  # every sampled frame has a face, so a crop: kept as a guard
            raise PredictError(f'{track.path}: the crops of some windows never came')
        out.probabilities = np.stack(out.probabilities)
        out.buffer_peak = buffer.peak
        return out

    def _picture(self, explained: dict[str, np.ndarray], i: int, probs: np.ndarray) -> ClipPicture:
        names, best = self.class_names, int(np.argmax(probs))
        title = (
            f'[{self.explain_stage}]: predicted {names[best]} ({probs[best]:.2f}); '
            f'maps of {names[int(explained["class_index"][i])]}'
        )
        return clip_picture(explained, i, title)


def prediction_result(
    path: str,
    track: faces.FaceTrack,
    spans: Sequence[tuple[float, float]],
    window_frames: Sequence[np.ndarray],
    probabilities: np.ndarray,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """The prediction.json content (`RESULT_KEYS`): the video, its frames and faces, each
    window's span, sampled frames (`window_frames`: frame indices) and probabilities, and
    the clip's mean of those."""
    names = list(class_names)
    mean = probabilities.mean(axis=0)
    return {
        'video': os.path.abspath(path),
        'fps': float(track.info.fps),
        'num_frames': len(track.frames),
        'size': [int(track.info.size[0]), int(track.info.size[1])],
        'class_names': names,
        'frames': [
            {'index': int(f['index']), 'time_s': float(f['time_s']), 'face': f['face']}
            for f in track.frames
        ],
        'windows': [
            {
                'start_s': round(start, 6),
                'end_s': round(end, 6),
                'frame_indices': [int(i) for i in frames],
                'probabilities': [float(p) for p in probs],
            }
            for (start, end), frames, probs in zip(spans, window_frames, probabilities, strict=True)
        ],
        'clip': {
            'label': names[int(np.argmax(mean))],
            'probabilities': [float(p) for p in mean],
        },
    }


def predict_video(
    source: Run | nnx.Module, path: str, *, progress: bool = False, **options: Any
) -> dict[str, Any]:
    """The prediction.json content for the video (or frames folder) at `path`.

    `source`: a `Run` (`open_run`: its class names and U x V) or a bare eval-mode model
    (`Predictor`'s defaults); `options`: `Predictor`'s keywords. To predict many videos
    with one compiled model, use `Predictor`.
    """
    if isinstance(source, Run):
        predictor = Predictor.from_run(source, **options)
    else:
        predictor = Predictor(source, **options)
    return predictor.predict(path, progress=progress).result
