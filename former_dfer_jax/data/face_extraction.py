"""Raw videos -> DFEW-style folders of aligned face crops (and, with labels, training lists).

`extract(input_dir, root, settings, labels=...)`; the command is `data.extract_faces`.
Every video (or folder of frames) found under `--input`, recursively, becomes the clip
folder `ROOT/<sub path>/<clip>/<clip>_<k>.jpg` (k = 1, 2, ... in time order): the face
pipeline of `former_dfer_jax.video` (detect, track the main subject, align to 256 x 256 as
DFEW's crops), frames without a face dropped as DFEW dropped them. Clip names are the file
stems with characters outside [A-Za-z0-9._-] replaced by '_' (and _2, _3, ... where two
inputs give the same name).

Videos run in parallel over `--workers` processes, each with its own detector; crops are
written as they are aligned (one in memory at a time). A clip folder appears only once
complete (written as `.<clip>.tmp` and renamed; never renamed onto an existing folder), so
a rerun skips the finished clips and redoes a half-written one. One run at a time writes
into ROOT (`ROOT/run.lock`, as the trainer's workdir lock: a second run is refused, naming
the first; a dead run's lock is taken over). `ROOT/extract_faces.json` describes the whole
of ROOT: every video of this run extracted, already there, or failed and why, and the
clips that earlier runs extracted from other videos. The exit status is 0 when at least
one clip of this run is there at the end.

With `--labels=CSV` (header `video,label[,split]`; `video` is a path under --input, with or
without its extension, or a file name or stem) only the listed videos are extracted and
ROOT also gets `classes.txt`, `train.txt` and `test.txt`, which the training config reads
with `data.name='own'` (see data/README.md): the split column where given, else a seeded
split stratified by class (`--test_fraction`, `--seed`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from absl import logging

from former_dfer_jax import files, run_lock
from former_dfer_jax.errors import UserError
from former_dfer_jax.video import decode, faces
from former_dfer_jax.video.faces import FaceOptions, staged_folder

REPORT_FILE = 'extract_faces.json'
CLASSES_FILE = 'classes.txt'
LIST_FILES = {'train': 'train.txt', 'test': 'test.txt'}
DEFAULT_MIN_FRAMES = 8  # fewer face frames than this: 'too few face frames' (DFEW's min is 11)
JPEG_QUALITY = 95
_SAFE = re.compile(r'[^A-Za-z0-9._-]')


class ExtractError(UserError):
    """Inputs, labels or settings that extract_faces cannot use."""


# ---- Inputs and clip names --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VideoInput:
    """One input (a video file or a frames folder) and the clip folder it becomes."""

    path: str
    relative: str  # its path under --input, '/'-separated, extension kept
    clip: str  # ROOT-relative clip folder, '/'-separated


def sanitise(name: str) -> str:
    """A clip name component: characters outside [A-Za-z0-9._-] -> '_' (never empty)."""
    return _SAFE.sub('_', name) or '_'


def find_inputs(input_dir: str, *, skip: Sequence[str] = ()) -> list[VideoInput]:
    """Every video file and frames folder under `input_dir` (recursively, sorted; a frames
    folder is not searched further; folders in `skip` neither), with unique clip names."""

    if not os.path.isdir(input_dir):
        raise ExtractError(f'{input_dir}: not a folder (--input takes a folder of videos)')
    if decode.is_video_path(input_dir):  # itself a folder of frames: one clip
        name = os.path.basename(os.path.normpath(input_dir))
        return [VideoInput(input_dir, name, sanitise(name))]
    skip_real = {os.path.realpath(s) for s in skip}
    found: list[str] = []
    for folder, dirs, names in os.walk(input_dir):
        dirs.sort()
        keep = []
        for d in dirs:
            full = os.path.join(folder, d)
            if d.startswith('.') or os.path.realpath(full) in skip_real:
                continue
            if decode.is_video_path(full):
                found.append(full)
            else:
                keep.append(d)
        dirs[:] = keep
        found.extend(
            os.path.join(folder, f)
            for f in sorted(names)
            if not f.startswith('.') and decode.is_video_path(os.path.join(folder, f))
        )
    found.sort(key=lambda p: os.path.relpath(p, input_dir))
    inputs, seen = [], set()
    for path in found:
        relative = os.path.relpath(path, input_dir).replace(os.sep, '/')
        parts = relative.split('/')
        leaf = parts[-1] if os.path.isdir(path) else os.path.splitext(parts[-1])[0]
        stem = '/'.join([sanitise(p) for p in parts[:-1]] + [sanitise(leaf)])
        clip, k = stem, 2
        while clip in seen:
            clip, k = f'{stem}_{k}', k + 1
        seen.add(clip)
        inputs.append(VideoInput(path, relative, clip))
    return inputs


# ---- Labels -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelRow:
    video: str
    label: str
    split: str  # 'train' | 'test' | '' (the tool decides)
    where: str


def read_labels(path: str) -> list[LabelRow]:
    """The rows of a labels CSV (header `video,label` and an optional `split`)."""
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise ExtractError(f'{path}: cannot read the labels CSV ({e.strerror})') from e
    if not rows:
        raise ExtractError(f'{path}: empty labels CSV (expected the header video,label)')
    header = [c.strip().lower() for c in rows[0]]
    if header[:2] != ['video', 'label'] or header[2:] not in ([], ['split']):
        raise ExtractError(f"{path}: expected the header 'video,label' or 'video,label,split'")
    out = []
    for line_no, row in enumerate(rows[1:], start=2):
        where = f'{path}:{line_no}'
        if not ''.join(row).strip():
            continue
        if len(row) != len(header):
            raise ExtractError(f'{where}: expected {len(header)} fields, got {row}')
        video, label = row[0].strip(), row[1].strip()
        split = row[2].strip().lower() if len(row) > 2 else ''
        if not video or not label:
            raise ExtractError(f'{where}: empty video or label in {row}')
        if '\n' in label or '\r' in label:
            raise ExtractError(f'{where}: a label must not contain a line break')
        if split not in ('', 'train', 'test'):
            raise ExtractError(f"{where}: split {row[2]!r}: expected 'train' or 'test'")
        out.append(LabelRow(video, label, split, where))
    if not out:
        raise ExtractError(f'{path}: no rows after the header')
    return out


def match_labels(
    rows: Sequence[LabelRow], inputs: Sequence[VideoInput], input_dir: str
) -> tuple[dict[str, LabelRow], list[str]]:
    """clip -> its label row, and the rows naming no input (as 'where: video').

    A row's `video` matches an input by its path under --input (with or without the
    extension), its file name or its stem; a name that fits several inputs is an error.
    """
    keys: dict[str, list[VideoInput]] = collections.defaultdict(list)
    for item in inputs:
        name = item.relative.split('/')[-1]
        for key in {item.relative, os.path.splitext(item.relative)[0], name,
                    os.path.splitext(name)[0]}:  # fmt: skip
            keys[key].append(item)
    matched: dict[str, LabelRow] = {}
    missing = []
    for row in rows:
        key = row.video.replace(os.sep, '/')
        if os.path.isabs(key) or key.startswith('.'):
            key = os.path.relpath(os.path.abspath(row.video), input_dir).replace(os.sep, '/')
        candidates = keys.get(key) or keys.get(key.rstrip('/'), [])
        if len(candidates) > 1:
            names = ', '.join(c.relative for c in candidates)
            raise ExtractError(f'{row.where}: {row.video!r} fits several inputs ({names})')
        if not candidates:
            missing.append(f'{row.where}: {row.video}')
            continue
        clip = candidates[0].clip
        if clip in matched:
            raise ExtractError(
                f'{row.where}: {row.video!r} is labelled twice (also at {matched[clip].where})'
            )
        matched[clip] = row
    return matched, missing


def class_order(rows: Sequence[LabelRow], classes: Sequence[str] = ()) -> list[str]:
    """The class list: `classes` as given (every label must be one), else sorted labels."""
    labels = {row.label for row in rows}
    if not classes:
        return sorted(labels)
    classes = [c.strip() for c in classes]
    if len(set(classes)) != len(classes):
        raise ExtractError(f'--classes={",".join(classes)}: a class is named twice')
    unknown = sorted(labels - set(classes))
    if unknown:
        raise ExtractError(f'labels {unknown} are not among --classes={",".join(classes)}')
    return classes


def split_clips(
    clips: dict[str, tuple[int, str]], test_fraction: float, seed: int
) -> dict[str, str]:
    """clip -> 'train' | 'test' for clips given as clip -> (label, CSV split or '').

    Clips with a split keep it; the others are split per class with a seeded shuffle:
    round(test_fraction * n) of each class's n clips go to test, at least one and not all
    where n >= 2 and test_fraction > 0.
    """
    out = {clip: split for clip, (_, split) in clips.items() if split}
    by_class: dict[int, list[str]] = collections.defaultdict(list)
    for clip, (label, split) in sorted(clips.items()):
        if not split:
            by_class[label].append(clip)
    rng = np.random.default_rng(seed)
    for label in sorted(by_class):
        members = by_class[label]
        order = [members[i] for i in rng.permutation(len(members))]
        n = len(order)
        n_test = round(test_fraction * n)
        if test_fraction > 0 and n >= 2:
            n_test = min(max(n_test, 1), n - 1)
        for i, clip in enumerate(order):
            out[clip] = 'test' if i < n_test else 'train'
    return out


def _write_lines(path: str, lines: Iterable[str]) -> None:
    files.write_text(path, ''.join(f'{line}\n' for line in lines))


def write_lists(
    root: str,
    class_names: Sequence[str],
    clips: dict[str, tuple[int, int, str]],
) -> dict[str, int]:
    """classes.txt, train.txt and test.txt in `root` for clip -> (label, frames, split);
    returns the clip count per split."""
    _write_lines(os.path.join(root, CLASSES_FILE), class_names)
    counts = {}
    for split, name in LIST_FILES.items():
        lines = [
            f'{clip} {frames} {label}'
            for clip, (label, frames, s) in sorted(clips.items())
            if s == split
        ]
        _write_lines(os.path.join(root, name), lines)
        counts[split] = len(lines)
    return counts


# ---- One video --------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(
    options: FaceOptions, detector_factory: Callable[[], Any] | None, threads: int | None
) -> None:
    """Per process: limit TensorFlow's threads for MTCNN (the processes share the
    cores), then build its detector once."""
    if threads is not None and detector_factory is None:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TF already initialised in this process
            pass
    if detector_factory is None:
        _WORKER['detector'] = options.detector()
    else:
        _WORKER['detector'] = detector_factory()
    _WORKER['options'] = options


def count_frames(directory: str) -> int:
    return sum(1 for name in os.listdir(directory) if name.lower().endswith('.jpg'))


def _clip_there(directory: str) -> int:
    """The crops of the finished clip folder `directory` (0 where there is none)."""
    return count_frames(directory) if os.path.isdir(directory) else 0


def extract_one(item: VideoInput, root: str, min_frames: int, quality: int) -> dict[str, Any]:
    """Extracts one video into ROOT/<clip>/ (in the worker's process); a record for the
    report: status 'extracted' | 'existing' | 'failed', with the reason where failed."""
    record: dict[str, Any] = {'video': item.path, 'clip': item.clip}
    final = os.path.join(root, *item.clip.split('/'))
    if num_frames := _clip_there(final):
        return {**record, 'status': 'existing', 'num_frames': num_frames}
    if os.path.lexists(final):  # no crops in it: an empty folder goes, anything else stays
        try:
            os.rmdir(final)
        except OSError:
            reason = f'{final} is in the way (it holds no crops): remove it and run again'
            return {**record, 'status': 'failed', 'reason': reason}
    leaf = os.path.basename(final)
    started = time.perf_counter()
    try:
        with staged_folder(final) as tmp:  # also clears a half-written earlier attempt
            track = faces.track_faces(item.path, _WORKER['options'], detector=_WORKER['detector'])
            if track.num_crops < min_frames:
                raise ExtractError(
                    f'{item.path}: too few face frames ({track.num_crops} of '
                    f'{len(track.frames)}; at least {min_frames} needed, see --min_frames)'
                )
            num_frames = len(faces.save_crops(track, tmp, prefix=leaf, quality=quality))
    except UserError as e:
        return {**record, 'status': 'failed', 'reason': str(e)}
    except Exception as e:  # a batch of thousands goes on; the report keeps the traceback
        if files.is_no_space(e):  # every later clip would fail too: the whole run stops
            kept = 'its half-written folder was removed; the clips already extracted are kept'
            raise files.no_space(f'the face crops of {item.path}', root, kept) from e
        if isinstance(e, OSError) and (num_frames := _clip_there(final)):
            # Another writer (not holding our lock) finished this clip first: its folder is
            # kept, ours was dropped.
            return {**record, 'status': 'existing', 'num_frames': num_frames}
        return {
            **record,
            'status': 'failed',
            'reason': f'{item.path}: unexpected {type(e).__name__}: {e} (a bug: please report)',
            'traceback': traceback.format_exc(),
        }
    return {
        **record,
        'status': 'extracted',
        'num_frames': num_frames,
        'decoded_frames': len(track.frames),
        'seconds': time.perf_counter() - started,
        'timings': {k: round(float(v), 4) for k, v in track.timings.items()},
    }


def _remove_stale_staging(root: str, inputs: Sequence[VideoInput]) -> None:
    """Removes the staging folders (`.<clip>.tmp`, see `staged_folder`) that killed runs
    left beside the clip folders: with ROOT locked, no other run is writing them."""
    parents = {os.path.join(root, *item.clip.split('/')[:-1]) for item in inputs}
    for parent in sorted(p for p in parents if os.path.isdir(p)):
        for name in os.listdir(parent):
            path = os.path.join(parent, name)
            if name.startswith('.') and name.endswith('.tmp') and os.path.isdir(path):
                logging.warning('Removing %s, left by an interrupted run', path)
                shutil.rmtree(path, ignore_errors=True)


def _earlier_clips(root: str, inputs: Sequence[VideoInput]) -> list[dict[str, Any]]:
    """The clips of ROOT that earlier runs extracted from videos not among `inputs` (as
    their report lists them) and that are still there, with their crop counts now."""
    ours = {item.clip for item in inputs}
    try:
        with open(os.path.join(root, REPORT_FILE), encoding='utf-8') as f:
            earlier = json.load(f)
        listed = [
            {'video': r['video'], 'clip': r['clip']}
            for key in ('extracted', 'existing', 'from_earlier_runs')
            for r in earlier.get(key, [])
            if isinstance(r['clip'], str)
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        logging.warning('%s: unreadable (%s); its clips are not carried over', REPORT_FILE, e)
        return []
    out, seen = [], set()
    for r in listed:
        clip = r['clip']
        there = clip not in ours and clip not in seen
        num_frames = _clip_there(os.path.join(root, *clip.split('/'))) if there else 0
        if num_frames:
            seen.add(clip)
            out.append({**r, 'num_frames': num_frames})
    return out


# ---- The whole run ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExtractSettings:
    workers: int = 1
    min_frames: int = DEFAULT_MIN_FRAMES
    quality: int = JPEG_QUALITY
    face_options: FaceOptions = dataclasses.field(default_factory=FaceOptions)
    test_fraction: float = 0.2
    seed: int = 0
    classes: tuple[str, ...] = ()


def extract(
    input_dir: str,
    root: str,
    settings: ExtractSettings = ExtractSettings(),
    *,
    labels: str = '',
    detector_factory: Callable[[], Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Extracts every input (or, with `labels`, every labelled one) under `input_dir` into
    `root`; writes and returns the report. Raises ExtractError when no clip is there at
    the end. `detector_factory` (picklable where workers > 1) replaces MTCNN."""
    if settings.workers < 1:
        raise ExtractError(f'--workers={settings.workers}: expected >= 1')
    if not 0 <= settings.test_fraction < 1:
        raise ExtractError(f'--test_fraction={settings.test_fraction}: expected in [0, 1)')
    options = settings.face_options
    if options.max_side < 12 or options.min_face_size < 12 or settings.min_frames < 1:
        raise ExtractError(
            f'--max_side={options.max_side} (expected >= 12), --min_frames='
            f'{settings.min_frames} (expected >= 1)'
        )
    inputs = find_inputs(input_dir, skip=[root])
    if not inputs:
        raise ExtractError(f'{input_dir}: no videos or frame folders found (searched recursively)')
    rows, missing, unlabelled, class_names = {}, [], [], []
    if labels:
        label_rows = read_labels(labels)
        class_names = class_order(label_rows, settings.classes)
        rows, missing = match_labels(label_rows, inputs, input_dir)
        unlabelled = [i.path for i in inputs if i.clip not in rows]
        inputs = [i for i in inputs if i.clip in rows]
        if not inputs:
            raise ExtractError(
                f'{labels}: none of its videos is under {input_dir} (first: {missing[0]})'
            )
    with run_lock.output_lock(root, 'extract_faces'):
        _remove_stale_staging(root, inputs)
        records, wall = _extract_all(inputs, root, settings, detector_factory, progress)
        report = _report(input_dir, root, settings, records, wall)
        report['from_earlier_runs'] = _earlier_clips(root, inputs)
        report['labels_not_found'] = missing
        report['not_labelled'] = unlabelled
        done = [r for r in records if r['status'] in ('extracted', 'existing')]
        if labels:
            label_of = {name: i for i, name in enumerate(class_names)}
            clips = {
                r['clip']: (label_of[rows[r['clip']].label], rows[r['clip']].split) for r in done
            }
            split = split_clips(clips, settings.test_fraction, settings.seed)
            listed = {
                r['clip']: (clips[r['clip']][0], r['num_frames'], split[r['clip']]) for r in done
            }
            report['lists'] = write_lists(root, class_names, listed) if done else {}
            report['class_names'] = class_names
        files.write_json(os.path.join(root, REPORT_FILE), report, indent=1)
    if not done:
        raise ExtractError(
            f'{input_dir}: no clip extracted ({len(records)} failed; reasons in '
            f'{os.path.join(root, REPORT_FILE)})'
        )
    return report


def _extract_all(
    inputs: Sequence[VideoInput],
    root: str,
    settings: ExtractSettings,
    detector_factory: Callable[[], Any] | None,
    progress: bool,
) -> tuple[list[dict[str, Any]], float]:
    """`extract_one` of every input (over the workers); the records in input order and
    the wall-clock seconds."""
    options = settings.face_options
    started = time.perf_counter()
    records = []
    bar = files.progress(total=len(inputs), desc='videos', unit='video', enabled=progress)
    if settings.workers == 1:
        _init_worker(options, detector_factory, None)
        for item in inputs:
            records.append(extract_one(item, root, settings.min_frames, settings.quality))
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // settings.workers)
        with concurrent.futures.ProcessPoolExecutor(
            settings.workers,
            mp_context=multiprocessing.get_context('spawn'),  # TF and JAX do not survive fork
            initializer=_init_worker,
            initargs=(options, detector_factory, threads),
        ) as pool:
            futures = {
                pool.submit(extract_one, item, root, settings.min_frames, settings.quality): item
                for item in inputs
            }
            for future in concurrent.futures.as_completed(futures):
                try:
                    records.append(future.result())
                except files.NoSpaceError:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
                except concurrent.futures.process.BrokenProcessPool as e:
                    raise ExtractError(
                        f'a worker process died while extracting {futures[future].path} (out '
                        'of memory? try fewer --workers); the finished clips are kept: run '
                        'again to resume'
                    ) from e
                bar.update()
        order = {item.clip: i for i, item in enumerate(inputs)}
        records.sort(key=lambda r: order[r['clip']])
    bar.close()
    return records, time.perf_counter() - started


def _report(input_dir, root, settings, records, wall) -> dict[str, Any]:
    extracted = [r for r in records if r['status'] == 'extracted']
    decoded = sum(r['decoded_frames'] for r in extracted)
    busy = sum(r['seconds'] for r in extracted)
    return {
        'input': os.path.abspath(input_dir),
        'output': os.path.abspath(root),
        'settings': dataclasses.asdict(settings),
        'extracted': [{k: v for k, v in r.items() if k != 'status'} for r in extracted],
        'existing': [
            {k: v for k, v in r.items() if k != 'status'}
            for r in records
            if r['status'] == 'existing'
        ],
        'failed': [
            {k: v for k, v in r.items() if k != 'status'}
            for r in records
            if r['status'] == 'failed'
        ],
        'wall_s': wall,
        'decoded_frames': decoded,
        # Per worker process: what one core does (workers share the machine's cores).
        'frames_per_s_per_worker': decoded / busy if busy > 0 else None,
        'frames_per_s': decoded / wall if wall > 0 else None,
    }
