"""Extracting an image's tree onto the host: exact, sparse, and never outside the destination."""

from __future__ import annotations

import errno
import marshal
import os
import stat as _stat
from collections.abc import Callable, Iterator
from typing import Any

from . import constants as K
from .blockdev import FileDevice
from .errors import Ext4Error, UnsafePath
from .inode import Inode
from .reader import Filesystem, decode_name, encode_name, split_path
from .record import Record

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_COPY_CHUNK = 1 << 30
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# A tree with fewer non-directory entries than this is extracted by one process even when
# more jobs are allowed: a fork and its report cost more than they would save.
_PARALLEL_MIN_ENTRIES = 64
# A directory made by a parallel extraction: (path relative to DEST, ino, what finishing it needs).
_Dir = tuple[str, int, "_DirMeta | None"]
# An entry for a worker: (walk order, its directory's path relative to DEST, name, ino).
_Leaf = tuple[int, str, bytes, int]
_CHUNK_ENTRIES = 32  # entries per chunk of work
_MESSAGE_MAX = 1 << 16  # a larger chunk (very long paths) is extracted by the walking process
_REPORT_COUNTS = ("files", "symlinks", "hardlinks", "specials", "bytes", "skipped")


class ExtractReport(Record):
    """What an extraction did; ``errors`` and ``warnings`` are one-line messages."""

    __slots__ = ("files", "directories", "symlinks", "hardlinks", "specials", "bytes", "skipped",
                 "errors", "warnings")

    def __init__(self) -> None:
        self.files = self.directories = self.symlinks = self.hardlinks = 0
        self.specials = self.bytes = self.skipped = 0
        self.errors: list[str] = []
        self.warnings: list[str] = []


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
        self.root_shown = "/"  # how DEST's top is named in messages (a parallel walk sets it)
        self.visited: set[int] = set()  # directories made by a parallel walk

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
        self._walk(start_ino, dest_fd, self.fs.dir_entries(start_ino), shown, "", None, {start_ino})
        self._finish_deferred()

    def _walk(self, start_ino: int, start_fd: int, entries_: list[tuple[bytes, int, int]], shown: str, rel: str,
              start_inode: Inode | None, visited: set[int]) -> None:
        """Extract a directory's entries into ``start_fd`` and everything below, depth first.  With
        ``start_inode``, the directory itself is finished (and ``start_fd`` closed) at the end."""
        stack: list[tuple[int, int, Iterator[tuple[bytes, int, int]], str, str, Inode | None]] = []
        stack.append((start_ino, start_fd, iter(entries_), shown, rel, start_inode))
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
                    made = self._enter_dir(dfd, name, child, inode, shown_child, visited)
                    if made is not None:
                        stack.append((child, made[0], iter(made[1]), shown_child, rel, inode))
                else:
                    self._extract_leaf(dfd, name, child, inode, shown_child, rel)
            except UnsafePath as exc:
                self.error(str(exc))
            except Ext4Error as exc:
                self.error(f"{shown_child}: {exc}")
            except OSError as exc:
                self.error(f"{shown_child}: {exc.strerror or exc}")

    # ------------------------------------------------------ parallel walk
    def _run_parallel(self, start_ino: int, dest_fd: int, shown: str) -> None:
        """Extract with up to ``opts.jobs`` processes.

        This process walks the tree and makes every directory; the other entries
        go out as they are found, in chunks, to forked workers (started once the
        tree has proved big enough) that take them from one socket, so the work
        balances itself and starts before the walk ends.  When the socket is
        full, this process extracts the chunk itself; after the walk it takes
        chunks too.  An entry whose inode has several names is left to this
        process, which makes all of them at the end in walk order (the first is
        created, the others linked to it).  Directories get their owners, modes,
        xattrs and times last, deepest first.
        """
        self.root_fd = dest_fd
        self.root_shown = shown
        dirs: list[_Dir] = [("", start_ino, None)]  # the root, then every directory made, pre-order
        pool = _Pool(self, self.opts.jobs)
        chunk: list[_Leaf] = []
        seq = 0
        stack: list[tuple[int, int, Iterator[tuple[bytes, int, int]]]] = []
        stack.append((0, dest_fd, iter(self.fs.dir_entries(start_ino))))
        visited = self.visited = {start_ino}
        try:
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
                    rel_dir = dirs[index][0]
                    if not _safe_name(name):
                        self.error(f"{self._shown(rel_dir, name)!r}: unsafe name refused (inode {child})")
                        continue
                    if ft != K.FT_DIR and ft != K.FT_UNKNOWN:
                        chunk.append((seq, rel_dir, name, child))
                        seq += 1
                        if len(chunk) >= _CHUNK_ENTRIES:
                            pool.submit(chunk)
                            chunk = []
                        continue
                    try:
                        inode = self.fs.inode(child)
                        if not inode.is_dir():
                            chunk.append((seq, rel_dir, name, child))
                            seq += 1
                            if len(chunk) >= _CHUNK_ENTRIES:
                                pool.submit(chunk)
                                chunk = []
                            continue
                        made = self._enter_dir(dfd, name, child, inode, self._shown(rel_dir, name), visited)
                        if made is not None:
                            dirs.append(((rel_dir + "/" if rel_dir else "") + decode_name(name), child, _DirMeta(inode)))
                            stack.append((len(dirs) - 1, made[0], iter(made[1])))
                    except Ext4Error as exc:
                        self.error(f"{self._shown(rel_dir, name)}: {exc}")
                    except OSError as exc:
                        self.error(f"{self._shown(rel_dir, name)}: {exc.strerror or exc}")
            finally:
                for index, dfd, _ in stack:
                    if index:
                        os.close(dfd)
            if chunk:
                pool.submit(chunk)
            linked = pool.finish()
        finally:
            pool.stop()
        linked.sort()  # walk order: the first name of each inode comes first
        self._extract_chunk(linked, defer_linked=False)
        # Children before their parents; siblings come together, so their parent is opened once.
        parent_rel, parent_fd = "", self.root_fd
        try:
            for rel, ino, meta in reversed(dirs[1:]):
                assert meta is not None
                shown_dir = self.root_shown.rstrip("/") + "/" + rel
                head, _, tail = rel.rpartition("/")
                try:
                    if head != parent_rel:
                        if parent_fd != self.root_fd:
                            os.close(parent_fd)
                        parent_rel, parent_fd = "", self.root_fd
                        if head:
                            parent_fd = self._open_rel(head)
                        parent_rel = head
                    fd = os.open(encode_name(tail), _DIR_FLAGS, dir_fd=parent_fd)
                except OSError as exc:
                    self.error(f"{shown_dir}: {exc.strerror or exc}")
                    continue
                try:
                    self._finish_dir(fd, ino, meta, shown_dir)
                except Ext4Error as exc:
                    self.error(f"{shown_dir}: {exc}")
                except OSError as exc:
                    self.error(f"{shown_dir}: {exc.strerror or exc}")
                finally:
                    os.close(fd)
        finally:
            if parent_fd != self.root_fd:
                os.close(parent_fd)

    def _misfiled_dir(self, dfd: int, name: bytes, ino: int, inode: Inode, shown: str, rel: str) -> None:
        """A directory reached through an entry whose file type said otherwise: extracted with its
        subtree as one process would (the walk's cycle check still applies)."""
        made = self._enter_dir(dfd, name, ino, inode, shown, self.visited)
        if made is not None:
            self._walk(ino, made[0], made[1], shown, rel, inode, self.visited)
            self._finish_deferred()

    def _enter_dir(self, dfd: int, name: bytes, ino: int, inode: Inode, shown: str,
                   visited: set[int]) -> tuple[int, list[tuple[bytes, int, int]]] | None:
        """Make directory ``name`` in ``dfd`` and list inode ``ino``: (its fd, its entries), or None
        when it is refused (seen before: a cycle; not makeable) with the error reported."""
        if ino in visited:
            self.error(f"{shown}: directory inode {ino} appears twice (cycle); skipped")
            return None
        visited.add(ino)
        try:
            children: list[tuple[bytes, int, int]] = self.fs.dir_entries(ino, inode)
        except Ext4Error as exc:
            self.error(f"{shown}: contents not extracted: {exc}")
            children = []
        cfd = self._make_dir(dfd, name, shown)
        if cfd < 0:
            return None
        self.report.directories += 1
        return cfd, children

    def _shown(self, rel_dir: str, name: bytes) -> str:
        """How an entry of the directory ``rel_dir`` (relative to DEST) is named in messages."""
        return self.root_shown.rstrip("/") + "/" + (rel_dir + "/" if rel_dir else "") + decode_name(name)

    def _extract_chunk(self, leaves: list[_Leaf], *, defer_linked: bool = True) -> list[_Leaf]:
        """Extract non-directory entries into the directories already made.  With
        ``defer_linked``, an entry whose inode has several names (or is a directory
        after all) is not made but returned, for this process to make at the end."""
        linked: list[_Leaf] = []
        current, dfd = "", self.root_fd
        try:
            for leaf in leaves:
                _, rel_dir, name, ino = leaf
                try:
                    if rel_dir != current:
                        if current:
                            os.close(dfd)
                        current, dfd = "", self.root_fd
                        if rel_dir:
                            dfd = self._open_rel(rel_dir)
                        current = rel_dir
                    inode = self.fs.inode(ino)
                    if defer_linked and (inode.links_count > 1 or inode.is_dir()):
                        linked.append(leaf)  # several names, or a directory whose entry said otherwise
                        continue
                    rel = (rel_dir + "/" if rel_dir else "") + decode_name(name)
                    if inode.is_dir():  # a damaged entry's file type: made and walked as one process does
                        self._misfiled_dir(dfd, name, ino, inode, self._shown(rel_dir, name), rel)
                        continue
                    self._extract_leaf(dfd, name, ino, inode, self._shown(rel_dir, name), rel)
                except UnsafePath as exc:
                    self.error(str(exc))
                except Ext4Error as exc:
                    self.error(f"{self._shown(rel_dir, name)}: {exc}")
                except OSError as exc:
                    self.error(f"{self._shown(rel_dir, name)}: {exc.strerror or exc}")
        finally:
            if current:
                os.close(dfd)
        return linked

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
    def _mode_bits(self, inode: Inode | _DirMeta) -> int:
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

    def _finish_dir(self, fd: int, ino: int, inode: Inode | _DirMeta, shown: str) -> None:
        if self.opts.same_owner:
            try:
                os.fchown(fd, inode.uid, inode.gid)
            except PermissionError:
                self.warn(f"{shown}: cannot set owner {inode.uid}:{inode.gid} (not root)")
        if self.opts.xattrs:
            if isinstance(inode, Inode):
                self._xattrs(fd, ino, inode, shown)
            elif inode.has_xattrs:  # read again: the walk kept only a summary
                self._xattrs(fd, ino, self.fs.inode(ino), shown)
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


class _DirMeta:
    """What finishing a directory needs of its inode, kept for every directory of a parallel walk
    until the end (a whole Inode is several times larger: 130,000 directories took 64 MiB)."""

    __slots__ = ("uid", "gid", "mode", "atime", "mtime", "has_xattrs")

    def __init__(self, inode: Inode) -> None:
        self.uid = inode.uid
        self.gid = inode.gid
        self.mode = inode.mode
        self.atime = inode.atime
        self.mtime = inode.mtime
        self.has_xattrs = bool(inode.file_acl) or inode.tail[:4] == _IBODY_MAGIC


class _Pool:
    """Forked extraction workers fed with chunks of entries through one SOCK_SEQPACKET socket
    (every message is one chunk, so workers reading the same socket never split one)."""

    def __init__(self, ex: _Extractor, jobs: int) -> None:
        self.ex = ex
        self.jobs = jobs
        self.pending: list[list[_Leaf]] = []  # chunks before the workers are started
        self.pending_entries = 0
        self.workers: list[tuple[int, int]] = []  # (pid, read end of its report pipe)
        self.sock: tuple[Any, Any] | None = None  # (this process's end, the workers' end)
        self.linked: list[_Leaf] = []

    def submit(self, chunk: list[_Leaf]) -> None:
        """Hand a chunk to a worker, or extract it here when none can take it now."""
        if self.sock is None:
            self.pending.append(chunk)
            self.pending_entries += len(chunk)
            if self.jobs > 1 and self.pending_entries >= _PARALLEL_MIN_ENTRIES and _can_fork():
                self._start()
            return
        if self.workers:
            data = marshal.dumps(chunk)
            if len(data) <= _MESSAGE_MAX:
                try:
                    self.sock[0].send(data, _socket().MSG_DONTWAIT)
                    return
                except OSError:  # full (EAGAIN), or no room for so large a message: do it here
                    pass
        self.linked += self.ex._extract_chunk(chunk)

    def _start(self) -> None:
        try:
            socket = _socket()
            pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except (OSError, ImportError):  # no descriptors left, or no SEQPACKET here: one process
            self.jobs = 1
            return
        for end in pair:
            end.settimeout(None)  # blocking whatever socket.setdefaulttimeout() says
        self.sock = pair
        for _ in range(self.jobs - 1):
            try:
                self.workers.append(self._fork())
            except OSError:  # no process to be had (EAGAIN, ENOMEM): fewer workers
                break
        pending, self.pending = self.pending, []
        for chunk in pending:
            self.submit(chunk)

    def _fork(self) -> tuple[int, int]:
        import signal

        rfd, wfd = os.pipe()
        # No SIGINT/SIGTERM between fork() and the child's try (it would raise into the caller's
        # code in the child) or before the parent has recorded the pid.
        stopping = {signal.SIGINT, signal.SIGTERM}
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(rfd)
            os.close(wfd)
            raise
        if pid == 0:  # the child: never returns into the caller's code
            status = 1
            try:
                for signum in stopping:  # the caller's handlers are not the child's business
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                os.close(rfd)
                assert self.sock is not None
                self.sock[0].close()
                for _, other in self.workers:  # earlier workers' report pipes
                    os.close(other)
                ex = self.ex
                ex.report = ExtractReport()
                ex.on_message = None
                linked: list[_Leaf] = []
                import warnings

                with warnings.catch_warnings(record=True) as caught:  # re-issued by the parent
                    warnings.simplefilter("always")
                    while True:
                        data = self.sock[1].recv(_MESSAGE_MAX)
                        if not data:
                            break
                        linked += ex._extract_chunk(marshal.loads(data))
                raised = [(w.category.__module__, w.category.__qualname__, str(w.message)) for w in caught]
                counts = {k: getattr(ex.report, k) for k in _REPORT_COUNTS}
                view = memoryview(marshal.dumps((counts, ex.report.errors, ex.report.warnings, linked, raised)))
                while view:
                    view = view[os.write(wfd, view):]
                status = 0
            finally:
                os._exit(status)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(wfd)
        return pid, rfd

    def finish(self) -> list[_Leaf]:
        """After the walk: take the chunks left (with the workers), collect the workers' reports;
        returns the entries with several names, to be made by this process."""
        ex = self.ex
        for chunk in self.pending:  # never started: a small tree
            self.linked += ex._extract_chunk(chunk)
        self.pending = []
        if self.sock is not None:
            mine, theirs = self.sock
            mine.shutdown(_socket().SHUT_WR)  # the workers see the end once the socket is empty
            while True:
                data = theirs.recv(_MESSAGE_MAX)
                if not data:
                    break
                self.linked += ex._extract_chunk(marshal.loads(data))
            while self.workers:
                pid, rfd = self.workers.pop(0)
                self.linked += self._merge(pid, rfd)
        return self.linked

    def _merge(self, pid: int, rfd: int) -> list[_Leaf]:
        """Wait for a worker's report and add it to ours (its messages are passed on now)."""
        ex = self.ex
        chunks = []
        try:
            while True:
                chunk = os.read(rfd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(rfd)
            ok = _reap(pid)
        try:
            # A whole report decodes; a worker that died half-way wrote none or part of one.
            data = marshal.loads(b"".join(chunks)) if ok else None
        except (ValueError, EOFError, TypeError):
            data = None
        if data is None:
            ex.error(f"an extraction worker (pid {pid}) failed; part of the tree may be missing")
            return []
        counts, errors, warned, linked, raised = data
        for key in _REPORT_COUNTS:
            setattr(ex.report, key, getattr(ex.report, key) + int(counts[key]))
        for message in errors:
            ex.error(message)
        for message in warned:
            ex.warn(message)
        if raised:
            import sys
            import warnings

            for module, qualname, text in raised:
                category = getattr(sys.modules.get(module), qualname, UserWarning)
                if not (isinstance(category, type) and issubclass(category, Warning)):
                    category = UserWarning
                warnings.warn(text, category, stacklevel=2)
        return list(linked)

    def stop(self) -> None:
        """Close the socket; kill the workers still there (this process failed half-way)."""
        import signal

        try:
            for pid, rfd in self.workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                finally:
                    os.close(rfd)
                    _reap(pid)
        finally:
            self.workers = []
            if self.sock is not None:
                for end in self.sock:
                    end.close()
                self.sock = None


def _reap(pid: int) -> bool:
    """Wait for a worker; whether it exited 0 (True too when someone else reaped it: SIGCHLD
    ignored, or a child watcher; its report then tells)."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return True
    return os.waitstatus_to_exitcode(status) == 0


def _socket() -> Any:
    import socket

    return socket


def default_jobs() -> int:
    """The CLI's default number of extraction processes: one per CPU this process may use, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 4))


def _can_fork() -> bool:
    """Whether forking workers is safe here: a POSIX fork, and no other thread whose locks
    the children would inherit held."""
    import threading

    return hasattr(os, "fork") and threading.active_count() == 1


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
    caller runs no other thread); then the directories are made first, the other
    entries after, and a directory and a non-directory of the same name (a damaged
    image) leave the directory.
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
