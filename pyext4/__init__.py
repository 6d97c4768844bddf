"""pyext4: create, read and write ext4 images in pure Python (no mkfs.ext4, debugfs, mount or root)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ChecksumError,
    CorruptError,
    DirectoryNotEmpty,
    Ext4Error,
    FileExists,
    FileNotFound,
    ImageBusy,
    InvalidOptions,
    InvalidPath,
    IsADirectory,
    LoopError,
    NameTooLong,
    NeedsRecovery,
    NoSpace,
    NotADirectory,
    PathError,
    ReadOnlyError,
    SymlinkLoop,
    TruncatedError,
    UnsafePath,
    UnsupportedFeature,
)
from .mkfs import mkfs, parse_size

__version__ = "0.1.0"

# Engines load on first use so that `import pyext4` (and the CLI's --help) stays cheap.
_LAZY = {
    "Filesystem": ("pyext4.writer", "Filesystem"),
    "Stat": ("pyext4.reader", "Stat"),
    "DirEntry": ("pyext4.reader", "DirEntry"),
    "WritableFilesystem": ("pyext4.writer", "WritableFilesystem"),
    "populate": ("pyext4.populate", "populate"),
}

if TYPE_CHECKING:  # pragma: no cover
    from .populate import populate
    from .reader import DirEntry, Filesystem, Stat
    from .writer import WritableFilesystem


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'pyext4' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "ChecksumError", "CorruptError", "DirEntry", "DirectoryNotEmpty", "Ext4Error", "FileExists",
    "FileNotFound", "Filesystem", "ImageBusy", "InvalidOptions", "InvalidPath", "IsADirectory",
    "LoopError", "NameTooLong", "NeedsRecovery", "NoSpace", "NotADirectory", "PathError",
    "ReadOnlyError", "Stat", "SymlinkLoop", "TruncatedError", "UnsafePath", "UnsupportedFeature",
    "WritableFilesystem", "mkfs", "parse_size", "populate",
]
