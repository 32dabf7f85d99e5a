"""Random access into TFRecord files: the index agrees with TF's own reader; damaged
records are named."""

import dataclasses
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from former_dfer_jax.data import records


@pytest.fixture
def shards(tmp_path):
    payloads = [
        [b'x' * (i * 37 % 101) + bytes([i]) for i in range(f * 10, f * 10 + 7)] for f in range(3)
    ]
    files = []
    for f, chunk in enumerate(payloads):
        path = tmp_path / f'shard-{f}.tfrecord'
        with tf.io.TFRecordWriter(str(path)) as writer:
            for payload in chunk:
                writer.write(payload)
        files.append(str(path))
    return files, [p for chunk in payloads for p in chunk]


def test_index_matches_tfrecord_reader(shards):
    files, payloads = shards
    index = records.scan_tfrecords(files)
    assert len(index) == 21 and index.file_ids.tolist() == [0] * 7 + [1] * 7 + [2] * 7
    in_tf_order = [r.numpy() for r in tf.data.TFRecordDataset(files)]
    assert in_tf_order == payloads
    order = np.random.default_rng(0).permutation(21)
    got = [r.numpy() for r in records.read_records(index, order)]
    assert got == [payloads[i] for i in order]


def test_truncated_file_is_reported(shards, tmp_path):
    files, _ = shards
    path = Path(files[1])
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match=f'{files[1]}: truncated TFRecord payload at byte'):
        records.scan_tfrecords(files)


def test_damaged_records_are_named(shards):
    files, payloads = shards
    index = records.scan_tfrecords(files)
    checksums = [zlib.crc32(p) for p in payloads]
    index = dataclasses.replace(index, checksums=np.asarray(checksums, np.int64))
    assert index.read(9) == payloads[9] and records.verify(files[1], 7) is None
    path = Path(files[1])
    data = bytearray(path.read_bytes())
    offset = int(index.offsets[9])  # record 9 is the third of file 1
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(
        records.DamagedFileError, match=f'^{files[1]}: corrupted record at {offset}$'
    ):
        index.read(9)
    assert records.verify(files[1], 7) == f'corrupted record at {offset}'
    assert records.verify(files[0], 8) == '7 records, not the 8 written'
    path.write_bytes(bytes(data[: offset + 3]))
    with pytest.raises(
        records.DamagedFileError, match=f'^{files[1]}: truncated record at {offset}$'
    ):
        records.read_record(files[1], offset, index.lengths[9])
