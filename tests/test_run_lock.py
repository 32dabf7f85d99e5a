"""run_lock.RunLock: one training run per workdir; stale locks of dead runs are taken over."""

import json
import os
import socket
import subprocess
import sys

import pytest

from former_dfer_jax.errors import UserError
from former_dfer_jax.run_lock import LOCK_FILE, RunLock, RunLockError


def _write_lock(workdir, **record) -> str:
    path = os.path.join(workdir, LOCK_FILE)
    with open(path, 'w') as f:
        json.dump({'host': socket.gethostname(), 'started': '2024-01-01T00:00:00', **record}, f)
    return path


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, '-c', 'pass'])
    process.wait()
    return process.pid


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
    with subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) as process:
        try:
            _write_lock(str(tmp_path), pid=process.pid)
            with pytest.raises(RunLockError, match=f'pid {process.pid}.*wait for it'):
                RunLock(str(tmp_path)).acquire()
        finally:
            process.kill()
    assert (tmp_path / LOCK_FILE).exists()  # not taken over


def test_a_lock_of_another_users_live_process_is_refused(tmp_path, monkeypatch):
    # os.kill(pid, 0) on a live process of another user raises PermissionError: that
    # process exists, so its lock holds (a run of a colleague in a shared workdir).
    other_users_pid = _dead_pid()
    _write_lock(str(tmp_path), pid=other_users_pid)
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
    dead = _dead_pid()
    _write_lock(str(tmp_path), pid=dead)
    with caplog.at_level('WARNING'), RunLock(str(tmp_path)), open(tmp_path / LOCK_FILE) as f:
        assert json.load(f)['pid'] == os.getpid()
    assert any(f'pid {dead}' in r.getMessage() for r in caplog.records), caplog.text


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    path = _write_lock(str(tmp_path), host='elsewhere.example', pid=_dead_pid())
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
