"""The dataset cache: raw clips -> TFDS records under the cache dir, prepared once, reused.

`prepare(config)` prepares the config's dataset on first use (training, evaluation and the
command `python -m former_dfer_jax.data.prepare` call it) and returns it. Atomic: TFDS writes
into a temporary folder and renames it when (and only when) every clip was written, so a
crashed or interrupted prepare is never taken as done; running again starts over.
Concurrent prepares of one dataset (several processes on a host) are serialised by a file
lock; the later ones find it done. A synthetic dataset is generated into the cache first.
"""

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import ml_collections
import tensorflow_datasets as tfds

from former_dfer_jax.data import builder as builder_lib
from former_dfer_jax.data import records, sources, synthetic_dataset

CACHE_ENV = 'FORMER_DFER_CACHE'


def cache_root(config: ml_collections.ConfigDict) -> Path:
    """data.cache_dir, else $FORMER_DFER_CACHE, else ~/.cache/former_dfer_jax."""
    path = config.data.cache_dir or os.environ.get(CACHE_ENV) or '~/.cache/former_dfer_jax'
    return Path(path).expanduser().absolute()


def _short_hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def _synthetic_params(config: ml_collections.ConfigDict) -> dict:
    if 'synthetic' not in config.data:
        raise ValueError("data.name='synthetic' needs config.data.synthetic (configs/synthetic.py)")
    return dict(config.data.synthetic.to_dict())


def raw_root(config: ml_collections.ConfigDict) -> Path:
    """The raw dataset root; for data.name='synthetic' with no root, the generated one."""
    if config.data.root:
        return Path(config.data.root).expanduser().absolute()
    if config.data.name != 'synthetic':
        raise sources.SourceError(
            f'data.root is not set: point it at the raw {config.data.name} dataset '
            '(see data/README.md for the layout)'
        )
    params = _synthetic_params(config)
    return cache_root(config) / 'synthetic' / _short_hash(params) / 'raw'


def ensure_synthetic(config: ml_collections.ConfigDict) -> Path:
    """Generates the synthetic raw dataset if data.root is '' and it is not complete yet."""
    root = raw_root(config)
    if config.data.name == 'synthetic' and not config.data.root:
        with _lock(root.parent / 'generate'):
            if not synthetic_dataset.is_complete(os.fspath(root)):
                synthetic_dataset.generate_dataset(os.fspath(root), **_synthetic_params(config))
    return root


def builder_config_name(config: ml_collections.ConfigDict) -> str:
    """e.g. dfew, dfew_lists, afew_f128, synthetic_<hash of its params or root>."""
    data = config.data
    name = data.name
    if name not in sources.DATASETS:
        raise ValueError(f'unknown data.name {name!r}; expected one of {sources.DATASETS}')
    if name == 'synthetic':
        key = {'root': str(raw_root(config))} if data.root else _synthetic_params(config)
        name = f'synthetic_{_short_hash(key)}'
    if name == 'own' or data.frames_root:
        # A user's own clips (or MAFW frames read from elsewhere): one dataset per folder.
        name += f'_{_short_hash(_source_key(config))}'
    if data.annotation_dir:
        name += '_lists'
    if data.face_crop == 'detect':
        name += '_faces'
    if data.stored_frame_size:
        name += f'_f{int(data.stored_frame_size)}'
    return name


def _source_key(config: ml_collections.ConfigDict) -> dict:
    data = config.data
    paths = {'root': data.root, 'annotation_dir': data.annotation_dir, 'frames': data.frames_root}
    return {k: os.path.abspath(v) if v else '' for k, v in paths.items()}


def face_dir(config: ml_collections.ConfigDict) -> Path:
    """Where data.face_crop='detect' caches the face crops of the config's clips."""
    key = {**_source_key(config), 'name': config.data.name, 'size': sources.FACE_CROP_SIZE}
    return cache_root(config) / 'faces' / f'{config.data.name}_{_short_hash(key)}'


def make_builder(
    config: ml_collections.ConfigDict, *, progress: bool = True
) -> builder_lib.FormerDfer:
    data = config.data
    name = builder_config_name(config)
    builtin = {c.name for c in builder_lib.FormerDfer.BUILDER_CONFIGS}
    return builder_lib.FormerDfer(
        data_dir=os.fspath(cache_root(config) / 'tfds'),
        # TFDS takes its built-in configs by name only; others are passed whole.
        config=name
        if name in builtin
        else builder_lib.FormerDferConfig(
            name=name,
            dataset=data.name,
            stored_frame_size=int(data.stored_frame_size),
            description=f'{data.name}, stored_frame_size={data.stored_frame_size}',
        ),
        annotation_dir=data.annotation_dir,
        annotation_prefix=data.annotation_prefix,
        frames_root=data.frames_root,
        face_crop=data.face_crop,
        face_dir=os.fspath(face_dir(config)) if data.face_crop == 'detect' else '',
        class_names=sources.class_names(
            data.name, root=data.root, annotation_dir=data.annotation_dir
        ),
        segment_length=int(data.segment_length),
        progress=progress,
    )


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f'{path}.lock', 'w') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclasses.dataclass
class Prepared:
    """A prepared dataset: its metadata and where its records lie."""

    name: str
    data_dir: str
    metadata: dict
    features: tfds.features.FeaturesDict
    files: tuple[str, ...]

    @functools.cached_property
    def index(self) -> records.RecordIndex:
        index = records.scan_tfrecords(self.files)
        if len(index) != len(self.metadata['clip_ids']):
            raise RuntimeError(
                f'{self.data_dir}: {len(index)} records but {len(self.metadata["clip_ids"])} '
                'clips in its metadata; delete the folder to prepare again'
            )
        # Record i must be clip i of the metadata: spot-check both ends.
        for i in {0, len(index) - 1}:
            path = index.files[index.file_ids[i]].encode()
            data = records.read_record(path, index.offsets[i], index.lengths[i])
            clip_id = self.features.deserialize_example(data)['clip_id'].numpy().decode()
            if clip_id != self.metadata['clip_ids'][i]:
                raise RuntimeError(
                    f'{self.data_dir}: record {i} is clip {clip_id}, not '
                    f'{self.metadata["clip_ids"][i]}; delete it to rebuild'
                )
        return index

    @property
    def summary(self) -> str:
        return self.metadata['summary']


def prepared_dir(config: ml_collections.ConfigDict) -> Path:
    """Where TFDS keeps the prepared data of `config` (it may not exist yet)."""
    name, version = builder_lib.FormerDfer.name, str(builder_lib.FormerDfer.VERSION)
    return cache_root(config) / 'tfds' / name / builder_config_name(config) / version


def prepare(config: ml_collections.ConfigDict, *, progress: bool = True) -> Prepared:
    """Prepares the dataset of `config` if needed and returns it."""
    # TFDS renames its temporary folder to this one only once everything is written.
    info_file = prepared_dir(config) / 'dataset_info.json'
    if not info_file.is_file():
        with _lock(info_file.parent.parent):
            if not info_file.is_file():  # another process may have prepared it meanwhile
                _build(config, progress)
    key = (os.fspath(info_file), info_file.stat().st_mtime_ns)
    if key not in _PREPARED:
        _PREPARED[key] = _open_prepared(config, make_builder(config, progress=progress))
    return _PREPARED[key]


def _build(config: ml_collections.ConfigDict, progress: bool) -> None:
    builder = make_builder(config, progress=progress)
    root = ensure_synthetic(config)
    if not root.is_dir():
        raise sources.SourceError(f'dataset root not found: {root}')
    logging.info('Preparing %s from %s into %s', builder.name, root, builder.data_dir)
    tfds.disable_progress_bar()  # ours counts clips against a total; TFDS's cannot
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(root),
            try_download_gcs=False,
            compute_stats=tfds.download.ComputeStatsMode.SKIP,
        )
    )
    clean = ', 0 skipped.' in builder.summary and 'warning:' not in builder.summary
    log = logging.info if clean else logging.warning
    log('Prepared %s (%s):\n%s', builder.builder_config.name, builder.data_dir, builder.summary)


# Opened datasets by (dataset_info.json path, mtime): every load() call reuses the parsed
# metadata and the record index instead of reading them again.
_PREPARED: dict[tuple[str, int], Prepared] = {}


def _open_prepared(config: ml_collections.ConfigDict, builder: builder_lib.FormerDfer) -> Prepared:
    metadata = dict(builder.info.metadata)
    if metadata.get('format') != builder_lib.METADATA_FORMAT:
        raise RuntimeError(f'{builder.data_dir}: unknown metadata format; delete it to rebuild')
    if config.data.root and os.path.abspath(config.data.root) != metadata['root']:
        logging.warning(
            'Using data prepared from %s although data.root is %s (delete %s to rebuild)',
            metadata['root'],
            config.data.root,
            builder.data_dir,
        )
    split = builder.info.splits[builder_lib.SPLIT]
    return Prepared(
        name=builder.builder_config.name,
        data_dir=os.fspath(builder.data_dir),
        metadata=metadata,
        features=builder.info.features,
        files=tuple(os.fspath(f) for f in split.filepaths),
    )
