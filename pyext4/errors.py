"""The exception tree: every error pyext4 raises on purpose is an Ext4Error."""

from __future__ import annotations

import errno as _errno


class Ext4Error(Exception):
    """Root of every error pyext4 raises on purpose."""


class CorruptError(Ext4Error):
    """The image contradicts the on-disk format.

    ``where`` names the structure (``"inode 12"``, ``"block 8841"``,
    ``"superblock"``) so a message can point at it.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ChecksumError(CorruptError):
    """A stored checksum does not match the one computed from the data."""

    def __init__(self, what: str, *, expected: int, actual: int, where: str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{what} checksum mismatch (stored {expected:#010x}, computed {actual:#010x})",
            where=where,
        )


class TruncatedError(CorruptError):
    """The image ends before a structure it describes."""


class LoopError(CorruptError):
    """A structure refers back to itself (extent tree, directory or htree cycle)."""


class UnsupportedFeature(Ext4Error):
    """The image uses a feature pyext4 does not handle (for this operation)."""

    def __init__(self, message: str, *, features: tuple[str, ...] = ()) -> None:
        self.features = features
        super().__init__(message)


class NeedsRecovery(Ext4Error):
    """The journal holds transactions that were never replayed."""


class ReadOnlyError(Ext4Error):
    """A write was attempted on a filesystem opened read-only."""


class ImageBusy(Ext4Error):
    """The image is mounted or locked by another writer."""


class InvalidOptions(Ext4Error, ValueError):
    """Arguments that cannot make a valid filesystem or operation."""


class NoSpace(Ext4Error, OSError):
    """No free blocks or inodes for the request (ENOSPC)."""

    def __init__(self, message: str = "no space left in the filesystem") -> None:
        OSError.__init__(self, _errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)


class PathError(Ext4Error, OSError):
    """A path inside the image cannot be used as asked; also an OSError."""

    errno_value = _errno.EINVAL

    def __init__(self, path: str, message: str | None = None) -> None:
        OSError.__init__(self, self.errno_value, message or _errno.errorcode[self.errno_value], path)
        self.path = path

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class FileNotFound(PathError, FileNotFoundError):
    errno_value = _errno.ENOENT

    def __init__(self, path: str, message: str = "no such file or directory") -> None:
        super().__init__(path, message)


class NotADirectory(PathError, NotADirectoryError):
    errno_value = _errno.ENOTDIR

    def __init__(self, path: str, message: str = "not a directory") -> None:
        super().__init__(path, message)


class IsADirectory(PathError, IsADirectoryError):
    errno_value = _errno.EISDIR

    def __init__(self, path: str, message: str = "is a directory") -> None:
        super().__init__(path, message)


class FileExists(PathError, FileExistsError):
    errno_value = _errno.EEXIST

    def __init__(self, path: str, message: str = "file exists") -> None:
        super().__init__(path, message)


class DirectoryNotEmpty(PathError):
    errno_value = _errno.ENOTEMPTY

    def __init__(self, path: str, message: str = "directory not empty") -> None:
        super().__init__(path, message)


class SymlinkLoop(PathError):
    errno_value = _errno.ELOOP

    def __init__(self, path: str, message: str = "too many levels of symbolic links") -> None:
        super().__init__(path, message)


class NameTooLong(PathError):
    errno_value = _errno.ENAMETOOLONG

    def __init__(self, path: str, message: str = "file name too long") -> None:
        super().__init__(path, message)


class InvalidPath(PathError):
    errno_value = _errno.EINVAL

    def __init__(self, path: str, message: str = "invalid path") -> None:
        super().__init__(path, message)


class TooManyLinks(PathError):
    errno_value = _errno.EMLINK

    def __init__(self, path: str, message: str = "too many links") -> None:
        super().__init__(path, message)


class UnsafePath(PathError):
    """Extraction refused a name that would escape the destination."""

    errno_value = _errno.EPERM

    def __init__(self, path: str, message: str = "unsafe name refused") -> None:
        super().__init__(path, message)
