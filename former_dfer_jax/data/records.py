"""Random access to the records of TFDS's TFRecord shards, inside tf.data.

An exact per-epoch permutation and mid-epoch resume need record i without reading the
records before it. TFRecord framing is documented and stable: per record, a uint64
little-endian length, a 4-byte CRC, the payload, a 4-byte CRC. One pass over the
headers (seeks, no payload reads) gives every payload's (file, offset, length); a record
is then one positioned read (os.pread, which releases the GIL). TF has no op for a read
at an offset (FixedLengthRecordDataset's header skip reads the bytes it skips), hence the
small numpy_function; decoding stays in TF ops.
"""

import dataclasses
import os
import struct
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

_HEADER = 12  # uint64 length + uint32 masked CRC of the length
_FOOTER = 4  # uint32 masked CRC of the payload


@dataclasses.dataclass(frozen=True)
class RecordIndex:
    """Where each record's payload lies: file id, byte offset and length, per record."""

    files: tuple[str, ...]
    file_sizes: np.ndarray  # [num_files] int64
    file_ids: np.ndarray  # [num_records] int32
    offsets: np.ndarray  # [num_records] int64
    lengths: np.ndarray  # [num_records] int64

    def __len__(self) -> int:
        return len(self.offsets)


def scan_tfrecords(files: Sequence[str | os.PathLike]) -> RecordIndex:
    """Indexes the records of `files` (in the order given) by reading their headers."""
    file_ids, offsets, lengths, sizes = [], [], [], []
    for file_id, path in enumerate(files):
        size = os.path.getsize(path)
        sizes.append(size)
        with open(path, 'rb') as f:
            position = 0
            while position < size:
                header = f.read(_HEADER)
                if len(header) < _HEADER:
                    raise ValueError(f'{path}: truncated TFRecord header at byte {position}')
                (length,) = struct.unpack('<Q', header[:8])
                end = position + _HEADER + length + _FOOTER
                if end > size:
                    raise ValueError(f'{path}: truncated TFRecord payload at byte {position}')
                file_ids.append(file_id)
                offsets.append(position + _HEADER)
                lengths.append(length)
                f.seek(end)
                position = end
    return RecordIndex(
        files=tuple(os.fspath(p) for p in files),
        file_sizes=np.asarray(sizes, np.int64),
        file_ids=np.asarray(file_ids, np.int32),
        offsets=np.asarray(offsets, np.int64),
        lengths=np.asarray(lengths, np.int64),
    )


def read_record(path: bytes, offset: int, length: int) -> bytes:
    """The `length` bytes of `path` at `offset`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, int(length), int(offset))
    finally:
        os.close(fd)
    if len(data) != length:
        raise OSError(f'{path!r}: short read at byte {offset} ({len(data)} of {length} bytes)')
    return data


def read_records(
    index: RecordIndex,
    record_ids: np.ndarray,
    *,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Dataset of the serialized records `record_ids`, in that order."""
    record_ids = np.asarray(record_ids, np.int64)
    paths = np.asarray(index.files, dtype=object)[index.file_ids[record_ids]]
    slices = tf.data.Dataset.from_tensor_slices(
        (paths.astype(bytes), index.offsets[record_ids], index.lengths[record_ids])
    )

    def read(path, offset, length):
        data = tf.numpy_function(read_record, [path, offset, length], tf.string, stateful=False)
        return tf.ensure_shape(data, [])

    return slices.map(read, num_parallel_calls=num_parallel_calls, deterministic=True)
