"""Which frames of a clip are fed to the model: the reference's dynamic sampling rule.

A clip of N frames is split into U = num_segments segments; from each, V = segment_length
consecutive frames are taken, starting at an offset p (frames p, p+1, ..., p+V-1, each
clamped to the last frame N-1, which is how the reference repeats the last frame of a
short clip). Offsets:

- train: avg = (N - V + 1) // U.
  avg > 0:  p_i = i * avg + randint(avg)              (i = 0..U-1)
  N > U:    p = sorted(U draws of randint(N - V + 1))  (the range is clamped to >= 1, so a
            clip with U < N < V, possible only when V > U + 1, samples from frame 0)
  else:     p = 0 for every segment
- test:  N > U + V - 1: tick = (N - V + 1) / U, p_i = int(tick / 2 + tick * i); else 0.

The rule lives here once, in numpy, and the input pipeline runs this very code: it picks
every clip's frame indices at the index level, before any record is read, and hands
them to tf.data. (A TensorFlow twin would have to reproduce the float64 arithmetic of the
test rule exactly, and graph optimisations such as x / U -> x * (1 / U) break that.)
The train draws are U uniforms in [0, 1), turned into integers as floor(u * range).
"""

import numpy as np


def _as_draws(num_segments: int, u: np.ndarray | None, rng: np.random.Generator | None):
    if u is None:
        rng = rng if rng is not None else np.random.default_rng()
        u = rng.random(num_segments)
    u = np.asarray(u, dtype=np.float64)
    if u.shape != (num_segments,):
        raise ValueError(f'expected {num_segments} uniforms, got shape {u.shape}')
    return u


def _randint(u: np.ndarray, high: int) -> np.ndarray:
    """Uniform integers in [0, high) from uniforms in [0, 1); the clamp guards u*high == high."""
    return np.minimum(np.floor(u * high), high - 1).astype(np.int64)


def train_offsets(
    num_frames: int,
    num_segments: int,
    segment_length: int,
    *,
    u: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Segment start offsets [U] for training (random within segments).

    `u` are the U uniform draws in [0, 1) (from `rng` if not given).
    """
    n, U, V = int(num_frames), int(num_segments), int(segment_length)
    u = _as_draws(U, u, rng)
    avg = (n - V + 1) // U
    if avg > 0:
        return np.arange(U, dtype=np.int64) * avg + _randint(u, avg)
    if n > U:
        return np.sort(_randint(u, max(n - V + 1, 1)))
    return np.zeros(U, dtype=np.int64)


def eval_offsets(num_frames: int, num_segments: int, segment_length: int) -> np.ndarray:
    """Segment start offsets [U] for evaluation (the middle of each segment)."""
    n, U, V = int(num_frames), int(num_segments), int(segment_length)
    if n > U + V - 1:
        tick = (n - V + 1) / float(U)
        return np.array([int(tick / 2.0 + tick * i) for i in range(U)], dtype=np.int64)
    return np.zeros(U, dtype=np.int64)


def frames_from_offsets(offsets: np.ndarray, num_frames: int, segment_length: int) -> np.ndarray:
    """Frame indices [U * V]: V consecutive frames per offset, clamped to the last frame."""
    steps = np.arange(segment_length, dtype=np.int64)
    idx = np.asarray(offsets, dtype=np.int64)[:, None] + steps[None, :]
    return np.minimum(idx, int(num_frames) - 1).reshape(-1)


def sample_frame_indices(
    num_frames: int,
    num_segments: int,
    segment_length: int,
    *,
    train: bool,
    u: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Indices [U * V] of the frames the model sees (numpy; the specification)."""
    if num_frames < 1:
        raise ValueError(f'a clip needs at least one frame, got {num_frames}')
    if train:
        offsets = train_offsets(num_frames, num_segments, segment_length, u=u, rng=rng)
    else:
        offsets = eval_offsets(num_frames, num_segments, segment_length)
    return frames_from_offsets(offsets, num_frames, segment_length)
