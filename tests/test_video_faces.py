"""The whole pipeline: a video or frame folder -> aligned crops of its main subject.

Real faces (the astronaut pasted at known places) go through MTCNN; the bookkeeping
(dropped frames, which frames are detected, progress, saving) uses a stand-in detector
that finds white squares."""

import logging
import os
import pathlib

import numpy as np
import pytest

from former_dfer_jax import video
from former_dfer_jax.video import align, detect, faces
from tests import videos

SIZE = (320, 180)
# Mean IoU of the pipeline's boxes with the true boxes, measured 0.90-0.97 on these videos
# (0.93 detect_every 1, 0.94 detect_every 4); MTCNN alone scores 0.88-0.95 per frame.
MIN_MEAN_IOU = 0.85


@pytest.fixture(scope='module')
def detector():
    found = detect.MtcnnDetector()
    found.detect(np.zeros((64, 64, 3), np.uint8))  # TensorFlow starts once per module
    return found


class Counting:
    """A detector recording the frames it was run on (by the order it was called)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def detect(self, image):
        self.calls += 1
        return self.inner.detect(image)


class WhiteSquares:
    """Finds white squares on a black frame: each one a face of score 0.99 (a stand-in
    for MTCNN where only the bookkeeping is tested)."""

    def detect(self, image):
        mask = image.min(axis=2) > 128
        if not mask.any():
            return []
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        size = x1 - x0
        marks = align.TEMPLATE * size + [x0, y0]
        return [detect.Face((x0, y0, x1, y1), 0.99, marks.astype(np.float32))]


def squares(present):
    """Black frames with a 40-pixel white square where `present` is true."""
    frames = []
    for t, there in enumerate(present):
        frame = np.zeros((96, 128, 3), np.uint8)
        if there:
            frame[20:60, 10 + 2 * t : 50 + 2 * t] = 255
        frames.append(frame)
    return frames


def mean_iou(face_video, true_boxes):
    return np.mean(
        [
            videos.box_iou(f['face']['box'], b)
            for f, b in zip(face_video.frames, true_boxes, strict=True)
        ]
    )


@pytest.fixture(scope='module')
def moving(tmp_path_factory):
    frames, boxes = videos.moving_face_frames(16, size=SIZE, face_size=70, seed=0)
    path = videos.write_video(tmp_path_factory.mktemp('moving') / 'face.mp4', frames)
    return path, frames, boxes


def test_moving_face_is_found_and_cropped_in_every_frame(detector, moving):
    path, _, boxes = moving
    fv = video.extract_face_video(path, detector=detector)
    assert fv.info.num_frames == 16 and fv.info.size == SIZE
    assert fv.crops.shape == (16, 256, 256, 3) and fv.crops.dtype == np.uint8
    np.testing.assert_array_equal(fv.crop_frames, np.arange(16))
    assert fv.num_dropped == 0
    assert [f['index'] for f in fv.frames] == list(range(16))
    np.testing.assert_allclose([f['time_s'] for f in fv.frames], np.arange(16) / 25, atol=1e-6)
    assert all(f['detected'] for f in fv.frames)
    assert mean_iou(fv, boxes) > MIN_MEAN_IOU
    assert set(fv.timings) == {'decode', 'detect', 'track', 'align', 'total'}
    assert fv.tracking.num_tracks == 1 and fv.tracking.other_tracks == []

    # The crop is what the alignment promises: MTCNN run on the crop finds the landmarks
    # where the alignment put them (measured within 1.4 pixels), eyes level (measured
    # 0.011 of the eye distance).
    face = detect.Face.from_json(fv.frames[5]['face'])
    matrix = align.alignment_matrix(face.landmarks, 256)
    mapped = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    (again,) = detector.detect(fv.crops[5])
    np.testing.assert_allclose(again.landmarks, mapped, atol=4.0)
    (lx, ly), (rx, ry) = again.landmarks[:2]
    assert abs(ry - ly) < 0.05 * (rx - lx)  # under 3 degrees


def test_detecting_every_4th_frame_runs_the_detector_on_those_and_the_last(detector, moving):
    path, _, boxes = moving
    counting = Counting(detector)
    fv = video.extract_face_video(path, video.FaceOptions(detect_every=4), detector=counting)
    assert counting.calls == 5  # frames 0, 4, 8, 12 and 15 (the last)
    assert [f['index'] for f in fv.frames if f['detected']] == [0, 4, 8, 12, 15]
    assert len(fv.crops) == 16
    assert mean_iou(fv, boxes) > MIN_MEAN_IOU


def test_two_faces_keep_the_main_one_and_report_the_other(detector, tmp_path, caplog):
    frames, main_boxes, _ = videos.two_faces_frames(
        12, size=SIZE, main_size=70, other_size=50, seed=0
    )
    path = videos.write_video(tmp_path / 'two.mp4', frames)
    with caplog.at_level(logging.WARNING):
        fv = video.extract_face_video(path, detector=detector)
    assert fv.tracking.num_tracks == 2
    (other,) = fv.tracking.other_tracks
    assert (other['first_frame'], other['last_frame'], other['num_frames']) == (0, 5, 6)
    assert fv.tracking.main_track['num_frames'] == 12
    assert len(fv.crops) == 12
    assert mean_iou(fv, main_boxes) > MIN_MEAN_IOU  # measured 0.90
    assert any('2 faces tracked' in r.getMessage() for r in caplog.records)


def test_rotated_video_is_cropped_upright(detector, tmp_path):
    frames, boxes = videos.moving_face_frames(6, size=SIZE, face_size=70, seed=4)
    path = videos.write_video(tmp_path / 'phone.mp4', frames, rotation=90)
    fv = video.extract_face_video(path, detector=detector)
    assert fv.info.rotation == 90 and fv.info.size == SIZE
    assert len(fv.crops) == 6
    assert mean_iou(fv, boxes) > MIN_MEAN_IOU  # boxes of the upright frames; measured 0.93


def test_one_frame_video(detector, moving, tmp_path):
    _, frames, boxes = moving
    path = videos.write_video(tmp_path / 'one.mp4', frames[:1])
    fv = video.extract_face_video(path, video.FaceOptions(crop_size=112), detector=detector)
    assert fv.crops.shape == (1, 112, 112, 3)
    assert mean_iou(fv, boxes[:1]) > MIN_MEAN_IOU


def test_huge_frame_is_detected_downscaled_and_cropped(detector, tmp_path):
    frames, boxes = videos.moving_face_frames(1, size=(3840, 2160), face_size=720, seed=1)
    path = videos.write_video(tmp_path / '4k.mp4', frames)
    del frames
    fv = video.extract_face_video(path, detector=detector)
    assert fv.info.size == (3840, 2160)
    assert fv.crops.shape == (1, 256, 256, 3)
    assert mean_iou(fv, boxes) > MIN_MEAN_IOU  # measured 0.97


def test_frame_folder_goes_through_the_same_pipeline(detector, moving, tmp_path):
    _, frames, boxes = moving
    videos.write_frames_dir(tmp_path / 'clip', frames[:6], prefix='clip')
    fv = video.extract_face_video(
        tmp_path / 'clip', video.FaceOptions(fps_for_frames_dir=10), detector=detector
    )
    assert len(fv.crops) == 6
    np.testing.assert_allclose([f['time_s'] for f in fv.frames], np.arange(6) / 10)
    assert mean_iou(fv, boxes[:6]) > MIN_MEAN_IOU


def test_no_face_anywhere_is_an_error(detector, tmp_path):
    path = videos.write_video(tmp_path / 'empty.mp4', videos.blank_frames(4, size=SIZE))
    with pytest.raises(video.VideoError, match='no face found in any of its 4 frames') as e:
        video.extract_face_video(path, detector=detector)
    assert str(e.value).startswith(path)


def test_unreadable_input_is_an_error_naming_it(tmp_path):
    path = videos.write_garbage(tmp_path / 'broken.mp4')
    with pytest.raises(video.VideoError, match='not a readable video') as e:
        video.extract_face_video(path, detector=WhiteSquares())
    assert str(e.value).startswith(path)


def test_frames_without_the_face_are_dropped_and_counted(tmp_path):
    present = [False, True, True, True, False, False, False, False, True, True]
    path = videos.write_video(tmp_path / 'gaps.mp4', squares(present))
    options = video.FaceOptions(smooth=1, rejoin_s=0)
    fv = video.extract_face_video(path, options, detector=WhiteSquares())
    # rejoin_s=0: the longer track (frames 1-3) is the subject; frames 8-9 are another
    # track (the square vanished for 4 detector runs, more than the 2 a track survives).
    np.testing.assert_array_equal(fv.crop_frames, [1, 2, 3])
    assert fv.num_dropped == 7
    assert [f['face'] is not None for f in fv.frames] == [False, True, True, True] + [False] * 6
    assert len(fv.tracking.other_tracks) == 1
    # By default (rejoin_s = 2: 50 frames at 25 fps) the square coming back where it was
    # is the same subject; the frames without it are still dropped.
    fv = video.extract_face_video(path, video.FaceOptions(smooth=1), detector=WhiteSquares())
    np.testing.assert_array_equal(fv.crop_frames, [1, 2, 3, 8, 9])
    assert fv.num_dropped == 5 and fv.tracking.other_tracks == []


def test_progress_bar_and_saved_crops(tmp_path, capsys):
    path = videos.write_video(tmp_path / 'sq.mp4', squares([True] * 5))
    fv = video.extract_face_video(
        path, video.FaceOptions(crop_size=64), detector=WhiteSquares(), progress=True
    )
    assert 'faces sq.mp4' in capsys.readouterr().err  # tqdm writes to stderr
    rates = fv.rates()
    assert set(rates) >= {'decode', 'detect', 'align'} and all(r > 0 for r in rates.values())
    paths = video.save_crops(fv, tmp_path / 'out', prefix='00007')
    assert [os.path.basename(p) for p in paths] == [f'00007_{n}.jpg' for n in range(1, 6)]
    # Saved crops read back as a frame folder, in order.
    again = [f.image for f in video.read_frames(tmp_path / 'out')]
    assert len(again) == 5 and again[0].shape == (64, 64, 3)


def test_streamed_crops_are_the_collected_ones_and_save_as_they_come(tmp_path):
    present = [False, True, True, True, False, False, False, False, True, True]
    path = videos.write_video(tmp_path / 'sq.mp4', squares(present))
    options = video.FaceOptions(crop_size=64, smooth=1)
    track = faces.track_faces(path, options, detector=WhiteSquares())
    assert [f['face'] is not None for f in track.frames] == present and track.num_crops == 5
    streamed = list(faces.aligned_crops(track))
    # Pass 2 by hand: every decoded frame with a face, aligned on the track's landmarks.
    expected = [
        (f.index, align.align_face(f.image, track.tracking.faces[f.index].landmarks, 64))
        for f in video.read_frames(path)
        if present[f.index]
    ]
    assert [c.index for c in streamed] == [i for i, _ in expected]
    assert [c.time_s for c in streamed] == [track.frames[i]['time_s'] for i, _ in expected]
    for crop, (_, image) in zip(streamed, expected, strict=True):
        np.testing.assert_array_equal(crop.image, image)
    collected = video.extract_face_video(path, options, detector=WhiteSquares())
    np.testing.assert_array_equal(collected.crops, np.stack([c.image for c in streamed]))
    np.testing.assert_array_equal(collected.crop_frames, [c.index for c in streamed])
    assert collected.frames == track.frames
    # save_crops streams a FaceTrack: the same files as from the collected crops.
    from_track = video.save_crops(track, tmp_path / 'a', prefix='clip')
    from_video = video.save_crops(collected, tmp_path / 'b', prefix='clip')
    assert [os.path.basename(p) for p in from_track] == [f'clip_{n}.jpg' for n in range(1, 6)]
    for a, b in zip(from_track, from_video, strict=True):
        assert pathlib.Path(a).read_bytes() == pathlib.Path(b).read_bytes()
