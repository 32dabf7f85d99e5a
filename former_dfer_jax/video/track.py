"""One subject per video: detections -> tracks -> the main face in every frame, smoothed.

Detections of consecutive detector runs are linked by IoU (against the track's last box
and its constant-velocity prediction, so a face moving between sparse detections still
links); a track survives `max_missed` runs without a match. The main track is the longest
(most detections), then the most confident; the others are reported. Its face is filled
in on frames between its detections by linear interpolation of box, landmarks and score,
held on frames the detector skipped next to its ends, and smoothed with a centred moving
average (shrinking symmetrically at the ends, so a face moving at constant speed is not
pulled back) so that the crops do not jitter.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from former_dfer_jax.video.detect import Face


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 for empty boxes)."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclasses.dataclass
class Tracking:
    """The main subject's face per frame (smoothed; None where it is missing), how many
    tracks were found, and a summary of the main one and of the others
    ({"first_frame", "last_frame", "num_frames", "mean_score"}; num_frames counts
    detections)."""

    faces: list[Face | None]
    num_tracks: int
    other_tracks: list[dict]
    main_track: dict | None = None

    @property
    def num_missing(self) -> int:
        return sum(face is None for face in self.faces)


def link_tracks(
    detections: Sequence[list[Face] | None],
    *,
    iou_threshold: float = 0.3,
    max_missed: int = 2,
) -> list[list[tuple[int, Face]]]:
    """Per-frame detections -> tracks, each a list of (frame index, face) in time order.

    `detections[t]` is None for a frame the detector did not run on (it neither extends
    nor ends a track). Matching is greedy by IoU, best pair first.
    """
    finished: list[list[tuple[int, Face]]] = []
    active: list[list[tuple[int, Face]]] = []
    missed: list[int] = []
    for t, faces in enumerate(detections):
        if faces is None:
            continue
        pairs = []
        for i, track in enumerate(active):
            guesses = (track[-1][1].box, _predicted_box(track, t))
            for j, face in enumerate(faces):
                overlap = max(iou(guess, face.box) for guess in guesses)
                if overlap >= iou_threshold:
                    pairs.append((overlap, i, j))
        used_tracks, used_faces = set(), set()
        for _, i, j in sorted(pairs, reverse=True):
            if i in used_tracks or j in used_faces:
                continue
            used_tracks.add(i)
            used_faces.add(j)
            active[i].append((t, faces[j]))
            missed[i] = 0
        for i in range(len(active)):
            if i not in used_tracks:
                missed[i] += 1
        keep = [i for i in range(len(active)) if missed[i] <= max_missed]
        finished.extend(active[i] for i in range(len(active)) if missed[i] > max_missed)
        active = [active[i] for i in keep]
        missed = [missed[i] for i in keep]
        for j, face in enumerate(faces):
            if j not in used_faces:
                active.append([(t, face)])
                missed.append(0)
    tracks = finished + active
    tracks.sort(key=lambda track: track[0][0])
    return tracks


def track_summary(track: Sequence[tuple[int, Face]]) -> dict:
    return {
        'first_frame': int(track[0][0]),
        'last_frame': int(track[-1][0]),
        'num_frames': len(track),
        'mean_score': round(float(np.mean([face.score for _, face in track])), 4),
    }


def track_main_face(
    detections: Sequence[list[Face] | None],
    *,
    iou_threshold: float = 0.3,
    smooth: int = 5,
    max_missed: int = 2,
) -> Tracking:
    """The main subject's face in every frame of `detections` (one list per frame; None
    where the detector did not run), filled in between its detections and smoothed over
    a centred window of `smooth` frames (1: no smoothing)."""
    tracks = link_tracks(detections, iou_threshold=iou_threshold, max_missed=max_missed)
    num = len(detections)
    if not tracks:
        return Tracking(faces=[None] * num, num_tracks=0, other_tracks=[])
    main = max(
        range(len(tracks)),
        key=lambda i: (len(tracks[i]), np.mean([f.score for _, f in tracks[i]]), -i),
    )
    faces = _fill(tracks[main], detections)
    faces = _smooth(faces, smooth)
    others = [track_summary(track) for i, track in enumerate(tracks) if i != main]
    return Tracking(
        faces=faces,
        num_tracks=len(tracks),
        other_tracks=others,
        main_track=track_summary(tracks[main]),
    )


def _predicted_box(track: Sequence[tuple[int, Face]], t: int) -> tuple[float, ...]:
    (t1, last) = track[-1]
    if len(track) < 2:
        return last.box
    (t0, before) = track[-2]
    step = (np.asarray(last.box) - np.asarray(before.box)) / (t1 - t0)
    return tuple(float(v) for v in np.asarray(last.box) + step * (t - t1))


def _lerp(a: Face, b: Face, w: float) -> Face:
    box = (1 - w) * np.asarray(a.box, np.float64) + w * np.asarray(b.box, np.float64)
    return Face(
        box=tuple(float(v) for v in box),
        score=float((1 - w) * a.score + w * b.score),
        landmarks=((1 - w) * a.landmarks + w * b.landmarks).astype(np.float32),
    )


def _fill(
    track: Sequence[tuple[int, Face]], detections: Sequence[list[Face] | None]
) -> list[Face | None]:
    faces: list[Face | None] = [None] * len(detections)
    for (t0, a), (t1, b) in itertools.pairwise(track):
        for t in range(t0, t1):
            faces[t] = _lerp(a, b, (t - t0) / (t1 - t0))
    first, last = track[0], track[-1]
    faces[last[0]] = last[1]
    # Frames the detector skipped next to the track's ends: the nearest detection holds.
    t = first[0] - 1
    while t >= 0 and detections[t] is None:
        faces[t] = first[1]
        t -= 1
    t = last[0] + 1
    while t < len(detections) and detections[t] is None:
        faces[t] = last[1]
        t += 1
    return faces


def _smooth(faces: list[Face | None], window: int) -> list[Face | None]:
    radius = max(0, int(window) // 2)
    if radius == 0:
        return faces
    out = list(faces)
    t = 0
    while t < len(faces):
        if faces[t] is None:
            t += 1
            continue
        end = t
        while end < len(faces) and faces[end] is not None:
            end += 1
        run = faces[t:end]
        boxes = np.asarray([f.box for f in run], np.float64)
        marks = np.asarray([f.landmarks for f in run], np.float64)
        for k in range(len(run)):
            r = min(radius, k, len(run) - 1 - k)
            sl = slice(k - r, k + r + 1)
            out[t + k] = Face(
                box=tuple(float(v) for v in boxes[sl].mean(axis=0)),
                score=run[k].score,
                landmarks=marks[sl].mean(axis=0).astype(np.float32),
            )
        t = end
    return out
