"""Test videos with a real face at known places, written with PyAV.

The face is the astronaut of `skimage.data.astronaut()` (a real photograph shipped inside
scikit-image): a crop around her face is resized and pasted onto a smooth background at
known positions, so the true box in every frame is the detector's box on the source image
mapped through the paste (ASTRONAUT_BOX, measured with mtcnn 1.0.0).

    frames, boxes = moving_face_frames(12, size=(320, 180), face_size=80, seed=0)
    write_video(tmp_path / 'face.mp4', frames, fps=25)
    write_video(tmp_path / 'phone.mp4', frames, rotation=90)  # stored sideways + display matrix
    write_frames_dir(tmp_path / 'clip', frames, prefix='clip')  # clip_1.jpg, clip_2.jpg, ...

Frames are uint8 [H, W, 3] RGB; sizes are (width, height) and even (yuv420p needs it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from PIL import Image

# MTCNN's detection on skimage.data.astronaut() (score 0.9991): box x0 y0 x1 y1 and the
# five landmarks (left eye, right eye, nose, mouth left, mouth right; viewer's left/right).
ASTRONAUT_BOX = (181.598, 63.726, 264.553, 171.079)
ASTRONAUT_LANDMARKS = np.array(
    [[203.54, 100.10], [245.41, 102.24], [224.22, 126.42], [201.79, 138.59], [244.39, 140.38]],
    np.float32,
)
# The pasted patch: the face box with a third of its width of context around it.
_PATCH = (152, 34, 295, 196)  # x0, y0, x1, y1 in the astronaut image


@functools.cache
def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def face_patch(face_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The astronaut's face patch resized so that her face box is `face_size` pixels
    wide; returns (patch, box in patch pixels [4], landmarks in patch pixels [5, 2])."""
    x0, y0, x1, y1 = _PATCH
    box_width = ASTRONAUT_BOX[2] - ASTRONAUT_BOX[0]
    scale = face_size / box_width
    size = (round((x1 - x0) * scale), round((y1 - y0) * scale))
    patch = Image.fromarray(_astronaut()[y0:y1, x0:x1]).resize(size, Image.BILINEAR)
    sx, sy = size[0] / (x1 - x0), size[1] / (y1 - y0)
    box = np.array(ASTRONAUT_BOX) - [x0, y0, x0, y0]
    box = box * [sx, sy, sx, sy]
    landmarks = (ASTRONAUT_LANDMARKS - [x0, y0]) * [sx, sy]
    return np.asarray(patch), box, landmarks.astype(np.float32)


def background(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with mild noise (uniform, +-7 grey levels): no face."""
    width, height = size
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 190, 3).astype(np.float32)
    slope = rng.uniform(-60, 60, (2, 3)).astype(np.float32)
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :, None] * slope[0]
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None] * slope[1]
    image = (base + xs + ys).astype(np.int16)
    image = image + rng.integers(-7, 8, (height, width, 3), dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def blank_frames(
    num_frames: int, size: tuple[int, int] = (320, 180), seed: int = 0
) -> list[np.ndarray]:
    """Frames without a face (a gradient with fresh noise each frame)."""
    return [background(size, seed + t) for t in range(num_frames)]


def _paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    canvas[y : y + patch.shape[0], x : x + patch.shape[1]] = patch


def _path(
    num_frames: int,
    region: tuple[int, int, int, int],
    patch_size: tuple[int, int],
    speed: float,
    rng: np.random.Generator,
    wobble: float = 0.0,
) -> np.ndarray:
    """Integer top-left positions [n, 2] of a patch moving in a straight line at `speed`
    pixels per frame inside `region` (x0, y0, x1, y1), plus a sideways sine of amplitude
    `wobble` pixels and a period of 16 frames."""
    room = np.array([region[2] - region[0] - patch_size[0], region[3] - region[1] - patch_size[1]])
    if np.any(room < 0):
        raise ValueError(f'a {patch_size} patch does not fit in {region}')
    angle = rng.uniform(0, 2 * np.pi)
    travel = np.array([np.cos(angle), np.sin(angle)]) * speed * max(num_frames - 1, 0)
    travel = np.clip(travel, -room, room)  # shorter path where the region is too small
    low = np.maximum(0, -travel)
    high = np.minimum(room, room - travel)
    start = rng.uniform(low, high)
    steps = np.arange(num_frames)[:, None] / max(num_frames - 1, 1)
    sideways = np.array([-np.sin(angle), np.cos(angle)])
    swing = wobble * np.sin(2 * np.pi * np.arange(num_frames) / 16)[:, None] * sideways
    positions = np.clip(start + steps * travel + swing, 0, room)
    return np.round(positions).astype(int) + np.array([region[0], region[1]])


def moving_face_frames(
    num_frames: int,
    size: tuple[int, int] = (640, 360),
    face_size: int = 100,
    seed: int = 0,
    speed: float = 6.0,
    wobble: float = 0.0,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames with one face moving in a straight line (`speed` pixels per frame, a
    direction drawn from `seed`), swinging sideways by `wobble` pixels (a sine of period
    16 frames: motion that linear interpolation between sparse detections misses);
    returns (frames, true boxes float [n, 4] x0 y0 x1 y1)."""
    rng = np.random.default_rng(seed)
    patch, box, _ = face_patch(face_size)
    region = (0, 0, size[0], size[1])
    positions = _path(num_frames, region, (patch.shape[1], patch.shape[0]), speed, rng, wobble)
    back = background(size, seed)
    frames, boxes = [], []
    for x, y in positions:
        frame = back.copy()
        _paste(frame, patch, x, y)
        frames.append(frame)
        boxes.append(box + np.array([x, y, x, y]))
    return frames, np.array(boxes)


def two_faces_frames(
    num_frames: int,
    size: tuple[int, int] = (640, 360),
    main_size: int = 100,
    other_size: int = 70,
    other_frames: int | None = None,
    seed: int = 0,
) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray | None]]:
    """A moving face on the left in every frame and a second, smaller, mirrored, still face
    on the right in the first `other_frames` frames (default half); returns (frames, main
    boxes [n, 4], other boxes per frame or None)."""
    rng = np.random.default_rng(seed)
    other_frames = num_frames // 2 if other_frames is None else other_frames
    main, main_box, _ = face_patch(main_size)
    other, other_box, _ = face_patch(other_size)
    other = other[:, ::-1]  # mirrored: a different-looking second person
    other_box = np.array(
        [other.shape[1] - other_box[2], other_box[1], other.shape[1] - other_box[0], other_box[3]]
    )
    half = size[0] // 2
    positions = _path(num_frames, (0, 0, half, size[1]), (main.shape[1], main.shape[0]), 4.0, rng)
    ox = half + (size[0] - half - other.shape[1]) // 2
    oy = (size[1] - other.shape[0]) // 2
    back = background(size, seed)
    frames, main_boxes, other_boxes = [], [], []
    for t, (x, y) in enumerate(positions):
        frame = back.copy()
        _paste(frame, main, x, y)
        main_boxes.append(main_box + np.array([x, y, x, y]))
        if t < other_frames:
            _paste(frame, other, ox, oy)
            other_boxes.append(other_box + np.array([ox, oy, ox, oy]))
        else:
            other_boxes.append(None)
        frames.append(frame)
    return frames, np.array(main_boxes), other_boxes


def _codec_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {'.avi': 'mpeg4', '.webm': 'libvpx'}.get(ext, 'libx264')


def write_video(
    path: str | os.PathLike,
    frames: Sequence[np.ndarray],
    fps: float = 25,
    rotation: int | None = None,
    *,
    times: Sequence[float] | None = None,
    size: tuple[int, int] | None = None,
    codec: str | None = None,
) -> str:
    """Write upright RGB `frames` as a video (codec from the extension: h264, mpeg4 for
    .avi, vp8 for .webm) and return its path.

    rotation: counter-clockwise degrees (90, 180, -90) a player must turn the stored frames
    by, as a phone records it: the file then stores each frame turned by -rotation and
    carries a display matrix of `rotation`, so a correct reader gives `frames` back.
    times: per-frame timestamps in seconds (a variable frame rate), else t / fps.
    size: (width, height) when `frames` is empty (the file then has a stream, no frames;
    only AVI keeps such a stream).
    """
    import av

    path = os.fspath(path)
    quarter = round((rotation or 0) / 90) % 4
    stored = [np.ascontiguousarray(np.rot90(f, k=-quarter)) for f in frames]
    if stored:
        size = (stored[0].shape[1], stored[0].shape[0])
    elif size is None:
        raise ValueError('size is needed when there are no frames')
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f'frame size {size} must be even')
    codec = codec or _codec_for(path)
    with av.open(path, 'w') as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = size
        stream.pix_fmt = 'yuv420p'
        if codec == 'libx264':
            stream.options = {'crf': '18', 'preset': 'ultrafast'}
        else:
            stream.bit_rate = 4_000_000
        if rotation:
            stream.set_display_rotation(rotation)
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if not stored:
            container.start_encoding()
        for t, image in enumerate(stored):
            frame = av.VideoFrame.from_ndarray(image, format='rgb24')
            if times is not None:
                frame.pts = round(times[t] * 1000)
                frame.time_base = Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_frames_dir(
    directory: str | os.PathLike,
    frames: Sequence[np.ndarray],
    prefix: str = 'frame',
    quality: int = 95,
) -> list[str]:
    """Write `frames` as `<directory>/<prefix>_<n>.jpg`, n = 1, 2, ... not zero-padded (as
    DFEW and MAFW name frames, so a plain string sort is wrong); returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for n, image in enumerate(frames, start=1):
        file = os.path.join(os.fspath(directory), f'{prefix}_{n}.jpg')
        Image.fromarray(image).save(file, quality=quality)
        paths.append(file)
    return paths


def write_garbage(path: str | os.PathLike, num_bytes: int = 4096, seed: int = 0) -> str:
    """A file of random bytes (with a video extension, it is a corrupt video)."""
    path = os.fspath(path)
    with open(path, 'wb') as f:
        f.write(np.random.default_rng(seed).bytes(num_bytes))
    return path


def truncate_file(path: str | os.PathLike, fraction: float) -> str:
    """Cut the file at `path` to `fraction` of its bytes, in place."""
    path = os.fspath(path)
    with open(path, 'r+b') as f:
        f.truncate(int(os.path.getsize(path) * fraction))
    return path


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two x0 y0 x1 y1 boxes (the tests' own, independent of the package)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union
