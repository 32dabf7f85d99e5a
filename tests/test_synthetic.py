"""The synthetic DFEW-format dataset: layout, splits, determinism, dynamics, robustness."""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from former_dfer_jax.data import synthetic_dataset
from former_dfer_jax.data import synthetic_faces as faces

# Tiny sets keep the whole module at a few seconds on 2 cores.
TINY = dict(num_clips=35, image_size=24, seed=3, min_frames=6, max_frames=12)
CLASSES = {name: i for i, name in enumerate(synthetic_dataset.CLASS_NAMES)}


def read_split(root: Path, fold: int, split: str) -> dict[int, int]:
    """video_name -> label (1..7) of one CSV, checking the exact header and formatting."""
    with open(synthetic_dataset.split_path(root, fold, split), newline='') as f:
        lines = f.read().split('\n')
    assert lines[0] == 'video_name,label'
    assert lines[-1] == ''
    rows = {}
    for line in lines[1:-1]:
        name, label = line.split(',')
        assert name == str(int(name)), 'video_name is a plain integer, not zero-padded'
        assert label in {'1', '2', '3', '4', '5', '6', '7'}
        rows[int(name)] = int(label)
    return rows


def all_labels(root: Path) -> dict[int, int]:
    """video_name -> label 0..6, from fold 1's train + test."""
    rows = {**read_split(root, 1, 'train'), **read_split(root, 1, 'test')}
    return {i: label - 1 for i, label in rows.items()}


def read_clip(root: Path, clip_id: int, mode: str = 'RGB') -> np.ndarray:
    folder = root / 'Clip' / 'clip_224x224' / f'{clip_id:05d}'
    n = len(os.listdir(folder))
    frames = [Image.open(folder / f'{clip_id:05d}_{t}.jpg').convert(mode) for t in range(1, n + 1)]
    return np.stack([np.asarray(f, np.float32) for f in frames])


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()
    }


@pytest.fixture(scope='module')
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('synthetic') / 'dfew'
    synthetic_dataset.generate_dataset(root, **TINY, num_workers=1)
    return root


# ---- Layout and splits ---------------------------------------------------------------------


def test_layout_is_dfews(tiny: Path):
    assert synthetic_dataset.is_complete(tiny)
    assert sorted(os.listdir(tiny)) == ['Clip', 'EmoLabel_DataSplit', 'synthetic_dataset.json']
    clips = tiny / 'Clip' / 'clip_224x224'
    assert sorted(os.listdir(clips)) == [f'{i:05d}' for i in range(1, 36)]
    for clip_id in (1, 17, 35):
        names = os.listdir(clips / f'{clip_id:05d}')
        n = len(names)
        # "x_y.jpg": x the 5-digit clip id, y = 1..n not zero-padded.
        assert sorted(names) == sorted(f'{clip_id:05d}_{t}.jpg' for t in range(1, n + 1))
        with Image.open(clips / f'{clip_id:05d}' / f'{clip_id:05d}_{n}.jpg') as image:
            assert (image.format, image.mode, image.size) == ('JPEG', 'RGB', (24, 24))
    splits = tiny / 'EmoLabel_DataSplit'
    assert sorted(os.listdir(splits)) == ['test(single-labeled)', 'train(single-labeled)']
    for split in os.listdir(splits):
        assert sorted(os.listdir(splits / split)) == [f'set_{k}.csv' for k in range(1, 6)]


def test_five_folds_partition_the_clips_stratified(tiny: Path):
    ids = set(range(1, 36))
    labels = all_labels(tiny)
    tested = []
    for fold in range(1, 6):
        train = read_split(tiny, fold, 'train')
        test = read_split(tiny, fold, 'test')
        assert not set(train) & set(test)
        assert set(train) | set(test) == ids
        assert {i: v - 1 for i, v in {**train, **test}.items()} == labels  # same labels
        assert set(test.values()) == set(range(1, 8)), 'every class in every fold test split'
        tested += list(test)
    assert sorted(tested) == sorted(ids), 'each clip in exactly one test split'
    # Balanced classes: 35 clips = 5 per class, so exactly one per class per test split.
    assert np.bincount(list(labels.values())).tolist() == [5] * 7


def test_frame_counts_within_bounds_and_varied(tiny: Path):
    clips = tiny / 'Clip' / 'clip_224x224'
    counts = [len(os.listdir(clips / d)) for d in os.listdir(clips)]
    assert min(counts) >= TINY['min_frames'] and max(counts) <= TINY['max_frames']
    assert len(set(counts)) >= 3
    _, lengths, _ = synthetic_dataset.plan_dataset(
        num_clips=5000, seed=0, min_frames=12, max_frames=48, imbalance=False
    )
    assert lengths.min() >= 12 and lengths.max() == 48
    # DFEW-like: right-skewed, most clips in the lower half of the range.
    assert np.median(lengths) < lengths.mean() < 30


def test_imbalance_follows_dfew_frequencies(tmp_path: Path):
    balanced = synthetic_dataset.class_counts(700, imbalance=False)
    skewed = synthetic_dataset.class_counts(700, imbalance=True)
    assert balanced == [100] * 7
    assert sum(skewed) == 700 and min(skewed) >= 5
    order = np.argsort(skewed)[::-1]
    assert set(order[:2]) == {CLASSES['neutral'], CLASSES['happiness']}
    assert order[-1] == CLASSES['disgust']
    frequencies = np.asarray(synthetic_dataset.class_counts(5000, imbalance=True)) / 5000
    np.testing.assert_allclose(frequencies, synthetic_dataset.DFEW_CLASS_FREQUENCIES, atol=0.01)
    # The rare class still has a clip in every fold's test split, and the files follow.
    root = tmp_path / 'imbalanced'
    params = dict(TINY, num_clips=70, image_size=16, min_frames=2, max_frames=3)
    synthetic_dataset.generate_dataset(root, **params, imbalance=True, num_workers=1)
    labels = all_labels(root)
    assert np.bincount(list(labels.values())).tolist() == synthetic_dataset.class_counts(70, True)
    for fold in range(1, 6):
        assert set(read_split(root, fold, 'test').values()) == set(range(1, 8))


# ---- Determinism -----------------------------------------------------------------------------


def test_same_arguments_give_identical_bytes_other_seed_differs(tiny: Path, tmp_path: Path):
    again = tmp_path / 'again'
    synthetic_dataset.generate_dataset(again, **TINY, num_workers=2)  # worker count is irrelevant
    assert tree_bytes(again) == tree_bytes(tiny)
    other = tmp_path / 'other'
    synthetic_dataset.generate_dataset(other, **dict(TINY, seed=4), num_workers=1)
    a, b = tree_bytes(tiny), tree_bytes(other)
    assert all_labels(tiny) != all_labels(other)
    assert sum(a[k] != b[k] for k in a.keys() & b.keys() if k.endswith('_1.jpg')) == 35


def test_existing_complete_dataset_is_reused_or_replaced(tmp_path: Path):
    root = tmp_path / 'data'
    params = dict(TINY, image_size=16, min_frames=2, max_frames=3)
    synthetic_dataset.generate_dataset(root, **params, num_workers=1)
    marker = root / synthetic_dataset.MARKER
    stamp = marker.stat().st_mtime_ns
    synthetic_dataset.generate_dataset(root, **params, num_workers=1)
    assert marker.stat().st_mtime_ns == stamp, 'same parameters: nothing rewritten'
    synthetic_dataset.generate_dataset(root, **dict(params, seed=9), num_workers=1)
    assert synthetic_dataset.read_info(root)['params']['seed'] == 9
    assert synthetic_dataset.is_complete(root)
    assert sorted(os.listdir(tmp_path)) == ['data'], 'no temporary directories left behind'


# ---- The classes are in the dynamics ---------------------------------------------------------


def test_surprise_and_fear_differ_only_in_temporal_order():
    for seed in range(20):
        n = 12 + seed
        surprise = faces.expression_curves(faces.SURPRISE, n, np.random.default_rng(seed))
        fear = faces.expression_curves(faces.FEAR, n, np.random.default_rng(seed))
        # Fear is surprise played backwards: the same multiset of per-frame parameters ...
        np.testing.assert_array_equal(fear, surprise[::-1])
        np.testing.assert_array_equal(np.sort(fear, axis=0), np.sort(surprise, axis=0))
        # ... in a different order: brows up first in surprise, jaw drop first in fear.
        t = np.arange(n)
        brow, jaw = faces.CHANNELS.index('brow_raise'), faces.CHANNELS.index('jaw_drop')
        for curves, brow_first in ((surprise, True), (fear, False)):
            center = (t @ curves[:, [brow, jaw]]) / curves[:, [brow, jaw]].sum(0)
            assert (center[0] < center[1]) == brow_first
    # Identity and nuisances do not depend on the class; they come from the clip's seed.
    a = faces.sample_clip(faces.SURPRISE, 30, seed=0, clip_id=5)
    b = faces.sample_clip(faces.FEAR, 30, seed=0, clip_id=5)
    assert a.identity == b.identity
    np.testing.assert_array_equal(a.nuisance.yaw, b.nuisance.yaw)
    np.testing.assert_array_equal(a.nuisance.gain, b.nuisance.gain)


def test_without_nuisances_a_fear_clip_is_the_surprise_clip_reversed():
    # A time-blind model sees exactly the same set of frames for the two classes.
    a = faces.sample_clip(faces.SURPRISE, 20, seed=1, clip_id=2, difficulty=0.0)
    b = faces.sample_clip(faces.FEAR, 20, seed=1, clip_id=2, difficulty=0.0)
    surprise = np.stack(list(faces.render_clip(a, 32)))
    fear = np.stack(list(faces.render_clip(b, 32)))
    np.testing.assert_array_equal(fear, surprise[::-1])
    assert np.abs(fear.astype(int) - surprise.astype(int)).max() > 100  # not a static clip


def _expression_energy(label: int, clip_id: int, rows: slice) -> np.ndarray:
    """Per-frame pixel change, in `rows`, against the same clip made neutral."""
    frames = [
        np.stack(list(faces.render_clip(faces.sample_clip(c, 24, seed=2, clip_id=clip_id), 48)))
        for c in (label, faces.NEUTRAL)
    ]
    return np.abs(frames[0][:, rows].astype(float) - frames[1][:, rows]).mean(axis=(1, 2, 3))


def test_rendered_event_order_surprise_vs_fear():
    # With the default nuisances: the brows move before the mouth in surprise, after in fear.
    brow_rows, mouth_rows = slice(10, 24), slice(30, 46)
    t = np.arange(24)
    for clip_id in range(4):
        for label, brow_first in ((faces.SURPRISE, True), (faces.FEAR, False)):
            brow = _expression_energy(label, clip_id, brow_rows)
            mouth = _expression_energy(label, clip_id, mouth_rows)
            assert ((t @ brow) / brow.sum() < (t @ mouth) / mouth.sum()) == brow_first


def test_classes_are_visible_in_the_frames(tmp_path: Path):
    # Read back from the files: the per-pixel range over time (95th percentile over a region)
    # of the brow and mouth regions is far above neutral's for the classes that move them.
    root = tmp_path / 'plain'
    size = 32
    synthetic_dataset.generate_dataset(
        root, num_clips=70, image_size=size, seed=1, min_frames=12, max_frames=16, difficulty=0.0
    )
    regions = {'brow': slice(8, 16), 'mouth': slice(20, 30)}
    cols = slice(6, 26)
    stats = {name: np.zeros(7) for name in regions}
    for clip_id, label in all_labels(root).items():
        frames = read_clip(root, clip_id, 'L')
        for name, rows in regions.items():
            spread = np.ptp(frames[:, rows, cols], axis=0)
            stats[name][label] += np.percentile(spread, 95) / 10  # 10 clips per class
    brow, mouth = stats['brow'], stats['mouth']
    neutral = CLASSES['neutral']
    for name in ('happiness', 'disgust', 'surprise', 'fear'):
        assert mouth[CLASSES[name]] > 2.5 * mouth[neutral], (name, mouth)
    for name in ('sadness', 'anger', 'surprise', 'fear'):
        assert brow[CLASSES[name]] > 2.0 * brow[neutral], (name, brow)


# ---- Ground truth for explanations ------------------------------------------------------------

# sha256 of the frames (uint8, in order) of clips drawn before the masks existed: drawing the
# ground truth must not change a pixel. Clip 1 has a bar occluder, clip 8 a hand.
FRAMES_SHA256 = {
    (1, 1, 1.0, 32): 'fda0a3b1b2c4039caf25f4de2321ccc40e22acdaced024c5c75c4e91d760f273',
    (8, 1, 1.0, 32): 'e0424c057bcb3e4f1e7dd77dc1ee67ff9ab39b4a177a742f3929ed82e219ad11',
    (3, 4, 0.0, 24): 'f5a6b336181dce3c85423acd46a205e730952848ce34fe0132ad0fc059b77113',
}


def _frames_sha256(clip: faces.Clip, size: int) -> str:
    return hashlib.sha256(np.stack(list(faces.render_clip(clip, size))).tobytes()).hexdigest()


def test_masks_leave_the_frames_unchanged():
    for (clip_id, label, difficulty, size), expected in FRAMES_SHA256.items():
        clip = faces.sample_clip(label, 14, seed=0, clip_id=clip_id, difficulty=difficulty)
        masks = list(faces.render_masks(clip, size))  # drawn first: shares caches, not state
        assert len(masks) == 14
        assert _frames_sha256(clip, size) == expected


def test_masks_show_the_face_its_features_and_the_occluder():
    size = 32
    for clip_id in (1, 8):  # a bar, a hand
        clip = faces.sample_clip(1, 14, seed=0, clip_id=clip_id)
        masks = list(faces.render_masks(clip, size))
        frames = np.stack(list(faces.render_clip(clip, size))).astype(int)
        unoccluded = dataclasses.replace(
            clip, nuisance=dataclasses.replace(clip.nuisance, occluded=np.zeros(14, bool))
        )
        plain = np.stack(list(faces.render_clip(unoccluded, size))).astype(int)
        occluded = clip.nuisance.occluded
        assert 0 < occluded.sum() < 14
        for t, m in enumerate(masks):
            assert set(m) == set(faces.MASK_NAMES)
            for value in m.values():
                assert value.shape == (size, size) and value.dtype == np.float32
                assert value.min() >= 0 and value.max() <= 1
            face, features, occluder = m['face'], m['features'], m['occluder']
            assert 0.2 < face.mean() < 0.6  # the face fills a good part of the frame
            assert (features * face).sum() > 0.97 * features.sum()  # features on the face
            assert 0.03 < features.mean() < 0.5 * face.mean()
            changed = np.any(frames[t] != plain[t], axis=-1)
            assert (occluder.max() > 0) == occluded[t]
            # The occluder is drawn exactly where its mask is: nothing changes outside,
            # and (its colour being unlike what it hides) most of its inside changes.
            assert not changed[occluder == 0].any()
            if occluded[t]:
                assert changed[occluder == 1].mean() > 0.8


def test_clip_masks_are_those_of_the_written_clips(tiny: Path):
    params = synthetic_dataset.read_info(tiny)['params']
    for clip_id in (1, 2, 3):
        clip = synthetic_dataset.dataset_clip(params, clip_id)
        drawn = np.stack(list(faces.render_clip(clip, params['image_size']))).astype(np.float32)
        written = read_clip(tiny, clip_id)
        assert drawn.shape == written.shape
        # JPEG's loss only: measured 3.9-4.6 grey levels on clips 1-5 (another clip: 44-78).
        assert np.abs(drawn - written).mean() < 8
        masks = synthetic_dataset.clip_masks(params, clip_id, frames=[0, len(written) - 1])
        assert {k: v.shape for k, v in masks.items()} == {
            name: (2, params['image_size'], params['image_size']) for name in faces.MASK_NAMES
        }
        last = list(faces.render_masks(clip, params['image_size']))[-1]
        np.testing.assert_array_equal(masks['features'][1], last['features'])


# ---- Bad arguments, interruptions, the command line -------------------------------------------


@pytest.mark.parametrize(
    'change, message',
    [
        (dict(num_clips=34), 'num_clips'),
        (dict(image_size=15), 'image_size'),
        (dict(min_frames=13, max_frames=12), 'min_frames'),
        (dict(min_frames=1), 'min_frames'),
        (dict(difficulty=2.5), 'difficulty'),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path: Path, change: dict, message: str):
    with pytest.raises(ValueError, match=message):
        synthetic_dataset.generate_dataset(tmp_path / 'out', **dict(TINY, **change))
    assert os.listdir(tmp_path) == []


def test_refuses_to_write_into_foreign_directories(tmp_path: Path):
    foreign = tmp_path / 'mine'
    foreign.mkdir()
    (foreign / 'thesis.tex').write_text('precious')
    with pytest.raises(FileExistsError, match='not a synthetic dataset'):
        synthetic_dataset.generate_dataset(foreign, **TINY)
    assert os.listdir(foreign) == ['thesis.tex']
    (tmp_path / 'file').write_text('x')
    with pytest.raises(FileExistsError, match='not a directory'):
        synthetic_dataset.generate_dataset(tmp_path / 'file', **TINY)
    assert sorted(os.listdir(tmp_path)) == ['file', 'mine']
    # An empty directory is fine (e.g. made by mktemp -d).
    empty = tmp_path / 'empty'
    empty.mkdir()
    synthetic_dataset.generate_dataset(
        empty, **dict(TINY, image_size=16, min_frames=2, max_frames=3)
    )
    assert synthetic_dataset.is_complete(empty)


def test_failed_generation_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch):
    root = tmp_path / 'data'
    write_clip = synthetic_dataset._write_clip

    def failing(task):
        if task[1] == 20:
            raise RuntimeError('disk full')
        return write_clip(task)

    monkeypatch.setattr(synthetic_dataset, '_write_clip', failing)
    with pytest.raises(RuntimeError, match='disk full'):
        synthetic_dataset.generate_dataset(root, **TINY, num_workers=1)
    assert not synthetic_dataset.is_complete(root)
    assert os.listdir(tmp_path) == [], 'the partial tree is removed'


SLOW = dict(num_clips=35, image_size=16, seed=0, min_frames=8, max_frames=12, num_workers=1)


def _generate_and_hang(root: str) -> None:
    write_clip = synthetic_dataset._write_clip

    def hanging(task):
        if task[1] == 4:
            time.sleep(120)  # killed here, after 3 clips
        return write_clip(task)

    synthetic_dataset._write_clip = hanging
    synthetic_dataset.generate_dataset(root, **SLOW)


def test_killed_generation_is_detected_and_redone(tmp_path: Path):
    root = tmp_path / 'data'
    # fork: the child needs nothing but numpy / PIL and must start fast.
    child = multiprocessing.get_context('fork').Process(target=_generate_and_hang, args=(root,))
    child.start()
    deadline = time.monotonic() + 60
    partial = []
    while not partial and time.monotonic() < deadline:
        time.sleep(0.05)
        partial = [p for p in tmp_path.iterdir() if p.name.startswith('.data.partial-')]
        partial = [p for p in partial if (p / 'Clip' / 'clip_224x224' / '00003').exists()]
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert partial, 'the generation did not start'
    assert not synthetic_dataset.is_complete(root) and not root.exists()
    # The next run removes the dead run's leftovers (and only those) and finishes.
    (tmp_path / '.data.partial-not-ours').mkdir()
    synthetic_dataset.generate_dataset(root, **SLOW)
    assert synthetic_dataset.is_complete(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['.data.partial-not-ours', 'data']


def test_command_line(tmp_path: Path):
    out = tmp_path / 'cli'
    args = ['--num_clips=35', '--image_size=16', '--min_frames=2', '--max_frames=3']
    result = subprocess.run(
        [sys.executable, '-m', 'former_dfer_jax.data.synthetic', f'--output={out}', *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert synthetic_dataset.is_complete(out)
    assert synthetic_dataset.read_info(out)['params']['num_clips'] == 35
