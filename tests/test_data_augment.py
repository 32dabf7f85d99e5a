"""Crop windows as the reference draws them; crop/resize/flip pixels as PIL makes them."""

import io
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from former_dfer_jax.data import augment


def draws_for(tries, fallback=(0.0, 0.0)):
    """Draw vector from per-try (area, aspect, swap, x, y) uniforms, padded with misses."""
    rows = list(tries) + [(0.999, 0.999, 0.9, 0.0, 0.0)] * (augment.CROP_TRIES - len(tries))
    return np.array([v for row in rows for v in row] + list(fallback))


def test_window_worked_by_hand():
    # area 0.08 + 0.92 * 0.5 = 0.54 of 256^2; aspect 3/4 + (7/12) * 0.5 = 25/24;
    # w = round(sqrt(0.54 * 65536 * 25/24)) = sqrt(36864) = 192, h = round(184.32) = 184;
    # no swap (0.7 >= 0.5); x = floor(0.25 * (256 - 192 + 1)) = 16, y = floor(0.5 * 73) = 36.
    window = augment.random_crop_window(256, 256, draws_for([(0.5, 0.5, 0.7, 0.25, 0.5)]))
    assert window == (36, 16, 184, 192)
    # The same draw with the swap coin < 0.5 exchanges w and h.
    window = augment.random_crop_window(256, 256, draws_for([(0.5, 0.5, 0.2, 0.25, 0.5)]))
    assert window == (32, 18, 192, 184)  # y = floor(0.5 * 65), x = floor(0.25 * 73)


def test_first_fitting_try_wins():
    # On a 100 x 40 frame, a 0.9-area window is too wide or too tall; the second try fits.
    tries = [(0.9, 0.0, 0.9, 0.0, 0.0), (0.0, 0.0, 0.9, 0.999, 0.999)]
    y, x, h, w = augment.random_crop_window(40, 100, draws_for(tries))
    area = 0.08 * 4000
    assert (w, h) == (round(math.sqrt(area * 0.75)), round(math.sqrt(area / 0.75)))
    assert (x, y) == (100 - w, 40 - h)  # u = 0.999 places it at the far corner


def test_fallback_is_a_random_square_of_the_shorter_side():
    # A 300 x 3 frame fits no window of >= 8% of its area with aspect <= 4/3.
    y, x, h, w = augment.random_crop_window(300, 3, draws_for([], fallback=(0.5, 0.5)))
    assert (h, w) == (3, 3) and x == 0 and y == math.floor(0.5 * 298)


def test_windows_fit_and_follow_the_distribution():
    rng = np.random.default_rng(0)
    for height, width in ((256, 256), (24, 24), (120, 200), (31, 17)):
        fractions = []
        for _ in range(400):
            y, x, h, w = augment.random_crop_window(height, width, rng.random(augment.CROP_DRAWS))
            assert 0 <= y <= height - h and 0 <= x <= width - w and h >= 1 and w >= 1
            fractions.append(h * w / (height * width))
            if height >= 100:  # rounding makes aspects of tiny windows coarse
                assert 0.72 <= w / h <= 1.39 and fractions[-1] >= 0.075
        if height == width == 256:
            assert 0.45 < np.mean(fractions) < 0.6  # E[U(0.08, 1)] = 0.54, minus misses


def test_a_larger_minimum_area_gives_larger_windows():
    rng = np.random.default_rng(1)
    for _ in range(200):
        draws = rng.random(augment.CROP_DRAWS)
        _, _, h, w = augment.random_crop_window(256, 256, draws, area_range=(0.6, 1.0))
        assert h * w >= 0.59 * 256 * 256
    # Area 1: the window is the whole frame (a try that rounds to it, or the fallback).
    assert augment.random_crop_window(64, 64, rng.random(augment.CROP_DRAWS), (1.0, 1.0)) == (
        0,
        0,
        64,
        64,
    )


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format='JPEG', quality=95)
    return buffer.getvalue()


@pytest.fixture(scope='module')
def clip():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:48, 0:64]
    frames = []
    for t in range(4):
        pixels = np.stack([xx * 4 + t * 9, yy * 5, (xx * yy) % 256], -1) + rng.normal(
            0, 12, (48, 64, 3)
        )
        frames.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    encoded = [jpeg(f) for f in frames]
    decoded = [Image.open(io.BytesIO(e)).convert('RGB') for e in encoded]  # as the reference
    return tf.constant(encoded), decoded


@pytest.mark.parametrize(
    ('window', 'flip'),
    [
        ((5, 7, 40, 50), False),
        ((0, 0, 48, 64), True),
        ((10, 20, 9, 13), True),
        ((3, 1, 20, 60), False),
        ((4, 9, 16, 16), True),  # already the output size
    ],
)
def test_train_pixels_match_the_reference_transform(clip, window, flip):
    encoded, decoded = clip
    y, x, h, w = window
    got = augment.train_clip(encoded, tf.constant(window), tf.constant(flip), 16).numpy()
    for t, image in enumerate(decoded):  # GroupRandomSizedCrop + GroupRandomHorizontalFlip
        expected = image.crop((x, y, x + w, y + h)).resize((16, 16), Image.BILINEAR)
        if flip:
            expected = expected.transpose(Image.FLIP_LEFT_RIGHT)
        diff = np.abs(got[t] * 255.0 - np.asarray(expected, np.float64))
        assert diff.max() <= 1.0 + 1e-3, (t, diff.max())


def test_eval_pixels_match_the_reference_resize(clip):
    encoded, decoded = clip
    for size in (16, 100):  # shrinking and enlarging
        got = augment.eval_clip(encoded, size).numpy()
        assert got.shape == (4, size, size, 3) and got.dtype == np.float32
        for t, image in enumerate(decoded):  # GroupResize: plain resize, aspect not kept
            expected = np.asarray(image.resize((size, size), Image.BILINEAR), np.float64)
            assert np.abs(got[t] * 255.0 - expected).max() <= 1.0 + 1e-3
