"""run_lock.RunLock: one run per workdir or output folder; stale locks of dead runs are
taken over. The helpers here (a lock of a live or a dead process, a read-only folder) also
serve the tests of the tools that lock their output folder."""

import builtins
import contextlib
import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from former_dfer_jax.errors import UserError
from former_dfer_jax.run_lock import LOCK_FILE, RunLock, RunLockError, output_lock


def write_lock(workdir, **record) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    with open(path, 'w') as f:
        json.dump({'host': socket.gethostname(), 'started': '2024-01-01T00:00:00', **record}, f)
    return path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, '-c', 'pass'])
    process.wait()
    return process.pid


@contextlib.contextmanager
def live_lock(folder, **record):
    """`folder`'s lock held by a live process of this host (a first run still going);
    yields that pid."""
    with subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) as process:
        try:
            write_lock(str(folder), pid=process.pid, **record)
            yield process.pid
        finally:
            process.kill()


def in_use_line(folder, what: str, pid: int, instead: str = '--output folder') -> str:
    """The one line a second run gets where `live_lock` holds `folder` for `what`."""
    return (
        f'{folder} is in use by another {what} (host {socket.gethostname()}, pid {pid}, '
        f'started 2024-01-01T00:00:00, lock file {os.path.join(folder, LOCK_FILE)}): wait for '
        f'it to finish or stop it, or use another {instead}'
    )


def read_only(monkeypatch, folder) -> None:
    """Nothing can be written under `folder` from now on (as on a read-only file system;
    tests run as root, where a chmod would not stop writes)."""
    real_open, folder = builtins.open, os.path.abspath(folder)

    def guarded_open(path, mode='r', *args, **kwargs):
        inside = isinstance(path, str | os.PathLike) and os.path.abspath(path).startswith(folder)
        if inside and any(c in mode for c in 'wax+'):
            raise OSError(errno.EROFS, 'Read-only file system', os.fspath(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, 'open', guarded_open)


def test_the_lock_file_names_this_host_and_process_while_held(tmp_path):
    with RunLock(str(tmp_path)):
        with open(tmp_path / LOCK_FILE) as f:
            record = json.load(f)
        assert (record['host'], record['pid']) == (socket.gethostname(), os.getpid())
        assert record['started']


def test_a_second_lock_on_the_same_workdir_is_refused_naming_the_holder(tmp_path):
    with RunLock(str(tmp_path)), pytest.raises(RunLockError) as caught:
        RunLock(str(tmp_path)).acquire()
    message = str(caught.value)
    assert isinstance(caught.value, UserError)
    assert str(tmp_path) in message and f'pid {os.getpid()}' in message
    assert f'host {socket.gethostname()}' in message and '\n' not in message


def test_a_lock_held_by_a_live_process_of_this_host_is_refused(tmp_path):
    with live_lock(tmp_path) as pid:
        with pytest.raises(RunLockError) as caught:
            RunLock(str(tmp_path)).acquire()
        assert str(caught.value) == (
            f'{tmp_path} is in use by another training run (host {socket.gethostname()}, pid '
            f'{pid}, started 2024-01-01T00:00:00, lock file {tmp_path / LOCK_FILE}): wait for '
            'it to finish or stop it, or use another workdir'
        )
    assert (tmp_path / LOCK_FILE).exists()  # not taken over


def test_a_lock_of_another_users_live_process_is_refused(tmp_path, monkeypatch):
    # os.kill(pid, 0) on a live process of another user raises PermissionError: that
    # process exists, so its lock holds (a run of a colleague in a shared workdir).
    other_users_pid = dead_pid()
    write_lock(str(tmp_path), pid=other_users_pid)
    real_kill = os.kill

    def kill(pid, signal):
        if pid == other_users_pid:
            raise PermissionError(1, 'Operation not permitted')
        return real_kill(pid, signal)

    monkeypatch.setattr(os, 'kill', kill)
    with pytest.raises(RunLockError, match=f'pid {other_users_pid}'):
        RunLock(str(tmp_path)).acquire()
    with open(tmp_path / LOCK_FILE) as f:
        assert json.load(f)['pid'] == other_users_pid  # not taken over


def test_a_lock_whose_process_is_dead_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = dead_pid()
    write_lock(str(tmp_path), pid=dead)
    with caplog.at_level('WARNING'), RunLock(str(tmp_path)), open(tmp_path / LOCK_FILE) as f:
        assert json.load(f)['pid'] == os.getpid()
    assert any(f'pid {dead}' in r.getMessage() for r in caplog.records), caplog.text


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    path = write_lock(str(tmp_path), host='elsewhere.example', pid=dead_pid())
    with pytest.raises(RunLockError, match=r'host elsewhere\.example.*another host.*remove'):
        RunLock(str(tmp_path)).acquire()
    assert os.path.exists(path)


def test_the_lock_file_is_removed_on_exit(tmp_path):
    with RunLock(str(tmp_path)):
        pass
    assert not (tmp_path / LOCK_FILE).exists()
    with RunLock(str(tmp_path)):  # and can be taken again
        pass


def test_the_lock_file_is_removed_after_an_exception(tmp_path):
    with pytest.raises(KeyError), RunLock(str(tmp_path)):
        raise KeyError('boom')
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_missing_workdir_is_created(tmp_path):
    with RunLock(str(tmp_path / 'new' / 'run')):
        assert (tmp_path / 'new' / 'run' / LOCK_FILE).exists()


def test_an_output_lock_names_the_tool_and_its_flag_and_is_seen_by_other_tools(tmp_path):
    out = tmp_path / 'out'
    with output_lock(out, 'predict'), open(out / LOCK_FILE) as f:
        assert json.load(f)['what'] == 'predict run'
    assert os.listdir(out) == []
    with live_lock(out, what='predict run') as pid:
        with pytest.raises(RunLockError) as caught:
            output_lock(out, 'predict').acquire()
        assert str(caught.value) == in_use_line(out, 'predict run', pid)
        # The trainer, pointed at that folder, is told what holds it.
        with pytest.raises(RunLockError, match=r'in use by another predict run .*other workdir'):
            RunLock(str(out)).acquire()


def test_an_output_lock_refuses_a_read_only_folder_before_any_work(tmp_path, monkeypatch):
    read_only(monkeypatch, tmp_path / 'out')
    with pytest.raises(UserError) as caught:
        output_lock(tmp_path / 'out', 'predict')
    assert str(caught.value) == (
        f'{tmp_path / "out"}: cannot write to this predict --output folder (Read-only file system)'
    )


def test_an_output_lock_leaves_jax_out(tmp_path):
    code = (
        'import sys\n'
        'from former_dfer_jax.run_lock import output_lock\n'
        f'with output_lock({str(tmp_path)!r}, "tool"):\n'
        '    pass\n'
        'print("jax" in sys.modules)\n'
    )
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == 'False'


def test_a_lock_that_cannot_be_written_leaves_no_lock_file(tmp_path, monkeypatch):
    # A full disk lets the file be created but not written: an empty lock file left behind
    # would block the next run after space is freed.
    def full(record, f):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(json, 'dump', full)
    with pytest.raises(OSError, match='No space left'):
        RunLock(str(tmp_path)).acquire()
    assert not (tmp_path / LOCK_FILE).exists()
