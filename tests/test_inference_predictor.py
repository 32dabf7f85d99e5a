"""The predictor's streaming: windows classified as the crops stream, with the numbers of
the collected form, and a crop buffer whose size does not grow with the video.

A bare tiny model (random weights, 4 frames of 32 x 32) and the magenta-square stand-in
detector of test_predict; the old collected form is rebuilt here from
`faces.extract_face_video` as the reference."""

import numpy as np
import pytest
from flax import nnx

from former_dfer_jax.data.sampling import sample_frame_indices
from former_dfer_jax.inference import prediction_plots
from former_dfer_jax.inference import predictor as predicting
from former_dfer_jax.models import build_model
from former_dfer_jax.video import faces
from tests import videos
from tests.test_predict import FACE_OPTIONS, SquareDetector, square_frames
from tests.tiny import tiny_config


@pytest.fixture(scope='module')
def predictor():
    model = build_model(tiny_config().model, rngs=nnx.Rngs(0))
    model.eval()
    return predicting.Predictor(model, face_options=FACE_OPTIONS, detector=SquareDetector())


def _video(tmp_path, name, positions, fps):
    return videos.write_video(str(tmp_path / name), square_frames(positions), fps=fps)


def _wandering(n, gaps=()):
    """A square moving back and forth, absent in the frame ranges of `gaps`."""
    positions = [(6 + abs(t % 120 - 60) // 2, 12) for t in range(n)]
    for start, stop in gaps:
        positions[start:stop] = [None] * (stop - start)
    return positions


def _collected(predictor, path):
    """The pre-streaming predict: every crop collected and resized, the windows planned
    and sampled, all windows through the classifier at once."""
    video = faces.extract_face_video(path, FACE_OPTIONS, detector=SquareDetector())
    times = np.array([f['time_s'] for f in video.frames])
    has_face = np.array([f['face'] is not None for f in video.frames])
    windows, _ = predicting.plan_windows(times, has_face, video.info.fps, 2.0, 1.0)
    crop_of_frame = {int(i): c for c, i in enumerate(video.crop_frames)}
    small = predicting.resize_crops(video.crops, predictor.model.spec.image_size)
    picked = []
    for w in windows:
        crops = np.array([crop_of_frame[int(i)] for i in w.face_frames])
        picked.append(crops[sample_frame_indices(len(crops), 2, 2, train=False)])
    probabilities, _ = predictor.classifier(np.stack([small[c] for c in picked]))
    return video, [video.crop_frames[c].tolist() for c in picked], probabilities


def test_streamed_prediction_equals_the_collected_one_to_the_bit(predictor, tmp_path):
    # 12 s at 10 fps, the face missing in 4.0-5.5 s: 10 windows of 11 ([4, 6) has it in a
    # quarter of its frames), batches of 4, 4 and 2 (padded).
    path = _video(tmp_path, 'gaps.mp4', _wandering(120, gaps=[(40, 55)]), fps=10)
    prediction = predictor.predict(path)
    video, frame_indices, probabilities = _collected(predictor, path)
    windows = prediction.result['windows']
    assert len(windows) == 10 and prediction.warnings == []
    assert [w['frame_indices'] for w in windows] == frame_indices
    np.testing.assert_array_equal([w['probabilities'] for w in windows], probabilities)
    assert prediction.result['frames'] == [
        {'index': f['index'], 'time_s': f['time_s'], 'face': f['face']} for f in video.frames
    ]


def test_the_contact_sheet_keeps_only_the_crops_it_shows(predictor, tmp_path):
    # 40 s at 4 fps: 39 windows, of which faces.png shows 32.
    path = _video(tmp_path, 'long.mp4', _wandering(160), fps=4)
    prediction = predictor.predict(path)
    video = faces.extract_face_video(path, FACE_OPTIONS, detector=SquareDetector())
    windows = prediction.result['windows']
    assert len(windows) == 39
    shown = predicting.sheet_windows(len(windows))
    assert len(shown) == predicting.SHEET_TILES and sorted(prediction.sheet_crops) == shown
    crop_of_frame = {int(i): c for c, i in enumerate(video.crop_frames)}
    for w in shown:
        indices = windows[w]['frame_indices']
        expected = video.crops[crop_of_frame[indices[len(indices) // 2]]]
        np.testing.assert_array_equal(prediction.sheet_crops[w], expected)
    sheet = prediction_plots.contact_sheet(prediction)
    assert sheet.size == (8 * 112, 4 * (112 + 28))


def test_the_crop_buffer_does_not_grow_with_the_video(predictor, tmp_path):
    peaks = []
    for seconds in (10, 40):
        path = _video(tmp_path, f'{seconds}.mp4', _wandering(5 * seconds), fps=5)
        peaks.append(predictor.predict(path).buffer_peak)
    # The windows overlapping a moment (2 s every 1 s: 2, and the next one starting) hold
    # at most 3 x 4 sampled frames; the same for 10 s and 40 s.
    assert peaks[0] == peaks[1] <= 3 * 4


@pytest.mark.parametrize('segments', [(2, 2), (8, 2)])
def test_crop_buffer_holds_the_open_windows_frames_for_an_hour_as_for_30_s(segments):
    """The buffer alone over planned windows (no video): an hour of 25 fps against 30 s,
    with the tiny model's 2 x 2 sampling and the reference's 8 x 2."""
    peaks = []
    for seconds in (30, 3600):
        n = 25 * seconds
        has_face = np.ones(n, bool)
        has_face[np.arange(n) % 250 < 40] = False  # a face missing 1.6 s of every 10 s
        windows, _ = predicting.plan_windows(np.arange(n) / 25, has_face, 25.0, 2.0, 1.0)
        window_frames = [
            w.face_frames[sample_frame_indices(len(w.face_frames), *segments, train=False)]
            for w in windows
        ]
        buffer = predicting.CropBuffer(window_frames, image_size=2)
        returned = []
        for index in np.flatnonzero(has_face):
            crop = np.full((4, 4, 3), index % 251, np.uint8)  # each crop tells its frame
            for w, clip in buffer.add(int(index), crop):
                np.testing.assert_array_equal(clip[:, 0, 0, 0], window_frames[w] % 251)
                returned.append(w)
        assert buffer.done and returned == list(range(len(windows)))
        assert not buffer.frames  # nothing left held
        peaks.append(buffer.peak)
    frames_per_clip = segments[0] * segments[1]
    assert peaks[0] == peaks[1] <= 3 * frames_per_clip
