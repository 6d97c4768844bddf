"""Extracting an image's tree onto the host: exact, sparse, and never outside the destination."""

from __future__ import annotations

import errno
import os
import stat as _stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import constants as K
from .blockdev import FileDevice
from .errors import Ext4Error, UnsafePath
from .inode import Inode
from .reader import Filesystem, decode_name, encode_name, split_path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_COPY_CHUNK = 1 << 30


@dataclass
class ExtractReport:
    """What an extraction did; ``errors`` and ``warnings`` are one-line messages."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    specials: int = 0
    bytes: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ExtractOptions:
    same_owner: bool
    preserve_permissions: bool
    overwrite: bool = False
    xattrs: bool = True
    is_root: bool = False


def _safe_name(name: bytes) -> bool:
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


class _Extractor:
    def __init__(self, fs: Filesystem, opts: ExtractOptions, report: ExtractReport,
                 on_message: Callable[[str, str], None] | None) -> None:
        self.fs = fs
        self.opts = opts
        self.report = report
        self.on_message = on_message
        self.links: dict[int, str] = {}  # ino -> path relative to the destination root
        self.img_fd = fs.dev.fd if isinstance(fs.dev, FileDevice) else -1
        self.bs = fs.block_size
        self.root_fd = -1
        self.can_copy_range = self.img_fd >= 0 and hasattr(os, "copy_file_range")
        # Across filesystems (image on ext4, DEST on tmpfs) copy_file_range is EXDEV; sendfile
        # still moves the data inside the kernel, page cache to page cache.
        self.can_sendfile = self.img_fd >= 0 and hasattr(os, "sendfile")
        self.deferred: list[tuple[str, int, Inode, str]] = []  # directories finished at the end

    # ----------------------------------------------------------- messages
    def error(self, message: str) -> None:
        self.report.errors.append(message)
        if self.on_message:
            self.on_message("error", message)

    def warn(self, message: str) -> None:
        self.report.warnings.append(message)
        if self.on_message:
            self.on_message("warning", message)

    # --------------------------------------------------------------- walk
    def run(self, start_ino: int, dest_fd: int, shown: str) -> None:
        """Extract the directory ``start_ino``'s contents into ``dest_fd`` (depth first, iterative)."""
        self.root_fd = dest_fd
        stack: list[tuple[int, int, Iterator[tuple[bytes, int, int]], str, str, Inode | None]] = []
        stack.append((start_ino, dest_fd, iter(self.fs.dir_entries(start_ino)), shown, "", None))
        visited = {start_ino}
        while stack:
            ino, dfd, entries, shown_dir, rel_dir, dir_inode = stack[-1]
            nxt = next(entries, None)
            if nxt is None:
                stack.pop()
                if dir_inode is not None:
                    try:
                        if self._defer(dir_inode):
                            self.deferred.append((rel_dir, ino, dir_inode, shown_dir))
                        else:
                            self._finish_dir(dfd, ino, dir_inode, shown_dir)
                    except Ext4Error as exc:
                        self.error(f"{shown_dir}: {exc}")
                    except OSError as exc:
                        self.error(f"{shown_dir}: {exc.strerror or exc}")
                    finally:
                        os.close(dfd)
                continue
            name, child, _ft = nxt
            shown_child = shown_dir.rstrip("/") + "/" + decode_name(name)
            if not _safe_name(name):
                self.error(f"{shown_child!r}: unsafe name refused (inode {child})")
                continue
            rel = (rel_dir + "/" if rel_dir else "") + decode_name(name)
            try:
                inode = self.fs.inode(child)
                if inode.is_dir():
                    if child in visited:
                        self.error(f"{shown_child}: directory inode {child} appears twice (cycle); skipped")
                        continue
                    visited.add(child)
                    try:
                        children: list[tuple[bytes, int, int]] = self.fs.dir_entries(child, inode)
                    except Ext4Error as exc:
                        self.error(f"{shown_child}: contents not extracted: {exc}")
                        children = []
                    cfd = self._make_dir(dfd, name, shown_child)
                    if cfd < 0:
                        continue
                    self.report.directories += 1
                    stack.append((child, cfd, iter(children), shown_child, rel, inode))
                else:
                    self._extract_leaf(dfd, name, child, inode, shown_child, rel)
            except UnsafePath as exc:
                self.error(str(exc))
            except Ext4Error as exc:
                self.error(f"{shown_child}: {exc}")
            except OSError as exc:
                self.error(f"{shown_child}: {exc.strerror or exc}")
        self._finish_deferred()

    # ---------------------------------------------------- deferred directories
    def _defer(self, inode: Inode) -> bool:
        """Whether a directory's mode must wait for the end (it would stop us adding hardlinks to it).

        Only without root: a directory without owner rwx cannot be written or searched by us.
        """
        return not self.opts.is_root and (inode.mode & 0o700) != 0o700

    def _open_rel(self, rel: str) -> int:
        """Open a directory we created, component by component, never following a symlink."""
        fd = os.dup(self.root_fd)
        for part in encode_name(rel).split(b"/"):
            if not part:
                continue
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            finally:
                os.close(fd)
            fd = nxt
        return fd

    def _finish_deferred(self) -> None:
        for rel, ino, inode, shown in self.deferred:  # post-order: children before parents
            try:
                fd = self._open_rel(rel)
            except OSError as exc:
                self.error(f"{shown}: {exc.strerror or exc}")
                continue
            try:
                self._finish_dir(fd, ino, inode, shown)
            except OSError as exc:
                self.error(f"{shown}: {exc.strerror or exc}")
            finally:
                os.close(fd)
        self.deferred.clear()

    # ------------------------------------------------------------ entries
    def _make_dir(self, dfd: int, name: bytes, shown: str) -> int:
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
        except FileExistsError:
            pass
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self.error(f"{shown}: exists in the destination and is not a directory; refused")
            else:
                self.error(f"{shown}: {exc.strerror}")
            return -1

    def _extract_leaf(self, dfd: int, name: bytes, ino: int, inode: Inode, shown: str, rel: str) -> None:
        fmt = inode.mode & K.S_IFMT
        if inode.links_count > 1 and ino in self.links:
            self._link(dfd, name, ino, shown)
            return
        if fmt == K.S_IFREG:
            self._file(dfd, name, ino, inode, shown)
            self.report.files += 1
        elif fmt == K.S_IFLNK:
            target = self.fs.readlink_ino(ino, inode)
            if self.opts.overwrite:
                self._remove_existing(dfd, name)
            os.symlink(target, name, dir_fd=dfd)
            self._owner_and_times(dfd, name, None, ino, inode, shown)
            self.report.symlinks += 1
        elif fmt in (K.S_IFCHR, K.S_IFBLK):
            if not self.opts.is_root:
                self.warn(f"{shown}: device node skipped (creating devices needs root)")
                self.report.skipped += 1
                return
            major, minor = inode.rdev()
            if self.opts.overwrite:
                self._remove_existing(dfd, name)
            os.mknod(name, fmt | 0o600, os.makedev(major, minor), dir_fd=dfd)
            self._special_meta(dfd, name, inode, shown)
            self.report.specials += 1
        elif fmt in (K.S_IFIFO, K.S_IFSOCK):
            if self.opts.overwrite:
                self._remove_existing(dfd, name)
            os.mknod(name, fmt | 0o600, dir_fd=dfd)
            self._special_meta(dfd, name, inode, shown)
            self.report.specials += 1
        else:
            self.error(f"{shown}: inode {ino} has unknown type {fmt:o}; skipped")
            return
        if inode.links_count > 1:
            self.links[ino] = rel

    def _remove_existing(self, dfd: int, name: bytes) -> None:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if _stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, "a directory is in the way", decode_name(name))
        os.unlink(name, dir_fd=dfd)

    def _link(self, dfd: int, name: bytes, ino: int, shown: str) -> None:
        if self.opts.overwrite:
            self._remove_existing(dfd, name)
        source = self.links[ino]
        os.link(source, name, src_dir_fd=self.root_fd, dst_dir_fd=dfd, follow_symlinks=False)
        self.report.hardlinks += 1

    def _file(self, dfd: int, name: bytes, ino: int, inode: Inode, shown: str) -> None:
        # Always a new inode (O_EXCL): with overwrite, whatever is there is unlinked first, so a
        # hardlink or symlink planted in the destination can never lead the write outside it.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        if self.opts.overwrite:
            self._remove_existing(dfd, name)
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise OSError(exc.errno, "exists in the destination (use --overwrite)") from None
            if exc.errno == errno.ELOOP:
                raise OSError(exc.errno, "a symlink is in the way in the destination; refused") from None
            raise
        try:
            size = inode.size
            if inode.has_inline_data():
                data = self.fs.read_range(ino, inode, 0, size)
                os.pwrite(fd, data, 0)
                written = size
            else:
                written = 0
                for offset, length, phys in self.fs.data_segments(ino, inode):
                    if phys is None:
                        continue  # unwritten: reads as zeros, stays a hole
                    self._copy(fd, phys * self.bs, offset, length)
                    written = offset + length
            if written != size:
                os.ftruncate(fd, size)  # a hole at the end
            self.report.bytes += size
            self._owner_and_times(dfd, name, fd, ino, inode, shown)
        finally:
            os.close(fd)

    def _copy(self, out_fd: int, src_offset: int, dst_offset: int, length: int) -> None:
        if src_offset + length > self.fs.dev.size:
            raise Ext4Error(f"data at byte {src_offset} runs past the end of the image")
        done = 0
        if self.can_copy_range:
            try:
                while done < length:
                    n = os.copy_file_range(self.img_fd, out_fd, min(length - done, _COPY_CHUNK),
                                           src_offset + done, dst_offset + done)
                    if n <= 0:
                        break
                    done += n
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self.can_copy_range = False
        if self.can_sendfile and done < length:
            try:
                os.lseek(out_fd, dst_offset + done, os.SEEK_SET)
                while done < length:
                    n = os.sendfile(out_fd, self.img_fd, src_offset + done, min(length - done, _COPY_CHUNK))
                    if n <= 0:
                        break
                    done += n
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self.can_sendfile = False
        while done < length:
            n = min(length - done, 1 << 22)
            data = self.fs.dev.pread(src_offset + done, n)
            os.pwrite(out_fd, data, dst_offset + done)
            done += n

    # ------------------------------------------------------------ metadata
    def _mode_bits(self, inode: Inode) -> int:
        mode = inode.mode & 0o7777
        if not self.opts.preserve_permissions:
            mode &= ~(_stat.S_ISUID | _stat.S_ISGID)
        return mode

    def _owner_and_times(self, dfd: int, name: bytes, fd: int | None, ino: int, inode: Inode, shown: str) -> None:
        if self.opts.same_owner:
            try:
                if fd is not None:
                    os.fchown(fd, inode.uid, inode.gid)
                else:
                    os.chown(name, inode.uid, inode.gid, dir_fd=dfd, follow_symlinks=False)
            except PermissionError:
                self.warn(f"{shown}: cannot set owner {inode.uid}:{inode.gid} (not root)")
        if fd is not None:
            os.fchmod(fd, self._mode_bits(inode))
            if self.opts.xattrs:
                self._xattrs(fd, ino, inode, shown)
            os.utime(fd, ns=(inode.atime, inode.mtime))
        else:
            try:
                os.utime(name, ns=(inode.atime, inode.mtime), dir_fd=dfd, follow_symlinks=False)
            except NotImplementedError:  # pragma: no cover - platforms without lutimes
                pass

    def _special_meta(self, dfd: int, name: bytes, inode: Inode, shown: str) -> None:
        if self.opts.same_owner:
            try:
                os.chown(name, inode.uid, inode.gid, dir_fd=dfd, follow_symlinks=False)
            except PermissionError:
                self.warn(f"{shown}: cannot set owner {inode.uid}:{inode.gid} (not root)")
        # fifos, sockets and devices are never symlinks, so following is safe here; open is not
        # (a fifo would block), hence the path-based calls relative to the directory.
        os.chmod(name, self._mode_bits(inode), dir_fd=dfd)
        os.utime(name, ns=(inode.atime, inode.mtime), dir_fd=dfd, follow_symlinks=False)

    def _finish_dir(self, fd: int, ino: int, inode: Inode, shown: str) -> None:
        if self.opts.same_owner:
            try:
                os.fchown(fd, inode.uid, inode.gid)
            except PermissionError:
                self.warn(f"{shown}: cannot set owner {inode.uid}:{inode.gid} (not root)")
        if self.opts.xattrs:
            self._xattrs(fd, ino, inode, shown)
        os.fchmod(fd, self._mode_bits(inode))
        os.utime(fd, ns=(inode.atime, inode.mtime))

    def _xattrs(self, fd: int, ino: int, inode: Inode, shown: str) -> None:
        if not inode.file_acl and inode.tail[:4] != _IBODY_MAGIC:
            return  # no xattr block and no in-inode xattrs (their area starts with the magic)
        try:
            values = self.fs.xattrs_ino(ino, inode)
        except Ext4Error as exc:
            self.warn(f"{shown}: xattrs not copied: {exc}")
            return
        for name, value in values.items():
            if not name.startswith("user.") and not self.opts.is_root:
                continue
            try:
                os.setxattr(fd, name, value)
            except OSError as exc:
                self.warn(f"{shown}: xattr {name} not set: {exc.strerror}")


_IBODY_MAGIC = K.XATTR_MAGIC.to_bytes(4, "little")


def extract(
    fs: Filesystem,
    dest: str | os.PathLike[str],
    *,
    path: str | bytes = "/",
    same_owner: bool | None = None,
    preserve_permissions: bool | None = None,
    overwrite: bool = False,
    xattrs: bool = True,
    on_message: Callable[[str, str], None] | None = None,
) -> ExtractReport:
    """Recreate ``path`` of the image (a directory's contents, or one file) under ``dest``.

    Owners are set when root (or ``same_owner=True``); setuid/setgid bits are kept
    when root (or ``preserve_permissions=True``).  Nothing is created outside
    ``dest``: unsafe names are refused per entry, symlinks are never followed,
    existing files are kept unless ``overwrite``.  Per-entry problems land in the
    report; raises Ext4Error/OSError only when nothing can be done.
    """
    is_root = os.geteuid() == 0
    opts = ExtractOptions(
        same_owner=is_root if same_owner is None else same_owner,
        preserve_permissions=is_root if preserve_permissions is None else preserve_permissions,
        overwrite=overwrite,
        xattrs=xattrs,
        is_root=is_root,
    )
    report = ExtractReport()
    dest_s = os.fspath(dest)
    os.makedirs(dest_s, exist_ok=True)
    dest_fd = os.open(dest_s, _DIR_FLAGS)
    try:
        ino = fs.resolve(path)
        inode = fs.inode(ino)
        shown = "/" + "/".join(decode_name(p) for p in split_path(path))
        ex = _Extractor(fs, opts, report, on_message)
        if inode.is_dir():
            ex.run(ino, dest_fd, shown)
            ex.root_fd = dest_fd
        else:
            parts = split_path(path)
            name = parts[-1] if parts else b""
            if not _safe_name(name):
                raise UnsafePath(shown)
            ex.root_fd = dest_fd
            ex._extract_leaf(dest_fd, encode_name(name), ino, inode, shown, decode_name(name))
    finally:
        os.close(dest_fd)
    return report
