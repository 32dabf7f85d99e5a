"""Random access to the records of TFDS's TFRecord shards, inside tf.data.

An exact per-epoch permutation and mid-epoch resume need record i without reading the
records before it. TFRecord framing is documented and stable: per record, a uint64
little-endian length, a 4-byte CRC, the payload, a 4-byte CRC. One pass over the
headers (seeks, no payload reads) gives every payload's (file, offset, length); a record
is then one positioned read (os.pread, which releases the GIL). TF has no op for a read
at an offset (FixedLengthRecordDataset's header skip reads the bytes it skips), hence the
small numpy_function; decoding stays in TF ops.

Damage: a file cut short fails the header scan; a record whose payload changed fails its
CRC-32 (zlib's, recorded at prepare time: `payload_checksums`; TFRecord's own CRC-32C has
no fast reader in Python), checked on every read (~0.1 ms for 400 kB, the GIL released).
Both raise `DamagedFileError`, naming the file; `verify` reads a file whole through TF's reader.
"""

import dataclasses
import os
import re
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from former_dfer_jax.errors import UserError

_HEADER = 12  # uint64 length + uint32 masked CRC of the length
_FOOTER = 4  # uint32 masked CRC of the payload
UNCHECKED = -1  # a checksum that was not recorded


class DamagedFileError(UserError, ValueError):
    """A record file cut short, or holding a record that is not what was written."""

    def __init__(self, path: str | bytes | os.PathLike, reason: str):
        self.path, self.reason = os.fsdecode(path), reason
        super().__init__(f'{self.path}: {reason}')


@dataclasses.dataclass(frozen=True)
class RecordIndex:
    """Where each record's payload lies: file id, byte offset and length, per record, and
    the payload's CRC-32 where it was recorded (else UNCHECKED)."""

    files: tuple[str, ...]
    file_sizes: np.ndarray  # [num_files] int64
    file_ids: np.ndarray  # [num_records] int32
    offsets: np.ndarray  # [num_records] int64
    lengths: np.ndarray  # [num_records] int64
    checksums: np.ndarray | None = None  # [num_records] int64

    def checksum(self, i: int) -> int:
        return UNCHECKED if self.checksums is None else int(self.checksums[i])

    def read(self, i: int) -> bytes:
        """The payload of record i (checked)."""
        path = self.files[self.file_ids[i]]
        return read_record(path, self.offsets[i], self.lengths[i], self.checksum(i))

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
                    raise DamagedFileError(path, f'truncated TFRecord header at byte {position}')
                (length,) = struct.unpack('<Q', header[:8])
                end = position + _HEADER + length + _FOOTER
                if end > size:
                    raise DamagedFileError(path, f'truncated TFRecord payload at byte {position}')
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


def payload_checksums(index: RecordIndex) -> np.ndarray:
    """The CRC-32 of every record's payload (reads every record)."""
    return np.asarray([zlib.crc32(index.read(i)) for i in range(len(index))], np.int64)


def read_record(path: str | bytes, offset: int, length: int, checksum: int = UNCHECKED) -> bytes:
    """The `length` bytes of `path` at `offset`; DamagedFileError if they are not all there or
    their CRC-32 is not `checksum` (unless UNCHECKED)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, int(length), int(offset))
    finally:
        os.close(fd)
    # Worded as TF's reader words them (`offset` is where the payload starts).
    if len(data) != length:
        raise DamagedFileError(path, f'truncated record at {offset}')
    if checksum != UNCHECKED and zlib.crc32(data) != checksum:
        raise DamagedFileError(path, f'corrupted record at {offset}')
    return data


def verify(path: str, num_records: int) -> str | None:
    """Why the record file `path` fails TF's own reader (a record's CRC-32C or framing) or
    does not hold `num_records` records; None where it reads whole. Reads the whole file."""
    try:
        count = tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1)
    except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
        # e.g. '{{function_node ...}} corrupted record at 9103 [Op:ReduceDataset] name:'
        return re.sub(r'\{\{.*?\}\}|\[Op:.*', '', e.message).strip()
    if int(count) != num_records:
        return f'{int(count)} records, not the {num_records} written'
    return None


def read_records(
    index: RecordIndex,
    record_ids: np.ndarray,
    *,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Dataset of the serialized records `record_ids`, in that order."""
    record_ids = np.asarray(record_ids, np.int64)
    paths = np.asarray(index.files, dtype=object)[index.file_ids[record_ids]]
    checksums = (
        np.full(len(record_ids), UNCHECKED, np.int64)
        if index.checksums is None
        else index.checksums[record_ids]
    )
    slices = tf.data.Dataset.from_tensor_slices(
        (paths.astype(bytes), index.offsets[record_ids], index.lengths[record_ids], checksums)
    )

    def read(*args):
        data = tf.numpy_function(read_record, list(args), tf.string, stateful=False)
        return tf.ensure_shape(data, [])

    return slices.map(read, num_parallel_calls=num_parallel_calls, deterministic=True)
