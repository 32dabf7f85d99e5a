"""The frame sampling rule: known index sets worked by hand, and its invariants."""

import numpy as np
import pytest

from former_dfer_jax.data import sampling


def pairs(*starts, n):
    """Frames of V=2 segments starting at `starts`, clamped to the last frame n-1."""
    return [min(p + j, n - 1) for p in starts for j in range(2)]


# Eval offsets worked by hand from the reference: tick = (N - V + 1) / U,
# p_i = int(tick / 2 + tick * i) when N > U + V - 1, else 0. U = 8, V = 2.
EVAL_CASES = {
    1: pairs(0, 0, 0, 0, 0, 0, 0, 0, n=1),  # a single frame, repeated
    5: pairs(0, 0, 0, 0, 0, 0, 0, 0, n=5),  # N < U: [0, 1] eight times
    8: pairs(0, 0, 0, 0, 0, 0, 0, 0, n=8),  # N = U
    9: pairs(0, 0, 0, 0, 0, 0, 0, 0, n=9),  # N = U + V - 1: still the short-clip branch
    10: pairs(0, 1, 2, 3, 5, 6, 7, 8, n=10),  # tick 9/8: int(0.5625 + 1.125 i)
    16: pairs(0, 2, 4, 6, 8, 10, 12, 14, n=16),  # tick 15/8
    100: pairs(6, 18, 30, 43, 55, 68, 80, 92, n=100),  # tick 99/8 = 12.375
}


@pytest.mark.parametrize('n', sorted(EVAL_CASES))
def test_eval_indices_match_hand_worked_sets(n):
    got = sampling.sample_frame_indices(n, 8, 2, train=False)
    assert got.tolist() == EVAL_CASES[n]


@pytest.mark.parametrize(
    ('n', 'u', 'expected'),
    [
        # avg = (N - V + 1) // U = 1: one choice per segment, u does not matter.
        (16, np.full(8, 0.99), pairs(0, 1, 2, 3, 4, 5, 6, 7, n=16)),
        (9, np.full(8, 0.5), pairs(0, 1, 2, 3, 4, 5, 6, 7, n=9)),
        # avg = 99 // 8 = 12: p_i = 12 i + floor(12 u_i).
        (100, np.zeros(8), pairs(0, 12, 24, 36, 48, 60, 72, 84, n=100)),
        (100, np.full(8, 0.9999), pairs(11, 23, 35, 47, 59, 71, 83, 95, n=100)),
        (100, np.arange(8) / 8, pairs(0, 13, 27, 40, 54, 67, 81, 94, n=100)),
        # avg = 0 and N <= U: every segment starts at frame 0.
        (8, np.full(8, 0.7), pairs(0, 0, 0, 0, 0, 0, 0, 0, n=8)),
        (1, np.full(8, 0.7), [0] * 16),
    ],
)
def test_train_indices_match_hand_worked_sets(n, u, expected):
    assert sampling.sample_frame_indices(n, 8, 2, train=True, u=u).tolist() == expected


def test_train_short_clip_branch_draws_sorted_starts():
    # U = 4, V = 4, N = 6: avg = 3 // 4 = 0 and N > U -> sorted starts in [0, N - V].
    u = np.array([0.9, 0.1, 0.5, 0.0])
    offsets = sampling.train_offsets(6, 4, 4, u=u)
    assert offsets.tolist() == [0, 0, 1, 2]  # floor(3 u) = [2, 0, 1, 0], sorted
    indices = sampling.sample_frame_indices(6, 4, 4, train=True, u=u)
    assert indices.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5]


def test_train_offsets_stay_in_their_segments():
    rng = np.random.default_rng(0)
    for n in range(17, 300, 7):
        avg = (n - 1) // 8
        for _ in range(20):
            offsets = sampling.train_offsets(n, 8, 2, rng=rng)
            segment = np.arange(8) * avg
            assert np.all(offsets >= segment) and np.all(offsets < segment + avg)
            assert offsets.max() + 1 <= n - 1  # both frames of the last pair exist


def test_draws_cover_the_whole_segment_range():
    rng = np.random.default_rng(1)
    seen = {int(sampling.train_offsets(100, 8, 2, rng=rng)[0]) for _ in range(2000)}
    assert seen == set(range(12))


def test_wrong_number_of_draws_is_an_error():
    with pytest.raises(ValueError, match='expected 8 uniforms'):
        sampling.train_offsets(50, 8, 2, u=np.zeros(7))
    with pytest.raises(ValueError, match='at least one frame'):
        sampling.sample_frame_indices(0, 8, 2, train=False)


@pytest.mark.parametrize(('segments', 'length'), [(8, 2), (4, 4), (3, 1), (2, 6), (16, 1)])
def test_indices_are_valid_for_every_length(segments, length):
    rng = np.random.default_rng(segments * 10 + length)
    for n in range(1, 200):
        for train in (True, False):
            idx = sampling.sample_frame_indices(n, segments, length, train=train, rng=rng)
            assert idx.shape == (segments * length,)
            assert idx.min() >= 0 and idx.max() <= n - 1
            runs = idx.reshape(segments, length)
            # V consecutive frames from each start, the last one repeated past the end.
            np.testing.assert_array_equal(runs, np.minimum(runs[:, :1] + np.arange(length), n - 1))
            assert np.all(np.diff(runs[:, 0]) >= 0)  # starts never go back in time
