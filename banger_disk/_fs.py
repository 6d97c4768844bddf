"""Helpers over pyext4 Filesystems: all-or-nothing writer sessions, root-owned directories."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .errors import BangerError

if TYPE_CHECKING:  # pragma: no cover
    from pyext4 import WritableFilesystem as Filesystem

DIR_MODE = 0o755


@contextmanager
def writer_session(path: str | os.PathLike[str]) -> Iterator[Filesystem]:
    """The image opened for writing; committed (flush and fsync) when the block ends normally, and
    abandoned on any error, so that a session's changes reach the image all together or not at all."""
    import pyext4

    fs = pyext4.Filesystem.open(os.fspath(path), writable=True)
    try:
        yield fs
    except BaseException:
        fs.abandon()
        raise
    fs.close()


def ensure_dir(fs: Filesystem, path: str, mode: int = DIR_MODE) -> bool:
    """Make ``path`` a root:root directory of ``mode`` (creating it, or fixing an existing one's owner and mode).

    Returns whether it was created.  Raises BangerError when ``path`` exists and is not a directory.
    """
    if fs.exists(path):
        st = fs.stat(path)
        if not stat.S_ISDIR(st.mode):
            raise BangerError(f"{path}: exists and is not a directory")
        if (st.uid, st.gid) != (0, 0):
            fs.chown(path, 0, 0)
        if stat.S_IMODE(st.mode) != mode:
            fs.chmod(path, mode)
        return False
    fs.mkdir(path, mode=mode, uid=0, gid=0)
    return True


def ensure_parents(fs: Filesystem, path: str) -> list[str]:
    """Create the missing parent directories of the absolute ``path`` (root:root 0755), outermost first.

    Existing parents are left as they are.  Returns the directories created.  Raises BangerError when
    a parent exists and is not a directory.
    """
    created: list[str] = []
    current = ""
    for part in path.strip("/").split("/")[:-1]:
        current += "/" + part
        if fs.exists(current):
            if not stat.S_ISDIR(fs.stat(current).mode):
                raise BangerError(f"{current}: exists and is not a directory")
            continue
        fs.mkdir(current, mode=DIR_MODE, uid=0, gid=0)
        created.append(current)
    return created
