"""Face detection: a small `FaceDetector` protocol and its MTCNN implementation.

`MtcnnDetector` wraps the `mtcnn` package (TensorFlow; its weights ship inside the wheel).
Frames larger than `max_side` are detected on a downscaled copy and the boxes and landmarks
mapped back to the frame's pixels, so a 4K frame costs what a 640-pixel one does. Any other
detector plugs in by having `detect(image) -> list[Face]`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

LANDMARK_NAMES = ('left_eye', 'right_eye', 'nose', 'mouth_left', 'mouth_right')
_MTCNN_MIN_FACE = 20  # the largest min_face_size mtcnn 1.0.0's pyramid works with


@dataclasses.dataclass(frozen=True, eq=False)
class Face:
    """One detected face in frame pixels.

    `box` is (x0, y0, x1, y1), the detector's box without margin; `landmarks` float32
    [5, 2] (x, y) in LANDMARK_NAMES order, left / right as the viewer sees them.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    def to_json(self) -> dict:
        return {
            'box': [round(float(v), 2) for v in self.box],
            'score': round(float(self.score), 4),
            'landmarks': [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }

    @classmethod
    def from_json(cls, data: dict) -> Face:
        return cls(
            box=tuple(float(v) for v in data['box']),
            score=float(data['score']),
            landmarks=np.asarray(data['landmarks'], np.float32).reshape(5, 2),
        )


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces in one uint8 [H, W, 3] RGB image."""

    def detect(self, image: np.ndarray) -> list[Face]: ...


class MtcnnDetector:
    """MTCNN (the `mtcnn` package) on frames downscaled to at most `max_side` pixels.

    `min_face_size` is the smallest face searched, in pixels of the copy the network sees
    (so a frame of side L > max_side misses faces under min_face_size * L / max_side
    frame pixels); `thresholds` are MTCNN's P-, R- and O-net score thresholds (the last is
    the lowest score a returned face has). The network is built on the first call and
    shared by every detector on the same `device`.
    """

    def __init__(
        self,
        *,
        max_side: int = 640,
        min_face_size: int = 40,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8),
        device: str = 'CPU:0',
    ):
        if max_side < 12 or min_face_size < 12:
            raise ValueError(f'max_side={max_side}, min_face_size={min_face_size}: need >= 12')
        self.max_side = int(max_side)
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.device = device

    def detect(self, image: np.ndarray) -> list[Face]:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f'expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}')
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        # mtcnn 1.0.0 sizes its image pyramid as if min_face_size were 20 and loses every
        # face (its too-small last levels fail) when it is larger: search a copy shrunk by
        # 20 / min_face_size for faces of 20 pixels instead, which is the same pyramid.
        network_min_face = min(self.min_face_size, _MTCNN_MIN_FACE)
        scale *= network_min_face / self.min_face_size
        small = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            # The exact per-axis factors of the rounded size map the boxes back.
            scale_x, scale_y = size[0] / width, size[1] / height
        else:
            scale_x = scale_y = 1.0
        if min(small.shape[:2]) < network_min_face:
            return []
        rows = _mtcnn(self.device).detect_faces(
            small,
            box_format='xyxy',
            output_type='numpy',  # float coordinates (the JSON output rounds to pixels)
            min_face_size=network_min_face,
            threshold_pnet=self.thresholds[0],
            threshold_rnet=self.thresholds[1],
            threshold_onet=self.thresholds[2],
        )
        return [_face_from_row(row, scale_x, scale_y) for row in np.asarray(rows).reshape(-1, 16)]


def default_detector() -> FaceDetector:
    """The detector the pipeline uses when none is given: MTCNN on the CPU, defaults."""
    return MtcnnDetector()


def _face_from_row(row: np.ndarray, scale_x: float, scale_y: float) -> Face:
    # mtcnn's numpy row: [image index, x0, y0, x1, y1, score, 5 landmark x, 5 landmark y],
    # landmarks in LANDMARK_NAMES order (see mtcnn.utils.landmarks.parse_landmarks).
    x0, y0, x1, y1 = (float(v) for v in row[1:5])
    landmarks = np.stack([row[6:11] / scale_x, row[11:16] / scale_y], axis=1)
    return Face(
        box=(x0 / scale_x, y0 / scale_y, x1 / scale_x, y1 / scale_y),
        score=float(row[5]),
        landmarks=landmarks.astype(np.float32),
    )


@functools.cache
def _mtcnn(device: str):
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's start-up chatter
    import tensorflow as tf

    if device.upper().startswith('CPU'):
        # TensorFlow would otherwise take the whole GPU's memory away from JAX.
        # (A RuntimeError: TensorFlow already started; its devices are then as they are.)
        with contextlib.suppress(RuntimeError):
            tf.config.set_visible_devices([], 'GPU')
    import mtcnn

    model = mtcnn.MTCNN(device=device)
    # Relies on mtcnn 1.0.0's private `stage._model` (each stage calls `self._model(x)`
    # and nothing else): a graph per network instead of ~500 eager Keras layer calls per
    # frame halves MTCNN's time, same boxes. Another mtcnn without it stays eager.
    for stage in model.stages:
        network = getattr(stage, '_model', None)
        if callable(network):
            stage._model = _CompiledNetwork(network)
    return model


class _CompiledNetwork:
    """One MTCNN stage network as a `tf.function`, skipping empty batches.

    Shapes vary (P-net: one per pyramid level; R- and O-net: the number of proposals), so
    `reduce_retracing` lets TensorFlow generalise to unknown sizes after a few traces.
    A batch of zero proposals would fail inside the network, which makes TensorFlow's C++
    runtime print "Local rendezvous is aborting ... Incompatible shapes [0,24,24,3]"
    before mtcnn catches the error and reports no face: raising that same error here,
    without running the network, gives the same result without the log line.
    """

    def __init__(self, network):
        import tensorflow as tf

        self._tf = tf
        self._network = network
        self._call = tf.function(lambda x: network(x, training=False), reduce_retracing=True)

    def __call__(self, x):
        x = self._tf.convert_to_tensor(x)
        if x.shape[0] == 0:
            # mtcnn 1.0.0's detect_faces catches InvalidArgumentError as "no faces found".
            raise self._tf.errors.InvalidArgumentError(None, None, 'no face proposals')
        return self._call(x)
