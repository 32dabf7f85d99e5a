"""The whole face pipeline: a video (or a frame folder) -> aligned face crops of its subject.

    face_track = track_faces('clip.mp4', FaceOptions(detect_every=2), progress=True)
    for crop in aligned_crops(face_track):   # one at a time: memory independent of length
        crop.index, crop.time_s, crop.image  # uint8 [256, 256, 3]
    with staged_folder('out/clip') as tmp:   # out/clip/clip_1.jpg, ..., appearing complete
        save_crops(face_track, tmp, prefix='clip')   # streamed as they are aligned

    face_video = extract_face_video('clip.mp4')   # the same, every crop collected
    face_video.crops         # uint8 [n, 256, 256, 3], the frames with a face, in time order

Two passes over the decoded frames, so that full frames are never held: pass 1
(`track_faces`) decodes and detects (every `detect_every`-th frame, and the last one),
then the detections are tracked (main subject kept, others reported, boxes and landmarks
filled in between detections and smoothed): only boxes and landmarks are kept. Pass 2
(`aligned_crops`) decodes again and yields the crop of the main face of every frame that
has one. Frames without it are dropped and counted, as DFEW's crops drop them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from math import inf

import numpy as np
from absl import logging
from PIL import Image

from former_dfer_jax import files
from former_dfer_jax.video import align, decode, detect, track
from former_dfer_jax.video.decode import VideoError, VideoInfo
from former_dfer_jax.video.detect import Face, FaceDetector
from former_dfer_jax.video.track import Tracking


@dataclasses.dataclass(frozen=True)
class FaceOptions:
    """How faces are found and cropped.

    crop_size: side of the square crops. detect_every: run the detector on every k-th
    frame (and the last), tracking in between. max_side / min_face_size: the default
    detector's (see detect.MtcnnDetector). smooth: centred moving-average window in frames
    for boxes and landmarks (1: off). iou_threshold: IoU linking detections into a track.
    rejoin_s: a face that vanished for at most this many seconds and comes back where it
    was is the same subject (0: never). fps_for_frames_dir: the frame rate given to a
    folder of frames.
    """

    crop_size: int = 256
    detect_every: int = 1
    max_side: int = 640
    min_face_size: int = 40
    smooth: int = 5
    iou_threshold: float = 0.3
    rejoin_s: float = track.REJOIN_S
    fps_for_frames_dir: float = decode.DEFAULT_FPS

    def detector(self) -> FaceDetector:
        """MTCNN set up for these options (built on first use)."""
        return detect.MtcnnDetector(max_side=self.max_side, min_face_size=self.min_face_size)

    def __post_init__(self):
        if self.crop_size < 8 or self.detect_every < 1 or self.smooth < 1 or not self.rejoin_s >= 0:
            raise ValueError(
                f'FaceOptions: crop_size={self.crop_size} (>= 8), detect_every='
                f'{self.detect_every} (>= 1), smooth={self.smooth} (>= 1), rejoin_s='
                f'{self.rejoin_s} (>= 0)'
            )


@dataclasses.dataclass
class FaceTrack:
    """Pass 1's result: the video's main face in every frame, no pixels (small whatever
    the length). `frames` has one entry per decoded frame ({"index", "time_s",
    "detected": whether the detector ran, "face": Face.to_json() or None}); `timings` the
    seconds per stage ("decode", "detect", "track", "align"), "decode" and "align" growing
    as `aligned_crops` runs pass 2."""

    path: str
    info: VideoInfo
    options: FaceOptions
    frames: list[dict]
    tracking: Tracking
    timings: dict

    @property
    def num_crops(self) -> int:
        """Frames with the subject's face: the crops pass 2 yields."""
        return sum(f['face'] is not None for f in self.frames)


@dataclasses.dataclass(frozen=True)
class AlignedCrop:
    """One aligned crop of pass 2: its frame's index and time, uint8 [s, s, 3]."""

    index: int
    time_s: float
    image: np.ndarray


@dataclasses.dataclass
class FaceVideo:
    """The pipeline's result, every crop collected (`extract_face_video`); `frames` and
    `tracking` as FaceTrack's, `crops` / `crop_frames` the aligned crops and their frame
    indices, `timings` the seconds spent per stage ("decode", "detect", "track", "align",
    "total")."""

    info: VideoInfo
    frames: list[dict]
    crops: np.ndarray
    crop_frames: np.ndarray
    tracking: Tracking
    timings: dict

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def num_dropped(self) -> int:
        """Frames without the subject's face (not cropped)."""
        return len(self.frames) - len(self.crops)

    def rates(self) -> dict[str, float]:
        """Frames per second of "decode" (both passes together), "detect" (frames
        covered: detect_every = k shows the k-fold saving), "align" (crops) and "total"."""
        counts = {'decode': len(self.frames), 'detect': len(self.frames)}
        counts |= {'align': len(self.crops), 'total': len(self.frames)}
        return {
            stage: round(count / self.timings[stage], 1) if self.timings[stage] > 0 else inf
            for stage, count in counts.items()
        }


def track_faces(
    path: str | os.PathLike,
    options: FaceOptions = FaceOptions(),
    *,
    detector: FaceDetector | None = None,
    progress: bool = False,
) -> FaceTrack:
    """Pass 1 over `path` (a video file or a folder of frames): decode, detect, track.

    Raises VideoError (message starting with the path) for an unreadable / corrupt input,
    one without frames, and one without a face in any frame. With two or more faces the
    main track (longest, then most confident) is kept and the others are reported in
    `tracking.other_tracks` and logged.
    """
    path = os.fspath(path)
    timings = {'decode': 0.0, 'detect': 0.0, 'track': 0.0, 'align': 0.0}
    info = decode.probe(path, fps_for_frames_dir=options.fps_for_frames_dir)
    if detector is None:
        detector = options.detector()

    detections: list[list[Face] | None] = []
    times: list[float] = []
    pending = None  # the latest frame if it was not detected: detected if it is the last
    with files.progress(
        total=info.num_frames or None,
        desc=f'faces {os.path.basename(path)}',
        unit='frame',
        enabled=progress,
    ) as bar:
        for frame in _timed(decode.read_frames(path, fps_for_frames_dir=info.fps), timings):
            times.append(frame.time_s)
            if frame.index % options.detect_every == 0:
                t = time.perf_counter()
                detections.append(detector.detect(frame.image))
                timings['detect'] += time.perf_counter() - t
                pending = None
            else:
                detections.append(None)
                pending = frame
            bar.update(1)
    if pending is not None:
        t = time.perf_counter()
        detections[pending.index] = detector.detect(pending.image)
        timings['detect'] += time.perf_counter() - t
        del pending

    t = time.perf_counter()
    tracking = track.track_main_face(
        detections,
        iou_threshold=options.iou_threshold,
        smooth=options.smooth,
        rejoin_frames=round(options.rejoin_s * info.fps),
    )
    timings['track'] = time.perf_counter() - t
    if tracking.main_track is None:
        raise VideoError(f'{path}: no face found in any of its {len(detections)} frames')
    if tracking.other_tracks:
        logging.warning(
            '%s: %d faces tracked; kept the main one (%s), others: %s',
            path,
            tracking.num_tracks,
            tracking.main_track,
            tracking.other_tracks,
        )
    frames = [
        {
            'index': index,
            'time_s': round(times[index], 6),
            'detected': detections[index] is not None,
            'face': None if face is None else face.to_json(),
        }
        for index, face in enumerate(tracking.faces)
    ]
    return FaceTrack(path, info, options, frames, tracking, timings)


def aligned_crops(face_track: FaceTrack, *, progress: bool = False) -> Iterator[AlignedCrop]:
    """Pass 2: decodes the video again and yields the aligned crop of every frame with the
    main face, in time order, one at a time (nothing else is held). Raises VideoError
    (after the last crop) when the frame count differs from pass 1's."""
    path, timings = face_track.path, face_track.timings
    faces = face_track.tracking.faces
    size = face_track.options.crop_size
    decoded = 0
    with files.progress(
        total=len(faces), desc=f'crops {os.path.basename(path)}', unit='frame', enabled=progress
    ) as bar:
        frames = decode.read_frames(path, fps_for_frames_dir=face_track.info.fps)
        for frame in _timed(frames, timings):
            decoded += 1
            bar.update(1)
            if frame.index >= len(faces):
                break
            face = faces[frame.index]
            if face is None:
                continue
            t = time.perf_counter()
            crop = align.align_face(frame.image, face.landmarks, size)
            timings['align'] += time.perf_counter() - t
            yield AlignedCrop(frame.index, face_track.frames[frame.index]['time_s'], crop)
    if decoded != len(faces):
        second = f'more than {len(faces)}' if decoded > len(faces) else str(decoded)
        raise VideoError(
            f'{path}: {len(faces)} frames decoded, then {second}: did the file change?'
        )


def extract_face_video(
    path: str | os.PathLike,
    options: FaceOptions = FaceOptions(),
    *,
    detector: FaceDetector | None = None,
    progress: bool = False,
) -> FaceVideo:
    """`track_faces` then every crop of `aligned_crops` collected in memory (a long video's
    crops take 196 kB a frame at 256 x 256: stream them instead). Raises as `track_faces`."""
    start = time.perf_counter()
    face_track = track_faces(path, options, detector=detector, progress=progress)
    crops = list(aligned_crops(face_track))
    size = options.crop_size
    empty = np.zeros((0, size, size, 3), np.uint8)
    result = FaceVideo(
        info=face_track.info,
        frames=face_track.frames,
        crops=np.stack([c.image for c in crops]) if crops else empty,
        crop_frames=np.asarray([c.index for c in crops], np.int64),
        tracking=face_track.tracking,
        timings={k: round(v, 4) for k, v in face_track.timings.items()},
    )
    result.timings['total'] = round(time.perf_counter() - start, 4)
    if result.num_dropped:
        logging.info(
            '%s: %d of %d frames without a face, dropped',
            face_track.path,
            result.num_dropped,
            result.num_frames,
        )
    return result


def save_crops(
    source: FaceVideo | FaceTrack,
    directory: str | os.PathLike,
    *,
    prefix: str,
    quality: int = 95,
) -> list[str]:
    """Write the crops as `<directory>/<prefix>_<n>.jpg`, n = 1, 2, ... (DFEW's layout:
    numbered, not zero-padded); returns the paths. A FaceVideo's collected crops, or a
    FaceTrack's streamed by `aligned_crops` (one in memory at a time)."""
    os.makedirs(directory, exist_ok=True)
    if isinstance(source, FaceTrack):
        crops = (c.image for c in aligned_crops(source))
    else:
        crops = iter(source.crops)
    paths = []
    for n, crop in enumerate(crops, start=1):
        file = os.path.join(directory, f'{prefix}_{n}.jpg')
        Image.fromarray(crop).save(file, quality=quality)
        paths.append(file)
    return paths


@contextlib.contextmanager
def staged_folder(directory: str | os.PathLike) -> Iterator[str]:
    """Yields the hidden sibling folder `.<name>.tmp` of `directory` to write a clip into
    (the leftover of a crashed run is removed first); it is renamed to `directory` when the
    block succeeds and removed when it fails, so `directory` never holds half a clip."""
    parent, name = os.path.split(os.path.normpath(directory))
    tmp = os.path.join(parent, f'.{name}.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _timed(frames: Iterator[decode.Frame], timings: dict) -> Iterator[decode.Frame]:
    """`frames`, adding the time spent producing each one to timings['decode']."""
    while True:
        t = time.perf_counter()
        frame = next(frames, None)
        timings['decode'] += time.perf_counter() - t
        if frame is None:
            return
        yield frame
