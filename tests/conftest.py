"""Shared test set-up: one data cache and one XLA compilation cache per test run (shared by
the xdist workers and by the subprocesses tests start), and tiny on-disk datasets in the
raw layouts the data code reads."""

import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The suite runs on the CPU wherever it runs (a GPU host included), so its results and
# tolerances are those measured on the CPU. conftest is imported before any test module, so
# before jax; subprocesses inherit the setting (with their own XLA_FLAGS device count).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

RUN_DIR_ENV = 'FORMER_DFER_TEST_RUN_DIR'


def pytest_configure(config):
    # The controller makes the run's directory; xdist workers and the subprocesses that
    # tests start inherit it through the environment.
    if RUN_DIR_ENV not in os.environ:
        os.environ[RUN_DIR_ENV] = tempfile.mkdtemp(prefix='former_dfer_jax_tests_')
        config.owns_run_dir = True
    run_dir = os.environ[RUN_DIR_ENV]
    # Prepared datasets (the synthetic one above all) are built once per run, not per test.
    os.environ.setdefault('FORMER_DFER_CACHE', os.path.join(run_dir, 'data'))
    # Compiled XLA programs are reused across tests, workers and subprocesses: most test
    # time would otherwise go to compiling the same small models again.
    os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(run_dir, 'xla'))
    os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
    os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
    # The XLA flags the command-line tools set (a speed choice; results are the same).
    from former_dfer_jax import xla_flags

    xla_flags.set_xla_flags()


def pytest_unconfigure(config):
    if getattr(config, 'owns_run_dir', False):
        shutil.rmtree(os.environ.pop(RUN_DIR_ENV), ignore_errors=True)


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
    """A finished tiny training run (config, workdir, final state).

    Trained once per test run: the first xdist worker to ask trains it under a file lock,
    the others find it finished. Each worker gets its own copy of the workdir (and its
    final state restored from that copy, bitwise the trained one), so tests of different
    workers never share a workdir.
    """
    import fcntl

    from tests.tiny import train_tiny_run

    shared = os.path.join(os.environ[RUN_DIR_ENV], 'tiny_run')
    with open(f'{shared}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        train_tiny_run(shared)  # trains, or returns at once where it already finished
    workdir = str(tmp_path_factory.mktemp('tiny_run') / 'run')
    shutil.copytree(shared, workdir)
    return train_tiny_run(workdir)


@pytest.fixture(scope='session')
def own_run():
    """A finished 1-epoch run on an own dataset of 11 classes (`tiny.OWN_CLASS_NAMES`):
    (config, run dir). Trained once per test run, shared read-only by every test (copy it
    before writing into it)."""
    import fcntl

    from tests.tiny import own_config, train_own_run

    shared = os.path.join(os.environ[RUN_DIR_ENV], 'own_run')
    with open(f'{shared}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(shared, 'run', 'results.json')):
            shutil.rmtree(shared, ignore_errors=True)
            return train_own_run(shared)
    return own_config(os.path.join(shared, 'data')), os.path.join(shared, 'run')


FRAME_STEP = 4  # frame t of a fixture clip has red = FRAME_STEP * t (t < 64)


class RawData:
    """Writes tiny clips whose pixels tell which frame they are.

    Frame t of clip c: red = FRAME_STEP * t, green = 40 + 10 * (c % 20), blue a left-to-right
    ramp (so a flip is visible). JPEG keeps the flat red channel within a few levels.
    """

    @staticmethod
    def frame(t: int, clip: int, size: tuple[int, int] = (24, 24)) -> Image.Image:
        w, h = size
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[..., 0] = FRAME_STEP * t
        pixels[..., 1] = 40 + 10 * (clip % 20)
        pixels[..., 2] = np.linspace(0, 255, w).astype(np.uint8)[None, :]
        return Image.fromarray(pixels)

    @staticmethod
    def frame_of(video: np.ndarray) -> np.ndarray:
        """Frame numbers from a [..., H, W, 3] video in [0, 1] (mean red of each frame)."""
        red = video[..., 0].mean(axis=(-1, -2)) * 255.0
        return np.rint(red / FRAME_STEP).astype(int)

    def clip(self, directory: Path, num_frames: int, clip: int = 0, size=(24, 24)) -> Path:
        assert num_frames * FRAME_STEP <= 256, 'frame numbers are encoded in one byte'
        directory.mkdir(parents=True, exist_ok=True)
        for t in range(num_frames):  # DFEW names: <clip>_<t+1>.jpg, not zero-padded
            self.frame(t, clip, size).save(directory / f'{clip}_{t + 1}.jpg', quality=95)
        return directory

    def dfew(
        self,
        root: Path,
        clips: dict[int, tuple[int, int]],
        folds: dict[int, tuple[list[int], list[int]]],
        *,
        spelling: str = 'single-labeled',
        extra_level: bool = False,
        size=(24, 24),
    ) -> Path:
        """DFEW as distributed. clips: id -> (num_frames, label 0..6); folds: k -> (train, test)."""
        base = root / 'Clip' / 'clip_224x224'
        if extra_level:
            base = base / 'clip_224x224'
        for clip_id, (num_frames, _) in clips.items():
            self.clip(base / f'{clip_id:05d}', num_frames, clip_id, size)
        for fold, (train, test) in folds.items():
            for split, ids in (('train', train), ('test', test)):
                folder = root / 'EmoLabel_DataSplit' / f'{split}({spelling})'
                folder.mkdir(parents=True, exist_ok=True)
                with open(folder / f'set_{fold}.csv', 'w', newline='') as f:
                    writer = csv.writer(f)
                    writer.writerow(['video_name', 'label'])
                    writer.writerows([i, clips[i][1] + 1] for i in ids)
        return root

    @staticmethod
    def clip_dir(root: Path, clip_id: int) -> Path:
        return root / 'Clip' / 'clip_224x224' / f'{clip_id:05d}'


@pytest.fixture(scope='session')
def raw_data() -> RawData:
    return RawData()
