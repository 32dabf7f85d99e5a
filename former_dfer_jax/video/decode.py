"""Video files and frame folders -> RGB frames, one at a time, upright, with timestamps.

A video file is decoded with PyAV (any container / codec FFmpeg reads); each frame's
timestamp comes from its own pts, so variable-frame-rate files keep their real times, and
the rotation a phone records (the display matrix side data) is applied, so frames come out
upright. A folder of frames (DFEW's `x_y.jpg`, numeric order: `list_frames`, which the
data package's readers use too) reads the same way, at a frame rate given by the caller
(default 25). Frames are yielded one by one and never held together, so a long or
huge-resolution video costs one frame of memory here.

Every problem a user can cause raises `VideoError` whose message starts with the path.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps

from former_dfer_jax.errors import UserError

VIDEO_EXTENSIONS = (
    '.mp4',
    '.avi',
    '.mov',
    '.mkv',
    '.webm',
    '.m4v',
    '.mpg',
    '.mpeg',
    '.wmv',
    '.flv',
)
DEFAULT_FPS = 25.0  # for a folder of frames, and for a video whose rate is not stored
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')  # the frames of a frame folder
_LAST_NUMBER = re.compile(r'(\d+)(?!.*\d)')


class VideoError(UserError):
    """A video or frame folder that cannot be used; the message starts with its path."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a video is, as its container says (before decoding all of it).

    `size` is (width, height) after rotation; `rotation` the counter-clockwise degrees
    applied to the stored frames (0, 90, 180 or -90); `num_frames` the container's count
    (an estimate from duration x fps where the container stores none).
    """

    path: str
    fps: float
    num_frames: int
    size: tuple[int, int]
    rotation: int


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded frame: uint8 [H, W, 3] RGB, rotation applied; `time_s` from its pts."""

    index: int
    time_s: float
    image: np.ndarray


def frame_sort_key(name: str) -> tuple[int, int, str]:
    """Sort key putting x_2.jpg before x_10.jpg: the last number in the file stem."""
    stem = os.path.splitext(os.path.basename(name))[0]
    match = _LAST_NUMBER.search(stem)
    if match is None:
        return (1, 0, stem)  # names without a number go last, by name
    return (0, int(match.group(1)), stem)


def list_frames(directory: str | os.PathLike) -> list[str]:
    """Image files in `directory`, in numeric frame order (non-image files are ignored)."""
    names = [
        entry.name
        for entry in os.scandir(directory)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    names.sort(key=frame_sort_key)
    return [os.path.join(directory, name) for name in names]


def is_video_path(path: str | os.PathLike) -> bool:
    """Whether `path` looks like input for this package: a file with a video extension,
    or a folder holding image frames."""
    path = os.fspath(path)
    if os.path.isdir(path):
        try:
            return bool(list_frames(path))
        except OSError:
            return False
    return path.lower().endswith(VIDEO_EXTENSIONS)


def probe(path: str | os.PathLike, *, fps_for_frames_dir: float = DEFAULT_FPS) -> VideoInfo:
    """The VideoInfo of a video file or a frame folder; raises VideoError if it cannot be
    read or holds no frame (the first frame is decoded to learn its rotation)."""
    path = _check_exists(path)
    if os.path.isdir(path):
        files = _frame_files(path)
        first = _read_image(files[0])
        return VideoInfo(path, float(fps_for_frames_dir), len(files), _size(first), 0)
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        first = next(_decode(path, container, stream), None)
        if first is None:
            raise VideoError(f'{path}: the video has no frames')
        rotation = _rotation(first, stream)
        num_frames = _stream_num_frames(stream, container, fps)
        width, height = stream.width, stream.height
        if rotation % 180:
            width, height = height, width
        return VideoInfo(path, fps, num_frames, (width, height), rotation)


def read_frames(
    path: str | os.PathLike, *, fps_for_frames_dir: float = DEFAULT_FPS
) -> Iterator[Frame]:
    """The frames of a video file or frame folder, in order, one at a time.

    Raises VideoError (message starting with the path) for a missing, unreadable or
    corrupt input and for one with no frames; a frame that fails to decode midway stops
    the iteration with a VideoError naming its index.
    """
    path = _check_exists(path)
    if os.path.isdir(path):
        for index, file in enumerate(_frame_files(path)):
            yield Frame(index, index / fps_for_frames_dir, _read_image(file))
        return
    with _open(path) as container:
        stream = container.streams.video[0]
        # Frame-level threads: decoding is then a small part of the pipeline's time.
        stream.thread_type = 'AUTO'
        fps = _stream_fps(stream)
        start = stream.start_time or 0  # times count from the stream's start
        index = -1
        last_time = None
        for index, frame in enumerate(_decode(path, container, stream)):
            if frame.pts is not None and frame.time_base is not None:
                time_s = float((frame.pts - start) * frame.time_base)
            elif last_time is not None:
                time_s = last_time + 1.0 / fps
            else:
                time_s = 0.0
            last_time = time_s
            image = frame.to_ndarray(format='rgb24')
            yield Frame(index, time_s, _apply_rotation(image, _rotation(frame, stream)))
        if index < 0:
            raise VideoError(f'{path}: the video has no frames')


def rotate_upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """`image` turned counter-clockwise by `rotation` degrees (a multiple of 90), which is
    how a display matrix of that rotation says the stored frame must be shown."""
    return _apply_rotation(image, rotation)


def _check_exists(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f'{path}: no such file or folder')
    return path


def _frame_files(directory: str) -> list[str]:
    try:
        files = list_frames(directory)
    except OSError as error:
        raise VideoError(f'{directory}: cannot list the frame folder ({error})') from error
    if not files:
        raise VideoError(f'{directory}: the folder holds no image frames (x_y.jpg)')
    return files


def _read_image(file: str) -> np.ndarray:
    try:
        with Image.open(file) as image:
            # Frames saved by a phone or camera may carry an EXIF orientation.
            return np.asarray(ImageOps.exif_transpose(image).convert('RGB'))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise VideoError(f'{file}: unreadable image ({error})') from error


def _size(image: np.ndarray) -> tuple[int, int]:
    return int(image.shape[1]), int(image.shape[0])


def _open(path: str):
    import av  # PyAV; imported here so that the frame-folder path does not need it

    try:
        container = av.open(path, 'r')
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoError(f'{path}: not a readable video ({_reason(error)})') from error
    if not container.streams.video:
        container.close()
        raise VideoError(f'{path}: no video stream (not a video, or a truncated file)')
    return container


def _decode(path: str, container, stream) -> Iterator:
    import av

    decoded = 0
    try:
        for frame in container.decode(stream):
            decoded += 1
            yield frame
    except av.FFmpegError as error:
        raise VideoError(
            f'{path}: corrupt video, decoding failed after {decoded} frames ({_reason(error)})'
        ) from error


def _reason(error: BaseException) -> str:
    # FFmpeg's messages repeat the path at the end; keep the reason only.
    text = getattr(error, 'strerror', None) or str(error)
    return text.split(": '")[0]


def _stream_fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return DEFAULT_FPS


def _stream_num_frames(stream, container, fps: float) -> int:
    if stream.frames:
        return int(stream.frames)
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1e6  # AV_TIME_BASE
    else:
        return 0
    return max(1, round(seconds * fps))


def _rotation(frame, stream) -> int:
    """Counter-clockwise degrees to turn the stored frame by, to the nearest 90."""
    degrees = frame.rotation  # the frame's display matrix (FFmpeg >= 6 puts it there)
    if not degrees:
        # Old muxers' "rotate" tag, in clockwise degrees.
        tag = stream.metadata.get('rotate')
        try:
            degrees = -float(tag) if tag else 0
        except ValueError:
            degrees = 0
    quarter = round(degrees / 90) % 4
    return (0, 90, 180, -90)[quarter]


def _apply_rotation(image: np.ndarray, rotation: int) -> np.ndarray:
    quarter = round(rotation / 90) % 4
    if quarter == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k=quarter))
