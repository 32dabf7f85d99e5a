"""One run per workdir or output folder at a time: `<folder>/run.lock`.

    with run_lock.RunLock(workdir):      # the trainer
        ...  # train
    with run_lock.output_lock(out, 'predict'):   # a single-process tool's output folder
        ...  # write into out/

Two runs writing the same files (checkpoints and results, face crops, predictions) would
corrupt each other. The lock is a file created atomically (O_CREAT | O_EXCL) holding JSON
{host, pid, started, what}. A second run is refused in one line naming the holder (what
it is, host, pid, start time) and the fix. A lock left behind by a run that died is taken
over when it is provably stale: written on this host by a process that no longer exists.
A lock written on another host is never judged stale (its process cannot be checked from
here): the message says to remove the file if that run is dead.

The trainer's lock (`across_processes=True`, the default) spans a multi-process run: only
process 0 takes the file; every process enters and leaves the `with` block together, and
all of them raise when process 0 could not take the lock. The single-process tools'
locks (`output_lock`) leave the other processes out (and do not even import JAX).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time
from typing import Any

from absl import logging

from former_dfer_jax import files
from former_dfer_jax.errors import UserError

LOCK_FILE = 'run.lock'


class RunLockError(UserError):
    """The folder is in use by another run (or its lock file cannot be read)."""


def output_lock(
    directory: str | os.PathLike, tool: str, folder: str = '--output folder'
) -> RunLock:
    """The lock of the single-process `tool` (e.g. 'predict') writing into `directory`, to
    enter around its work. `directory` is created now if needed and refused now, in one
    line, if nothing can be written there: call this before any work."""
    files.require_writable(directory, f'{tool} {folder}')
    return RunLock(directory, what=f'{tool} run', folder=folder, across_processes=False)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """Context manager holding `<folder>/run.lock` for the duration of a run.

    `what` names the run in messages and in the file (a second run reads it there: 'in use
    by another extract_faces run'); `folder` is what the fix says to change ('use another
    workdir').
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        what: str = 'training run',
        folder: str = 'workdir',
        across_processes: bool = True,
    ):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self.what, self.folder = what, folder
        self.across_processes = across_processes
        self._record: dict[str, Any] | None = None  # what we wrote, while we hold it

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock (process 0); every process raises RunLockError if it failed."""
        if not self.across_processes:
            self._take()
            return
        import jax
        import numpy as np

        error: Exception | None = None
        if jax.process_index() == 0:
            try:
                self._take()
            except Exception as e:  # any failure: the others must not wait at the broadcast
                error = e
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            taken = multihost_utils.broadcast_one_to_all(np.int32(error is None))
            if not int(taken) and error is None:
                error = RunLockError(
                    f'{self.workdir}: process 0 could not take {self.path}; see its log'
                )
        if error is not None:
            raise error

    def release(self) -> None:
        """Removes the lock file if this process holds it (and it is still ours)."""
        if self._record is None:
            return
        record, self._record = self._record, None
        if self._read() == record:
            os.remove(self.path)
        else:  # taken over meanwhile (by hand, or a second run judged us dead): leave it
            logging.warning(
                '%s no longer holds this run (pid %d); left as is.', self.path, record['pid']
            )

    def _take(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        record = {
            'host': socket.gethostname(),
            'pid': os.getpid(),
            'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
            'what': self.what,
        }
        for _ in range(3):  # a stale lock removed, then another run may win the race
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            try:
                with os.fdopen(fd, 'w') as f:
                    json.dump(record, f)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:  # e.g. a full disk: no empty lock file is left behind
                os.remove(self.path)
                raise
            self._record = record
            return
        raise RunLockError(f'{self.path}: could not be created (other runs keep taking it)')

    def _take_over_if_stale(self) -> None:
        """Removes the existing lock file if its run is dead; otherwise raises."""
        holder = self._read()
        for _ in range(10):  # a holder between O_CREAT and its write: give it a moment
            if holder is not None:
                break
            time.sleep(0.05)
            holder = self._read()
        if holder is None:
            if not os.path.exists(self.path):
                return  # released meanwhile
            raise RunLockError(
                f'{self.workdir}: the lock file {self.path} is unreadable; if no run uses '
                f'this {self.folder}, remove it'
            )
        host, pid = holder.get('host'), holder.get('pid')
        started, what = holder.get('started', '?'), holder.get('what', self.what)
        here = socket.gethostname()
        if host == here and isinstance(pid, int) and not _alive(pid):
            logging.warning(
                'Taking over the stale lock %s of pid %d on %s (started %s): that process '
                'no longer exists.',
                self.path,
                pid,
                host,
                started,
            )
            # Re-read right before removing: only the stale holder's file is removed.
            if self._read() == holder:
                with contextlib.suppress(FileNotFoundError):  # another run took it over
                    os.remove(self.path)
            return
        if host != here:
            fix = (
                'it runs on another host, which this one cannot check: if that run is dead, '
                f'remove {self.path}; otherwise wait for it or use another {self.folder}'
            )
        elif pid == os.getpid():
            fix = 'this process already holds it (RunLock entered twice)'
        else:
            fix = f'wait for it to finish or stop it, or use another {self.folder}'
        raise RunLockError(
            f'{self.workdir} is in use by another {what} (host {host}, pid {pid}, '
            f'started {started}, lock file {self.path}): {fix}'
        )

    def _read(self) -> dict[str, Any] | None:
        """The lock file's record, or None when it is absent or not (yet) valid JSON."""
        try:
            with open(self.path) as f:
                record = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) else None
