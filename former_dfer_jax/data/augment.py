"""Per-clip augmentation: the random crop window (numpy) and the TF decode/resize/flip.

Train, as the reference's GroupRandomSizedCrop + GroupRandomHorizontalFlip: one crop
window and one flip decision per clip, shared by all its frames.
- Up to 10 tries: area fraction ~ U(0.08, 1), aspect ~ U(3/4, 4/3), w = round(sqrt(A*r)),
  h = round(sqrt(A/r)), swapped with p = 0.5; the first window that fits is placed
  uniformly. If none fits, the reference's fallback: resize the shorter side to the output
  size and take a random square crop, i.e. a random min(H, W) square of the frame.
  (torchvision's RandomResizedCrop falls back to a centre crop instead; for square frames,
  as DFEW's, both are the whole frame.)
- Only the window is decoded (tf.io.decode_and_crop_jpeg), resized bilinearly to
  image_size x image_size (within 1 level of PIL's BILINEAR, which the reference uses) and
  flipped horizontally with p = 0.5.
Eval: every frame resized to image_size x image_size (aspect not kept).
Output: float32 [T, S, S, 3] in [0, 1]: rounded to whole levels as PIL's uint8 output, /255.

The window and flip are drawn in numpy at the index level, like the sampled frames, from
draws keyed by (seed, epoch, clip): see pipeline.py.
"""

import math

import numpy as np
import tensorflow as tf

from former_dfer_jax.data.frames import DCT_METHOD

CROP_TRIES = 10
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
CROP_DRAWS = 5 * CROP_TRIES + 2  # per try: area, aspect, swap, x, y; fallback: x, y


def random_crop_window(
    height: int, width: int, draws: np.ndarray, area_range: tuple[float, float] = AREA_RANGE
) -> tuple[int, int, int, int]:
    """(y, x, h, w) of the reference's random-sized crop, from CROP_DRAWS uniforms in [0, 1).

    `area_range` is the crop's fraction of the frame area (the reference's 0.08..1).
    """
    tries = np.asarray(draws[: 5 * CROP_TRIES], np.float64).reshape(CROP_TRIES, 5)
    for u_area, u_aspect, u_swap, u_x, u_y in tries:
        area = height * width * (area_range[0] + (area_range[1] - area_range[0]) * u_area)
        aspect = ASPECT_RANGE[0] + (ASPECT_RANGE[1] - ASPECT_RANGE[0]) * u_aspect
        w = round(math.sqrt(area * aspect))
        h = round(math.sqrt(area / aspect))
        if u_swap < 0.5:
            w, h = h, w
        if 1 <= w <= width and 1 <= h <= height:
            return int(u_y * (height - h + 1)), int(u_x * (width - w + 1)), h, w
    side = min(height, width)
    x = int(draws[5 * CROP_TRIES] * (width - side + 1))
    y = int(draws[5 * CROP_TRIES + 1] * (height - side + 1))
    return y, x, side, side


def _resize(video: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 [T, h, w, 3] -> float32 [T, S, S, 3] in [0, 1], as PIL's BILINEAR then /255.

    Shrinking needs the antialiased (widened triangle) filter, as PIL's; enlarging is plain
    half-pixel bilinear, which TF's non-antialiased kernel computes 3x faster than its
    antialiased one (the two agree then: the filter is not widened). Values are rounded to
    whole levels as PIL's uint8 output is (within 1 level of PIL's), then scaled to [0, 1].
    """
    size = [image_size, image_size]
    shape = tf.shape(video)
    same = (shape[1] == image_size) & (shape[2] == image_size)
    enlarging = (shape[1] <= image_size) & (shape[2] <= image_size)
    video = tf.case(
        [
            (same, lambda: tf.cast(video, tf.float32)),  # e.g. frames stored at image_size
            (enlarging, lambda: tf.image.resize(video, size, 'bilinear', antialias=False)),
        ],
        default=lambda: tf.image.resize(video, size, 'bilinear', antialias=True),
        exclusive=False,
    )
    # The triangle filter has no negative lobes: no clipping needed.
    return tf.round(video) * (1.0 / 255.0)


def train_clip(
    encoded: tf.Tensor, window: tf.Tensor, flip: tf.Tensor, image_size: int
) -> tf.Tensor:
    """Encoded JPEG frames [T] (static T), window [y, x, h, w], flip -> float32 [T, S, S, 3]."""
    frames = [
        tf.io.decode_and_crop_jpeg(encoded[t], window, channels=3, dct_method=DCT_METHOD)
        for t in range(encoded.shape[0])
    ]
    video = tf.stack(frames)
    # Flipping commutes with the (symmetric) resize; flip the smaller uint8 crop.
    video = tf.cond(flip, lambda: tf.reverse(video, axis=[2]), lambda: video)
    return _resize(video, image_size)


def eval_clip(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded JPEG frames [T] (static T) -> resized float32 [T, S, S, 3] in [0, 1]."""
    frames = [
        tf.io.decode_jpeg(encoded[t], channels=3, dct_method=DCT_METHOD)
        for t in range(encoded.shape[0])
    ]
    return _resize(tf.stack(frames), image_size)
