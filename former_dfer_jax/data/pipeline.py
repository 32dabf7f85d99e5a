"""The tf.data input pipeline: prepared clips -> batches of numpy arrays for one process.

Order is decided in numpy, on record indices, before any byte is read:
- train: a full permutation of the train clips seeded by (seed, epoch); the last partial
  global batch is dropped.
- test / validation: every clip once, in record order; the last global batch is padded
  with repeats of the split's first clip, marked mask=False.
The GLOBAL batch order is the same on every process; process p takes rows
[p*b, (p+1)*b) of each global batch (b = global batch / process count), so the global
batch does not depend on the number of processes. `start_batch` drops whole batches from
that index order, so resuming never reads or decodes the skipped clips.

Everything random is decided there too, in numpy: a clip's sampled frames (sampling.py),
crop window and flip (augment.py) come from row `record index` of a uniform matrix drawn
from a generator seeded by (seed, epoch), so they depend on (seed, epoch, clip) only: the
same batches run after run, whatever the parallelism, process count or start_batch.
tf.data then only reads, decodes the sampled frames, crops, resizes, flips and batches.
A read that fails on damaged records (a checksum, a file cut short or removed) is raised as
the UserError naming the file and the command that prepares the data again (cache.py).
"""

import dataclasses
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from former_dfer_jax.data import augment, records, sampling, sources
from former_dfer_jax.data.cache import Prepared, prepare

SPLITS = ('train', 'validation', 'test')
# Seed-sequence entries keeping the validation draw, the epoch order and the clips' draws
# independent streams.
_VALIDATION_STREAM, _ORDER_STREAM, _CLIP_DRAWS_STREAM = 0x5EED_0A11, 0, 1


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about the data of a config."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    num_clips: dict[str, int]  # per split: train, test (and validation if carved out)
    class_counts: dict[str, list[int]]  # per split, clips per class in label order
    batch_size: int  # global
    eval_batch_size: int  # global
    steps_per_epoch: int  # train clips // global batch size (last partial batch dropped)
    num_eval_batches: dict[str, int]  # per eval split: ceil(clips / eval batch size)
    num_frames: int  # T = num_segments * segment_length
    image_size: int


def _fold_members(prepared: Prepared, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    fold = str(config.data.fold)
    partitions = prepared.metadata['partitions']
    if fold not in partitions:
        raise ValueError(
            f'data.fold={config.data.fold} is not in the prepared {prepared.name} data '
            f'(folds: {sorted(partitions)}); DFEW folds are 1..5, AFEW and FERV39k use 0'
        )
    return {s: np.asarray(ids, np.int64) for s, ids in partitions[fold].items()}


def class_names(prepared: Prepared) -> tuple[str, ...]:
    """The prepared data's class names in label order."""
    return tuple(prepared.metadata.get('class_names', sources.CLASS_NAMES))


def split_indices(prepared: Prepared, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Record indices per split (sorted). Validation: a stratified, seeded part of train."""
    members = _fold_members(prepared, config)
    train, test = members['train'], members['test']
    out = {'train': train, 'test': test}
    fraction = float(config.data.val_fraction)
    if fraction > 0:
        if fraction >= 1:
            raise ValueError(f'data.val_fraction must be in [0, 1), got {fraction}')
        labels = np.asarray(prepared.metadata['labels'], np.int64)[train]
        rng = np.random.default_rng([int(config.seed), _VALIDATION_STREAM])
        held = []
        for label in range(len(class_names(prepared))):
            of_class = train[labels == label]
            take = round(fraction * len(of_class))
            held.append(rng.permutation(of_class)[:take])
        validation = np.sort(np.concatenate(held))
        out['validation'] = validation
        out['train'] = np.setdiff1d(train, validation)
    return out


def info(config: ml_collections.ConfigDict) -> DatasetInfo:
    """Sizes and step counts of the config's data (prepares the data on first use)."""
    prepared = prepare(config)
    splits = split_indices(prepared, config)
    labels = np.asarray(prepared.metadata['labels'], np.int64)
    batch, eval_batch = int(config.batch_size), int(config.eval_batch_size)
    names = class_names(prepared)
    return DatasetInfo(
        name=prepared.name,
        num_classes=len(names),
        class_names=names,
        num_clips={s: len(ids) for s, ids in splits.items()},
        class_counts={
            s: sources.count_labels(labels[ids], len(names)) for s, ids in splits.items()
        },
        batch_size=batch,
        eval_batch_size=eval_batch,
        steps_per_epoch=len(splits['train']) // batch,
        num_eval_batches={
            s: -(-len(ids) // eval_batch) for s, ids in splits.items() if s != 'train'
        },
        num_frames=int(config.data.num_segments) * int(config.data.segment_length),
        image_size=int(config.data.image_size),
    )


def global_order(
    indices: np.ndarray, *, train: bool, global_batch: int, seed: int, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """(record indices, mask), both [num_batches, global_batch]: the epoch's global batches."""
    n = len(indices)
    if train:
        order = indices[np.random.default_rng([seed, epoch, _ORDER_STREAM]).permutation(n)]
        steps = n // global_batch
        order = order[: steps * global_batch].reshape(steps, global_batch)
        return order, np.ones_like(order, dtype=bool)
    steps = -(-n // global_batch)
    pad = steps * global_batch - n
    order = np.concatenate([indices, np.full(pad, indices[0] if n else 0, indices.dtype)])
    mask = np.arange(steps * global_batch) < n
    return order.reshape(steps, global_batch), mask.reshape(steps, global_batch)


def load(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    epoch: int = 0,
    start_batch: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `split` for this process, for one epoch.

    Yields dicts: video float32 [b, T, H, W, 3] in [0, 1], label int32 [b], mask bool [b]
    (False on eval padding), clip_id bytes [b]; b = global batch / process count
    (config.batch_size for train, config.eval_batch_size otherwise).
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    prepared = prepare(config)
    splits = split_indices(prepared, config)
    if split not in splits:
        raise ValueError("split 'validation' needs data.val_fraction > 0")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    train = split == 'train'
    global_batch = int(config.batch_size if train else config.eval_batch_size)
    if global_batch % process_count:
        raise ValueError(
            f'the global batch size {global_batch} is not divisible by the '
            f'{process_count} processes'
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    indices = splits[split]
    if not len(indices):
        raise ValueError(f'split {split!r} of {prepared.name} (fold {config.data.fold}) is empty')
    if train and len(indices) < global_batch:
        raise ValueError(
            f'{len(indices)} train clips are fewer than one global batch of {global_batch}'
        )
    order, mask = global_order(
        indices, train=train, global_batch=global_batch, seed=int(config.seed), epoch=epoch
    )
    if not 0 <= start_batch <= len(order):
        raise ValueError(f'start_batch {start_batch} not in [0, {len(order)}]')
    b = global_batch // process_count
    rows = slice(process_index * b, (process_index + 1) * b)
    local_order = order[start_batch:, rows].reshape(-1)
    local_mask = mask[start_batch:, rows].reshape(-1)
    dataset = _make_dataset(prepared, config, local_order, local_mask, train, epoch, b)
    return _naming_damage(prepared, dataset.as_numpy_iterator())


# What TensorFlow says when a record file does not read back (the other OpErrors, e.g. a
# cancelled or out-of-memory pipeline, are not worth a full read of the prepared data).
_DAMAGE = ('corrupted record', 'truncated record', 'data loss', 'not found', 'no such file')


def _naming_damage(prepared: Prepared, batches: Iterator) -> Iterator[dict[str, np.ndarray]]:
    """`batches`; where reading fails as a damaged file would, the damaged record file is
    looked for (a full read) and, when found, named in the error."""
    try:
        yield from batches
    except tf.errors.OpError as e:
        damaged = isinstance(e, tf.errors.DataLossError | tf.errors.NotFoundError)
        if not (damaged or any(text in str(e).lower() for text in _DAMAGE)):
            raise
        damage = prepared.verify()
        if damage is None:
            raise
        raise prepared.damaged(damage) from e


def clip_plans(
    prepared: Prepared,
    config: ml_collections.ConfigDict,
    record_ids: np.ndarray,
    *,
    train: bool,
    epoch: int,
) -> dict[str, np.ndarray]:
    """Per clip: frame indices [n, T], crop window [n, 4] (y, x, h, w) and flip [n]."""
    meta = prepared.metadata
    U, V = int(config.data.num_segments), int(config.data.segment_length)
    num_frames = np.asarray(meta['num_frames'], np.int64)
    n = len(record_ids)
    frames = np.zeros((n, U * V), np.int32)
    windows = np.zeros((n, 4), np.int32)
    flips = np.zeros(n, bool)
    if not train:
        for k, i in enumerate(record_ids):
            frames[k] = sampling.sample_frame_indices(num_frames[i], U, V, train=False)
        return {'frames': frames, 'windows': windows, 'flips': flips}
    # Row i of the epoch's draws belongs to record i, whichever clips this call needs.
    rng = np.random.default_rng([int(config.seed), epoch, _CLIP_DRAWS_STREAM])
    draws = rng.random((len(num_frames), U + augment.CROP_DRAWS + 1))
    heights, widths = meta['heights'], meta['widths']
    area_range = (float(config.data.crop_area_min), 1.0)
    for k, i in enumerate(record_ids):
        row = draws[i]
        frames[k] = sampling.sample_frame_indices(num_frames[i], U, V, train=True, u=row[:U])
        windows[k] = augment.random_crop_window(heights[i], widths[i], row[U:-1], area_range)
        flips[k] = row[-1] < 0.5
    return {'frames': frames, 'windows': windows, 'flips': flips}


def _make_dataset(
    prepared: Prepared,
    config: ml_collections.ConfigDict,
    order: np.ndarray,
    mask: np.ndarray,
    train: bool,
    epoch: int,
    batch: int,
) -> tf.data.Dataset:
    data = config.data
    size = int(data.image_size)
    parallel = (
        tf.data.AUTOTUNE if int(data.num_parallel_calls) < 0 else int(data.num_parallel_calls)
    )
    features = prepared.features
    plans = clip_plans(prepared, config, order, train=train, epoch=epoch)
    num_frames = plans['frames'].shape[1]

    def parse(key, serialized):
        example = features.deserialize_example(serialized)
        encoded = tf.ensure_shape(tf.gather(example['frames'], key['frames']), [num_frames])
        if train:
            video = augment.train_clip(encoded, key['window'], key['flip'], size)
        else:
            video = augment.eval_clip(encoded, size)
        return {
            'video': video,
            'label': tf.cast(example['label'], tf.int32),
            'mask': key['mask'],
            'clip_id': example['clip_id'],
        }

    keys = tf.data.Dataset.from_tensor_slices(
        {
            'mask': mask,
            'frames': plans['frames'],
            'window': plans['windows'],
            'flip': plans['flips'],
        }
    )
    serialized = records.read_records(prepared.index, order, num_parallel_calls=parallel)
    dataset = tf.data.Dataset.zip(keys, serialized)
    dataset = dataset.map(parse, num_parallel_calls=parallel, deterministic=True)
    dataset = dataset.batch(batch, drop_remainder=True)
    dataset = dataset.prefetch(int(data.prefetch) if int(data.prefetch) > 0 else tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    # Parallelism comes from the parallel map over clips; also splitting single ops over
    # threads only adds synchronisation (measured on 2 cores: ~15% fewer clips per
    # CPU-second with TF's default intra-op parallelism).
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)
