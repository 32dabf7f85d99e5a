"""A synthetic dataset in DFEW's on-disk layout: procedural faces whose class is their dynamics.

`generate_dataset(DIR, ...)` (or `python -m former_dfer_jax.data.synthetic --output=DIR`)
writes

    DIR/Clip/clip_224x224/00001/00001_1.jpg ... 00001_<n>.jpg     (RGB JPEG, image_size^2)
    DIR/EmoLabel_DataSplit/train(single-labeled)/set_{1..5}.csv   (header video_name,label)
    DIR/EmoLabel_DataSplit/test(single-labeled)/set_{1..5}.csv
    DIR/synthetic_dataset.json                                    (parameters; written last)

Labels are DFEW's (1..7 in the CSVs, 0..6 in `CLASS_NAMES`). Each clip is in the test split of
exactly one fold and in the train split of the other four, stratified by class. The same
arguments give byte-identical files, whatever the number of workers.

Classes: every clip shows a randomly drawn face (shape, skin tone, eye spacing, brows, mouth
width, hair, glasses, background) and the same class-independent nuisances: head translation and
in-plane rotation over time, non-frontal pose (yaw), blinks, an occluding bar or hand in a short
window of some clips, brightness / contrast drift, a side-light gradient, colour cast, noise.
The class is only in how action-unit-like channels (see `synthetic_faces.CHANNELS`) evolve over
the clip. Single-event classes have one onset -> apex -> offset event (phases are fractions of
the clip, randomly jittered; the apex covers roughly its middle third or more):

    1 happiness  lip corners up and out (smile, teeth shown), cheek raise narrowing the eyes
    2 sadness    inner brows up (oblique brows), lip corners down
    3 neutral    no event: only the nuisances and a tiny idle wobble shared by all classes
    4 anger      brows down and drawn together (glabella furrows), lips pressed thin, lids tight
    6 disgust    nose wrinkle, upper lip raised (upper teeth shown), brows slightly lowered
    5 surprise   event A (brows up + eyes wide) early in the clip, then event B (jaw drop)
    7 fear       the same two events in the reverse order: jaw drop first, then brows up

Surprise and fear differ ONLY in temporal order (`TEMPORAL_PAIR`): fear's per-frame expression
parameters are surprise's played backwards, and every nuisance has a time-symmetric
distribution, so the unordered set of frames of a clip has the same distribution for both.
A model that ignores frame order cannot separate them (at best 6/7 of balanced classes).

`difficulty` scales every nuisance: 0 = frontal, static, evenly lit, unoccluded faces;
1 = the default; up to 2.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import multiprocessing
import operator
import os
import shutil
import socket
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from former_dfer_jax import files
from former_dfer_jax.data import synthetic_faces

CLASS_NAMES = ('happiness', 'sadness', 'neutral', 'anger', 'surprise', 'disgust', 'fear')
# The pair of classes that differ only in the order of the same facial events.
TEMPORAL_PAIR = ('surprise', 'fear')
# DFEW's single-labelled class frequencies (11,697 clips of the reference annotation lists).
DFEW_CLASS_FREQUENCIES = (0.209, 0.162, 0.228, 0.186, 0.126, 0.012, 0.077)
NUM_FOLDS = 5
MIN_CLIPS = NUM_FOLDS * len(CLASS_NAMES)  # every class in every fold's test split
MIN_IMAGE_SIZE = 16
MAX_CLIPS = 99_999  # 5-digit clip ids

CLIP_DIR = os.path.join('Clip', 'clip_224x224')
SPLIT_DIR = 'EmoLabel_DataSplit'
TRAIN_DIR = 'train(single-labeled)'
TEST_DIR = 'test(single-labeled)'
MARKER = 'synthetic_dataset.json'
FORMAT_VERSION = 1  # bump whenever the generated content changes
JPEG_QUALITY = 90
_FORMAT = 'former-dfer-jax synthetic DFEW'
_OWNER = '.partial_owner.json'  # in a directory this module is writing (or trashing)


def frame_path(root: str | os.PathLike, clip_id: int, frame: int) -> str:
    """DFEW's name of clip `clip_id`'s frame `frame` (1-based)."""
    return os.path.join(root, CLIP_DIR, f'{clip_id:05d}', f'{clip_id:05d}_{frame}.jpg')


def split_path(root: str | os.PathLike, fold: int, split: str) -> str:
    """The CSV of `split` ('train' | 'test') of DFEW fold `fold` (1..5)."""
    return os.path.join(
        root, SPLIT_DIR, TRAIN_DIR if split == 'train' else TEST_DIR, f'set_{fold}.csv'
    )


# ---------------------------------------------------------------------------------------------
# The plan: labels, lengths and folds of every clip (cheap; no drawing).
# ---------------------------------------------------------------------------------------------


def class_counts(num_clips: int, imbalance: bool = False) -> list[int]:
    """Clips per class: equal, or DFEW's frequencies with at least NUM_FOLDS per class."""
    freq = np.asarray(DFEW_CLASS_FREQUENCIES if imbalance else [1.0] * len(CLASS_NAMES))
    raw = freq / freq.sum() * num_clips
    counts = np.floor(raw).astype(int)
    # Largest remainders get the leftover clips (ties to the lower label).
    for c in np.argsort(-(raw - counts), kind='stable')[: num_clips - counts.sum()]:
        counts[c] += 1
    # Rare classes still need a clip in each fold's test split: take from the largest.
    while counts.min() < NUM_FOLDS:
        counts[np.argmin(counts)] += 1
        counts[np.argmax(counts)] -= 1
    return [int(c) for c in counts]


def clip_lengths(
    rng: np.random.Generator, num_clips: int, min_frames: int, max_frames: int
) -> np.ndarray:
    """DFEW-like, right-skewed clip lengths, squeezed into [min_frames, max_frames].

    DFEW's lengths are roughly log-normal (median 70 frames, 10% / 90% quantiles 42 / 124,
    range 11..847); lengths 11..160 are mapped linearly onto min_frames..max_frames and the
    rare longer clips get max_frames.
    """
    dfew_like = rng.lognormal(np.log(70.0), 0.43, num_clips)
    frac = np.clip((dfew_like - 11.0) / (160.0 - 11.0), 0.0, 1.0)
    return np.round(min_frames + frac * (max_frames - min_frames)).astype(int)


def plan_dataset(
    *, num_clips: int, seed: int, min_frames: int, max_frames: int, imbalance: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (0..6), frame counts and test folds (1..5) of clips 1..num_clips."""
    rng = np.random.default_rng(seed)
    counts = class_counts(num_clips, imbalance)
    labels = rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), counts))
    lengths = clip_lengths(rng, num_clips, min_frames, max_frames)
    folds = np.zeros(num_clips, int)
    offset = 0
    for c in range(len(CLASS_NAMES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        # Round-robin over folds, continuing where the previous class stopped: stratified,
        # and the fold sizes differ by at most one.
        folds[idx] = (offset + np.arange(len(idx))) % NUM_FOLDS + 1
        offset += len(idx)
    return labels, lengths, folds


def dataset_clip(params: dict, clip_id: int) -> synthetic_faces.Clip:
    """Clip `clip_id` (1-based) of the dataset generated with `params` (`generate_dataset`'s
    keyword arguments: `config.data.synthetic`, or the 'params' of `read_info`), drawn
    again: `synthetic_faces.render_clip(clip, params['image_size'])` gives its frames."""
    labels, lengths, _ = plan_dataset(
        num_clips=params['num_clips'],
        seed=params['seed'],
        min_frames=params['min_frames'],
        max_frames=params['max_frames'],
        imbalance=params.get('imbalance', False),
    )
    if not 1 <= clip_id <= len(labels):
        raise ValueError(f'clip_id must be in [1, {len(labels)}], got {clip_id}')
    return synthetic_faces.sample_clip(
        int(labels[clip_id - 1]),
        int(lengths[clip_id - 1]),
        seed=params['seed'],
        clip_id=clip_id,
        difficulty=float(params.get('difficulty', 1.0)),
    )


def clip_masks(
    params: dict, clip_id: int, frames: list[int] | None = None
) -> dict[str, np.ndarray]:
    """Ground truth of clip `clip_id` of the dataset generated with `params` (see
    `dataset_clip`): where its frames (all, or the 0-based `frames`) show the face, the
    moving features and the occluder, as float32 [n, image_size, image_size] coverage
    (`synthetic_faces.render_masks`). Nothing is read from disk."""
    clip = dataset_clip(params, clip_id)
    masks = list(synthetic_faces.render_masks(clip, params['image_size'], frames))
    return {name: np.stack([m[name] for m in masks]) for name in synthetic_faces.MASK_NAMES}


# ---------------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------------


def _write_clip(task: tuple) -> int:
    root, clip_id, label, num_frames, seed, image_size, difficulty = task
    clip = synthetic_faces.sample_clip(
        label, num_frames, seed=seed, clip_id=clip_id, difficulty=difficulty
    )
    os.makedirs(os.path.dirname(frame_path(root, clip_id, 1)))
    for i, frame in enumerate(synthetic_faces.render_clip(clip, image_size), start=1):
        # Fixed quality and subsampling, no EXIF / timestamps: byte-identical reruns.
        Image.fromarray(frame).save(
            frame_path(root, clip_id, i), 'JPEG', quality=JPEG_QUALITY, subsampling=0
        )
    return num_frames


def _write_splits(root: str, labels: np.ndarray, folds: np.ndarray) -> None:
    ids = np.arange(1, len(labels) + 1)
    for fold in range(1, NUM_FOLDS + 1):
        for split, mask in (('train', folds != fold), ('test', folds == fold)):
            path = split_path(root, fold, split)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            rows = ''.join(f'{i},{labels[i - 1] + 1}\n' for i in ids[mask])
            with open(path, 'w', newline='\n') as f:
                f.write('video_name,label\n' + rows)


def _write_json(path: str, obj: dict) -> None:
    files.write_text(path, json.dumps(obj, indent=1, sort_keys=True) + '\n')


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists
        return True
    return True


def _remove_stale_partials(parent: str, name: str) -> None:
    """Removes leftovers of killed runs: only directories this module marked as its own."""
    prefix = f'.{name}.partial-'
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if not entry.startswith(prefix) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, _OWNER)) as f:
                owner = json.load(f)
        except (OSError, ValueError):
            continue
        pid = owner.get('pid') if isinstance(owner, dict) else None
        if not isinstance(pid, int) or pid <= 0 or owner.get('host') != socket.gethostname():
            continue  # not verifiably dead: maybe another machine's run on a shared disk
        if not _pid_alive(pid):
            logging.info('Removing the leftover of an interrupted generation: %s', path)
            shutil.rmtree(path, ignore_errors=True)


def read_info(output_dir: str | os.PathLike) -> dict | None:
    """The dataset's marker file (parameters, class counts; written last), else None."""
    try:
        with open(os.path.join(output_dir, MARKER)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_complete(output_dir: str | os.PathLike) -> bool:
    """True if `output_dir` holds a fully written synthetic dataset (any parameters)."""
    info = read_info(output_dir)
    if info is None or info.get('format') != _FORMAT or not isinstance(info.get('num_clips'), int):
        return False
    splits = [
        split_path(output_dir, k, s) for k in range(1, NUM_FOLDS + 1) for s in ('train', 'test')
    ]
    if not all(os.path.isfile(p) for p in splits):
        return False
    try:
        return len(os.listdir(os.path.join(output_dir, CLIP_DIR))) == info['num_clips']
    except OSError:
        return False


def _start_method() -> str:
    # fork is fastest, but not once a multithreaded runtime (JAX, TF, torch) is loaded: a
    # forked child can deadlock on a lock another thread held. spawn is always safe.
    threaded = any(m in sys.modules for m in ('jax', 'jaxlib', 'tensorflow', 'torch'))
    if not threaded and 'fork' in multiprocessing.get_all_start_methods():
        return 'fork'
    return 'spawn'


def generate_dataset(
    output_dir: str | os.PathLike,
    *,
    num_clips: int,
    image_size: int,
    seed: int,
    min_frames: int,
    max_frames: int,
    imbalance: bool = False,
    num_workers: int | None = None,
    difficulty: float = 1.0,
    progress: bool = False,
) -> None:
    """Writes the synthetic dataset into `output_dir` (see the module docstring).

    Idempotent: returns at once if `output_dir` already holds a complete dataset with the same
    parameters. The tree is written into a hidden sibling directory and renamed into place when
    complete, so an interrupted run never leaves a tree that looks complete. An existing
    `output_dir` must be absent, empty, or a synthetic dataset (which is then replaced).

    Args:
      output_dir: the dataset root (DFEW's root: it gets Clip/ and EmoLabel_DataSplit/).
      num_clips: clips in total, >= 35 (every class in the test split of every fold).
      image_size: frame width and height in pixels, >= 16.
      seed: everything is a function of the arguments (num_workers and progress excepted).
      min_frames, max_frames: clip length bounds, 2 <= min_frames <= max_frames.
      imbalance: DFEW's class frequencies instead of balanced classes.
      num_workers: processes drawing clips; None or 0 = all CPU cores, 1 = in this process.
      difficulty: nuisance strength, 0 (none) .. 2; 1 is the default.
      progress: show a tqdm progress bar.
    """
    num_clips, image_size = operator.index(num_clips), operator.index(image_size)
    min_frames, max_frames = operator.index(min_frames), operator.index(max_frames)
    if not MIN_CLIPS <= num_clips <= MAX_CLIPS:
        raise ValueError(
            f'num_clips must be an integer in [{MIN_CLIPS}, {MAX_CLIPS}] ({NUM_FOLDS} folds x '
            f'{len(CLASS_NAMES)} classes: every class in every fold test split), got {num_clips}'
        )
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f'image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}')
    if min_frames < 2 or min_frames > max_frames:
        raise ValueError(
            f'need 2 <= min_frames <= max_frames, got min_frames={min_frames}, '
            f'max_frames={max_frames}'
        )
    if not 0.0 <= difficulty <= 2.0:
        raise ValueError(f'difficulty must be in [0, 2], got {difficulty}')
    if num_workers is not None and num_workers < 0:
        raise ValueError(f'num_workers must be >= 0, got {num_workers}')
    params = {
        'num_clips': num_clips,
        'image_size': image_size,
        'seed': seed,
        'min_frames': min_frames,
        'max_frames': max_frames,
        'imbalance': bool(imbalance),
        'difficulty': float(difficulty),
    }

    output = os.path.abspath(output_dir)
    replace = False
    if os.path.lexists(output):
        if not os.path.isdir(output):
            raise FileExistsError(f'{output} exists and is not a directory')
        info = read_info(output)
        if info is not None and info.get('format') == _FORMAT:
            # Our own output: reuse it if it is complete and the same, else replace it.
            same = info.get('params') == params and info.get('version') == FORMAT_VERSION
            if same and is_complete(output):
                logging.info('Synthetic dataset already complete: %s', output)
                return
            replace = True
        elif os.listdir(output):
            raise FileExistsError(
                f'{output} exists, is not empty and is not a synthetic dataset: refusing to '
                'write into it (choose a new or empty directory)'
            )
    parent, name = os.path.split(output)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_partials(parent, name)

    labels, lengths, folds = plan_dataset(
        num_clips=num_clips,
        seed=seed,
        min_frames=min_frames,
        max_frames=max_frames,
        imbalance=imbalance,
    )
    tmp = tempfile.mkdtemp(prefix=f'.{name}.partial-', dir=parent)
    owner = {'pid': os.getpid(), 'host': socket.gethostname()}
    start = time.perf_counter()
    try:
        _write_json(os.path.join(tmp, _OWNER), owner)
        tasks = [
            (tmp, i + 1, int(labels[i]), int(lengths[i]), seed, image_size, float(difficulty))
            for i in range(num_clips)
        ]
        workers = min(num_workers or os.cpu_count() or 1, num_clips)
        if not num_workers and lengths.sum() < 2000:
            workers = 1  # a few seconds of drawing: not worth starting processes
        with files.progress(
            total=num_clips, desc=f'Drawing {num_clips} clips', unit='clip', enabled=progress
        ) as bar:
            if workers == 1:
                for task in tasks:
                    _write_clip(task)
                    bar.update(1)
            else:
                # A process pool, not multiprocessing.Pool: a worker that dies (killed, out
                # of memory) raises BrokenProcessPool here instead of hanging forever.
                ctx = multiprocessing.get_context(_start_method())
                pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx)
                try:
                    for _ in pool.map(_write_clip, tasks, chunksize=4):
                        bar.update(1)
                except concurrent.futures.process.BrokenProcessPool as e:
                    raise RuntimeError(
                        'a drawing process died. Workers are started with spawn when JAX or '
                        "TF is loaded: call generate_dataset under `if __name__ == '__main__':`"
                        ' in scripts, or pass num_workers=1'
                    ) from e
                finally:
                    pool.shutdown(cancel_futures=True)
        _write_splits(tmp, labels, folds)
        info = {
            'format': _FORMAT,
            'version': FORMAT_VERSION,
            'params': params,
            'num_clips': num_clips,
            'num_frames': int(lengths.sum()),
            'class_names': list(CLASS_NAMES),
            'class_counts': [int(c) for c in np.bincount(labels, minlength=len(CLASS_NAMES))],
            'temporal_pair': list(TEMPORAL_PAIR),
        }
        _write_json(os.path.join(tmp, MARKER), info)
        os.remove(os.path.join(tmp, _OWNER))
        _install(tmp, output, replace, params, owner)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info(
        'Wrote %d clips (%d frames, %dx%d) to %s in %.1f s',
        num_clips,
        int(lengths.sum()),
        image_size,
        image_size,
        output,
        time.perf_counter() - start,
    )


def _install(tmp: str, output: str, replace: bool, params: dict, owner: dict) -> None:
    """Renames the finished tree `tmp` to `output` (atomic on POSIX)."""
    if replace:
        trash = tmp + '-old'
        os.rename(output, trash)
        _write_json(os.path.join(trash, _OWNER), owner)  # ours now: removable if we die
        os.rename(tmp, output)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(tmp, output)  # POSIX: also replaces an empty directory
    except OSError:
        info = read_info(output) if is_complete(output) else None
        if info is not None and info.get('params') == params:
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run wrote the same thing
            return
        if os.path.isdir(output) and not os.listdir(output):
            os.rmdir(output)  # platforms where rename does not replace an empty directory
            os.rename(tmp, output)
            return
        raise
