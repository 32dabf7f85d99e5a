"""Writing files so that a reader never sees half of one, and progress bars.

Every output of the project (configs, results, reports, pictures, videos, arrays) is written
through `atomic_path`: to a hidden temporary file beside the target, renamed onto it only
when complete, removed if writing fails. Long loops show progress through `progress` (tqdm).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import tqdm


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
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
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
