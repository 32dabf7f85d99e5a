"""files: a reader never sees half a file, a full disk is one line saying what was kept,
and a folder that cannot be written is refused before any work."""

import builtins
import errno
import os

import pytest

from former_dfer_jax import files
from former_dfer_jax.errors import UserError


def _full_disk(monkeypatch, after_bytes: int = 0):
    """`open(..., 'w')` whose writes fail with ENOSPC after `after_bytes` bytes."""
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self._f, self._written = f, 0

        def write(self, data):
            self._written += len(data)
            if self._written > after_bytes:
                raise OSError(errno.ENOSPC, 'No space left on device')
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def full_open(path, mode='r', *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if 'w' in mode else f

    monkeypatch.setattr(builtins, 'open', full_open)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / 'results.json'
    path.write_text('old')
    with pytest.raises(ValueError), files.atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            f.write('half')
        raise ValueError('failed midway')
    assert path.read_text() == 'old'
    assert os.listdir(tmp_path) == ['results.json']


def test_the_temporary_file_keeps_the_extension_for_writers_that_need_it(tmp_path):
    with files.atomic_path(tmp_path / 'timeline.png') as tmp:
        assert tmp.endswith('.png') and os.path.dirname(tmp) == str(tmp_path)
        open(tmp, 'wb').close()
    assert os.listdir(tmp_path) == ['timeline.png']


def test_a_full_disk_is_one_line_naming_the_file_the_space_and_what_was_kept(tmp_path, monkeypatch):
    path = tmp_path / 'summary.json'
    path.write_text('{"old": 1}')
    _full_disk(monkeypatch, after_bytes=3)
    with pytest.raises(files.NoSpaceError) as caught:
        files.write_json(path, {'new': list(range(100))})
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and '\n' not in message
    assert message.startswith(f'{path} not saved: no space left on {tmp_path} (')
    assert ' free); the previous file is intact; free space and run the same command' in message
    monkeypatch.undo()
    assert path.read_text() == '{"old": 1}'
    assert os.listdir(tmp_path) == ['summary.json']  # the half-written temporary is gone


@pytest.mark.parametrize(
    'error',
    [
        OSError(errno.ENOSPC, 'No space left on device'),
        OSError(errno.EDQUOT, 'Disk quota exceeded'),
        RuntimeError('Event loop is closed'),  # raised while handling the ENOSPC below
    ],
)
def test_no_space_is_recognised_through_the_wrappers_libraries_put_around_it(error):
    if isinstance(error, RuntimeError):
        try:
            try:
                raise OSError(errno.ENOSPC, 'No space left on device')
            except OSError:
                raise error  # noqa: B904 (a library's own error, raised during the first)
        except RuntimeError as wrapped:
            error = wrapped
    assert files.is_no_space(error)
    assert not files.is_no_space(RuntimeError('Event loop is closed'))
    assert not files.is_no_space(OSError(errno.EACCES, 'Permission denied'))


def test_free_space_is_read_from_the_nearest_existing_folder(tmp_path):
    text = files.free_space(tmp_path / 'not' / 'yet')
    number, unit = text.split()
    assert float(number) >= 0 and unit in ('B', 'kB', 'MB', 'GB')


def test_a_folder_that_cannot_be_written_is_refused_in_one_line(tmp_path, monkeypatch):
    real_open = builtins.open

    def read_only(path, mode='r', *args, **kwargs):
        if 'w' in mode:
            raise OSError(errno.EROFS, 'Read-only file system', path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, 'open', read_only)
    with pytest.raises(UserError) as caught:
        files.require_writable(tmp_path / 'out', 'output folder')
    assert str(caught.value) == (
        f'{tmp_path / "out"}: cannot write to this output folder (Read-only file system)'
    )


def test_a_writable_folder_is_created_and_left_empty(tmp_path):
    files.require_writable(tmp_path / 'run' / 'new')
    assert os.listdir(tmp_path / 'run' / 'new') == []
