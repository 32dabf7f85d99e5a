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
    tracking = track.track_main_face(detections, smooth=1, max_missed=2, rejoin_frames=0)
    assert tracking.num_tracks == 2
    # The main track is the longer one (frames 7-11); the rest are dropped (None).
    assert [f is None for f in tracking.faces] == [True] * 7 + [False] * 5
    assert tracking.other_tracks == [
        {'first_frame': 0, 'last_frame': 3, 'num_frames': 4, 'mean_score': 0.99}
    ]


def test_a_face_that_leaves_and_comes_back_where_it_was_is_one_subject():
    # Frames 0-19 and 40-59: the face (drifting 1 pixel a frame); 20-39: the detector
    # ran and found nothing.
    detections = [[face(50 + t, 50)] if t < 20 or t >= 40 else [] for t in range(60)]
    tracking = track.track_main_face(detections, smooth=5, rejoin_frames=50)
    assert tracking.num_tracks == 1 and tracking.other_tracks == []
    assert [f is None for f in tracking.faces] == [False] * 20 + [True] * 20 + [False] * 20
    assert tracking.main_track == {
        'first_frame': 0,
        'last_frame': 59,
        'num_frames': 40,
        'mean_score': 0.99,
    }
    # Nothing is made up in the gap, and the smoothing does not reach across it.
    np.testing.assert_allclose(boxes(tracking.faces[40:])[:, 0], 50 + np.arange(40, 60))
    # Away longer than rejoin_frames, or back somewhere else: another subject.
    assert track.track_main_face(detections, rejoin_frames=20).num_tracks == 2
    elsewhere = [
        [face(50 + t + 300 * (t >= 40), 50)] if d else [] for t, d in enumerate(detections)
    ]
    assert track.track_main_face(elsewhere, rejoin_frames=50).num_tracks == 2


def test_the_return_keeps_the_frames_the_detector_skipped_next_to_each_part():
    # detect_every = 5: runs at 0, 5, ..., 55 and 59; the face on 0-19 and 40-59.
    detections = [None] * 60
    for t in [*range(0, 60, 5), 59]:
        detections[t] = [face(50, 50)] if t < 20 or t >= 40 else []
    tracking = track.track_main_face(detections, smooth=1, rejoin_frames=50)
    assert tracking.num_tracks == 1
    # Skipped frames next to a part hold its nearest detection: 16-19 that of 15, 36-39
    # that of 40 (unknown either way); 20-35 follow a run that found nothing.
    assert [f is None for f in tracking.faces] == [False] * 20 + [True] * 16 + [False] * 24


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


def test_sparse_detections_of_a_moving_face_link_by_centre_distance():
    # detect_every = 10 on a 60-pixel face moving 6 pixels a frame (predict's benchmark
    # face: 53 pixels, up to 5.8 a frame), MTCNN jittering a pixel or two: a face width
    # between runs, no overlap with the last box.
    rng = np.random.default_rng(0)
    detections = [None] * 101
    for t in range(0, 101, 10):
        detections[t] = [face(6 * t + rng.normal(0, 1.5), 100 + rng.normal(0, 1.5), size=60)]
    assert track.iou(detections[0][0].box, detections[10][0].box) == 0
    tracking = track.track_main_face(detections, smooth=1, iou_threshold=0.3)
    assert tracking.num_tracks == 1 and tracking.num_missing == 0
    np.testing.assert_allclose(boxes(tracking.faces)[:, 0], 6 * np.arange(101), atol=5)


def test_sparse_detections_of_a_fast_face_link_through_its_velocity():
    # 130 pixels between detector runs 8 frames apart on a 100-pixel face: too far from
    # the last box (1.3 widths), on the constant-velocity prediction.
    speed = 130 / 8
    detections = [None] * 33
    for t in range(0, 33, 8):
        detections[t] = [face(speed * t, 0)]
    tracking = track.track_main_face(detections, smooth=1, iou_threshold=0.3)
    assert tracking.num_tracks == 5  # no velocity without two detections: no link at all
    detections[4] = [face(speed * 4, 0)]  # one more early detection gives the velocity
    tracking = track.track_main_face(detections, smooth=1, iou_threshold=0.3)
    assert tracking.num_tracks == 1
    np.testing.assert_allclose(boxes(tracking.faces)[:, 0], speed * np.arange(33))


def test_two_faces_side_by_side_stay_two_tracks_with_sparse_detections():
    # Two 80-pixel faces 100 pixels apart (1.25 widths), both moving 4 pixels a frame,
    # detected every 10th frame; A in every run, B in the first 6 runs.
    detections = [None] * 91
    for t in range(0, 91, 10):
        detections[t] = [face(100 + 4 * t, 50, size=80, score=0.9)]
        if t <= 50:
            detections[t].insert(0, face(200 + 4 * t, 50, size=80))
    tracking = track.track_main_face(detections, smooth=1)
    assert tracking.num_tracks == 2
    np.testing.assert_allclose(boxes(tracking.faces)[:, 0], 100 + 4 * np.arange(91))
    assert [(o['first_frame'], o['num_frames']) for o in tracking.other_tracks] == [(0, 6)]


def test_no_detections():
    tracking = track.track_main_face([[], None, []])
    assert tracking.faces == [None, None, None]
    assert tracking.num_tracks == 0 and tracking.main_track is None
