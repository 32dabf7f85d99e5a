"""The dataset cache: raw clips -> TFDS records under the cache dir, prepared once, reused.

`prepare(config)` prepares the config's dataset on first use (training, evaluation and the
command `python -m former_dfer_jax.data.prepare` call it) and returns it. Atomic: TFDS writes
into a temporary folder and renames it when (and only when) every clip was written, so a
crashed or interrupted prepare is never taken as done; running again starts over. A full
disk removes the half-written folder and says so in one line (`files.no_space`).
Concurrent prepares of one dataset (several processes on a host) are serialised by a file
lock; the later ones find it done. A synthetic dataset is generated into the cache first.

Damage: every `prepare` checks the record files against the sizes preparation recorded
(one stat a file), and every read checks its record's CRC-32 (records.py). Damaged data
(a file missing or cut short, a record that failed a read, data of another format) is
prepared again from the source, with a warning naming the file; without the source, a
one-line UserError names the file and the command that prepares it again.
"""

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from former_dfer_jax import files
from former_dfer_jax.data import builder as builder_lib
from former_dfer_jax.data import records, sources, synthetic_dataset
from former_dfer_jax.errors import UserError

CACHE_ENV = 'FORMER_DFER_CACHE'
# Written into a prepared dataset's folder when a read finds one of its records damaged:
# the next prepare() prepares it again.
DAMAGE_FILE = 'damaged.json'


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


def _generated(config: ml_collections.ConfigDict) -> bool:
    """Whether the raw data of `config` is the synthetic dataset generated into the cache."""
    return config.data.name == 'synthetic' and not config.data.root


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
    if _generated(config):
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
    """A prepared dataset: its metadata, where its records lie, how to prepare it again."""

    name: str
    data_dir: str
    metadata: dict
    features: tfds.features.FeaturesDict
    files: tuple[str, ...]
    shard_lengths: tuple[int, ...]
    rebuild: str  # the command that prepares it again

    def damage(self) -> records.DamagedFileError | None:
        """What is damaged, by the cheap checks: the format, the damage a read recorded,
        each record file's size against the one recorded at preparation."""
        if self.metadata.get('format') != builder_lib.METADATA_FORMAT:
            found, expected = self.metadata.get('format'), builder_lib.METADATA_FORMAT
            reason = f'metadata format {found}, not {expected}'
            return records.DamagedFileError(Path(self.data_dir, 'metadata.json'), reason)
        with contextlib.suppress(OSError, ValueError, KeyError):
            found = json.loads(Path(self.data_dir, DAMAGE_FILE).read_text())
            return records.DamagedFileError(found['file'], found['reason'])
        sizes = self.metadata.get('shard_bytes', {})
        for path in self.files:
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                return records.DamagedFileError(path, 'missing')
            expected = sizes.get(os.path.basename(path), size)
            if size < expected:
                return records.DamagedFileError(path, f'cut short ({size} of {expected} bytes)')
            if size != expected:
                return records.DamagedFileError(path, f'{size} bytes, not the {expected} written')
        return None

    def damaged(self, damage: records.DamagedFileError) -> UserError:
        """The error for `damage` found while reading, recorded so that the next prepare()
        prepares the data again."""
        with contextlib.suppress(OSError):  # e.g. a read-only cache: the error still says it
            files.write_json(
                Path(self.data_dir, DAMAGE_FILE), {'file': damage.path, 'reason': damage.reason}
            )
        return UserError(f'prepared data damaged ({damage}); prepare it again: {self.rebuild}')

    def verify(self) -> records.DamagedFileError | None:
        """The first record file that TF's reader finds damaged (reads every file whole)."""
        for path, length in zip(self.files, self.shard_lengths, strict=True):
            if (reason := records.verify(path, length)) is not None:
                return records.DamagedFileError(path, reason)
        return None

    @functools.cached_property
    def index(self) -> records.RecordIndex:
        try:
            index = records.scan_tfrecords(self.files)
        except records.DamagedFileError as e:
            raise self.damaged(e) from e
        counts = np.bincount(index.file_ids, minlength=len(self.files))
        for path, count, length in zip(self.files, counts, self.shard_lengths, strict=True):
            if count != length:
                raise self.damaged(
                    records.DamagedFileError(path, f'{count} records, not the {length} written')
                )
        if 'record_crc32' in self.metadata:
            index = dataclasses.replace(
                index, checksums=np.asarray(self.metadata['record_crc32'], np.int64)
            )
        # Record i must be clip i of the metadata: spot-check both ends.
        for i in {0, len(index) - 1}:
            try:
                data = index.read(i)
            except records.DamagedFileError as e:
                raise self.damaged(e) from e
            clip_id = self.features.deserialize_example(data)['clip_id'].numpy().decode()
            if clip_id != self.metadata['clip_ids'][i]:
                path = index.files[index.file_ids[i]]
                reason = f'record {i} is clip {clip_id}, not {self.metadata["clip_ids"][i]}'
                raise self.damaged(records.DamagedFileError(path, reason))
        return index

    @property
    def summary(self) -> str:
        return self.metadata['summary']


def prepared_dir(config: ml_collections.ConfigDict) -> Path:
    """Where TFDS keeps the prepared data of `config` (it may not exist yet)."""
    name, version = builder_lib.FormerDfer.name, str(builder_lib.FormerDfer.VERSION)
    return cache_root(config) / 'tfds' / name / builder_config_name(config) / version


def prepare(config: ml_collections.ConfigDict, *, progress: bool = True) -> Prepared:
    """Prepares the dataset of `config` if needed (again where it is damaged: see
    `Prepared.damage`) and returns it."""
    prepared = _open(config, progress)
    if prepared is None or prepared.damage():
        with _lock(prepared_dir(config).parent):
            prepared = _open(config, progress)  # another process may have prepared it meanwhile
            damage = prepared and prepared.damage()
            if damage:
                _discard(config, prepared, damage)
            if prepared is None or damage:
                _build(config, progress, replacing=bool(damage))
                prepared = _open(config, progress)
    return prepared


def _source_is_there(config: ml_collections.ConfigDict) -> bool:
    return _generated(config) or (bool(config.data.root) and raw_root(config).is_dir())


def _discard(
    config: ml_collections.ConfigDict, prepared: Prepared, damage: records.DamagedFileError
) -> None:
    """Removes the damaged `prepared` data, or says why it cannot be prepared again."""
    if not _source_is_there(config):
        root = config.data.root or prepared.metadata.get('root', '<the raw dataset>')
        raise UserError(
            f'prepared data damaged ({damage}) and its source {root} is not there; with it '
            f'back, prepare it again: {prepared.rebuild}'
        )
    logging.warning(
        'Prepared data damaged (%s); preparing %s again from %s',
        damage,
        prepared.name,
        raw_root(config),
    )
    for key in [k for k, v in _PREPARED.items() if v is prepared]:
        del _PREPARED[key]
    shutil.rmtree(prepared.data_dir)


def _build(config: ml_collections.ConfigDict, progress: bool, *, replacing: bool) -> None:
    builder = make_builder(config, progress=progress)
    root = ensure_synthetic(config)
    if not root.is_dir():
        raise sources.SourceError(f'dataset root not found: {root}')
    target = prepared_dir(config)
    # What a killed prepare left (TFDS removes its temporary folder on an exception).
    for leftover in target.parent.glob(f'{tfds.core.constants.INCOMPLETE_PREFIX}*_{target.name}'):
        shutil.rmtree(leftover, ignore_errors=True)
    logging.info('Preparing %s from %s into %s', builder.name, root, builder.data_dir)
    tfds.disable_progress_bar()  # ours counts clips against a total; TFDS's cannot
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=os.fspath(root),
                try_download_gcs=False,
                compute_stats=tfds.download.ComputeStatsMode.SKIP,
            )
        )
    except Exception as e:
        if not files.is_no_space(e):
            raise
        kept = 'the half-written records were removed'
        kept += ', as was the damaged data they were to replace' if replacing else ''
        if config.data.face_crop == 'detect':
            kept += f'; the face crops made so far are kept in {face_dir(config)}'
        else:
            kept += '; nothing else was changed'
        name = builder.builder_config.name
        raise files.no_space(f'the {name} data prepared from {root}', target.parent, kept) from e
    clean = ', 0 skipped.' in builder.summary and 'warning:' not in builder.summary
    log = logging.info if clean else logging.warning
    log('Prepared %s (%s):\n%s', builder.builder_config.name, builder.data_dir, builder.summary)


# Opened datasets by (dataset_info.json path, mtime): every load() call reuses the parsed
# metadata and the record index instead of reading them again.
_PREPARED: dict[tuple[str, int], Prepared] = {}


def _open(config: ml_collections.ConfigDict, progress: bool) -> Prepared | None:
    """The prepared data of `config` (opened once per process), None if not prepared."""
    # TFDS renames its temporary folder to this one only once everything is written.
    info_file = prepared_dir(config) / 'dataset_info.json'
    try:
        key = (os.fspath(info_file), info_file.stat().st_mtime_ns)
    except FileNotFoundError:
        return None
    if key not in _PREPARED:
        _PREPARED[key] = _open_prepared(config, make_builder(config, progress=progress))
    return _PREPARED[key]


def prepare_command(config: ml_collections.ConfigDict, root: str = '') -> str:
    """The command that prepares the data of `config` (from `root` if data.root is ''):
    with this command line's --config and --config.data.* flags where it has them."""
    args = [a for a in sys.argv[1:] if a.startswith(('--config=', '--config.data.'))]
    if not any(a.startswith('--config=') for a in args):
        args.insert(0, "--config=<this run's config>")
    root = config.data.root or root
    if root and not any(a.startswith('--config.data.root=') for a in args):
        args.append(f'--config.data.root={os.path.abspath(root)}')
    quoted = [a if a.startswith('--config=<') else shlex.quote(a) for a in args]
    return ' '.join(['python -m former_dfer_jax.data.prepare', *quoted])


def _open_prepared(config: ml_collections.ConfigDict, builder: builder_lib.FormerDfer) -> Prepared:
    metadata = dict(builder.info.metadata)
    if config.data.root and os.path.abspath(config.data.root) != metadata.get('root'):
        logging.warning(
            'Using data prepared from %s although data.root is %s (delete %s to rebuild)',
            metadata.get('root'),
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
        shard_lengths=tuple(int(n) for n in split.shard_lengths),
        rebuild=prepare_command(config, '' if _generated(config) else metadata.get('root', '')),
    )
