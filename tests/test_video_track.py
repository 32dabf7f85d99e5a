"""Tracking: per-frame detections -> the main subject's face in every frame, filled in
between detections, smoothed; the other subjects reported."""

import numpy as np
import pytest

from former_dfer_jax.video import track
from former_dfer_jax.video.detect import Face

# Landmarks relative to the box's top-left corner, as fractions of a 100-pixel box.
_MARKS = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float32) / 100


def face(x: float, y: float, size: float = 100, score: float = 0.99) -> Face:
    return Face(
        box=(x, y, x + size, y + size),
        score=score,
        landmarks=(np.array([x, y]) + _MARKS * size).astype(np.float32),
    )


def boxes(faces):
    return np.array([f.box for f in faces])


def test_iou():
    assert track.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert track.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert track.iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert track.iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_constant_motion_is_kept_exactly_by_the_smoothing():
    # A centred window that shrinks symmetrically at the ends does not pull a face moving
    # at constant speed back, not even on the first and last frames.
    detections = [[face(10 + 5 * t, 20 + 2 * t)] for t in range(12)]
    tracking = track.track_main_face(detections, smooth=5)
    want = boxes([d[0] for d in detections])
    np.testing.assert_allclose(boxes(tracking.faces), want, atol=1e-9)
    np.testing.assert_allclose(
        [f.landmarks for f in tracking.faces], [d[0].landmarks for d in detections], atol=1e-4
    )
    assert tracking.num_tracks == 1 and tracking.other_tracks == []
    assert tracking.main_track == {
        'first_frame': 0,
        'last_frame': 11,
        'num_frames': 12,
        'mean_score': 0.99,
    }


def test_smoothing_reduces_jitter():
    rng = np.random.default_rng(0)
    truth = np.array([[100 + 3 * t, 50.0] for t in range(40)])
    noisy = truth + rng.normal(0, 2, truth.shape)
    detections = [[face(x, y)] for x, y in noisy]
    raw = np.abs(boxes(track.track_main_face(detections, smooth=1).faces)[:, :2] - truth)
    smoothed = np.abs(boxes(track.track_main_face(detections, smooth=5).faces)[:, :2] - truth)
    np.testing.assert_allclose(raw, np.abs(noisy - truth))  # smooth=1: the detections
    # A 5-frame mean divides the noise's spread by about sqrt(5) (2.2); 1.5 leaves room.
    assert smoothed.mean() < raw.mean() / 1.5


def test_frames_the_detector_skipped_are_interpolated_between_and_held_at_the_end():
    # detect_every = 4 on 10 frames: the detector ran on frames 0, 4, 8 and 9 (the last).
    detections = [None] * 10
    for t in (0, 4, 8, 9):
        detections[t] = [face(10 * t, 0, score=0.9 + 0.01 * t)]
    tracking = track.track_main_face(detections, smooth=1)
    np.testing.assert_allclose(boxes(tracking.faces)[:, 0], 10 * np.arange(10))
    assert tracking.faces[2].score == pytest.approx(0.92)
    # Skipped frames after the last detection hold it (here: the detector's last run).
    detections[9] = None
    tracking = track.track_main_face(detections, smooth=1)
    assert tracking.faces[9].box == tracking.faces[8].box == detections[8][0].box


def test_a_short_miss_is_bridged_and_a_long_one_splits_the_track():
    detections = [[face(50 + t, 50)] for t in range(12)]
    detections[5] = []  # the detector ran and missed once
    tracking = track.track_main_face(detections, smooth=1, max_missed=2)
    assert tracking.num_tracks == 1 and tracking.faces[5].box[0] == pytest.approx(55)
    for t in (4, 5, 6):
        detections[t] = []  # three misses: the track ends, a new one starts
    tracking = track.track_main_face(detections, smooth=1, max_missed=2)
    assert tracking.num_tracks == 2
    # The main track is the longer one (frames 7-11); the rest are dropped (None).
    assert [f is None for f in tracking.faces] == [True] * 7 + [False] * 5
    assert tracking.other_tracks == [
        {'first_frame': 0, 'last_frame': 3, 'num_frames': 4, 'mean_score': 0.99}
    ]


def test_main_track_is_the_longest_then_the_most_confident():
    # Subject A in every frame, B (more confident) in the first half, a one-frame false
    # detection C.
    detections = []
    for t in range(10):
        faces = [face(10 + t, 10, score=0.95)]
        if t < 5:
            faces.append(face(300, 10, size=60, score=0.999))
        if t == 7:
            faces.append(face(500, 200, size=40, score=0.85))
        detections.append(faces[::-1])  # order within a frame does not matter
    tracking = track.track_main_face(detections, smooth=1)
    assert tracking.num_tracks == 3
    np.testing.assert_allclose(boxes(tracking.faces)[:, 0], 10 + np.arange(10))
    assert sorted(o['num_frames'] for o in tracking.other_tracks) == [1, 5]
    # Equal lengths: the more confident one wins.
    tie = [[face(10, 10, score=0.9), face(300, 10, score=0.99)] for _ in range(4)]
    assert track.track_main_face(tie, smooth=1).faces[0].box[0] == 300


def test_sparse_detections_of_a_fast_face_link_through_its_velocity():
    # 60 pixels between detector runs on a 100-pixel face: IoU with the last box 0.25
    # (< 0.3), with the constant-velocity prediction 1.
    detections = [None] * 33
    for t in range(0, 33, 8):
        detections[t] = [face(7.5 * t, 0)]
    tracking = track.track_main_face(detections, smooth=1, iou_threshold=0.3)
    assert tracking.num_tracks == 5  # no velocity without two detections: no link at all
    detections[4] = [face(30, 0)]  # one more early detection gives the velocity
    tracking = track.track_main_face(detections, smooth=1, iou_threshold=0.3)
    assert tracking.num_tracks == 1
    np.testing.assert_allclose(boxes(tracking.faces)[:, 0], 7.5 * np.arange(33))


def test_no_detections():
    tracking = track.track_main_face([[], None, []])
    assert tracking.faces == [None, None, None]
    assert tracking.num_tracks == 0 and tracking.main_track is None
