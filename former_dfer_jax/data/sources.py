"""Raw dataset layouts -> clip records and train/test partitions.

Reads the datasets as their owners distribute them (DFEW's CSV split files, AFEW's
emotion folders, MAFW's split text files), the reference code's annotation lists, or a
user's own labelled clips (`data.name='own'`: the lists `extract_faces --labels` writes),
and returns every usable clip once (frames sorted numerically) plus, per fold, which clips
are train and which are test. Nothing here decodes images (that is `frames.py`, at
prepare time) except the optional face-cropping pass (`crop_faces`), which runs the face
pipeline of `former_dfer_jax.video` over whole-frame clips and caches the crops.

Problems with single clips (missing or empty folder, bad label, duplicate, no face) skip
that clip and are recorded in a `ProblemReport`; problems that make the whole source
unusable (missing root, no split file, a label name the dataset does not have) raise
`SourceError` naming the path.
"""

import collections
import csv
import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from former_dfer_jax import files
from former_dfer_jax.errors import UserError
from former_dfer_jax.video.decode import list_frames
from former_dfer_jax.video.faces import staged_folder

# The reference code's label order; DFEW's CSVs use 1..7 in the same order.
CLASS_NAMES: tuple[str, ...] = (
    'happiness',
    'sadness',
    'neutral',
    'anger',
    'surprise',
    'disgust',
    'fear',
)
NUM_CLASSES = len(CLASS_NAMES)  # of the 7-class datasets (all but mafw and own)
# MAFW's 11 single-expression classes, ordered as DFER-CLIP (by Former-DFER's authors)
# orders them: the 7 classes above first, in the same order, so a DFEW checkpoint's first
# 7 classifier rows keep their meaning. MAFW's own files name the classes; the paper and
# MAE-DFER order them anger, disgust, fear, happiness, neutral, sadness, surprise, ...
MAFW_CLASS_NAMES: tuple[str, ...] = (
    *CLASS_NAMES,
    'contempt',
    'anxiety',
    'helplessness',
    'disappointment',
)
DATASETS = ('dfew', 'afew', 'ferv39k', 'synthetic', 'mafw', 'own')
# The class names of each dataset; 'own' reads them from its classes.txt.
DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    'dfew': CLASS_NAMES,
    'afew': CLASS_NAMES,
    'ferv39k': CLASS_NAMES,
    'synthetic': CLASS_NAMES,
    'mafw': MAFW_CLASS_NAMES,
}
# data.face_crop: 'none' uses the frames as they are (already face crops); 'detect' finds,
# aligns and crops the face of every frame at prepare time (whole-frame clips, e.g. MAFW's
# data/frames).
FACE_CROPS = ('none', 'detect')
FACE_CROP_SIZE = 256  # the crops' side, as DFEW's face frames (256x256)
# The files `python -m former_dfer_jax.data.extract_faces --labels=CSV` writes for
# data.name='own' (the layout is in data/README.md), beside train.txt and test.txt.
OWN_CLASSES_FILE = 'classes.txt'

# Emotion folder names of AFEW (Angry, Happy, Sad, ...), of the reference's AFEW_Face
# crops (Anger, Happiness, Sadness, ...) and of FERV39k, mapped to the label order above.
EMOTION_FOLDERS: dict[str, int] = {
    'happy': 0,
    'happiness': 0,
    'sad': 1,
    'sadness': 1,
    'neutral': 2,
    'angry': 3,
    'anger': 3,
    'surprise': 4,
    'disgust': 5,
    'fear': 6,
}
# The absolute prefix of each dataset's annotation lists (the reference's, DFER-CLIP's for
# MAFW); relative clip paths (those of 'own') are taken relative to the root.
LIST_PREFIXES = {
    'dfew': '/home/user/datasets/DFEW_Face',
    'synthetic': '/home/user/datasets/DFEW_Face',
    'afew': '/home/user/datasets/AFEW_Face',
    'ferv39k': '/home/user/datasets/FERV39K',
    'mafw': '/data/EECS-IoannisLab/datasets/MAFW',
    'own': '',
}
# Annotation list files per dataset: fold -> split -> file name.
_LIST_FILES: dict[str, dict[str, dict[str, str]]] = {
    'dfew': {
        str(k): {'train': f'DFEW_set_{k}_train.txt', 'test': f'DFEW_set_{k}_test.txt'}
        for k in range(1, 6)
    },
    'afew': {'0': {'train': 'AFEW_train.txt', 'test': 'AFEW_validation.txt'}},
    'ferv39k': {'0': {'train': 'FERV39K_train.txt', 'test': 'FERV39K_test.txt'}},
    # DFER-CLIP's lists (annotation/MAFW_set_*_*.txt), labels in MAFW_CLASS_NAMES order.
    'mafw': {
        str(k): {'train': f'MAFW_set_{k}_train.txt', 'test': f'MAFW_set_{k}_test.txt'}
        for k in range(1, 6)
    },
    'own': {'0': {'train': 'train.txt', 'test': 'test.txt'}},
}
_LIST_FILES['synthetic'] = _LIST_FILES['dfew']
SPLITS = ('train', 'test')


class SourceError(UserError):
    """The raw data cannot be used at all (missing root, missing split files...)."""


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """One clip on disk. `frames` are file paths in temporal (numeric) order."""

    clip_id: str
    directory: str
    frames: tuple[str, ...]
    label: int
    listed_num_frames: int | None = None  # the annotation list's count, if any

    @property
    def num_frames(self) -> int:
        return len(self.frames)


class ProblemReport:
    """Counts of skipped clips and warnings by reason, with the first few paths of each."""

    def __init__(self, max_examples: int = 5):
        self.max_examples = max_examples
        self.skipped: dict[str, list[str]] = collections.defaultdict(list)
        self.warnings: dict[str, list[str]] = collections.defaultdict(list)
        self.skip_counts: collections.Counter[str] = collections.Counter()
        self.warn_counts: collections.Counter[str] = collections.Counter()

    def skip(self, reason: str, where: str) -> None:
        self.skip_counts[reason] += 1
        if len(self.skipped[reason]) < self.max_examples:
            self.skipped[reason].append(where)

    def warn(self, reason: str, where: str) -> None:
        self.warn_counts[reason] += 1
        if len(self.warnings[reason]) < self.max_examples:
            self.warnings[reason].append(where)

    def merge(self, other: 'ProblemReport') -> None:
        for reason, count in other.skip_counts.items():
            self.skip_counts[reason] += count
            room = self.max_examples - len(self.skipped[reason])
            self.skipped[reason].extend(other.skipped[reason][: max(room, 0)])
        for reason, count in other.warn_counts.items():
            self.warn_counts[reason] += count
            room = self.max_examples - len(self.warnings[reason])
            self.warnings[reason].extend(other.warnings[reason][: max(room, 0)])

    @property
    def num_skipped(self) -> int:
        return sum(self.skip_counts.values())

    def to_json(self) -> dict:
        return {
            'skipped': {r: [c, list(self.skipped[r])] for r, c in self.skip_counts.items()},
            'warnings': {r: [c, list(self.warnings[r])] for r, c in self.warn_counts.items()},
        }

    def summary(self, num_ok: int) -> str:
        lines = [f'{num_ok} clips OK, {self.num_skipped} skipped.']
        for title, counts, examples in (
            ('skipped', self.skip_counts, self.skipped),
            ('warning', self.warn_counts, self.warnings),
        ):
            for reason, count in sorted(counts.items()):
                shown = ', '.join(examples[reason])
                more = ' ...' if count > len(examples[reason]) else ''
                lines.append(f'  {title}: {count} x {reason}: {shown}{more}')
        return '\n'.join(lines)


@dataclasses.dataclass
class SourceIndex:
    """Every usable clip once (sorted by id) and, per fold, its train / test clip ids."""

    clips: list[ClipRecord]
    partitions: dict[str, dict[str, list[str]]]
    report: ProblemReport
    class_names: tuple[str, ...] = CLASS_NAMES  # label i is class_names[i]


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise SourceError(f'{what} not found: {path}')


def _make_record(
    clip_id: str,
    directory: Path,
    label: int,
    report: ProblemReport,
    listed_num_frames: int | None = None,
) -> ClipRecord | None:
    if not directory.is_dir():
        report.skip('clip folder missing', str(directory))
        return None
    frames = list_frames(directory)
    if not frames:
        report.skip('clip folder has no image files', str(directory))
        return None
    if listed_num_frames is not None and listed_num_frames != len(frames):
        report.warn(
            'frame count on disk differs from the annotation list (using the disk count)',
            f'{directory} ({len(frames)} on disk, {listed_num_frames} listed)',
        )
    return ClipRecord(clip_id, str(directory), tuple(frames), label, listed_num_frames)


class _Partitioner:
    """Collects (fold, split, clip id, label) rows; resolves duplicates and conflicts."""

    def __init__(self, report: ProblemReport):
        self.report = report
        self.labels: dict[str, int] = {}
        self.where: dict[str, str] = {}
        self.conflicting: set[str] = set()
        self.partitions: dict[str, dict[str, list[str]]] = {}
        self._seen: dict[str, set[str]] = collections.defaultdict(set)

    def add(self, fold: str, split: str, clip_id: str, label: int, where: str) -> None:
        members = self.partitions.setdefault(fold, {s: [] for s in SPLITS})
        if clip_id in self.labels and self.labels[clip_id] != label:
            self.conflicting.add(clip_id)
        self.labels.setdefault(clip_id, label)
        self.where.setdefault(clip_id, where)
        if clip_id in self._seen[fold]:
            # Also catches a clip in both train and test of one fold: it stays where it was
            # first listed, so no clip is ever trained on and tested on.
            self.report.skip('duplicate clip id in a fold (later row ignored)', where)
            return
        self._seen[fold].add(clip_id)
        members[split].append(clip_id)

    def finish(self, usable: set[str]) -> dict[str, dict[str, list[str]]]:
        for clip_id in sorted(self.conflicting):
            self.report.skip('clip listed with different labels', self.where[clip_id])
        out = {}
        for fold, members in self.partitions.items():
            out[fold] = {
                s: sorted(c for c in ids if c in usable and c not in self.conflicting)
                for s, ids in members.items()
            }
        return out


def _find_dfew_clip_base(root: Path) -> Path:
    """The folder holding DFEW's 5-digit clip folders (unzipping may add a level)."""
    candidates = [
        root / 'Clip' / 'clip_224x224' / 'clip_224x224',
        root / 'Clip' / 'clip_224x224',
        root / 'clip_224x224' / 'clip_224x224',
        root / 'clip_224x224',
    ]
    for path in candidates:
        if path.is_dir() and any(e.is_dir() and e.name.isdigit() for e in os.scandir(path)):
            return path
    tried = ', '.join(str(p) for p in candidates)
    raise SourceError(f'DFEW clip folders not found under {root} (tried {tried})')


def _dfew_split_csvs(root: Path) -> dict[str, dict[str, Path]]:
    """fold -> split -> CSV path, for the folds present (both spellings of the folder)."""
    label_dir = root / 'EmoLabel_DataSplit'
    _require_dir(label_dir, 'DFEW label folder EmoLabel_DataSplit')
    found: dict[str, dict[str, Path]] = {}
    for fold in range(1, 6):
        paths = {}
        for split in SPLITS:
            for spelling in ('single-labeled', 'single_labeled'):
                path = label_dir / f'{split}({spelling})' / f'set_{fold}.csv'
                if path.is_file():
                    paths[split] = path
                    break
        if len(paths) == 1:
            missing = 'test' if 'train' in paths else 'train'
            raise SourceError(
                f'DFEW fold {fold}: {paths[next(iter(paths))]} exists but its {missing} CSV '
                f'({label_dir}/{missing}(single-labeled)/set_{fold}.csv) is missing'
            )
        if paths:
            found[str(fold)] = paths
    if not found:
        raise SourceError(
            f'no DFEW split CSVs found: expected {label_dir}/train(single-labeled)/set_1.csv '
            'and test(single-labeled)/set_1.csv (or the single_labeled spelling)'
        )
    return found


def _read_dfew_csv(path: Path, report: ProblemReport) -> Iterable[tuple[str, int, str]]:
    """(clip id, label 0..6, where) rows of a DFEW split CSV; bad rows are reported."""
    with open(path, newline='', encoding='utf-8-sig') as f:
        rows = list(csv.reader(f))
    if not rows:
        raise SourceError(f'empty DFEW split CSV: {path}')
    header = [c.strip().lower() for c in rows[0]]
    if header[:2] != ['video_name', 'label']:
        raise SourceError(f"{path}: expected the header 'video_name,label', got {rows[0]}")
    for line_no, row in enumerate(rows[1:], start=2):
        where = f'{path}:{line_no}'
        if not row or not ''.join(row).strip():
            continue
        try:
            video, label = int(row[0]), int(row[1])
        except (ValueError, IndexError):
            report.skip('unreadable CSV row', f'{where} {row}')
            continue
        if not 1 <= label <= NUM_CLASSES:
            report.skip(f'label out of range (DFEW CSVs use 1..{NUM_CLASSES})', where)
            continue
        yield f'{video:05d}', label - 1, where


def read_dfew(root: str | os.PathLike) -> SourceIndex:
    """DFEW as distributed: Clip/clip_224x224/<id>/x_y.jpg + EmoLabel_DataSplit CSVs."""
    root = Path(root)
    _require_dir(root, 'dataset root')
    clip_base = _find_dfew_clip_base(root)
    report = ProblemReport()
    parts = _Partitioner(report)
    for fold, paths in _dfew_split_csvs(root).items():
        for split, path in paths.items():
            for clip_id, label, where in _read_dfew_csv(path, report):
                parts.add(fold, split, clip_id, label, where)
    return _collect(parts, lambda cid: clip_base / cid, report)


def _collect(
    parts: _Partitioner,
    directory_of,
    report: ProblemReport,
    listed=None,
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> SourceIndex:
    clips = []
    for clip_id in sorted(parts.labels):
        if clip_id in parts.conflicting:
            continue
        record = _make_record(
            clip_id,
            Path(directory_of(clip_id)),
            parts.labels[clip_id],
            report,
            None if listed is None else listed.get(clip_id),
        )
        if record is not None:
            clips.append(record)
    partitions = parts.finish({c.clip_id for c in clips})
    return SourceIndex(clips, partitions, report, class_names)


def read_afew_folders(root: str | os.PathLike) -> SourceIndex:
    """AFEW's folder layout: {train,validation}/<Emotion>/<clip>/ frames.

    AFEW's validation set plays the test role (fold '0').
    """
    root = Path(root)
    _require_dir(root, 'dataset root')
    report = ProblemReport()
    parts = _Partitioner(report)
    split_dirs = {'train': ('train', 'Train'), 'test': ('validation', 'Validation', 'val', 'Val')}
    for split, names in split_dirs.items():
        folder = next((root / n for n in names if (root / n).is_dir()), None)
        if folder is None:
            raise SourceError(f'AFEW {names[0]} folder not found: {root / names[0]}')
        for emotion_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            label = EMOTION_FOLDERS.get(emotion_dir.name.lower())
            if label is None:
                report.skip('unknown emotion folder', str(emotion_dir))
                continue
            for clip_dir in sorted(p for p in emotion_dir.iterdir() if p.is_dir()):
                clip_id = clip_dir.relative_to(root).as_posix()
                parts.add('0', split, clip_id, label, str(clip_dir))
    return _collect(parts, lambda cid: root / cid, report)


def _rewrite(path: str, prefix: str, root: Path) -> Path:
    prefix = prefix.rstrip('/')
    if prefix and (path == prefix or path.startswith(prefix + '/')):
        return root / path[len(prefix) :].lstrip('/')
    if not os.path.isabs(path):
        return root / path
    return Path(path)


def read_class_names(path: str | os.PathLike) -> tuple[str, ...]:
    """A classes.txt: one class name a line; line i (from 0) names label i."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(
            f'class list not found: {path} (one class name a line; '
            '`python -m former_dfer_jax.data.extract_faces --labels=CSV` writes it)'
        )
    try:
        lines = path.read_text(encoding='utf-8-sig').splitlines()
    except UnicodeDecodeError as e:
        raise SourceError(f'{path}: not UTF-8 text ({e.reason} at byte {e.start})') from None
    while lines and not lines[-1].strip():  # trailing blank lines are harmless
        lines.pop()
    names: list[str] = []
    for line_no, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            # A blank line in the middle would shift every later label by one.
            raise SourceError(f'{path}:{line_no}: blank line (one class name a line)')
        if name in names:
            first = names.index(name) + 1
            raise SourceError(f'{path}:{line_no}: class {name!r} is already on line {first}')
        names.append(name)
    if not names:
        raise SourceError(f'{path}: no class names in it')
    return tuple(names)


def class_names(
    name: str, *, root: str | os.PathLike = '', annotation_dir: str | os.PathLike = ''
) -> tuple[str, ...]:
    """Dataset `name`'s class names in label order ('own': from its classes.txt)."""
    if name == 'own':
        folder = annotation_dir or root
        if not folder:
            raise SourceError(
                "data.name='own' needs data.root: the folder holding classes.txt, train.txt "
                'and test.txt (or set data.annotation_dir to the folder holding them)'
            )
        return read_class_names(Path(folder) / OWN_CLASSES_FILE)
    if name not in DATASET_CLASSES:
        raise SourceError(f'unknown dataset {name!r}; expected one of {DATASETS}')
    return DATASET_CLASSES[name]


def read_annotation_lists(
    name: str,
    root: str | os.PathLike,
    annotation_dir: str | os.PathLike,
    annotation_prefix: str = '',
) -> SourceIndex:
    """Annotation lists: '<clip dir> <num_frames> <label>' per line, labels from 0.

    The reference code's (and DFER-CLIP's, for MAFW) lists, or those of a user's own
    clips (name 'own': train.txt / test.txt next to classes.txt). Clip dirs starting with
    `annotation_prefix` (default: the lists' own, e.g. /home/user/datasets/DFEW_Face) are
    rewritten to `root`; relative ones are taken relative to `root`. The listed frame
    count is only checked against the disk (the disk count is used).
    """
    if name not in _LIST_FILES:
        raise SourceError(f'no annotation list names known for dataset {name!r}')
    root, annotation_dir = Path(root), Path(annotation_dir)
    _require_dir(root, 'dataset root')
    _require_dir(annotation_dir, 'annotation list folder (data.annotation_dir)')
    names = class_names(name, root=root, annotation_dir=annotation_dir)
    num_classes = len(names)
    # Emotion folder names (AFEW's, FERV39k's) name the 7 classes; elsewhere they mean nothing.
    check_folders = names == CLASS_NAMES
    files = _LIST_FILES[name]
    prefix = annotation_prefix or LIST_PREFIXES[name]
    report = ProblemReport()
    parts = _Partitioner(report)
    listed: dict[str, int] = {}
    directories: dict[str, Path] = {}
    for fold, split_files in files.items():
        paths = {s: annotation_dir / f for s, f in split_files.items()}
        present = [p for p in paths.values() if p.is_file()]
        if not present:
            continue
        if len(present) == 1:
            missing = next(p for p in paths.values() if not p.is_file())
            raise SourceError(f'annotation list missing: {missing} (its pair {present[0]} exists)')
        for split, path in paths.items():
            for line_no, line in enumerate(path.read_text().splitlines(), start=1):
                where = f'{path}:{line_no}'
                fields = line.split()
                if not fields:
                    continue
                try:
                    clip_path, count, label = fields[0], int(fields[1]), int(fields[2])
                    if len(fields) != 3:
                        raise ValueError
                except (ValueError, IndexError):
                    report.skip('unreadable annotation line', f'{where} {line.strip()!r}')
                    continue
                if not 0 <= label < num_classes:
                    report.skip(f'label out of range (lists use 0..{num_classes - 1})', where)
                    continue
                directory = _rewrite(clip_path, prefix, root)
                try:
                    clip_id = directory.relative_to(root).as_posix()
                except ValueError:
                    clip_id = directory.as_posix()
                folder_label = EMOTION_FOLDERS.get(directory.parent.name.lower())
                if check_folders and folder_label is not None and folder_label != label:
                    report.warn('label differs from the emotion folder (using the list)', where)
                listed[clip_id] = count
                directories[clip_id] = directory
                parts.add(fold, split, clip_id, label, where)
    if not parts.partitions:
        expected = ', '.join(sorted({f for s in files.values() for f in s.values()}))
        raise SourceError(
            f'no annotation lists for {name} in {annotation_dir} (expected {expected})'
        )
    return _collect(parts, directories.__getitem__, report, listed, names)


# Where MAFW's single-label split package lies under the root: "Train & Test Set" as
# distributed (SVFAP's preprocess/mafw.py), "split" as MAE-DFER's preprocess/mafw.py
# names it, or the root itself.
_MAFW_SPLIT_PARENTS = ('Train & Test Set', 'split', '')
MAFW_LABELS: dict[str, int] = {n: i for i, n in enumerate(MAFW_CLASS_NAMES)}


def _find_mafw_split_dir(root: Path) -> Path:
    candidates = [root / parent / 'single' / 'no_caption' for parent in _MAFW_SPLIT_PARENTS]
    for path in candidates:
        if path.is_dir():
            return path
    tried = ', '.join(str(p) for p in candidates)
    raise SourceError(f'MAFW single-label split folder not found under {root} (tried {tried})')


def _mafw_split_files(split_dir: Path) -> dict[str, dict[str, Path]]:
    """fold -> split -> split file, for the folds present (set_1 .. set_5)."""
    found: dict[str, dict[str, Path]] = {}
    for fold in range(1, 6):
        paths = {s: split_dir / f'set_{fold}' / f'{s}.txt' for s in SPLITS}
        present = [p for p in paths.values() if p.is_file()]
        if len(present) == 1:
            missing = next(p for p in paths.values() if not p.is_file())
            raise SourceError(f'MAFW fold {fold}: {present[0]} exists but {missing} is missing')
        if present:
            found[str(fold)] = paths
    if not found:
        raise SourceError(
            f'no MAFW split files found: expected {split_dir}/set_1/train.txt and '
            f'{split_dir}/set_1/test.txt'
        )
    return found


def _read_mafw_split(path: Path, report: ProblemReport) -> Iterable[tuple[str, int, str]]:
    """(clip id, label, where) rows of a split file: '<clip>.mp4 <label name>' lines."""
    try:
        text = path.read_text(encoding='utf-8-sig')
    except UnicodeDecodeError as e:
        raise SourceError(
            f'{path}: not UTF-8 text ({e.reason} at byte {e.start}); the single/no_caption '
            'split files are (the with_caption ones are not read)'
        ) from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        where = f'{path}:{line_no}'
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            report.skip('unreadable split line', f'{where} {line.strip()[:80]!r}')
            continue
        video, name = fields
        label = MAFW_LABELS.get(name.lower())
        if label is None:
            # Not one bad row but the wrong file (e.g. the compound split's anger_disgust).
            raise SourceError(
                f'{where}: {name!r} is not a MAFW single-expression label; expected one of '
                f'{", ".join(MAFW_CLASS_NAMES)} (the compound split is not read)'
            )
        yield os.path.splitext(video)[0], label, where


def read_mafw(root: str | os.PathLike, *, frames_root: str | os.PathLike = '') -> SourceIndex:
    """MAFW as distributed: data/frames/<clip>/ + the single-label split text files.

    Splits: `<root>/Train & Test Set/single/no_caption/set_{1..5}/{train,test}.txt` (or
    under `split/`), lines '<clip>.mp4 <label name>'. Frames: `<frames_root>/<clip>/`,
    `<root>/data/frames/<clip>/` by default.
    """
    root = Path(root)
    _require_dir(root, 'dataset root')
    split_dir = _find_mafw_split_dir(root)
    frames = Path(frames_root) if frames_root else root / 'data' / 'frames'
    _require_dir(frames, 'MAFW clip folders (data.frames_root)' if frames_root else 'MAFW frames')
    report = ProblemReport()
    parts = _Partitioner(report)
    for fold, paths in _mafw_split_files(split_dir).items():
        for split, path in paths.items():
            for clip_id, label, where in _read_mafw_split(path, report):
                parts.add(fold, split, clip_id, label, where)
    return _collect(parts, lambda cid: frames / cid, report, class_names=MAFW_CLASS_NAMES)


_CROPS_JPEG_QUALITY = 95  # as frames.py re-encodes
_FACES_INFO = '.faces.json'  # per cropped clip: frame counts, re-reported on later runs
NO_FACE_REASON = 'no usable face (face_crop=detect)'


def _face_pipeline():
    """The video package's face pipeline, imported on first use (PyAV, mtcnn)."""
    try:
        from former_dfer_jax.video import VideoError, faces
    except ImportError as e:
        raise SourceError(f'data.face_crop=detect needs the face pipeline: {e}') from e
    return faces, VideoError


def _report_faces(info: dict, where: str, report: ProblemReport) -> None:
    if info['frames_without_face']:
        report.warn(
            'frames without a face dropped (face_crop=detect)',
            f'{where} ({info["frames_without_face"]} of {info["frames"]})',
        )
    if info['other_faces']:
        report.warn('more than one face: the main one kept (face_crop=detect)', where)


def _crop_clip(
    record: ClipRecord, target: Path, pipeline, crop_size: int, report: ProblemReport
) -> bool:
    """Writes record's face crops into `target` (atomically); False if it has no face."""
    faces, VideoError = pipeline
    no_face = target.with_name(target.name + '.noface')
    try:
        # detector=None: the pipeline's MTCNN, whose network is built once per process.
        video = faces.extract_face_video(record.directory, faces.FaceOptions(crop_size=crop_size))
    except VideoError as e:
        # Remembered, so that a later prepare skips the clip without detecting again.
        no_face.parent.mkdir(parents=True, exist_ok=True)
        files.write_text(no_face, f'{e}\n')
        report.skip(NO_FACE_REASON, str(e))
        return False
    info = {
        'source': record.directory,
        'frames': len(video.frames),
        'frames_without_face': sum(1 for f in video.frames if f.get('face') is None),
        'other_faces': len(video.tracking.other_tracks),
    }
    with staged_folder(target) as tmp:  # never a partial clip, even if interrupted
        faces.save_crops(video, tmp, prefix=target.name, quality=_CROPS_JPEG_QUALITY)
        Path(tmp, _FACES_INFO).write_text(json.dumps(info))
    _report_faces(info, record.directory, report)
    return True


def crop_faces(
    index: SourceIndex,
    face_dir: str | os.PathLike,
    *,
    crop_size: int = FACE_CROP_SIZE,
    progress: bool = False,
) -> SourceIndex:
    """`index` with every clip's frames replaced by its aligned face crops.

    The crops of clip c are written once, as `face_dir/<c>/<c>_<k>.jpg` (k from 1: the
    layout `extract_faces` writes, so face_dir can later be read as data.frames_root with
    face_crop='none'), and reused by later calls. A clip without a face is skipped and
    remembered (`face_dir/<c>.noface` holds the reason): later calls skip it without
    detecting again. Delete face_dir to crop again.
    """
    face_dir = Path(face_dir)
    report = index.report
    pipeline = None
    todo = sum(1 for r in index.clips if not (face_dir / r.clip_id).is_dir())
    clips = []
    bar = files.progress(
        index.clips, desc='Cropping faces', unit=' clips', enabled=bool(progress and todo)
    )
    for record in bar:
        target = face_dir / record.clip_id
        no_face = target.with_name(target.name + '.noface')
        if no_face.is_file():
            report.skip(NO_FACE_REASON, no_face.read_text().strip())
            continue
        if target.is_dir():
            info_file = target / _FACES_INFO
            if info_file.is_file():
                _report_faces(json.loads(info_file.read_text()), record.directory, report)
        else:
            pipeline = pipeline or _face_pipeline()
            if not _crop_clip(record, target, pipeline, crop_size, report):
                continue
        frames = list_frames(target)
        if not frames:  # the video package promises crops; never store an empty clip
            report.skip(NO_FACE_REASON, f'{record.directory}: no crops written')
            continue
        clips.append(
            dataclasses.replace(
                record, directory=str(target), frames=tuple(frames), listed_num_frames=None
            )
        )
    usable = {c.clip_id for c in clips}
    partitions = {
        fold: {s: [c for c in ids if c in usable] for s, ids in members.items()}
        for fold, members in index.partitions.items()
    }
    return SourceIndex(clips, partitions, report, index.class_names)


def read_source(
    name: str,
    root: str | os.PathLike,
    *,
    annotation_dir: str | os.PathLike = '',
    annotation_prefix: str = '',
    frames_root: str | os.PathLike = '',
    face_crop: str = 'none',
    face_dir: str | os.PathLike = '',
    progress: bool = False,
) -> SourceIndex:
    """Dispatch on the dataset name: annotation lists if given, else the native layout.

    'own' always reads lists (from `annotation_dir`, else `root`). `frames_root` moves
    MAFW's clip folders (e.g. to faces `extract_faces` cropped); face_crop='detect' crops
    every clip's faces into `face_dir` first (see `crop_faces`).
    """
    if name not in DATASETS:
        raise SourceError(f'unknown dataset {name!r}; expected one of {DATASETS}')
    if not root:
        raise SourceError(f'no dataset root given for {name!r} (set data.root)')
    if face_crop not in FACE_CROPS:
        raise SourceError(f'unknown face_crop {face_crop!r}; expected one of {FACE_CROPS}')
    if face_crop == 'detect' and not face_dir:
        raise SourceError('face_crop=detect needs a folder to write the face crops to')
    if annotation_dir or name == 'own':
        index = read_annotation_lists(name, root, annotation_dir or root, annotation_prefix)
    elif name in ('dfew', 'synthetic'):
        index = read_dfew(root)
    elif name == 'afew':
        index = read_afew_folders(root)
    elif name == 'mafw':
        index = read_mafw(root, frames_root=frames_root)
    else:
        raise SourceError(
            'FERV39k: its split comes from the reference annotation lists; set '
            'data.annotation_dir to a folder holding FERV39K_train.txt and FERV39K_test.txt '
            '(clips under <root>/2_ClipsforFaceCrop/<Scene>/<Emotion>/<clip>/)'
        )
    if face_crop == 'detect':
        index = crop_faces(index, face_dir, progress=progress)
    return index


def count_labels(labels: Sequence[int], num_classes: int = NUM_CLASSES) -> list[int]:
    """Clips per class, in label order."""
    counts = [0] * num_classes
    for label in labels:
        counts[label] += 1
    return counts
