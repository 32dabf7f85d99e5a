"""Alignment: a least-squares similarity from five landmarks onto the template, and the
bilinear warp that puts each landmark where the template says."""

import numpy as np
import pytest

from former_dfer_jax.video import align
from tests import videos


def similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def umeyama_complex(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity in complex numbers (w = c z + t), an independent
    closed form: c = sum (w - mean w) conj(z - mean z) / sum |z - mean z|^2."""
    z = src[:, 0] + 1j * src[:, 1]
    w = dst[:, 0] + 1j * dst[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    c = np.sum(wc * np.conj(zc)) / np.sum(np.abs(zc) ** 2)
    t = w.mean() - c * z.mean()
    return np.array([[c.real, -c.imag, t.real], [c.imag, c.real, t.imag]])


def test_similarity_transform_recovers_an_exact_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 300, (5, 2))
    truth = similarity(0.4, 1.7, 12.0, -30.0)
    np.testing.assert_allclose(align.similarity_transform(src, apply(truth, src)), truth, atol=1e-9)


def test_similarity_transform_is_the_least_squares_one():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 300, (5, 2))
    dst = apply(similarity(-0.3, 0.8, 5.0, 7.0), src) + rng.normal(0, 3, (5, 2))
    np.testing.assert_allclose(
        align.similarity_transform(src, dst), umeyama_complex(src, dst), atol=1e-9
    )


def test_invert_similarity():
    matrix = similarity(1.1, 2.5, 40.0, -3.0)
    points = np.array([[0.0, 0.0], [10.0, 5.0], [-3.0, 8.0]])
    back = apply(align.invert_similarity(matrix), apply(matrix, points))
    np.testing.assert_allclose(back, points, atol=1e-9)


def test_alignment_matrix_puts_template_shaped_landmarks_on_the_template():
    size = 256
    want = align.TEMPLATE * size - 0.5  # pixel-index coordinates in the crop
    landmarks = apply(similarity(0.5, 0.6, 100.0, 80.0), want)  # a turned, scaled copy
    matrix = align.alignment_matrix(landmarks, size)
    np.testing.assert_allclose(apply(matrix, landmarks), want, atol=1e-6)


def test_template_has_level_eyes_and_the_face_in_the_middle():
    (lx, ly), (rx, ry) = align.TEMPLATE[:2]
    assert abs(ly - ry) < 0.01 and lx < 0.5 < rx
    assert 0.2 < rx - lx < 0.3  # ArcFace's 0.31 eye distance zoomed out by 0.8
    assert np.all((align.TEMPLATE > 0.2) & (align.TEMPLATE < 0.8))


def blob(shape: tuple[int, int], center: np.ndarray, sigma: float) -> np.ndarray:
    """A white Gaussian spot centred at `center` (pixel-index x, y) on black."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    spot = np.exp(-((xx - center[0]) ** 2 + (yy - center[1]) ** 2) / (2 * sigma**2))
    return np.repeat((255 * spot).astype(np.uint8)[..., None], 3, axis=2)


def centroid(image: np.ndarray) -> np.ndarray:
    weight = image[..., 0].astype(np.float64)
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()


@pytest.mark.parametrize(
    ('frame_shape', 'matrix', 'sigma', 'tolerance'),
    [
        # A turned face of 1.3x the crop's scale: plain bilinear resampling.
        ((400, 500), similarity(0.35, 1.3, 120.0, 60.0), 4.0, 0.05),
        # A face 6x larger than the crop's (a 4K frame): box-reduced first, then bilinear.
        ((1600, 1800), similarity(-0.2, 6.0, 500.0, 300.0), 20.0, 0.05),
    ],
)
def test_each_landmark_lands_on_its_template_point(frame_shape, matrix, sigma, tolerance):
    # Measured 0.004 (bilinear) and 0.006 (reduced) crop pixels off; a half-pixel slip in
    # the coordinate conventions would be 0.1 or more.
    size = 128
    want = align.TEMPLATE * size - 0.5
    landmarks = apply(matrix, want)  # the template, turned and scaled into the frame
    for point, target in zip(landmarks, want, strict=True):
        image = blob(frame_shape, point, sigma)
        crop = align.align_face(image, landmarks, size)
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
        np.testing.assert_allclose(centroid(crop), target, atol=tolerance)


def test_outside_the_frame_is_black():
    image = np.full((100, 100, 3), 200, np.uint8)
    # A face at the frame's top-left corner: the crop's top-left shows outside the frame.
    landmarks = align.TEMPLATE * 40 - 10
    crop = align.align_face(image, landmarks, 64)
    assert np.all(crop[:5, :5] == 0) and np.all(crop[-5:, -5:] == 200)
    # A face entirely outside the frame: all black.
    assert not align.align_face(image, landmarks + 1000, 64).any()


def test_astronaut_crop():
    from skimage import data

    crop = align.align_face(data.astronaut(), videos.ASTRONAUT_LANDMARKS, 112)
    assert crop.shape == (112, 112, 3)
    # Her eyes land on the template's eyes: darker than the skin between them (measured
    # 89 and 103 against 217).
    eyes = np.round(align.TEMPLATE[:2] * 112 - 0.5).astype(int)
    between = np.round(align.TEMPLATE[:2].mean(axis=0) * 112 - 0.5).astype(int)
    grey = crop.mean(axis=2)
    for x, y in eyes:
        assert grey[y, x] < grey[between[1], between[0]] - 40
