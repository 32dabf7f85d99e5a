"""Random access into TFRecord files: the index agrees with TF's own reader."""

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
