"""Face alignment: five landmarks -> a square, upright crop like DFEW's face crops.

A similarity transform (rotation, uniform scale, translation; no shear, no mirror) maps the
five detected landmarks onto a fixed template by least squares, so the eyes come out level,
a fixed distance apart and at a fixed place; the frame is warped with PIL's bilinear affine
resampling. The template is ArcFace's 112x112 five-point template zoomed out by
`TEMPLATE_ZOOM` about the crop centre, so the crop shows the whole face (brows to chin)
with a margin, and scaled to the crop size.

Coordinates: landmarks are in pixel-index coordinates (pixel i's centre at i), as the
detector gives them; the transform is estimated in continuous coordinates (pixel i spans
[i, i + 1)), the ones PIL's `Image.transform` uses.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# ArcFace's (insightface) 5-point template for 112x112 crops, in pixel-index coordinates:
# left eye, right eye, nose, mouth left, mouth right (left / right as the viewer sees them).
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
# Zoomed out about the centre: ArcFace's crop cuts the forehead and chin, DFEW's show them.
TEMPLATE_ZOOM = 0.8
# The template in unit crop coordinates (0..1 across the crop, continuous).
TEMPLATE = 0.5 + ((ARCFACE_112 + 0.5) / 112.0 - 0.5) * TEMPLATE_ZOOM


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity [[a, -b, tx], [b, a, ty]] that best maps points `src` [n, 2] onto
    `dst` [n, 2] in the least-squares sense (Umeyama's estimate without reflection; n >= 2).
    """
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if len(src) != len(dst) or len(src) < 2:
        raise ValueError(f'need >= 2 point pairs, got {len(src)} and {len(dst)}')
    x, y = src[:, 0], src[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    # u = a x - b y + tx ;  v = b x + a y + ty : linear in (a, b, tx, ty).
    design = np.concatenate(
        [np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)], axis=0
    )
    target = np.concatenate([dst[:, 0], dst[:, 1]])
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, target, rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def invert_similarity(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 similarity (or any invertible 2x3 affine) matrix."""
    linear = np.linalg.inv(matrix[:, :2])
    return np.concatenate([linear, -linear @ matrix[:, 2:]], axis=1)


def alignment_matrix(
    landmarks: np.ndarray, size: int = 256, template: np.ndarray = TEMPLATE
) -> np.ndarray:
    """The 2x3 similarity taking frame pixel-index coordinates to crop pixel-index
    coordinates for a `size` x `size` crop (template in unit crop coordinates)."""
    src = np.asarray(landmarks, np.float64).reshape(5, 2) + 0.5
    continuous = similarity_transform(src, np.asarray(template, np.float64) * size)
    # Pixel-index in and out: shift by half a pixel on both sides.
    shift_in = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1.0]])
    out = continuous @ shift_in
    out[:, 2] -= 0.5
    return out


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int = 256,
    *,
    template: np.ndarray = TEMPLATE,
) -> np.ndarray:
    """The aligned square crop, uint8 [size, size, 3]: `image` (uint8 [H, W, 3]) warped so
    that `landmarks` (float [5, 2], x y) land on `template`; outside the frame is black."""
    src = np.asarray(landmarks, np.float64).reshape(5, 2) + 0.5
    forward = similarity_transform(src, np.asarray(template, np.float64) * size)
    inverse = invert_similarity(forward)  # crop -> frame, continuous coordinates
    height, width = image.shape[:2]
    # Only the part of the frame the crop sees is resampled (a 4K frame costs a face).
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
    seen = corners @ inverse.T
    x0 = int(np.clip(np.floor(seen[:, 0].min()) - 2, 0, width))
    y0 = int(np.clip(np.floor(seen[:, 1].min()) - 2, 0, height))
    x1 = int(np.clip(np.ceil(seen[:, 0].max()) + 2, 0, width))
    y1 = int(np.clip(np.ceil(seen[:, 1].max()) + 2, 0, height))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((size, size, 3), np.uint8)
    region = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    # Bilinear sampling aliases when shrinking by more than 2x: box-reduce first, so each
    # output pixel still averages the frame pixels it covers.
    scale = float(np.hypot(forward[0, 0], forward[1, 0]))  # crop pixels per frame pixel
    factor = max(1, int(1.0 / scale)) if scale < 0.5 else 1
    if factor > 1:
        region = region.reduce(factor)
    a, b, c = inverse[0]
    d, e, f = inverse[1]
    data = (a / factor, b / factor, (c - x0) / factor, d / factor, e / factor, (f - y0) / factor)
    crop = region.transform(
        (size, size), Image.AFFINE, data, resample=Image.BILINEAR, fillcolor=(0, 0, 0)
    )
    return np.asarray(crop)
