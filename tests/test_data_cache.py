"""The prepared cache's damage checks: files missing or cut short, records that fail their
checksum, and a full disk while preparing."""

import errno
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorflow_datasets.core import file_adapters

from former_dfer_jax import files
from former_dfer_jax.data import cache, pipeline, records
from former_dfer_jax.errors import UserError
from tests.test_data_prepare import make_config

CLIPS = {i: (4, i % 7) for i in range(1, 9)}
FOLDS = {1: ([1, 2, 3, 4, 5, 6], [7, 8])}
COMMAND = "python -m former_dfer_jax.data.prepare --config=<this run's config>"


def all_records(prepared) -> list[bytes]:
    return [prepared.index.read(i) for i in range(len(prepared.index))]


@pytest.fixture(scope='module')
def clean(tmp_path_factory, raw_data):
    """(raw root, a clean cache, its records): prepared once, copied by each test."""
    directory = tmp_path_factory.mktemp('clean')
    root = raw_data.dfew(directory / 'raw', CLIPS, FOLDS)
    prepared = cache.prepare(make_config(root, directory / 'cache'), progress=False)
    return root, directory / 'cache', all_records(prepared)


@pytest.fixture
def damaged(tmp_path, clean):
    """A copy of the clean data, and a function that damages its record file: returns
    (config, path of the file, what the checks say of it)."""
    root, clean_cache, _ = clean
    shutil.copytree(root, tmp_path / 'raw')
    shutil.copytree(clean_cache, tmp_path / 'cache')
    config = make_config(tmp_path / 'raw', tmp_path / 'cache')
    index = cache.prepare(config, progress=False).index
    (path,) = index.files
    size = Path(path).stat().st_size

    def damage(how: str) -> tuple:
        data = Path(path).read_bytes()
        if how == 'truncated':
            Path(path).write_bytes(data[: size - 1000])
            return config, path, f'cut short ({size - 1000} of {size} bytes)'
        if how == 'deleted':
            Path(path).unlink()
            return config, path, 'missing'
        # Inside the payload of record 3 (its JPEG bytes): the size and framing stay intact.
        at = int(index.offsets[3] + index.lengths[3] // 2)
        flipped = bytes(b ^ 0xFF for b in data[at : at + 8])
        Path(path).write_bytes(data[:at] + flipped + data[at + 8 :])
        return config, path, f'corrupted record at {index.offsets[3]}'

    return damage


@pytest.mark.parametrize('how', ['truncated', 'deleted'])
def test_damaged_file_is_prepared_again_from_the_source(damaged, clean, how, caplog):
    config, path, reason = damaged(how)
    with caplog.at_level(logging.WARNING):
        prepared = cache.prepare(config, progress=False)
    root = Path(config.data.root)
    assert f'Prepared data damaged ({path}: {reason}); preparing dfew again from {root}' in (
        caplog.text
    )
    assert prepared.damage() is None and all_records(prepared) == clean[2]
    assert sum(len(b['label']) for b in pipeline.load(config, 'test')) == 2


@pytest.mark.parametrize('how', ['truncated', 'deleted'])
def test_damaged_file_without_the_source_is_one_line_naming_file_and_command(damaged, how):
    config, path, reason = damaged(how)
    root = Path(config.data.root)
    shutil.rmtree(root)
    with pytest.raises(UserError) as error:
        cache.prepare(config, progress=False)
    assert str(error.value) == (
        f'prepared data damaged ({path}: {reason}) and its source {root} is not there; '
        f'with it back, prepare it again: {COMMAND} --config.data.root={root}'
    )
    assert Path(path).parent.is_dir()  # nothing removed that cannot be made again


def test_a_record_failing_its_checksum_is_named_when_read_and_prepared_again(
    damaged, clean, caplog
):
    config, path, reason = damaged('flipped')
    prepared = cache.prepare(config, progress=False)
    assert prepared.damage() is None  # the size is intact: found when read
    with pytest.raises(UserError) as error:
        list(pipeline.load(config, 'train'))
    assert str(error.value) == (
        f'prepared data damaged ({path}: {reason}); prepare it again: {COMMAND} '
        f'--config.data.root={Path(config.data.root)}'
    )
    # The damage is recorded: the next prepare (this run's or the command's) makes it again.
    with caplog.at_level(logging.WARNING):
        prepared = cache.prepare(config, progress=False)
    assert f'Prepared data damaged ({path}: {reason}); preparing dfew again' in caplog.text
    assert all_records(prepared) == clean[2]


def test_reading_checks_each_record(damaged):
    config, path, reason = damaged('flipped')
    index = cache.prepare(config, progress=False).index
    failed = []
    for i in range(len(index)):
        try:
            index.read(i)
        except records.DamagedFileError as e:
            failed.append(str(e))
    assert failed == [f'{path}: {reason}']
    assert records.verify(path, len(index)) == reason
    assert records.verify(path, len(index) + 1) == reason


def test_a_full_disk_while_preparing_removes_the_half_written_data(tmp_path, clean, monkeypatch):
    root = clean[0]
    config = make_config(root, tmp_path / 'cache')

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(file_adapters.TfRecordFileAdapter, 'write_examples', no_space)
    with pytest.raises(files.NoSpaceError) as error:
        cache.prepare(config, progress=False)
    folder = cache.prepared_dir(config).parent
    assert str(error.value) == (
        f'the dfew data prepared from {root} not saved: no space left on {folder} '
        f'({files.free_space(folder)} free); the half-written records were removed; '
        'nothing else was changed; free space and run the same command again'
    )
    assert sorted(p.name for p in folder.iterdir()) == []
    monkeypatch.undo()
    assert all_records(cache.prepare(config, progress=False)) == clean[2]


def test_command_line_names_the_file_and_the_command(damaged):
    config, path, reason = damaged('truncated')
    root = Path(config.data.root)
    shutil.rmtree(root)
    flags = [
        '--config=configs/dfew.py',
        f'--config.data.root={root}',
        f'--config.data.cache_dir={config.data.cache_dir}',
        '--config.data.stored_frame_size=0',
    ]
    result = subprocess.run(
        [sys.executable, '-m', 'former_dfer_jax.data.prepare', *flags],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f'error: prepared data damaged ({path}: {reason}) and its source {root} is not '
        f'there; with it back, prepare it again: python -m former_dfer_jax.data.prepare '
        + ' '.join(flags)
    )
