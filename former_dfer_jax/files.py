"""Writing files so that a reader never sees half of one, full disks, and progress bars.

Every output of the project (configs, results, reports, pictures, videos, arrays) is written
through `atomic_path`: to a hidden temporary file beside the target, renamed onto it only
when complete, removed if writing fails. A write that finds the disk full raises
`NoSpaceError`, one line naming what was being written, where, and the space left there
(`no_space` builds it for writers of their own, e.g. checkpoints). `require_writable`
refuses a read-only output folder before any work. Long loops show progress through
`progress` (tqdm).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from typing import Any

import tqdm

from former_dfer_jax.errors import UserError


class NoSpaceError(UserError, OSError):
    """A write that found no space left on its device (the message says what and where)."""


def is_no_space(error: BaseException | None) -> bool:
    """Whether `error`, or an exception it was raised from or during (libraries wrap
    ENOSPC, e.g. Orbax's async writers, TensorFlow), is "no space left on device"."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if 'No space left on device' in str(error) or 'Disk quota exceeded' in str(error):
            return True
        if isinstance(error, BaseExceptionGroup) and any(is_no_space(e) for e in error.exceptions):
            return True
        error = error.__cause__ or error.__context__
    return False


def free_space(path: str | os.PathLike) -> str:
    """The free space on the file system of `path` (or of its nearest existing parent),
    e.g. '12 MB'."""
    path = os.path.abspath(os.fspath(path))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return 'unknown'
    for unit in ('B', 'kB', 'MB', 'GB'):
        if free < 1000 or unit == 'GB':
            return f'{free:.0f} {unit}' if unit == 'B' else f'{free:.1f} {unit}'
        free /= 1000
    return f'{free:.1f} TB'


def no_space(what: str, directory: str | os.PathLike, kept: str = '') -> NoSpaceError:
    """The one-line error for `what` (e.g. 'checkpoint step 32') not written into
    `directory` for want of space, with what was `kept` (e.g. 'step 16 is intact')."""
    where = os.path.abspath(os.fspath(directory))
    message = f'{what} not saved: no space left on {where} ({free_space(where)} free)'
    if kept:
        message += f'; {kept}'
    return NoSpaceError(f'{message}; free space and run the same command again')


def require_writable(directory: str | os.PathLike, what: str = 'output folder') -> None:
    """Creates `directory` if needed and refuses it, before any work, where nothing can be
    written there (read-only file system, permissions)."""
    directory = os.fspath(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f'.write-test-{os.getpid()}'), 'w') as f:
            path = f.name
        os.remove(path)
    except OSError as e:
        if is_no_space(e):
            raise no_space(f'{what} {directory}', directory) from e
        reason = e.strerror or str(e)
        raise UserError(f'{directory}: cannot write to this {what} ({reason})') from e


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside `path` (same extension, so writers that pick the
    format by it work) that replaces `path` when the block ends without an exception; on
    an exception the temporary file is removed and `path` is left as it was."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(directory, f'.{stem}.tmp{os.getpid()}{ext}')
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if is_no_space(e) and not isinstance(e, NoSpaceError):
            kept = 'the previous file is intact' if os.path.exists(path) else ''
            raise no_space(path, directory or '.', kept) from e
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically, as UTF-8 with \\n line ends."""
    with atomic_path(path) as tmp, open(tmp, 'w', encoding='utf-8', newline='\n') as f:
        f.write(text)


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2) -> None:
    """Writes `value` as JSON (and a final newline) to `path` atomically."""
    write_text(path, json.dumps(value, indent=indent) + '\n')


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = 'it',
    enabled: bool = True,
) -> tqdm.tqdm:
    """The project's progress bar (tqdm on stderr); `enabled=False` shows nothing."""
    return tqdm.tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled)
