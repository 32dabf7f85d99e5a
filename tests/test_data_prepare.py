"""Prepare: bad frames reported and handled, atomic builds, cache location, config names."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from former_dfer_jax import default_config
from former_dfer_jax.data import cache, pipeline
from former_dfer_jax.data import frames as frames_lib
from former_dfer_jax.data.sources import SourceError
from former_dfer_jax.run_lock import LOCK_FILE
from tests.test_cli import run_entry_point
from tests.test_run_lock import in_use_line, live_lock, read_only


def make_config(root, cache_dir, **data):
    config = default_config.get_config()
    config.data.root = str(root)
    config.data.cache_dir = str(cache_dir)
    config.data.image_size = 16
    config.batch_size = 2
    config.eval_batch_size = 2
    config.data.stored_frame_size = 0  # the files as they are, unless a test says otherwise
    config.data.update(data)
    return config


def stored_frames(prepared, clip_id):
    """The JPEG bytes stored for `clip_id`, read back through the record index."""
    from former_dfer_jax.data import records

    i = prepared.metadata['clip_ids'].index(clip_id)
    index = prepared.index
    data = records.read_record(
        index.files[index.file_ids[i]].encode(), index.offsets[i], index.lengths[i]
    )
    return prepared.features.deserialize_example(tf.constant(data))['frames'].numpy()


@pytest.fixture(scope='module')
def damaged(tmp_path_factory, raw_data):
    """A DFEW tree with one clip per kind of damage (ids 1, 2 stay healthy)."""
    root = tmp_path_factory.mktemp('damaged')
    clips = {i: (4, i % 7) for i in range(1, 10)}
    raw_data.dfew(root, clips, {1: ([1, 3, 4, 5, 6, 7, 8, 9], [2])})
    frame = lambda c, t: raw_data.clip_dir(root, c) / f'{c}_{t}.jpg'  # noqa: E731
    data = frame(3, 2).read_bytes()
    frame(3, 2).write_bytes(data[:-40])  # truncated inside the scan data
    frame(4, 3).write_bytes(b'\xff\xd8\xff\xe0 this is no JPEG at all' * 10)  # corrupt
    Image.open(frame(5, 1)).convert('L').save(frame(5, 1), quality=95)  # grayscale
    Image.open(frame(6, 4)).convert('CMYK').save(frame(6, 4), quality=95)  # CMYK
    raw_data.frame(1, 7, size=(30, 20)).save(frame(7, 2), quality=95)  # other size
    raw_data.frame(0, 8).save(frame(8, 1), format='PNG')  # a PNG named .jpg
    for t in (2, 3, 4):  # a one-frame clip, shorter than segment_length = 2
        frame(9, t).unlink()
    return root


@pytest.fixture(scope='module')
def damaged_prepared(damaged, tmp_path_factory):
    config = make_config(damaged, tmp_path_factory.mktemp('cache'))
    return config, cache.prepare(config, progress=False)


def test_bad_frames_are_reported_by_file(damaged, damaged_prepared):
    _, prepared = damaged_prepared
    clip = lambda c: damaged / 'Clip' / 'clip_224x224' / f'{c:05d}'  # noqa: E731
    summary = prepared.summary
    assert summary.startswith('7 clips OK, 2 skipped.')
    assert f'skipped: 1 x corrupt or truncated JPEG: {clip(3)}/3_2.jpg (' in summary
    assert (
        f'skipped: 1 x not a readable image (corrupt or unknown format): {clip(4)}/4_3.jpg'
        in summary
    )
    assert f'warning: 1 x grayscale frames converted to RGB: {clip(5)}/5_1.jpg' in summary
    assert f'warning: 1 x CMYK frames converted to RGB: {clip(6)}/6_4.jpg' in summary
    assert (
        "warning: 1 x frame size differs within the clip (resized to the first frame's): "
        f'{clip(7)}/7_2.jpg' in summary
    )
    assert f'warning: 1 x PNG frames re-encoded as JPEG: {clip(8)}/8_1.jpg' in summary
    assert 'warning: 1 x clip shorter than segment_length=2 frames' in summary
    assert prepared.metadata['clip_ids'] == [
        '00001',
        '00002',
        '00005',
        '00006',
        '00007',
        '00008',
        '00009',
    ]
    assert prepared.metadata['partitions']['1'] == {'train': [0, 2, 3, 4, 5, 6], 'test': [1]}


def test_converted_frames_are_stored_as_rgb_jpeg_of_the_clip_size(damaged_prepared):
    _, prepared = damaged_prepared
    for clip_id in ('00005', '00006', '00007', '00008'):
        for data in stored_frames(prepared, clip_id):
            image = Image.open(io.BytesIO(data))
            assert (image.format, image.mode, image.size) == ('JPEG', 'RGB', (24, 24))
    untouched = stored_frames(prepared, '00001')[0]
    assert (
        untouched
        == (Path(prepared.metadata['root']) / 'Clip/clip_224x224/00001/1_1.jpg').read_bytes()
    )


def test_damaged_data_loads_without_errors(damaged_prepared):
    config, _ = damaged_prepared
    got = list(pipeline.load(config, 'train')) + list(pipeline.load(config, 'test'))
    assert sum(len(b['label']) for b in got) == 6 + 2
    assert all(b['video'].shape == (2, 16, 16, 16, 3) for b in got)


def test_a_crashed_prepare_is_not_taken_as_done(tmp_path, raw_data, monkeypatch):
    root = raw_data.dfew(tmp_path / 'raw', {1: (3, 0), 2: (3, 1), 3: (3, 2)}, {1: ([1, 2], [3])})
    config = make_config(root, tmp_path / 'cache')
    real = frames_lib.encode_clip
    calls = []

    def dies_on_third_clip(record, **kwargs):
        calls.append(record.clip_id)
        if len(calls) == 3:
            raise KeyboardInterrupt('simulated crash')
        return real(record, **kwargs)

    monkeypatch.setattr(frames_lib, 'encode_clip', dies_on_third_clip)
    with pytest.raises(KeyboardInterrupt):
        cache.prepare(config, progress=False)
    target = cache.prepared_dir(config)
    assert not (target / 'dataset_info.json').exists()
    monkeypatch.setattr(frames_lib, 'encode_clip', real)
    prepared = cache.prepare(config, progress=False)
    assert prepared.metadata['clip_ids'] == ['00001', '00002', '00003']
    assert Path(prepared.data_dir) == target
    leftovers = [p.name for p in target.parent.iterdir() if 'incomplete' in p.name]
    assert leftovers == []


def test_cache_location_and_config_names(tmp_path, monkeypatch):
    config = make_config('/data/DFEW', '')
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / 'env-cache'))
    assert cache.cache_root(config) == tmp_path / 'env-cache'
    config.data.cache_dir = str(tmp_path / 'explicit')
    assert cache.cache_root(config) == tmp_path / 'explicit'
    monkeypatch.delenv(cache.CACHE_ENV)
    config.data.cache_dir = ''
    assert cache.cache_root(config) == Path.home() / '.cache' / 'former_dfer_jax'
    assert cache.builder_config_name(config) == 'dfew'
    config.data.annotation_dir = '/lists'
    config.data.stored_frame_size = 128
    assert cache.builder_config_name(config) == 'dfew_lists_f128'
    config.data.name = 'afew'
    config.data.annotation_dir = ''
    assert cache.builder_config_name(config) == 'afew_f128'


def test_stored_frame_size_resizes_the_shorter_side(tmp_path, raw_data):
    root = tmp_path / 'raw'
    raw_data.dfew(root, {1: (3, 0), 2: (3, 1)}, {1: ([1], [2])}, size=(32, 24))
    config = make_config(root, tmp_path / 'cache', stored_frame_size=12)
    prepared = cache.prepare(config, progress=False)
    assert prepared.name == 'dfew_f12'
    assert (prepared.metadata['heights'], prepared.metadata['widths']) == ([12, 12], [16, 16])
    image = Image.open(io.BytesIO(stored_frames(prepared, '00001')[2]))
    assert image.size == (16, 12)
    red = np.asarray(image)[..., 0].mean()
    assert abs(red - 4 * 2) < 2  # still frame 2 (red = 4 t)
    assert frames_lib.stored_size(256, 256, 128) == (128, 128)
    assert frames_lib.stored_size(100, 80, 128) == (100, 80)  # never enlarged


def test_fatal_problems_raise_naming_the_path(tmp_path, raw_data):
    with pytest.raises(SourceError, match=f'dataset root not found: {tmp_path}/missing'):
        cache.prepare(make_config(tmp_path / 'missing', tmp_path / 'cache'), progress=False)
    with pytest.raises(SourceError, match=r'data\.root is not set'):
        cache.prepare(make_config('', tmp_path / 'cache'), progress=False)
    root = raw_data.dfew(tmp_path / 'raw', {1: (2, 0)}, {1: ([1], [])})
    (raw_data.clip_dir(root, 1) / '1_1.jpg').write_bytes(b'garbage')
    with pytest.raises(SourceError, match=f'no usable clips under {root}'):
        cache.prepare(make_config(root, tmp_path / 'cache'), progress=False)
    assert not (cache.prepared_dir(make_config(root, tmp_path / 'cache'))).exists()


def test_synthetic_is_generated_once_into_the_cache(tmp_path, raw_data, monkeypatch):
    generated = []

    def generate_dataset(
        output_dir, *, num_clips, image_size, seed, min_frames, max_frames, imbalance=False
    ):
        generated.append(Path(output_dir))
        clips = {i: (min_frames, i % 7) for i in range(1, num_clips + 1)}
        raw_data.dfew(Path(output_dir), clips, {1: (list(clips)[:3], list(clips)[3:])})
        (Path(output_dir) / 'COMPLETE').write_text('')

    synthetic = cache.synthetic_dataset
    monkeypatch.setattr(synthetic, 'generate_dataset', generate_dataset)
    monkeypatch.setattr(synthetic, 'is_complete', lambda root: (Path(root) / 'COMPLETE').exists())
    config = make_config('', tmp_path / 'cache', name='synthetic')
    config.data.synthetic = dict(
        num_clips=5, image_size=24, seed=0, min_frames=3, max_frames=3, imbalance=False
    )
    prepared = cache.prepare(config, progress=False)
    assert prepared.name.startswith('synthetic_') and len(prepared.metadata['clip_ids']) == 5
    assert generated == [tmp_path / 'cache' / 'synthetic' / prepared.name[10:] / 'raw']
    assert cache.prepare(config, progress=False) is prepared
    other = config.copy_and_resolve_references()
    other.data.synthetic.seed = 1
    assert cache.builder_config_name(other) != prepared.name
    assert len(generated) == 1


def test_command_line(tmp_path, raw_data):
    root = raw_data.dfew(tmp_path / 'raw', {1: (3, 0), 2: (3, 1)}, {1: ([1], [2])})
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'former_dfer_jax.data.prepare',
            '--config=configs/dfew.py',
            f'--config.data.root={root}',
            f'--config.data.cache_dir={tmp_path / "cache"}',
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f'dfew_f112: {tmp_path}/cache/tfds/former_dfer/dfew_f112/1.0.0' in result.stdout
    assert '2 clips OK, 0 skipped.' in result.stdout


@pytest.mark.parametrize('why', ['locked', 'read-only'])
def test_a_second_prepare_or_a_read_only_cache_is_refused_in_one_line(
    tmp_path, raw_data, monkeypatch, capsys, why
):
    from former_dfer_jax.data import prepare as command

    def no_prepare(config):
        raise AssertionError('prepared')

    monkeypatch.setattr(command, 'prepare', no_prepare)
    root = raw_data.dfew(tmp_path / 'raw', {1: (3, 0), 2: (3, 1)}, {1: ([1], [2])})
    args = (
        f'--config={Path(__file__).parent.parent / "configs" / "dfew.py"}',
        f'--config.data.root={root}',
        f'--config.data.cache_dir={tmp_path / "cache"}',
    )
    folder = tmp_path / 'cache' / 'tfds' / 'former_dfer' / 'dfew_f112'
    if why == 'read-only':
        read_only(monkeypatch, tmp_path / 'cache')
        assert run_entry_point(command, *args) == 1
        expected = (
            f'error: {folder}: cannot write to this data.prepare cache folder '
            '(data.cache_dir) (Read-only file system)'
        )
    else:
        with live_lock(folder, what='data.prepare run') as pid:
            assert run_entry_point(command, *args) == 1
        instead = 'cache folder (data.cache_dir)'
        expected = f'error: {in_use_line(folder, "data.prepare run", pid, instead)}'
        assert os.listdir(folder) == [LOCK_FILE]
    assert capsys.readouterr().err.strip().splitlines() == [expected]


def test_record_order_survives_tfds_on_disk_buckets(tmp_path, raw_data, monkeypatch):
    # Past ~1 GB TFDS sorts records through on-disk buckets; force that path on tiny data.
    from tensorflow_datasets.core import shuffle

    monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 1000)
    clips = {i: (2, i % 7) for i in range(1, 13)}
    root = raw_data.dfew(tmp_path / 'raw', clips, {1: (list(range(1, 9)), list(range(9, 13)))})
    config = make_config(root, tmp_path / 'cache', image_size=8)
    config.eval_batch_size = 4
    prepared = cache.prepare(config, progress=False)
    assert len(prepared.index) == 12  # also checks record i is clip i at both ends
    got = [int(c) for b in pipeline.load(config, 'test') for c in b['clip_id']]
    assert got == [9, 10, 11, 12]
