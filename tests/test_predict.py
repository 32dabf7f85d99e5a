"""predict: a video in, the emotions of its face out (`inference.predictor`: windows, clip
result; `inference.prediction_plots`: files; `predict`: the command, batches, errors).

Most tests use a stand-in detector that finds a magenta square (so they test predict, not
MTCNN, and run in a fraction of a second per video); the command-line tests run the real
MTCNN on a real face (tests/videos.py).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from scipy import ndimage

from former_dfer_jax import predict
from former_dfer_jax.data import sampling, sources
from former_dfer_jax.inference import class_names_of, open_run, prediction_plots
from former_dfer_jax.inference import predictor as predicting
from former_dfer_jax.run_lock import LOCK_FILE
from former_dfer_jax.video import VideoError, faces
from former_dfer_jax.video.detect import Face
from tests import videos
from tests.test_cli import run_entry_point
from tests.test_run_lock import in_use_line, live_lock, read_only
from tests.tiny import OWN_CLASS_NAMES

MAGENTA = (230, 20, 230)
SIZE = (96, 64)  # (w, h) of the stand-in videos
SQUARE = 28


class SquareDetector:
    """Finds magenta squares: box = the square, landmarks at fixed places inside it."""

    def detect(self, image: np.ndarray) -> list[Face]:
        r, g, b = (image[..., c].astype(int) for c in range(3))
        labels, _ = ndimage.label((r > 170) & (g < 100) & (b > 170))
        out = []
        for found in ndimage.find_objects(labels):
            y, x = found
            if (y.stop - y.start) * (x.stop - x.start) < 40:
                continue
            x0, y0, x1, y1 = x.start, y.start, x.stop, y.stop
            w, h = x1 - x0, y1 - y0
            relative = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
            landmarks = (relative * [w, h] + [x0, y0]).astype(np.float32)
            out.append(Face((float(x0), float(y0), float(x1), float(y1)), 0.99, landmarks))
        return out


def square_frames(positions, size=SIZE, square=SQUARE):
    """Grey frames with a magenta square at each (x, y) (None: no face; a list: several)."""
    frames = []
    for t, where in enumerate(positions):
        frame = np.full((size[1], size[0], 3), 90 + (t % 3), np.uint8)
        for x, y in [] if where is None else where if isinstance(where, list) else [where]:
            frame[y : y + square, x : x + square] = MAGENTA
        frames.append(frame)
    return frames


FACE_OPTIONS = faces.FaceOptions(crop_size=64, smooth=1)


@pytest.fixture(scope='module')
def run(tiny_run):
    _, workdir, _ = tiny_run
    return open_run(workdir, 'latest')


@pytest.fixture(scope='module')
def predictor(run):
    return predicting.Predictor.from_run(run, face_options=FACE_OPTIONS, detector=SquareDetector())


# ---- Windows ---------------------------------------------------------------------------


def test_windows_cover_the_video_up_to_its_last_frame():
    assert predicting.window_starts(0.0, 10.0, 2.0, 1.0) == [float(s) for s in range(9)]
    starts = predicting.window_starts(0.0, 10.5, 2.0, 1.0)
    assert starts[:9] == [float(s) for s in range(9)] and starts[-1] == pytest.approx(8.5)
    assert predicting.window_starts(0.0, 1.5, 2.0, 1.0) == [0.0]  # shorter: one window


def test_a_window_is_classified_where_its_frames_mostly_show_the_face():
    times = np.arange(60) / 10.0  # 6 s at 10 fps
    has_face = np.ones(60, bool)
    has_face[25:45] = False  # 2.5 s .. 4.5 s without a face
    windows, fallback = predicting.plan_windows(times, has_face, 10.0, 2.0, 1.0)
    assert not fallback
    # Faces in the windows: [0,2) 20/20, [1,3) 15/20, [2,4) 5/20, [3,5) 5/20, [4,6) 15/20.
    assert [(w.start_s, w.end_s) for w in windows] == [(0, 2), (1, 3), (4, 6)]
    assert all(has_face[w.face_frames].all() for w in windows)
    np.testing.assert_array_equal(windows[1].face_frames, np.arange(10, 25))


def test_a_face_too_rare_for_any_window_gives_one_window_over_its_frames():
    has_face = np.zeros(60, bool)
    has_face[[10, 11, 40]] = True
    windows, fallback = predicting.plan_windows(np.arange(60) / 10.0, has_face, 10.0, 2.0, 1.0)
    assert fallback and len(windows) == 1
    np.testing.assert_array_equal(windows[0].face_frames, [10, 11, 40])
    assert (windows[0].start_s, windows[0].end_s) == pytest.approx((1.0, 4.1))


def test_crops_are_resized_as_the_prepare_step_resizes_dfew_frames():
    crops = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), np.uint8)
    small = predicting.resize_crops(crops, 32)
    expected = np.asarray(Image.fromarray(crops[1]).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(small[1], expected)
    assert predicting.resize_crops(crops, 64) is crops


def test_output_folders_are_named_after_the_videos_and_never_collide(tmp_path):
    (tmp_path / 'clip').mkdir()
    paths = ['/x/a.mp4', '/y/a.avi', '/x/my video.mov', str(tmp_path / 'clip')]
    assert predict.output_names(paths) == ['a', 'a_2', 'my_video', 'clip']


def test_class_names_and_sampling_come_from_the_run(predictor, own_run, tmp_path):
    assert predictor.class_names == sources.CLASS_NAMES  # the tiny run: DFEW's 7
    assert (predictor.num_segments, predictor.segment_length) == (2, 2)
    _, own_dir = own_run
    own = predicting.Predictor.from_run(open_run(own_dir), detector=SquareDetector())
    assert own.class_names == OWN_CLASS_NAMES
    import ml_collections

    config = ml_collections.ConfigDict(
        {'model': {'num_classes': 3}, 'data': {'name': 'own', 'root': str(tmp_path)}}
    )
    (tmp_path / 'classes.txt').write_text('calm\nangry\nhappy\n')
    assert class_names_of(str(tmp_path / 'run'), config) == ('calm', 'angry', 'happy')
    config.data.name = 'dfew'
    assert class_names_of(str(tmp_path / 'run'), config) == (
        'class_0',
        'class_1',
        'class_2',
    )


# ---- Predicting a video -----------------------------------------------------------------


def _video(tmp_path, name, positions, fps=10, **kwargs):
    return videos.write_video(str(tmp_path / name), square_frames(positions), fps=fps, **kwargs)


def test_the_result_has_exactly_the_documented_content(predictor, tmp_path):
    positions = [(10 + 2 * t, 12) for t in range(25)]  # 2.5 s at 10 fps
    path = _video(tmp_path, 'face.mp4', positions)
    result = predictor.predict(path).result
    assert tuple(result) == predicting.RESULT_KEYS
    assert result['video'] == os.path.abspath(path)
    assert (result['fps'], result['num_frames'], result['size']) == (10.0, 25, list(SIZE))
    assert result['class_names'] == list(sources.CLASS_NAMES)
    assert [f['index'] for f in result['frames']] == list(range(25))
    assert [f['time_s'] for f in result['frames']] == pytest.approx(np.arange(25) / 10)
    for frame, (x, y) in zip(result['frames'], positions, strict=True):
        assert set(frame) == {'index', 'time_s', 'face'}
        assert set(frame['face']) == {'box', 'score', 'landmarks'}
        # The detector's box in frame pixels (H.264 blurs the square's edge by <= 1 pixel).
        np.testing.assert_allclose(frame['face']['box'], [x, y, x + SQUARE, y + SQUARE], atol=1)
    # 2.5 s: windows [0, 2) and [0.5, 2.5) (the last one ends with the video).
    assert [(w['start_s'], w['end_s']) for w in result['windows']] == [(0, 2), (0.5, 2.5)]
    for window in result['windows']:
        assert set(window) == {'start_s', 'end_s', 'frame_indices', 'probabilities'}
        assert len(window['frame_indices']) == 4  # U x V of the tiny model
        assert all(window['start_s'] <= i / 10 < window['end_s'] for i in window['frame_indices'])
        assert sum(window['probabilities']) == pytest.approx(1, abs=1e-5)
    probabilities = np.mean([w['probabilities'] for w in result['windows']], axis=0)
    assert result['clip']['probabilities'] == pytest.approx(probabilities.tolist(), abs=1e-7)
    assert result['clip']['label'] == result['class_names'][int(np.argmax(probabilities))]
    json.dumps(result)  # plain JSON types throughout


def test_a_bare_model_gets_default_names_and_sampling_and_wrong_ones_are_refused(run):
    bare = predicting.Predictor(run.model, detector=SquareDetector())
    assert bare.class_names == sources.CLASS_NAMES  # 7 classes: DFEW's
    assert (bare.num_segments, bare.segment_length) == (2, 2)  # 4 frames: V = 2
    with pytest.raises(predicting.PredictError, match='3 class names for a model of 7'):
        predicting.Predictor(run.model, class_names=('a', 'b', 'c'), detector=SquareDetector())
    with pytest.raises(predicting.PredictError, match='sampling 3 x 1'):
        predicting.Predictor(run.model, sampling=(3, 1), detector=SquareDetector())
    with pytest.raises(predicting.PredictError, match='batch_size=0'):
        predicting.Predictor(run.model, batch_size=0, detector=SquareDetector())


def test_window_probabilities_are_the_models_on_the_test_rule_frames(predictor, run, tmp_path):
    path = _video(tmp_path, 'face.mp4', [(5 + 3 * t, 10) for t in range(15)])
    result = predictor.predict(path).result
    (window,) = result['windows']  # 1.5 s: shorter than a window
    # The test rule over the window's 15 face frames, as the eval pipeline samples a clip.
    assert window['frame_indices'] == sampling.sample_frame_indices(15, 2, 2, train=False).tolist()
    video = faces.extract_face_video(path, FACE_OPTIONS, detector=SquareDetector())
    clip = predicting.resize_crops(video.crops, 32)[window['frame_indices']] / np.float32(255)
    forward = nnx.jit(lambda model, x: jax.nn.softmax(model(x), axis=-1))
    expected = np.asarray(forward(run.model, clip[None]))[0]
    # The same computation, batched with padding (measured: equal to the last bit on CPU).
    np.testing.assert_allclose(window['probabilities'], expected, rtol=0, atol=1e-6)


def test_frames_without_a_face_are_null_and_their_windows_skipped(predictor, tmp_path):
    positions = [(20, 20)] * 30 + [None] * 30  # 6 s at 10 fps, the face in the first half
    result = predictor.predict(_video(tmp_path, 'gap.mp4', positions)).result
    assert [f['face'] is None for f in result['frames']] == [p is None for p in positions]
    # Faces in [0, 2) 20 of 20, [1, 3) 20 of 20, [2, 4) 10 of 20 (half: kept), then none.
    assert [(w['start_s'], w['end_s']) for w in result['windows']] == [(0, 2), (1, 3), (2, 4)]
    used = {i for w in result['windows'] for i in w['frame_indices']}
    assert used and all(positions[i] is not None for i in used)


def test_a_face_in_few_frames_is_said_and_still_predicted(predictor, tmp_path):
    positions = [None] * 12 + [(20, 20)] * 3 + [None] * 25
    prediction = predictor.predict(_video(tmp_path, 'rare.mp4', positions))
    assert len(prediction.result['windows']) == 1
    # The test rule on 3 frames (N <= U + V - 1): both segments start at the first one.
    assert prediction.result['windows'][0]['frame_indices'] == [12, 13, 12, 13]
    (warning,) = prediction.warnings
    assert 'rare.mp4' in warning and 'only 3 of 40 frames' in warning


def test_with_two_faces_the_main_track_is_predicted_with_a_warning(predictor, tmp_path):
    # A face in every frame and a second one in the first 8 frames only.
    positions = [[(4, 20), (60, 20)] if t < 8 else [(4, 20)] for t in range(20)]
    prediction = predictor.predict(_video(tmp_path, 'two.mp4', positions))
    boxes = [f['face']['box'] for f in prediction.result['frames']]
    np.testing.assert_allclose(boxes, [[4, 20, 4 + SQUARE, 20 + SQUARE]] * 20, atol=1)
    assert any('other face track' in w for w in prediction.warnings)


def test_a_one_frame_video_is_one_window_of_that_frame(predictor, tmp_path):
    prediction = predictor.predict(_video(tmp_path, 'one.mp4', [(30, 20)]))
    (window,) = prediction.result['windows']
    assert window['frame_indices'] == [0, 0, 0, 0]
    assert any('single frame' in w for w in prediction.warnings)


def test_a_rotated_video_is_predicted_upright(predictor, tmp_path):
    frames = square_frames([(10, 30)] * 10)
    path = videos.write_video(str(tmp_path / 'phone.mp4'), frames, fps=10, rotation=90)
    result = predictor.predict(path).result
    assert result['size'] == list(SIZE)  # the upright size, not the stored one
    np.testing.assert_allclose(result['frames'][0]['face']['box'], [10, 30, 38, 58], atol=1)


def test_a_frames_folder_is_a_video_at_25_fps(predictor, tmp_path):
    videos.write_frames_dir(tmp_path / 'clip', square_frames([(30, 20)] * 5), prefix='clip')
    result = predictor.predict(str(tmp_path / 'clip')).result
    assert (result['fps'], result['num_frames']) == (25.0, 5)


def test_predict_video_is_the_predictors_result(run, predictor, tmp_path):
    path = _video(tmp_path, 'face.mp4', [(20, 20)] * 8)
    options = {'face_options': FACE_OPTIONS, 'detector': SquareDetector()}
    result = predicting.predict_video(run, path, **options)
    assert result['class_names'] == list(sources.CLASS_NAMES)
    assert len(result['windows']) == 1
    assert result['clip'] == predictor.predict(path).result['clip']
    bare = predicting.predict_video(run.model, path, **options)  # a bare model: DFEW's names
    assert bare['class_names'] == result['class_names']


# ---- Files and batches ------------------------------------------------------------------


def test_the_files_of_a_video(predictor, tmp_path):
    path = _video(tmp_path, 'face.mp4', [(10 + 2 * t, 12) if t < 20 else None for t in range(30)])
    prediction = predictor.predict(path)
    paths = prediction_plots.write_prediction(prediction, str(tmp_path / 'out'), annotate=True)
    with open(paths['prediction']) as f:
        assert json.load(f) == prediction.result
    for picture in ('timeline', 'faces'):
        with Image.open(paths[picture]) as image:
            assert image.format == 'PNG' and min(image.size) > 50
    import av

    with av.open(paths['annotated']) as container:
        decoded = list(container.decode(video=0))
    assert len(decoded) == 30 and (decoded[0].width, decoded[0].height) == SIZE
    # The box is drawn in green where there is a face.
    frame = decoded[0].to_ndarray(format='rgb24').astype(int)
    edge = frame[12:40, 10]  # the box's left edge
    assert (edge[:, 1] - edge[:, 0] > 80).mean() > 0.5


def test_explain_draws_one_picture_per_window_and_leaves_the_json_as_it_is(
    run, predictor, tmp_path
):
    path = _video(tmp_path, 'face.mp4', [(10 + 2 * t, 12) for t in range(25)])  # 2 windows
    explaining = predicting.Predictor.from_run(
        run, face_options=FACE_OPTIONS, detector=SquareDetector(), explain=True
    )
    assert explaining.explain_stage == 'sformer'  # explain's default: the tiny model has one
    explained = explaining.predict(path)
    paths = prediction_plots.write_prediction(explained, str(tmp_path / 'explained'))
    plain = prediction_plots.write_prediction(predictor.predict(path), str(tmp_path / 'plain'))
    # The probabilities come from the same forward program on the same clips either way.
    with open(paths['prediction'], 'rb') as a, open(plain['prediction'], 'rb') as b:
        assert a.read() == b.read()
    names = ['explain_000_0.0-2.0s.png', 'explain_001_0.5-2.5s.png']  # [0, 2), [0.5, 2.5)
    assert sorted(f for f in os.listdir(tmp_path / 'explained') if 'explain' in f) == names
    assert not any('explain' in f for f in os.listdir(tmp_path / 'plain'))
    for name in names:
        assert paths[name[: -len('.png')]] == str(tmp_path / 'explained' / name)
        with Image.open(tmp_path / 'explained' / name) as image:
            assert image.format == 'PNG' and min(image.size) > 100
    # What each picture draws: the window's 4 frames at the model's 32 x 32, both maps in
    # [0, 1], and the T-Former's attention over the frames.
    for picture in explained.explanations:
        assert picture.grad_cam.shape == picture.feature_heatmap.shape == (4, 32, 32)
        assert picture.grad_cam.min() >= 0 and picture.grad_cam.max() <= 1
        assert picture.occlusion.shape == (4,)
        assert picture.frame_importance.sum() == pytest.approx(1, abs=1e-5)
    with pytest.raises(predicting.PredictError, match='no explanations'):
        prediction_plots.write_explanations(predictor.predict(path), str(tmp_path / 'plain'))


def test_explain_file_names_sort_in_time_order():
    window = {'start_s': 12.0, 'end_s': 14.04}
    assert prediction_plots.explain_file_name(3, window, 10) == 'explain_003_12.0-14.0s.png'
    assert prediction_plots.explain_file_name(3, window, 1001) == 'explain_0003_12.0-14.0s.png'


def test_a_batch_goes_on_past_bad_videos_and_lists_them(predictor, tmp_path, capsys):
    folder = tmp_path / 'in'
    folder.mkdir()
    _video(folder, 'good.mp4', [(20, 20)] * 10)
    _video(folder, 'noface.mp4', [None] * 10)
    videos.write_garbage(folder / 'broken.mp4')
    (folder / 'notes.txt').write_text('not a video: ignored')
    summary = predict.predict_paths(predictor, str(folder), str(tmp_path / 'out'))
    assert [p['video'] for p in summary['predicted']] == [str(folder / 'good.mp4')]
    failed = {os.path.basename(f['video']): f['error'] for f in summary['failed']}
    assert set(failed) == {'broken.mp4', 'noface.mp4'}
    assert (
        failed['noface.mp4'].startswith(str(folder / 'noface.mp4'))
        and 'no face' in failed['noface.mp4']
    )
    assert (tmp_path / 'out' / 'good' / 'prediction.json').exists()
    assert (
        json.loads((tmp_path / 'out' / 'summary.json').read_text())['failed'] == summary['failed']
    )
    out = capsys.readouterr().out
    assert '1 of 3 videos predicted; 2 failed' in out and 'frames/s' in out


def test_a_single_bad_video_raises_naming_it(predictor, tmp_path):
    path = _video(tmp_path, 'noface.mp4', [None] * 5)
    with pytest.raises(VideoError, match=r'noface\.mp4: no face'):
        predict.predict_paths(predictor, path, str(tmp_path / 'out'))
    with pytest.raises(predicting.PredictError, match=r'missing\.mp4: no such file'):
        predict.predict_paths(predictor, str(tmp_path / 'missing.mp4'), str(tmp_path / 'out'))


def test_a_batch_where_nothing_works_fails(predictor, tmp_path):
    folder = tmp_path / 'in'
    folder.mkdir()
    videos.write_garbage(folder / 'a.mp4')
    with pytest.raises(predicting.PredictError, match='none of its 1 videos'):
        predict.predict_paths(predictor, str(folder), str(tmp_path / 'out'))


def _refused_before_the_model_is_loaded(tmp_path, monkeypatch, capsys) -> str:
    """Runs the command on a video into tmp_path/out with opening a run forbidden; its one
    error line."""

    def no_model(*args, **kwargs):
        raise AssertionError('the model was loaded')

    monkeypatch.setattr(predict, 'open_run', no_model)
    video = tmp_path / 'clip.mp4'
    video.write_bytes(b'')  # never read
    args = ('--model=runs/none', f'--input={video}', f'--output={tmp_path / "out"}')
    assert run_entry_point(predict, *args) == 1
    (error,) = capsys.readouterr().err.strip().splitlines()
    return error


def test_a_second_predict_into_one_folder_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'out'
    with live_lock(out, what='predict run') as pid:
        error = _refused_before_the_model_is_loaded(tmp_path, monkeypatch, capsys)
    assert error == f'error: {in_use_line(out, "predict run", pid)}'
    assert os.listdir(out) == [LOCK_FILE]


def test_a_read_only_output_folder_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    read_only(monkeypatch, tmp_path / 'out')
    error = _refused_before_the_model_is_loaded(tmp_path, monkeypatch, capsys)
    assert error == (
        f'error: {tmp_path / "out"}: cannot write to this predict --output folder '
        '(Read-only file system)'
    )


# ---- The command line, with MTCNN on a real face -----------------------------------------


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, '-m', 'former_dfer_jax.predict', *args],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        timeout=300,
    )


def test_the_command_predicts_a_folder_of_videos(tiny_run, tmp_path):
    _, workdir, _ = tiny_run
    folder = tmp_path / 'in'
    folder.mkdir()
    frames, boxes = videos.moving_face_frames(6, size=(160, 120), face_size=50, seed=1)
    videos.write_video(folder / 'astronaut.mp4', frames, fps=6)
    videos.write_garbage(folder / 'broken.mp4')
    out = tmp_path / 'out'
    done = _run_cli(
        f'--model={workdir}',
        f'--input={folder}',
        f'--output={out}',
        '--detect_every=2',
        '--explain',
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'Traceback' not in done.stderr
    result = json.loads((out / 'astronaut' / 'prediction.json').read_text())
    # MTCNN's box against the pasted face's (the video helper's tests measure the IoU
    # distribution; >= 0.8 on every frame of these videos).
    for frame, box in zip(result['frames'], boxes, strict=True):
        assert videos.box_iou(frame['face']['box'], box) > 0.7
    assert 'broken.mp4' in done.stderr and '1 of 2 videos predicted' in done.stdout
    assert (out / 'astronaut' / 'timeline.png').exists()
    # 1 s of video: one window, one explain picture.
    explained = sorted(f for f in os.listdir(out / 'astronaut') if 'explain' in f)
    assert explained == ['explain_000_0.0-1.0s.png']

    # A single input that fails: one error line, status 1 (the missing file fails fast;
    # every other per-video error takes the same path, see the tests above).
    missing = folder / 'missing.mp4'
    single = _run_cli(f'--model={workdir}', f'--input={missing}', f'--output={out}')
    assert single.returncode == 1
    assert single.stderr.strip().splitlines()[-1] == f'error: {missing}: no such file or folder'
    assert 'Traceback' not in single.stderr


def test_the_command_writes_the_runs_own_class_names(own_run, tmp_path):
    _, run_dir = own_run  # 11 classes, none of them DFEW's or MAFW's
    frames, _ = videos.moving_face_frames(6, size=(160, 120), face_size=50, seed=2)
    video = videos.write_video(tmp_path / 'face.mp4', frames, fps=6)
    out = tmp_path / 'out'
    done = _run_cli(f'--model={run_dir}', f'--input={video}', f'--output={out}')
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / 'face' / 'prediction.json').read_text())
    assert result['class_names'] == list(OWN_CLASS_NAMES)
    assert len(result['clip']['probabilities']) == len(OWN_CLASS_NAMES) == 11
    assert all(len(w['probabilities']) == 11 for w in result['windows'])
    assert result['clip']['label'] in OWN_CLASS_NAMES
    assert not (out / 'summary.json').exists()  # one video: no batch summary
