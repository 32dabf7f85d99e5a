"""One subject per video: detections -> tracks -> the main face in every frame, smoothed.

Detections of consecutive detector runs are linked to a track when they overlap (IoU)
its last box or its constant-velocity prediction at that frame, or when their centre is
near either (0.5 face widths plus 0.07 per frame since the track's last detection, at
most 1.5: a face moving a tenth of its width a frame still links at detect_every = 10);
a track survives `max_missed` runs without a match. A track that starts within
`rejoin_frames` frames after another ended, where that one's last box was, continues it
(the subject turned away or left the frame and came back): the frames between stay
without a face. The main track is the longest
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

# A detection links to a track whose predicted centre is within
# min(MAX_DISTANCE, BASE_DISTANCE + DISTANCE_PER_FRAME * gap) face widths, gap: frames
# since the track's last detection (predict's benchmark face, 53 pixels wide, moves up to
# 5.8 pixels a frame: 0.88 widths between runs at detect_every 8, 1.1 at 10; two faces
# side by side are >= 1 width apart, and the closest pairs link first) ...
BASE_DISTANCE, DISTANCE_PER_FRAME, MAX_DISTANCE = 0.5, 0.07, 1.5
# ... if its width is within this factor of the track's (not a near or far other face).
MAX_SIZE_RATIO = 1.5
# A new track continues one whose last box it overlaps (IoU) or whose centre is within
# REJOIN_DISTANCE widths of its own (back where it was, give or take a head's turn), ...
REJOIN_DISTANCE = 0.5
# ... and that ended that ended at most this long before it (seconds; the
# pipeline converts it to frames with the video's frame rate).
REJOIN_S = 2.0


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
    nor ends a track). Matching is greedy, the closest pair first (centre distance over
    the track's face width, from its last box or its prediction, whichever is nearer).
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
            limit = min(MAX_DISTANCE, BASE_DISTANCE + DISTANCE_PER_FRAME * (t - track[-1][0]))
            for j, face in enumerate(faces):
                cost = _link_cost(guesses, face.box, iou_threshold, limit)
                if cost is not None:
                    pairs.append((cost, i, j))
        used_tracks, used_faces = set(), set()
        for _, i, j in sorted(pairs):
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


def join_returns(
    tracks: Sequence[list[tuple[int, Face]]],
    *,
    rejoin_frames: int,
    iou_threshold: float = 0.3,
) -> list[list[list[tuple[int, Face]]]]:
    """Tracks (time order of their first frame) -> subjects, each a list of its tracks
    (segments, in time order): a track starting at most `rejoin_frames` frames after
    another one ended, with its first box close to (as for linking) that one's last box,
    continues it; the latest-ending such track if several."""
    subjects: list[list[list[tuple[int, Face]]]] = []
    for track in sorted(tracks, key=lambda track: track[0][0]):
        start, box = track[0][0], track[0][1].box
        best = None
        for subject in subjects:
            end, last = subject[-1][-1]
            if (
                end < start <= end + rejoin_frames
                and _link_cost((last.box,), box, iou_threshold, REJOIN_DISTANCE) is not None
                and (best is None or end > best[-1][-1][0])
            ):
                best = subject
        if best is None:
            subjects.append([track])
        else:
            best.append(track)
    return subjects


def track_summary(segments: Sequence[Sequence[tuple[int, Face]]]) -> dict:
    detections = [face for segment in segments for _, face in segment]
    return {
        'first_frame': int(segments[0][0][0]),
        'last_frame': int(segments[-1][-1][0]),
        'num_frames': len(detections),
        'mean_score': round(float(np.mean([face.score for face in detections])), 4),
    }


def track_main_face(
    detections: Sequence[list[Face] | None],
    *,
    iou_threshold: float = 0.3,
    smooth: int = 5,
    max_missed: int = 2,
    rejoin_frames: int = 50,
) -> Tracking:
    """The main subject's face in every frame of `detections` (one list per frame; None
    where the detector did not run), filled in between its detections and smoothed over
    a centred window of `smooth` frames (1: no smoothing). `rejoin_frames` (0: never):
    the longest gap of a subject that left and came back (the pipeline gives REJOIN_S
    seconds of the video; 50 frames is 2 s at 25 fps); num_tracks counts subjects."""
    tracks = link_tracks(detections, iou_threshold=iou_threshold, max_missed=max_missed)
    subjects = join_returns(tracks, rejoin_frames=rejoin_frames, iou_threshold=iou_threshold)
    num = len(detections)
    if not subjects:
        return Tracking(faces=[None] * num, num_tracks=0, other_tracks=[])

    def rank(i: int) -> tuple:
        faces = [face for segment in subjects[i] for _, face in segment]
        return len(faces), np.mean([face.score for face in faces]), -i

    main = max(range(len(subjects)), key=rank)
    faces: list[Face | None] = [None] * num
    for segment in subjects[main]:
        for t, face in enumerate(_fill(segment, detections)):
            if face is not None:
                faces[t] = face
    faces = _smooth(faces, smooth)
    others = [track_summary(subject) for i, subject in enumerate(subjects) if i != main]
    return Tracking(
        faces=faces,
        num_tracks=len(subjects),
        other_tracks=others,
        main_track=track_summary(subjects[main]),
    )


def _centre_and_width(box: Sequence[float]) -> tuple[float, float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0]


def _link_cost(
    guesses: Sequence[Sequence[float]],
    box: Sequence[float],
    iou_threshold: float,
    max_distance: float,
) -> float | None:
    """How far `box` is from the nearest of a track's `guesses` (centre distance in the
    guess's face widths), or None where it may not link: neither IoU >= iou_threshold
    nor a centre within `max_distance` widths at a width within MAX_SIZE_RATIO."""
    x, y, width = _centre_and_width(box)
    best = None
    for guess in guesses:
        gx, gy, gwidth = _centre_and_width(guess)
        if gwidth <= 0 or width <= 0:
            continue
        distance = float(np.hypot(x - gx, y - gy)) / gwidth
        near = distance < max_distance and 1 / MAX_SIZE_RATIO <= width / gwidth <= (MAX_SIZE_RATIO)
        if (near or iou(guess, box) >= iou_threshold) and (best is None or distance < best):
            best = distance
    return best


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
