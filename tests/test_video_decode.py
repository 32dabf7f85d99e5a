"""Decoding: video files of any container and frame folders -> upright RGB frames with
their timestamps; unusable input -> VideoError naming the file."""

import re

import av
import numpy as np
import pytest
from PIL import Image

from former_dfer_jax import video
from former_dfer_jax.errors import UserError
from tests import videos

SIZE = (160, 96)
# x264 at crf 18 on the test frames (a gradient with noise of sigma 4): mean absolute
# error 2.9-3.5 grey levels measured (mpeg4 / avi the largest); a wrong orientation or a
# different frame is off by 20+.
CODEC_ERROR = 6.0


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


@pytest.fixture(scope='module')
def frames():
    frames, _ = videos.moving_face_frames(6, size=SIZE, face_size=40, seed=1)
    return frames


@pytest.mark.parametrize('ext', ['mp4', 'avi', 'mkv', 'webm', 'mov'])
def test_containers_decode_to_the_written_frames_in_order(tmp_path, frames, ext):
    path = videos.write_video(tmp_path / f'clip.{ext}', frames, fps=25)
    decoded = list(video.read_frames(path))
    assert [f.index for f in decoded] == list(range(6))
    np.testing.assert_allclose([f.time_s for f in decoded], np.arange(6) / 25, atol=1e-6)
    for got, want in zip(decoded, frames, strict=True):
        assert got.image.dtype == np.uint8 and got.image.shape == (96, 160, 3)
        assert mean_error(got.image, want) < CODEC_ERROR
    info = video.probe(path)
    assert (info.fps, info.num_frames, info.size, info.rotation) == (25.0, 6, SIZE, 0)
    assert info.path == str(path)


def test_variable_frame_rate_keeps_each_frames_timestamp(tmp_path, frames):
    times = [0.0, 0.04, 0.2, 0.24, 0.5, 0.9]
    path = videos.write_video(tmp_path / 'vfr.mkv', frames, times=times)
    decoded = list(video.read_frames(path))
    np.testing.assert_allclose([f.time_s for f in decoded], times, atol=1e-3)  # ms pts


@pytest.mark.parametrize('rotation', [90, -90, 180])
def test_rotated_video_comes_out_upright(tmp_path, frames, rotation):
    path = videos.write_video(tmp_path / 'phone.mp4', frames, rotation=rotation)
    # The file really stores the frames turned, with the rotation as side data.
    with av.open(path) as container:
        raw = next(container.decode(video=0))
        assert raw.rotation % 360 == rotation % 360  # PyAV may say -180 for 180
        stored = raw.to_ndarray(format='rgb24')
    assert mean_error(stored, np.rot90(frames[0], k=-rotation // 90)) < CODEC_ERROR
    info = video.probe(path)
    assert info.size == SIZE and info.rotation == rotation
    decoded = list(video.read_frames(path))
    for got, want in zip(decoded, frames, strict=True):
        assert got.image.shape == want.shape
        assert mean_error(got.image, want) < CODEC_ERROR
        assert mean_error(got.image, want[::-1, ::-1]) > 3 * CODEC_ERROR  # not turned wrongly


def test_rotate_upright_turns_counter_clockwise():
    image = np.arange(6, dtype=np.uint8).reshape(2, 3, 1).repeat(3, axis=2)
    turned = video.decode.rotate_upright(image, 90)
    assert turned.shape == (3, 2, 3)
    assert turned[0, 0, 0] == image[0, 2, 0]  # the top-right corner goes to the top-left
    assert video.decode.rotate_upright(image, 0) is image


def test_one_frame_video(tmp_path, frames):
    path = videos.write_video(tmp_path / 'one.mp4', frames[:1])
    decoded = list(video.read_frames(path))
    assert len(decoded) == 1 and decoded[0].time_s == 0.0
    assert video.probe(path).num_frames == 1


def test_frame_folder_reads_in_numeric_order_at_the_given_rate(tmp_path):
    # Frame n is filled with grey level 10 n; 12 frames, so "x_10" sorts before "x_2" as text.
    grey = [np.full((32, 48, 3), 10 * n, np.uint8) for n in range(12)]
    videos.write_frames_dir(tmp_path / 'clip', grey, prefix='00042')
    (tmp_path / 'clip' / 'notes.txt').write_text('not a frame')
    decoded = list(video.read_frames(tmp_path / 'clip', fps_for_frames_dir=10))
    assert [round(float(f.image.mean()) / 10) for f in decoded] == list(range(12))
    np.testing.assert_allclose([f.time_s for f in decoded], np.arange(12) / 10)
    info = video.probe(tmp_path / 'clip', fps_for_frames_dir=10)
    assert (info.fps, info.num_frames, info.size, info.rotation) == (10.0, 12, (48, 32), 0)


def test_is_video_path(tmp_path, frames):
    videos.write_frames_dir(tmp_path / 'clip', frames[:2])
    (tmp_path / 'empty').mkdir()
    assert video.is_video_path(tmp_path / 'clip')
    assert not video.is_video_path(tmp_path / 'empty')
    for name in ('a.mp4', 'b.AVI', 'c.mkv', 'd.webm', 'e.mov'):
        assert video.is_video_path(tmp_path / name)
    assert not video.is_video_path(tmp_path / 'notes.txt')


def _error(path, **kwargs) -> str:
    with pytest.raises(video.VideoError) as raised:
        list(video.read_frames(path, **kwargs))
    message = str(raised.value)
    assert message.startswith(str(path)) and '\n' not in message
    with pytest.raises(video.VideoError):
        video.probe(path)
    return message


def test_bad_inputs_raise_one_line_naming_the_file(tmp_path, frames):
    assert issubclass(video.VideoError, UserError)
    assert 'no such file' in _error(tmp_path / 'missing.mp4')
    assert 'not a readable video' in _error(videos.write_garbage(tmp_path / 'garbage.mp4'))
    text = tmp_path / 'notes.mp4'
    text.write_text('hello, this is not a video\n' * 20)
    assert 'not a readable video' in _error(text)
    # An mp4 cut in half loses its index (moov, written last): FFmpeg then either fails
    # to open it or finds no stream in it, depending on where the cut falls.
    cut = videos.truncate_file(videos.write_video(tmp_path / 'cut.mp4', frames), 0.5)
    assert re.search('not a readable video|no video stream', _error(cut))
    zero = videos.write_video(tmp_path / 'zero.avi', [], size=SIZE)
    assert 'no frames' in _error(zero)
    (tmp_path / 'empty').mkdir()
    assert 'no image frames' in _error(tmp_path / 'empty')


def test_unreadable_frame_in_a_folder_names_the_image(tmp_path, frames):
    paths = videos.write_frames_dir(tmp_path / 'clip', frames[:3])
    with open(paths[1], 'r+b') as f:
        f.truncate(100)
    with pytest.raises(video.VideoError, match='unreadable image') as raised:
        list(video.read_frames(tmp_path / 'clip'))
    assert str(raised.value).startswith(paths[1])


def test_folder_frames_with_exif_orientation_are_turned_upright(tmp_path):
    upright = np.zeros((20, 30, 3), np.uint8)
    upright[:5] = 255  # a white band at the top
    stored = Image.fromarray(np.rot90(upright, k=1))  # stored turned counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation 6: turn 90 degrees clockwise to display
    (tmp_path / 'clip').mkdir()
    stored.save(tmp_path / 'clip' / 'f_1.jpg', exif=exif, quality=95)
    (frame,) = video.read_frames(tmp_path / 'clip')
    assert frame.image.shape == upright.shape
    assert mean_error(frame.image, upright) < 10
