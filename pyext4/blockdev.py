"""A block device over a file descriptor: pread/pwrite, holes instead of zeroes, no shared position."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from typing import Protocol

from .errors import Ext4Error, TruncatedError


class Device(Protocol):
    """What the engines need from storage; tests substitute in-memory or faulty devices."""

    size: int

    def pread(self, offset: int, length: int) -> bytes: ...

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def zero_range(self, offset: int, length: int) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_BLKGETSIZE64 = 0x80081272
_BLKZEROOUT = 0x127F


class _Fallocate:
    """libc fallocate(2) through ctypes, loaded on first use (only punching needs it)."""

    _fn: object = None

    @classmethod
    def punch(cls, fd: int, offset: int, length: int) -> bool:
        if cls._fn is None:
            try:
                import ctypes
                import ctypes.util

                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                fn = libc.fallocate
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
                fn.restype = ctypes.c_int
                cls._fn = fn
            except (OSError, AttributeError):
                cls._fn = False
        if not cls._fn:
            return False
        rc = cls._fn(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)  # type: ignore[operator]
        return bool(rc == 0)


def _iov_max() -> int:
    """How many buffers one pwritev may take."""
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):  # pragma: no cover
        value = -1
    return value if value > 0 else 16  # POSIX's minimum


class FileDevice:
    """An image file or block device, addressed by byte offset with pread/pwrite."""

    def __init__(self, fd: int, *, writable: bool, owns_fd: bool = True, path: str | None = None) -> None:
        self.fd = fd
        self.writable = writable
        self.path = path
        self._owns = owns_fd
        st = os.fstat(fd)
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        self.is_regular = stat.S_ISREG(st.st_mode)
        if self.is_block_device:
            self.size = os.lseek(fd, 0, os.SEEK_END)
        else:
            self.size = st.st_size
        self.bytes_written = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, writable: bool = False) -> FileDevice:
        flags = (os.O_RDWR if writable else os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
        try:
            return cls(fd, writable=writable, path=os.fspath(path))
        except BaseException:
            os.close(fd)
            raise

    def pread(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset``; TruncatedError past the end of the image."""
        if offset < 0 or length < 0:
            raise TruncatedError(f"read at negative offset {offset}")
        if offset + length > self.size:
            raise TruncatedError(
                f"read of {length} bytes at offset {offset} is past the end of the image ({self.size} bytes)"
            )
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            chunks = [data]
            got = len(data)
            while got < length:
                more = os.pread(self.fd, length - got, offset + got)
                if not more:
                    raise TruncatedError(f"short read at offset {offset + got}")
                chunks.append(more)
                got += len(more)
            data = b"".join(chunks)
        return data

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            n = os.pwrite(self.fd, view[done:], offset + done)
            if n <= 0:  # pragma: no cover - pwrite raises instead
                raise OSError(errno.EIO, "short write")
            done += n
        self.bytes_written += done
        if offset + done > self.size and self.is_regular:
            self.size = offset + done

    def pwritev(self, offset: int, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        """Write ``buffers`` back to back from ``offset``, without joining them first."""
        if not hasattr(os, "pwritev"):  # pragma: no cover - every supported host has it
            self.pwrite(offset, b"".join(buffers))
            return
        step = _iov_max()
        for i in range(0, len(buffers), step):
            chunk = buffers[i : i + step]
            length = sum(map(len, chunk))
            done = os.pwritev(self.fd, chunk, offset)
            self.bytes_written += done
            if done < length:  # a short write: the rest plainly
                self.pwrite(offset + done, b"".join(chunk)[done:])
            offset += length
        if offset > self.size and self.is_regular:
            self.size = offset

    def zero_range(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeroes: punch a hole, else write zeroes."""
        if length <= 0:
            return
        if self.is_regular and _Fallocate.punch(self.fd, offset, length):
            return
        if self.is_block_device:
            try:
                import fcntl
                import struct

                fcntl.ioctl(self.fd, _BLKZEROOUT, struct.pack("QQ", offset, length))
                return
            except OSError:
                pass
        chunk = bytes(min(length, 1 << 20))
        done = 0
        while done < length:
            n = min(len(chunk), length - done)
            self.pwrite(offset + done, chunk[:n])
            done += n

    def truncate(self, size: int) -> None:
        if not self.is_regular:
            raise Ext4Error("only an image file can be resized")
        os.ftruncate(self.fd, size)
        self.size = size

    def sync(self) -> None:
        os.fsync(self.fd)

    def start_writeback(self, offset: int, length: int) -> None:
        """Start writing ``length`` bytes from ``offset`` back to the disk without waiting (a later
        fsync then finds them written or on their way).  A no-op where the OS cannot do it."""
        if self.is_regular and length > 0 and hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass  # only a hint

    def close(self) -> None:
        if self._owns and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> FileDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryDevice:
    """A device held in a bytearray, for unit tests and fuzzing."""

    def __init__(self, data: bytes | bytearray | int) -> None:
        self.buf = bytearray(data) if not isinstance(data, int) else bytearray(data)
        self.size = len(self.buf)
        self.writable = True
        self.bytes_written = 0

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedError(
                f"read of {length} bytes at offset {offset} is past the end of the image ({self.size} bytes)"
            )
        return bytes(self.buf[offset : offset + length])

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        end = offset + len(data)
        if end > self.size:
            self.buf.extend(bytes(end - self.size))
            self.size = end
        self.buf[offset:end] = data
        self.bytes_written += len(data)

    def zero_range(self, offset: int, length: int) -> None:
        self.buf[offset : offset + length] = bytes(length)

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass
