"""Raw dataset layouts -> clip records and train/test partitions.

Reads the datasets as their owners distribute them (DFEW's CSV split files, AFEW's
emotion folders) or through the reference code's annotation lists, and returns every
usable clip once (frames sorted numerically) plus, per fold, which clips are train and
which are test. Nothing here decodes images: that is `frames.py`, at prepare time.

Problems with single clips (missing or empty folder, bad label, duplicate) skip that clip
and are recorded in a `ProblemReport`; problems that make the whole source unusable
(missing root, no split file) raise `SourceError` naming the path.
"""

import collections
import csv
import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from former_dfer_jax.errors import UserError

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
NUM_CLASSES = len(CLASS_NAMES)
DATASETS = ('dfew', 'afew', 'ferv39k', 'synthetic')

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
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')

# The absolute prefix of the reference's annotation lists, per file-name stem.
REFERENCE_PREFIXES = {
    'DFEW': '/home/user/datasets/DFEW_Face',
    'AFEW': '/home/user/datasets/AFEW_Face',
    'FERV39K': '/home/user/datasets/FERV39K',
}
# Annotation list files per dataset: fold -> split -> file name.
_LIST_FILES: dict[str, dict[str, dict[str, str]]] = {
    'dfew': {
        str(k): {'train': f'DFEW_set_{k}_train.txt', 'test': f'DFEW_set_{k}_test.txt'}
        for k in range(1, 6)
    },
    'afew': {'0': {'train': 'AFEW_train.txt', 'test': 'AFEW_validation.txt'}},
    'ferv39k': {'0': {'train': 'FERV39K_train.txt', 'test': 'FERV39K_test.txt'}},
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


_LAST_NUMBER = re.compile(r'(\d+)(?!.*\d)')


def frame_sort_key(name: str) -> tuple[int, int, str]:
    """Sort key putting x_2.jpg before x_10.jpg: the last number in the file stem."""
    stem = os.path.splitext(os.path.basename(name))[0]
    match = _LAST_NUMBER.search(stem)
    if match is None:
        return (1, 0, stem)  # names without a number go last, by name
    return (0, int(match.group(1)), stem)


def list_frames(directory: str | os.PathLike) -> list[str]:
    """Image files in `directory`, in numeric frame order (non-image files are ignored)."""
    names = [
        entry.name
        for entry in os.scandir(directory)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    names.sort(key=frame_sort_key)
    return [os.path.join(directory, name) for name in names]


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


def _collect(parts: _Partitioner, directory_of, report: ProblemReport, listed=None) -> SourceIndex:
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
    return SourceIndex(clips, partitions, report)


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


def read_annotation_lists(
    name: str,
    root: str | os.PathLike,
    annotation_dir: str | os.PathLike,
    annotation_prefix: str = '',
) -> SourceIndex:
    """The reference code's lists: '<clip dir> <num_frames> <label 0..6>' per line.

    Clip dirs starting with `annotation_prefix` (default: the reference's own,
    e.g. /home/user/datasets/DFEW_Face) are rewritten to `root`. The listed frame count
    is only checked against the disk (the disk count is used).
    """
    if name not in _LIST_FILES:
        raise SourceError(f'no annotation list names known for dataset {name!r}')
    root, annotation_dir = Path(root), Path(annotation_dir)
    _require_dir(root, 'dataset root')
    _require_dir(annotation_dir, 'annotation list folder (data.annotation_dir)')
    files = _LIST_FILES[name]
    stem = files[next(iter(files))]['train'].split('_')[0]
    prefix = annotation_prefix or REFERENCE_PREFIXES[stem]
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
                if not 0 <= label < NUM_CLASSES:
                    report.skip(f'label out of range (lists use 0..{NUM_CLASSES - 1})', where)
                    continue
                directory = _rewrite(clip_path, prefix, root)
                try:
                    clip_id = directory.relative_to(root).as_posix()
                except ValueError:
                    clip_id = directory.as_posix()
                folder_label = EMOTION_FOLDERS.get(directory.parent.name.lower())
                if folder_label is not None and folder_label != label:
                    report.warn('label differs from the emotion folder (using the list)', where)
                listed[clip_id] = count
                directories[clip_id] = directory
                parts.add(fold, split, clip_id, label, where)
    if not parts.partitions:
        expected = ', '.join(sorted({f for s in files.values() for f in s.values()}))
        raise SourceError(
            f'no annotation lists for {name} in {annotation_dir} (expected {expected})'
        )
    return _collect(parts, directories.__getitem__, report, listed)


def read_source(
    name: str,
    root: str | os.PathLike,
    *,
    annotation_dir: str | os.PathLike = '',
    annotation_prefix: str = '',
) -> SourceIndex:
    """Dispatch on the dataset name: annotation lists if given, else the native layout."""
    if name not in DATASETS:
        raise SourceError(f'unknown dataset {name!r}; expected one of {DATASETS}')
    if not root:
        raise SourceError(f'no dataset root given for {name!r} (set data.root)')
    if annotation_dir:
        return read_annotation_lists(name, root, annotation_dir, annotation_prefix)
    if name in ('dfew', 'synthetic'):
        return read_dfew(root)
    if name == 'afew':
        return read_afew_folders(root)
    raise SourceError(
        'FERV39k: its split comes from the reference annotation lists; set '
        'data.annotation_dir to a folder holding FERV39K_train.txt and FERV39K_test.txt '
        '(clips under <root>/2_ClipsforFaceCrop/<Scene>/<Emotion>/<clip>/)'
    )


def count_labels(labels: Sequence[int]) -> list[int]:
    """Clips per class, in label order."""
    counts = [0] * NUM_CLASSES
    for label in labels:
        counts[label] += 1
    return counts
