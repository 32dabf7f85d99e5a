"""The TFDS builder: raw clips (the manual dir) -> one TFRecord split of checked clips.

Manual-download style: the raw dataset root is `DownloadConfig(manual_dir=...)`. One
builder config per dataset source and stored frame size (e.g. `dfew`, `dfew_lists`,
`afew`, `ferv39k_lists_f128`, `synthetic_<hash>`). All of a dataset's clips are stored
once, in one split named 'clips', in a fixed order (sorted by clip id; shuffling is
disabled so the i-th stored record is the i-th clip). Folds are lists of record indices
in the dataset's metadata: DFEW's five folds are five partitions of the same 11,697 clips,
so storing each fold separately would cost five times the disk for nothing.

Each example holds all of a clip's frames as encoded JPEG bytes (`frames`, a string
vector), so the input pipeline gathers the sampled frames and decodes only those.
Metadata (metadata.json, written by TFDS with the data, atomically): clip ids, labels,
frame counts and sizes, partitions, the problem report, the source it was built from, and
what opening it checks: each record file's size (`shard_bytes`) and each record's CRC-32
(`record_crc32`, read back once the records are written).
"""

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from former_dfer_jax import files
from former_dfer_jax.data import frames as frames_lib
from former_dfer_jax.data import records, sources

METADATA_FORMAT = 1
SPLIT = 'clips'


def _not_custom_config_notice(record: logging.LogRecord) -> bool:
    # Our configs are made per dataset / stored size / synthetic parameters, so TFDS's
    # warning that a config is not predefined says nothing: drop it.
    return not str(record.msg).startswith('Using custom data configuration')


absl_logging.get_absl_logger().addFilter(_not_custom_config_notice)


@dataclasses.dataclass
class FormerDferConfig(tfds.core.BuilderConfig):
    """Which raw source is read, and the size frames are stored at (0 = as they are)."""

    dataset: str = 'dfew'
    stored_frame_size: int = 0


def _ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """fn over items on a thread pool, results in order, a bounded number in flight.

    Threads suffice: file reads, PIL and TF decoding all release the GIL.
    """
    lookahead = 4 * workers
    with concurrent.futures.ThreadPoolExecutor(workers) as executor:
        iterator = iter(items)
        pending = collections.deque(
            executor.submit(fn, x) for x in itertools.islice(iterator, lookahead)
        )
        while pending:
            result = pending.popleft().result()
            for x in itertools.islice(iterator, 1):
                pending.append(executor.submit(fn, x))
            yield result


class FormerDfer(tfds.core.GeneratorBasedBuilder):
    """Dynamic facial expression clips (DFEW, AFEW, FERV39k, synthetic) for Former-DFER."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES: ClassVar[dict[str, str]] = {'1.0.0': 'Initial release.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        'Point manual_dir (data.root) at the raw dataset as its owners distribute it; '
        'see data/README.md for the layouts.'
    )
    BUILDER_CONFIGS: ClassVar[list[FormerDferConfig]] = [
        FormerDferConfig(name=name, dataset=name, description=f'{name}, frames as distributed')
        for name in ('dfew', 'afew')
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls) -> None:
        # Nothing is downloaded, so no checksums file. TFDS's default looks for one next to
        # this module through `code_path`, which needs the `importlib_resources` backport
        # that tensorflow-datasets 4.9.10 does not install on Python >= 3.9.
        return None

    def __init__(
        self,
        *,
        annotation_dir: str = '',
        annotation_prefix: str = '',
        frames_root: str = '',
        face_crop: str = 'none',
        face_dir: str = '',
        class_names: tuple[str, ...] = sources.CLASS_NAMES,
        segment_length: int = 2,
        num_workers: int | None = None,
        progress: bool = True,
        **kwargs: Any,
    ):
        self._annotation_dir = annotation_dir
        self._annotation_prefix = annotation_prefix
        self._frames_root = frames_root
        self._face_crop = face_crop
        self._face_dir = face_dir
        self._class_names = tuple(class_names)  # _info (called by super().__init__) needs them
        self._segment_length = segment_length
        self._num_workers = num_workers or os.cpu_count() or 1
        self._progress = progress
        self.summary = ''
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    'frames': tfds.features.Tensor(shape=(None,), dtype=np.object_),
                    'label': tfds.features.ClassLabel(names=self._class_names),
                    'clip_id': tfds.features.Text(),
                    'num_frames': tfds.features.Scalar(dtype=np.int32),
                    'height': tfds.features.Scalar(dtype=np.int32),
                    'width': tfds.features.Scalar(dtype=np.int32),
                }
            ),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _download_and_prepare(self, dl_manager, download_config) -> None:
        super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
        # Written into the temporary folder, before TFDS writes the metadata there.
        index = records.scan_tfrecords(self.info.splits[SPLIT].filepaths)
        self.info.metadata.update(
            {
                'shard_bytes': {
                    os.path.basename(path): int(size)
                    for path, size in zip(index.files, index.file_sizes, strict=True)
                },
                'record_crc32': records.payload_checksums(index).tolist(),
            }
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = os.fspath(dl_manager.manual_dir)
        source = sources.read_source(
            self.builder_config.dataset,
            root,
            annotation_dir=self._annotation_dir,
            annotation_prefix=self._annotation_prefix,
            frames_root=self._frames_root,
            face_crop=self._face_crop,
            face_dir=self._face_dir,
            progress=self._progress,
        )
        if source.class_names != self._class_names:
            raise sources.SourceError(
                f'{root}: its classes changed since the builder was made: {source.class_names}'
            )
        return {SPLIT: self._generate_examples(source, root)}

    def _generate_examples(self, source: sources.SourceIndex, root: str):
        report = source.report
        size = self.builder_config.stored_frame_size
        kept: list[sources.ClipRecord] = []
        sizes: list[tuple[int, int]] = []
        encoded_clips = _ordered_map(
            lambda r: frames_lib.encode_clip(r, stored_frame_size=size),
            source.clips,
            self._num_workers,
        )
        bar = files.progress(
            encoded_clips,
            total=len(source.clips),
            desc=f'Checking and storing {self.builder_config.name} clips',
            unit=' clips',
            enabled=self._progress,
        )
        # With shuffling disabled TFDS writes records in key order, but it buckets them by
        # key / 2**128 first: small keys would all land in one bucket that is sorted in
        # memory (the whole dataset). Spreading the keys over the range keeps the order and
        # the buckets small.
        spacing = (2**128 - 1) // max(len(source.clips), 1)
        for position, (clip, clip_report) in enumerate(bar):
            report.merge(clip_report)
            if clip is None:
                continue
            record = clip.record
            if record.num_frames < self._segment_length:
                report.warn(
                    f'clip shorter than segment_length={self._segment_length} frames '
                    '(its last frame is repeated, as in the reference)',
                    record.directory,
                )
            kept.append(record)
            sizes.append((clip.height, clip.width))
            yield (
                position * spacing,
                {
                    'frames': np.array(clip.frames, dtype=object),
                    'label': record.label,
                    'clip_id': record.clip_id,
                    'num_frames': record.num_frames,
                    'height': clip.height,
                    'width': clip.width,
                },
            )
        self.summary = report.summary(len(kept))
        if not kept:
            raise sources.SourceError(f'no usable clips under {root}:\n{self.summary}')
        position = {r.clip_id: i for i, r in enumerate(kept)}
        partitions = {
            fold: {s: [position[c] for c in ids if c in position] for s, ids in members.items()}
            for fold, members in source.partitions.items()
        }
        self.info.metadata.update(
            {
                'format': METADATA_FORMAT,
                'dataset': self.builder_config.dataset,
                'root': os.path.abspath(root),
                'annotation_dir': self._annotation_dir,
                'class_names': list(source.class_names),
                'stored_frame_size': size,
                'clip_ids': [r.clip_id for r in kept],
                'labels': [r.label for r in kept],
                'num_frames': [r.num_frames for r in kept],
                'heights': [h for h, _ in sizes],
                'widths': [w for _, w in sizes],
                'partitions': partitions,
                'report': report.to_json(),
                'summary': self.summary,
            }
        )
