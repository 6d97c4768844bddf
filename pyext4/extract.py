"""Extracting an image's tree onto the host: exact, sparse, and never outside the destination."""

from __future__ import annotations

import errno
import json
import os
import stat as _stat
from collections.abc import Callable, Iterable, Iterator

from . import constants as K
from .blockdev import FileDevice
from .errors import Ext4Error, UnsafePath
from .inode import Inode
from .reader import Filesystem, decode_name, encode_name, split_path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_COPY_CHUNK = 1 << 30
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# A tree with fewer non-directory entries than this is extracted by one process even when
# more jobs are allowed: a fork and its report cost more than they would save.
_PARALLEL_MIN_ENTRIES = 64
# A directory made by a parallel extraction: (path relative to DEST, ino, inode, path shown).
_Dir = tuple[str, int, "Inode | None", str]
_CHUNK_ENTRIES = 32  # entries per chunk of work at least
_CHUNKS = 1024  # chunk numbers at most: 4 KiB, what any pipe holds at once
_REPORT_COUNTS = ("files", "symlinks", "hardlinks", "specials", "bytes", "skipped")


class ExtractReport:
    """What an extraction did; ``errors`` and ``warnings`` are one-line messages.

    (A plain class, not a dataclass: a dataclass costs ~0.4 ms of every CLI start.)
    """

    __slots__ = ("files", "directories", "symlinks", "hardlinks", "specials", "bytes", "skipped",
                 "errors", "warnings")

    def __init__(self) -> None:
        self.files = self.directories = self.symlinks = self.hardlinks = 0
        self.specials = self.bytes = self.skipped = 0
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"ExtractReport({fields})"


class ExtractOptions:
    """How to extract: owners, setuid/setgid bits, overwriting, xattrs, and the processes to use."""

    __slots__ = ("same_owner", "preserve_permissions", "overwrite", "xattrs", "is_root", "jobs")

    def __init__(self, same_owner: bool, preserve_permissions: bool, overwrite: bool = False,
                 xattrs: bool = True, is_root: bool = False, jobs: int = 1) -> None:
        self.same_owner = same_owner
        self.preserve_permissions = preserve_permissions
        self.overwrite = overwrite
        self.xattrs = xattrs
        self.is_root = is_root
        self.jobs = jobs


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
        if self.opts.jobs > 1 and _can_fork():
            self._run_parallel(start_ino, dest_fd, shown)
            return
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

    # ------------------------------------------------------ parallel walk
    def _run_parallel(self, start_ino: int, dest_fd: int, shown: str) -> None:
        """Extract with up to ``opts.jobs`` processes.

        This process first makes every directory.  The other entries are then
        shared out in chunks, taken from a pipe by forked children and by this
        process side by side, so a share of large files does not leave the others
        idle; every name of an inode with several names in the tree stays with
        this process (the first name is made, the others linked to it).
        Directories get their owners, modes and times last, deepest first.
        """
        self.root_fd = dest_fd
        dirs: list[_Dir] = [("", start_ino, None, shown)]  # the root, then every directory made, pre-order
        leaves: list[tuple[int, bytes, int]] = []  # (index in dirs, name, ino)
        stack: list[tuple[int, int, Iterator[tuple[bytes, int, int]]]] = []
        stack.append((0, dest_fd, iter(self.fs.dir_entries(start_ino))))
        visited = {start_ino}
        try:
            while stack:
                index, dfd, entries = stack[-1]
                nxt = next(entries, None)
                if nxt is None:
                    stack.pop()
                    if index:
                        os.close(dfd)
                    continue
                name, child, ft = nxt
                if not _safe_name(name):
                    self.error(f"{self._shown(dirs, index, name)!r}: unsafe name refused (inode {child})")
                    continue
                if ft != K.FT_DIR and ft != K.FT_UNKNOWN:
                    leaves.append((index, name, child))
                    continue
                try:
                    inode = self.fs.inode(child)
                    if not inode.is_dir():
                        leaves.append((index, name, child))
                        continue
                    shown_child = self._shown(dirs, index, name)
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
                    rel_dir = dirs[index][0]
                    dirs.append(((rel_dir + "/" if rel_dir else "") + decode_name(name), child, inode, shown_child))
                    stack.append((len(dirs) - 1, cfd, iter(children)))
                except Ext4Error as exc:
                    self.error(f"{self._shown(dirs, index, name)}: {exc}")
                except OSError as exc:
                    self.error(f"{self._shown(dirs, index, name)}: {exc.strerror or exc}")
        finally:
            for index, dfd, _ in stack:
                if index:
                    os.close(dfd)
        self._share_leaves(dirs, leaves)
        for rel, ino, dir_inode, shown_dir in reversed(dirs[1:]):  # children before their parents
            assert dir_inode is not None
            try:
                fd = self._open_rel(rel)
            except OSError as exc:
                self.error(f"{shown_dir}: {exc.strerror or exc}")
                continue
            try:
                self._finish_dir(fd, ino, dir_inode, shown_dir)
            except Ext4Error as exc:
                self.error(f"{shown_dir}: {exc}")
            except OSError as exc:
                self.error(f"{shown_dir}: {exc.strerror or exc}")
            finally:
                os.close(fd)

    @staticmethod
    def _shown(dirs: list[_Dir], index: int, name: bytes) -> str:
        return dirs[index][3].rstrip("/") + "/" + decode_name(name)

    def _share_leaves(self, dirs: list[_Dir], leaves: list[tuple[int, bytes, int]]) -> None:
        """Extract ``leaves`` with this process and up to ``opts.jobs - 1`` forked children."""
        jobs = min(self.opts.jobs, max(1, len(leaves) // _PARALLEL_MIN_ENTRIES))
        if jobs == 1:
            self._extract_leaves(dirs, leaves)
            return
        seen: set[int] = set()
        linked: set[int] = set()
        for _, _, ino in leaves:
            if ino in seen:
                linked.add(ino)
            seen.add(ino)
        pinned = [leaf for leaf in leaves if leaf[2] in linked]
        rest = [leaf for leaf in leaves if leaf[2] not in linked] if linked else leaves
        # At most _CHUNKS chunk numbers (4 bytes each), so that all of them fit in the pipe at once.
        size = max(_CHUNK_ENTRIES, -(-len(rest) // _CHUNKS))
        chunks = [rest[i : i + size] for i in range(0, len(rest), size)]
        rfd, wfd = os.pipe()
        workers: list[tuple[int, int]] = []
        try:
            try:
                os.write(wfd, b"".join(k.to_bytes(4, "little") for k in range(len(chunks))))
            finally:
                os.close(wfd)
            for _ in range(jobs - 1):
                try:
                    workers.append(self._fork_worker(dirs, chunks, rfd))
                except OSError:  # no process to be had (EAGAIN, ENOMEM): this one does the rest
                    break
            self._extract_leaves(dirs, pinned)
            self._extract_leaves(dirs, _taken(chunks, rfd))
            while workers:
                self._merge_share(*workers.pop(0))
        finally:
            os.close(rfd)
            for pid, report_fd in workers:  # this process failed: stop the others
                _kill_share(pid, report_fd)

    def _extract_leaves(self, dirs: list[_Dir], leaves: Iterable[tuple[int, bytes, int]]) -> None:
        """Extract non-directory entries into the directories already made (``dirs[index]``)."""
        current, dfd = 0, self.root_fd
        try:
            for index, name, ino in leaves:
                rel_dir, _, _, shown_dir = dirs[index]
                shown = shown_dir.rstrip("/") + "/" + decode_name(name)
                try:
                    if index != current:
                        if current:
                            os.close(dfd)
                        current, dfd = 0, self.root_fd
                        if index:
                            dfd = self._open_rel(rel_dir)
                        current = index
                    inode = self.fs.inode(ino)
                    if inode.is_dir():  # the entry's file type said otherwise: a damaged image
                        self.error(f"{shown}: entry's file type does not match directory inode {ino}; skipped")
                        continue
                    rel = (rel_dir + "/" if rel_dir else "") + decode_name(name)
                    self._extract_leaf(dfd, name, ino, inode, shown, rel)
                except UnsafePath as exc:
                    self.error(str(exc))
                except Ext4Error as exc:
                    self.error(f"{shown}: {exc}")
                except OSError as exc:
                    self.error(f"{shown}: {exc.strerror or exc}")
        finally:
            if current:
                os.close(dfd)

    def _fork_worker(self, dirs: list[_Dir], chunks: list[list[tuple[int, bytes, int]]],
                     chunk_fd: int) -> tuple[int, int]:
        """Fork a child that extracts the chunks it takes from ``chunk_fd`` and sends back its
        report; returns (pid, the report's read end)."""
        rfd, wfd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(rfd)
            os.close(wfd)
            raise
        if pid == 0:  # the child: never returns into the caller's code
            status = 1
            try:
                os.close(rfd)
                self.report = ExtractReport()
                self.on_message = None
                self._extract_leaves(dirs, _taken(chunks, chunk_fd))
                data = {k: getattr(self.report, k) for k in _REPORT_COUNTS}
                data["errors"] = self.report.errors
                data["warnings"] = self.report.warnings
                view = memoryview(json.dumps(data).encode())
                while view:
                    view = view[os.write(wfd, view):]
                status = 0
            finally:
                os._exit(status)
        os.close(wfd)
        return pid, rfd

    def _merge_share(self, pid: int, rfd: int) -> None:
        """Wait for a child's report and add it to ours (its messages are passed on now)."""
        chunks = []
        try:
            while True:
                chunk = os.read(rfd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(rfd)
            _, status = os.waitpid(pid, 0)
        try:
            data = json.loads(b"".join(chunks)) if os.waitstatus_to_exitcode(status) == 0 else None
        except ValueError:
            data = None
        if data is None:
            self.error(f"an extraction worker (pid {pid}) failed; part of the tree may be missing")
            return
        for key in _REPORT_COUNTS:
            setattr(self.report, key, getattr(self.report, key) + int(data[key]))
        for message in data["errors"]:
            self.error(message)
        for message in data["warnings"]:
            self.warn(message)

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
        if self.opts.overwrite:
            self._remove_existing(dfd, name)
        try:
            fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=dfd)
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
                written = pos = 0  # pos: the file offset of fd, -1 when not known
                for offset, length, phys in self.fs.data_segments(ino, inode):
                    if phys is None:
                        continue  # unwritten: reads as zeros, stays a hole
                    pos = self._copy(fd, phys * self.bs, offset, length, pos)
                    written = offset + length
            if written != size:
                os.ftruncate(fd, size)  # a hole at the end
            self.report.bytes += size
            self._owner_and_times(dfd, name, fd, ino, inode, shown)
        finally:
            os.close(fd)

    def _copy(self, out_fd: int, src_offset: int, dst_offset: int, length: int, pos: int = -1) -> int:
        """Copy ``length`` bytes of the image at ``src_offset`` to ``out_fd`` at ``dst_offset`` in the
        kernel where it can; ``pos`` is out_fd's file offset (-1: not known).  Returns the new one."""
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
                if pos != dst_offset + done:  # sendfile writes at (and moves) the file offset
                    os.lseek(out_fd, dst_offset + done, os.SEEK_SET)
                while done < length:
                    n = os.sendfile(out_fd, self.img_fd, src_offset + done, min(length - done, _COPY_CHUNK))
                    if n <= 0:
                        break
                    done += n
                pos = dst_offset + done
            except OSError as exc:
                pos = -1
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self.can_sendfile = False
        while done < length:
            n = min(length - done, 1 << 22)
            data = self.fs.dev.pread(src_offset + done, n)
            os.pwrite(out_fd, data, dst_offset + done)
            done += n
        return pos

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


def _taken(chunks: list[list[tuple[int, bytes, int]]], chunk_fd: int) -> Iterator[tuple[int, bytes, int]]:
    """The entries of every chunk this process takes from the pipe (a 4-byte chunk number per read:
    a read of 4 bytes from a pipe holding only whole numbers is never split between readers)."""
    while True:
        raw = os.read(chunk_fd, 4)
        if len(raw) < 4:
            return
        yield from chunks[int.from_bytes(raw, "little")]


def default_jobs() -> int:
    """The CLI's default number of extraction processes: one per CPU this process may use, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 4))


def _can_fork() -> bool:
    """Whether forking workers is safe here: a POSIX fork, and no other thread whose locks
    the children would inherit held."""
    import threading

    return hasattr(os, "fork") and threading.active_count() == 1


def _kill_share(pid: int, rfd: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.close(rfd)
    os.waitpid(pid, 0)


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
    jobs: int = 1,
) -> ExtractReport:
    """Recreate ``path`` of the image (a directory's contents, or one file) under ``dest``.

    Owners are set when root (or ``same_owner=True``); setuid/setgid bits are kept
    when root (or ``preserve_permissions=True``).  Nothing is created outside
    ``dest``: unsafe names are refused per entry, symlinks are never followed,
    existing files are kept unless ``overwrite``.  Per-entry problems land in the
    report; raises Ext4Error/OSError only when nothing can be done.  ``jobs`` > 1
    shares a large tree's files among that many processes (forked; only when the
    caller runs no other thread); directories are made first and finished last.
    """
    is_root = os.geteuid() == 0
    opts = ExtractOptions(
        same_owner=is_root if same_owner is None else same_owner,
        preserve_permissions=is_root if preserve_permissions is None else preserve_permissions,
        overwrite=overwrite,
        xattrs=xattrs,
        is_root=is_root,
        jobs=max(1, int(jobs)),
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
