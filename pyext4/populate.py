"""Populating an image from a host directory, a tar archive or another ext4 image, in bulk.

The source is first scanned into a deterministic list of entries (sorted by
name), which also gives the space it needs (for ``auto`` sizing and for
refusing a too-small size before anything is written).  Building then
allocates inodes (directories spread Orlov-style, files next to their
directory), packs file data into large contiguous runs written with few big
writes (``copy_file_range`` from host files and ext4 sources), builds each
directory once, complete — as an htree when it needs more than one block —
and writes the new inodes' table blocks whole.  The remaining metadata
(bitmaps, descriptors, superblock) is written by the writer's one flush.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import queue
import re
import stat as _stat
import struct
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from . import _codecs as C
from . import constants as K
from . import dirent as D
from . import extents as E
from . import xattr as X
from .blockdev import FileDevice
from .csum import crc32c_raw, inode_seed
from .errors import Ext4Error, InvalidOptions, NoSpace
from .inode import Inode, encode_time
from .reader import Filesystem, decode_name
from .writer import WritableFilesystem, _data_ranges, _empty_extent_root

if TYPE_CHECKING:
    import tarfile  # imported where an archive is read (it costs a millisecond of every start-up)

_NS = 1_000_000_000
_EH = C.EXTENT_HEADER
_EX = C.EXTENT
_SMALL_FILE = 256 << 10  # files up to this size are read whole; larger ones are range-copied
_BATCH_BYTES = 16 << 20  # small files of one directory are read into one buffer of at most this size
_POOL_BUFFER = _BATCH_BYTES + _SMALL_FILE + 65536  # pooled (reused) read buffers: a batch and its last file
_POOL_SIZE = 3  # buffers in flight between reading and the I/O thread
_CHUNK_BLOCKS = 32768  # blocks reserved from the allocator at a time
_WRITE_BUFFER = 8 << 20  # coalesced writes are flushed at this size
_ADVISE_BYTES = 16 << 20  # start writeback of the image every this many bytes (overlaps the final fsync)
_COPY_PIECE = 16 << 20  # range copies go in pieces of this size (so writeback starts as they go)
_U16 = struct.Struct("<H")
_INO_GEN = struct.Struct("<II")
_IOV_MAX = 1024
_INLINE_BYTES = 4 << 20  # sources with less file data than this are written without the I/O thread
_ASYNC_COPY = 4 << 20  # range copies this large go to the I/O thread; smaller ones run at once
_QUEUED_JOBS = 6  # writes waiting for the I/O thread (each up to _WRITE_BUFFER bytes, or one copy)
_OPEN_FLAGS = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
_INODE_EXTRA = 32  # i_extra_isize pyext4 packs on the fast path (all extra fields)
_FAST_INODE = struct.Struct(C.INODE.format + C.INODE_EXTRA.format.lstrip("<=>!@"))

KINDS = ("dir", "file", "symlink", "char", "block", "fifo", "socket", "hardlink")
_MODE_OF_KIND = {
    "dir": K.S_IFDIR, "file": K.S_IFREG, "symlink": K.S_IFLNK, "char": K.S_IFCHR, "block": K.S_IFBLK,
    "fifo": K.S_IFIFO, "socket": K.S_IFSOCK,
}
_KIND_OF_MODE = {v: k for k, v in _MODE_OF_KIND.items()}

Reader = Callable[["Node"], Iterator[tuple[int, "bytes | tuple[int, int, int]"]]]


@dataclass(slots=True)
class Node:
    """One entry of a source tree, as pyext4 will create it."""

    path: bytes  # absolute, b"/a/b"; b"/" for the root
    kind: str
    mode: int = 0o644  # permission bits (incl. setuid/setgid/sticky)
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int | None = None
    rdev: tuple[int, int] = (0, 0)
    target: bytes = b""  # symlink target, or the hard link's first path
    size: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    link_key: Any = None  # identical keys are hard links to one inode
    source: Any = None  # how to read the data (source specific)
    data_ranges: list[tuple[int, int]] | None = None  # (offset, length) of stored data; None = all of it


@dataclass
class PopulateReport:
    """What populate() did; ``warnings`` are one-line messages (entries or attributes left out)."""

    entries: int = 0
    files: int = 0
    directories: int = 0
    bytes: int = 0
    hardlinks: int = 0
    warnings: list[str] = field(default_factory=list)


# =================================================================== rules
@dataclass(frozen=True)
class Rule:
    pattern: str
    regex: re.Pattern[str]
    uid: int
    gid: int
    mode: int | None


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` crosses directories (``/a/**`` also matches ``/a``), ``*`` and ``?`` stay within one name,
    ``[...]`` as fnmatch."""
    if not pattern.startswith("/"):
        pattern = "/" + pattern
    if len(pattern) > 1:
        pattern = pattern.rstrip("/") or "/"
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("/**", i) and (i + 3 == len(pattern) or pattern[i + 3] == "/"):
            out.append("(?:/.*)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 2)
            if j < 0:
                out.append(re.escape(c))
            else:
                out.append(fnmatch.translate(pattern[i : j + 1])[4:-3])
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def parse_rules(text: str, *, origin: str = "rules") -> list[Rule]:
    """Lines of ``GLOB UID:GID [MODE]`` (``#`` comments, blank lines ignored); later lines win.

    GLOB is an absolute image path: ``*``/``?``/``[...]`` match within one name, ``**`` across
    directories, and ``/dir/**`` matches ``/dir`` itself and everything under it.  MODE is octal
    permission bits (not applied to symlinks).  Raises InvalidOptions naming ``origin:line``.
    """
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{origin}:{number}"
        if len(parts) not in (2, 3):
            raise InvalidOptions(f"{where}: expected 'GLOB UID:GID [MODE]', got {line!r}")
        uid_s, sep, gid_s = parts[1].partition(":")
        if not sep or not uid_s.isdigit() or not gid_s.isdigit():
            raise InvalidOptions(f"{where}: owner must be numeric UID:GID, got {parts[1]!r}")
        if int(uid_s) > 0xFFFFFFFF or int(gid_s) > 0xFFFFFFFF:
            raise InvalidOptions(f"{where}: UID and GID must fit in 32 bits")
        mode = None
        if len(parts) == 3:
            try:
                mode = int(parts[2], 8)
            except ValueError:
                raise InvalidOptions(f"{where}: mode must be octal, got {parts[2]!r}") from None
            if not 0 <= mode <= 0o7777:
                raise InvalidOptions(f"{where}: mode {parts[2]} out of range")
        rules.append(Rule(parts[0], _glob_regex(parts[0]), int(uid_s), int(gid_s), mode))
    return rules


# ================================================================ sources
def _host_xattrs(path: bytes) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    if not names:
        return {}
    out = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _sparse_ranges(path: bytes, size: int) -> list[tuple[int, int]] | None:
    """(offset, length) of a host file's data via SEEK_DATA/SEEK_HOLE; None when it has no holes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        ranges = [(start, end - start) for start, end in _data_ranges(fd, size)]
    finally:
        os.close(fd)
    if ranges == [(0, size)]:
        return None
    return ranges


def scan_directory(root: str | os.PathLike[str], *, exclude: set[tuple[int, int]] | frozenset[tuple[int, int]]
                   = frozenset()) -> list[Node]:
    """Every entry under a host directory, parents first, names sorted bytewise.

    ``exclude``: (st_dev, st_ino) of host files to leave out (the image being built, when it lies in
    the tree).  Raises InvalidOptions when ``root`` is not a directory, OSError when it cannot be read.
    """
    nodes: list[Node] = []
    broot = os.fsencode(root)
    st = os.lstat(broot)
    if not _stat.S_ISDIR(st.st_mode):
        raise InvalidOptions(f"{os.fsdecode(broot)}: not a directory")
    nodes.append(_host_node(b"/", broot, st))
    pending = [(broot, b"")]
    while pending:
        host_dir, image_dir = pending.pop()
        with os.scandir(host_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            image_path = image_dir + b"/" + entry.name
            st = entry.stat(follow_symlinks=False)
            if exclude and (st.st_dev, st.st_ino) in exclude:
                continue
            node = _host_node(image_path, entry.path, st)
            nodes.append(node)
            if node.kind == "dir":
                subdirs.append((entry.path, image_path))
        pending.extend(reversed(subdirs))
    return nodes


def _host_node(image_path: bytes, host_path: bytes, st: os.stat_result) -> Node:
    fmt = _stat.S_IFMT(st.st_mode)
    kind = _KIND_OF_MODE.get(fmt)
    if kind is None:
        raise InvalidOptions(f"{os.fsdecode(host_path)}: unsupported file type {fmt:o}")
    node = Node(image_path, kind, _stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns)
    if kind == "file":
        node.size = st.st_size
        node.source = host_path
        if st.st_blocks * 512 < st.st_size:
            node.data_ranges = _sparse_ranges(host_path, st.st_size)
    elif kind == "symlink":
        node.target = os.readlink(host_path)
        node.size = len(node.target)
    elif kind == "char" or kind == "block":
        node.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if kind != "dir" and st.st_nlink > 1:
        node.link_key = ("host", st.st_dev, st.st_ino)
    node.xattrs = _host_xattrs(host_path)
    return node


def _pax_time(info: tarfile.TarInfo, key: str, fallback: float) -> int:
    """A PAX time (``sec[.frac]``, possibly negative) in ns, exactly; else ``fallback`` seconds."""
    value = info.pax_headers.get(key)
    if value:
        try:
            negative = value.startswith("-")
            sec, _, frac = value.lstrip("+-").partition(".")
            ns = int(sec) * _NS + (int((frac + "000000000")[:9]) if frac else 0)
            return -ns if negative else ns
        except ValueError:
            pass
    return int(round(fallback * _NS)) if isinstance(fallback, float) else int(fallback) * _NS


def _tar_name(name: str) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    if any(p == b".." for p in parts):
        raise InvalidOptions(f"tar member {name!r} contains '..'")
    return b"/" + b"/".join(parts) if parts else b"/"


def open_tar(source: str | os.PathLike[str] | BinaryIO) -> tarfile.TarFile:
    """A tar archive (plain, gzip, bzip2 or xz) from a path (random access) or a binary stream (one pass).

    Raises InvalidOptions when it is not a readable tar archive.
    """
    import tarfile

    try:
        if isinstance(source, (str, bytes, os.PathLike)):
            return tarfile.open(os.fspath(source), "r:*")  # type: ignore[arg-type]
        return tarfile.open(fileobj=source, mode="r|*")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, EOFError) and exc.errno is not None:
            raise
        raise InvalidOptions(f"not a readable tar archive: {exc}") from None


def _tar_errors(exc: BaseException) -> InvalidOptions:
    return InvalidOptions(f"tar archive is damaged or truncated: {exc}")


def scan_tar(path: str | os.PathLike[str]) -> list[Node]:
    """Entries of a tar archive (headers only), in archive order; member indexes in ``Node.source``.

    Raises InvalidOptions for an unreadable or damaged archive or an unsafe member name.
    """
    import tarfile

    nodes: list[Node] = []
    with open_tar(path) as tf:
        try:
            for index, info in enumerate(tf):
                node = _tar_node(info, index)
                if node is not None:
                    nodes.append(node)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise _tar_errors(exc) from None
    return nodes


def _tar_node(info: tarfile.TarInfo, index: int) -> Node | None:
    path = _tar_name(info.name)
    node = Node(path, "file", info.mode & 0o7777, info.uid, info.gid)
    node.mtime_ns = _pax_time(info, "mtime", info.mtime)
    node.atime_ns = _pax_time(info, "atime", info.mtime) if "atime" in info.pax_headers else node.mtime_ns
    if info.isdir():
        node.kind = "dir"
    elif info.islnk():
        node.kind = "hardlink"
        node.target = _tar_name(info.linkname)
    elif info.issym():
        node.kind = "symlink"
        node.target = info.linkname.encode("utf-8", "surrogateescape")
        node.size = len(node.target)
    elif info.ischr() or info.isblk():
        node.kind = "char" if info.ischr() else "block"
        node.rdev = (info.devmajor, info.devminor)
    elif info.isfifo():
        node.kind = "fifo"
    elif info.isreg():
        node.kind = "file"
        node.size = info.size
        sparse = getattr(info, "sparse", None)
        if sparse is not None:
            node.data_ranges = [(int(o), int(n)) for o, n in sparse if n > 0]
    else:
        return None
    node.source = index
    for key, value in info.pax_headers.items():
        if key in ("SCHILY.acl.access", "SCHILY.acl.default"):
            name = "system.posix_acl_" + key.rpartition(".")[2]
            acl = _acl_from_text(value, minimal_is_mode=name.endswith("access"))
            if acl is not None:
                node.xattrs.setdefault(name, acl)
        elif key.startswith("SCHILY.xattr."):
            node.xattrs[key[len("SCHILY.xattr.") :]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            import base64
            import binascii
            import urllib.parse

            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
            try:
                node.xattrs[name] = base64.b64decode(value + "=" * (-len(value) % 4))
            except (ValueError, binascii.Error):
                continue
    return node


_ACL_TAGS = {"user": 0x01, "u": 0x01, "group": 0x04, "g": 0x04, "mask": 0x10, "m": 0x10, "other": 0x20, "o": 0x20}
_ACL_UNDEFINED_ID = 0xFFFFFFFF


def _acl_from_text(text: str, *, minimal_is_mode: bool) -> bytes | None:
    """A POSIX ACL in text form (GNU tar's SCHILY.acl.*: ``user:1234:r--`` entries separated by newlines
    or commas) as the Linux xattr value; None when it cannot be read (names that do not resolve on
    this host, bad syntax) or, with ``minimal_is_mode``, when it only repeats the mode bits."""
    entries: dict[tuple[int, int], int] = {}
    for raw in text.replace(",", "\n").splitlines():
        item = raw.split("#", 1)[0].strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) == 2:  # "other:r--" / "mask:rwx" (short forms)
            parts = [parts[0], "", parts[1]]
        if len(parts) != 3 or parts[0] not in _ACL_TAGS:
            return None
        tag_name, qualifier, perm_text = parts
        tag = _ACL_TAGS[tag_name]
        perm = 0
        for ch in perm_text.strip():
            bit = {"r": 4, "w": 2, "x": 1, "-": 0}.get(ch)
            if bit is None:
                return None
            perm |= bit
        ident = _ACL_UNDEFINED_ID
        if qualifier:
            if tag not in (0x01, 0x04):
                return None
            tag = 0x02 if tag == 0x01 else 0x08  # a named user or group
            if qualifier.isdigit():
                ident = int(qualifier)
            else:
                try:
                    if tag == 0x02:
                        import pwd

                        ident = pwd.getpwnam(qualifier).pw_uid
                    else:
                        import grp

                        ident = grp.getgrnam(qualifier).gr_gid
                except (KeyError, ImportError):
                    return None
            if ident >= _ACL_UNDEFINED_ID:
                return None
        entries[(tag, ident)] = perm
    tags = {tag for tag, _ in entries}
    if not {0x01, 0x04, 0x20} <= tags:
        return None
    if (0x02 in tags or 0x08 in tags) and 0x10 not in tags:
        return None
    if minimal_is_mode and tags == {0x01, 0x04, 0x20}:
        return None
    out = bytearray(struct.pack("<I", 2))
    for (tag, ident), perm in sorted(entries.items()):
        out += struct.pack("<HHI", tag, perm, ident)
    return bytes(out)


_EXT4_KINDS = {K.S_IFDIR: "dir", K.S_IFREG: "file", K.S_IFLNK: "symlink", K.S_IFCHR: "char",
               K.S_IFBLK: "block", K.S_IFIFO: "fifo", K.S_IFSOCK: "socket"}


def scan_ext4(fs: Filesystem) -> list[Node]:
    """Every entry of an ext4 image (read directly), parents first, names sorted bytewise.

    The root's lost+found is left out.  Raises Ext4Error subclasses for a damaged source.
    """
    nodes: list[Node] = []
    root = fs.inode(K.ROOT_INO)
    nodes.append(_ext4_node(fs, b"/", K.ROOT_INO, root))
    pending: list[tuple[bytes, int]] = [(b"", K.ROOT_INO)]
    seen = {K.ROOT_INO}
    while pending:
        image_dir, ino = pending.pop()
        entries = sorted(fs.dir_entries(ino), key=lambda e: e[0])
        subdirs = []
        for name, child, _ft in entries:
            if ino == K.ROOT_INO and name == b"lost+found":
                continue
            inode = fs.inode(child)
            path = image_dir + b"/" + name
            node = _ext4_node(fs, path, child, inode)
            nodes.append(node)
            if node.kind == "dir":
                if child in seen:
                    raise Ext4Error(f"source image has a directory cycle at {decode_name(path)}")
                seen.add(child)
                subdirs.append((path, child))
        pending.extend(reversed(subdirs))
    return nodes


def _ext4_node(fs: Filesystem, path: bytes, ino: int, inode: Inode) -> Node:
    fmt = inode.mode & K.S_IFMT
    kind = _EXT4_KINDS.get(fmt)
    if kind is None:
        raise Ext4Error(f"source inode {ino} ({decode_name(path)}) has an unknown type {fmt:o}")
    node = Node(path, kind, inode.mode & 0o7777, inode.uid, inode.gid, inode.atime, inode.mtime, inode.ctime)
    if kind == "file":
        node.size = inode.size
        node.source = ino
        bs = fs.block_size
        if not inode.has_inline_data() and inode.blocks_in_512(fs.huge_file, bs) * 512 < -(-inode.size // bs) * bs:
            # Holes (or unwritten extents): keep only the stored data.
            node.data_ranges = [(offset, length) for offset, length, phys in fs.data_segments(ino, inode)
                                if phys is not None]
    elif kind == "symlink":
        node.target = fs.readlink_ino(ino, inode)
        node.size = len(node.target)
    elif kind in ("char", "block"):
        node.rdev = inode.rdev()
    if kind != "dir" and inode.links_count > 1:
        node.link_key = ("ext4", ino)
    node.xattrs = fs.xattrs_ino(ino, inode)
    if kind == "dir":
        node.size = 0
    return node


# =============================================================== options
@dataclass
class PopulateOptions:
    owner: tuple[int, int] | None = None
    root_owner: tuple[int, int] | None = None
    root_mode: int | None = None
    rules: list[Rule] = field(default_factory=list)
    timestamp: int | None = None  # seconds: clamp every time to it
    now_ns: int = 0
    xattrs: bool = True
    dest: bytes = b"/"  # where the source's root goes in the image


def apply_policy(nodes: list[Node], opts: PopulateOptions) -> None:
    """Owners, modes and times as the options say (in place): owner, then rules, then root_owner/root_mode."""
    clamp = opts.timestamp * _NS if opts.timestamp is not None else None
    owner = opts.owner
    rules = opts.rules
    for node in nodes:
        if owner is not None:
            node.uid, node.gid = owner
        if rules:
            text = decode_name(node.path)
            for rule in rules:
                if rule.regex.match(text):
                    node.uid, node.gid = rule.uid, rule.gid
                    if rule.mode is not None and node.kind not in ("symlink", "hardlink"):
                        node.mode = rule.mode
        if node.path == b"/":
            if opts.root_owner is not None:
                node.uid, node.gid = opts.root_owner
            if opts.root_mode is not None:
                node.mode = opts.root_mode
        if clamp is not None:
            if node.atime_ns > clamp:
                node.atime_ns = clamp
            if node.mtime_ns > clamp:
                node.mtime_ns = clamp
            if node.ctime_ns is not None and node.ctime_ns > clamp:
                node.ctime_ns = clamp
        if not opts.xattrs:
            node.xattrs = {}
    if opts.dest != b"/":
        _rebase(nodes, opts.dest)


def _rebase(nodes: list[Node], dest: bytes) -> None:
    """Move source paths under ``dest`` (absolute, no trailing slash): b"/" becomes dest itself."""
    for node in nodes:
        node.path = dest if node.path == b"/" else dest + node.path
        if node.kind == "hardlink":
            node.target = dest if node.target == b"/" else dest + node.target


def _dest_path(dest: str | bytes | os.PathLike[str]) -> bytes:
    raw = os.fsencode(dest)
    if not raw.startswith(b"/"):
        raise InvalidOptions(f"{decode_name(raw)}: the destination must be an absolute image path")
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise InvalidOptions(f"{decode_name(raw)}: '..' is not allowed in the destination")
    for part in parts:
        if len(part) > K.NAME_LEN or b"\0" in part:
            raise InvalidOptions(f"{decode_name(raw)}: invalid name in the destination")
    return b"/" + b"/".join(parts)


# ================================================================ sizing
@dataclass
class SpaceNeeds:
    """An upper bound of what populating a fresh filesystem takes (filesystem metadata and journal apart)."""

    blocks: int  # data, extent/indirect, directory, symlink and xattr blocks
    inodes: int


def _leaf_blocks(raw: int, usable: int, biggest: int) -> int:
    """Blocks for ``raw`` bytes of directory entries packed in order: a block is closed only when the
    next entry (at most ``biggest`` bytes) does not fit, so each full block holds more than
    ``usable - biggest`` bytes."""
    return max(1, -(-raw // max(1, usable - biggest)))


def estimate(nodes: list[Node], block_size: int, *, dir_index: bool = True, extents: bool = True,
             inode_size: int = 256, metadata_csum: bool = True) -> SpaceNeeds:
    """Blocks and inodes ``nodes`` need in a fresh filesystem: never less than populate() uses.

    Sparse files count their stored data only (each range rounded out to whole blocks).
    """
    bs = block_size
    blocks = 0
    inodes = 0
    children: dict[bytes, int] = {}  # directory -> bytes of its entries
    biggest: dict[bytes, int] = {}  # directory -> its largest entry
    present: set[bytes] = set()
    seen_links: set[Any] = set()
    xattr_room = inode_size - K.GOOD_OLD_INODE_SIZE - _INODE_EXTRA - 8 if inode_size > K.GOOD_OLD_INODE_SIZE else -1

    def entry(parent: bytes, name: bytes) -> None:
        rec = (8 + len(name) + 3) & ~3
        children[parent] = children.get(parent, 0) + rec
        if rec > biggest.get(parent, 0):
            biggest[parent] = rec

    for node in nodes:
        path = node.path
        if path != b"/":
            parent, _, name = path.rpartition(b"/")
            entry(parent or b"/", name)
        if node.kind == "dir":
            present.add(path)
            children.setdefault(path, 0)
        if node.kind == "hardlink" or (node.link_key is not None and node.link_key in seen_links):
            continue
        if node.link_key is not None:
            seen_links.add(node.link_key)
        inodes += 1
        if node.kind == "file":
            if node.data_ranges is None:
                runs = [(0, node.size)] if node.size else []
            else:
                runs = node.data_ranges
            data = 0
            for offset, length in runs:
                if length > 0:
                    data += (offset + length - 1) // bs - offset // bs + 1
            blocks += data + _mapping_blocks_for(data, len(runs), bs, extents)
        elif node.kind == "symlink" and node.size >= 60:
            blocks += 1
        if node.xattrs:
            need = sum(X.entry_len(len(k)) + ((len(v) + 3) & ~3) for k, v in node.xattrs.items())
            if need > xattr_room:
                blocks += 1
    # Directories a tar archive only implies still need an inode.
    for path in list(children):
        while path != b"/" and path not in present:
            present.add(path)
            inodes += 1
            parent, _, name = path.rpartition(b"/")
            parent = parent or b"/"
            entry(parent, name)
            children.setdefault(path, 0)
            path = parent
    usable = bs - (12 if metadata_csum else 0)
    node_limit = max(1, (bs - 8 - (8 if metadata_csum else 0)) // 8)
    for path, raw in children.items():
        total = raw + 24  # with "." and ".."
        big = max(biggest.get(path, 12), 12)
        if total <= usable:
            nblocks = 1
        elif dir_index:
            leaves = _leaf_blocks(raw, usable, big) + 1
            nblocks = 1 + leaves + -(-leaves // node_limit) + 1
        else:
            nblocks = _leaf_blocks(total, usable, big)
        blocks += nblocks + _mapping_blocks_for(nblocks, 1, bs, extents)
    return SpaceNeeds(blocks=blocks, inodes=inodes)


def _mapping_blocks_for(data_blocks: int, ranges: int, bs: int, extents: bool) -> int:
    """Extent tree or indirect blocks for a file of ``data_blocks`` in ``ranges`` pieces (an upper bound)."""
    if data_blocks <= 0:
        return 0
    if extents:
        # Each stored range is one extent, cut again wherever the allocator's free runs end (in a
        # fresh filesystem at most every 32768 blocks, at group metadata and backup superblocks).
        count = min(data_blocks, ranges + 2 * (data_blocks // 1024 + 1))
        return 0 if count <= 4 else E.tree_shape(count, bs)[1] + 1
    per = bs // 4
    if data_blocks <= 12 and ranges <= 1:
        return 0
    top = data_blocks + 12 * max(0, ranges - 1)  # sparse ranges may each open their own indirect blocks
    meta = 1 + ranges
    if top > 12 + per:
        meta += 1 + -(-top // per) + ranges
    if top > 12 + per + per * per:
        meta += 1 + -(-top // (per * per)) + ranges
    return meta


def _pool_size(size: int) -> int:
    """A pooled buffer's length for a request of ``size`` bytes: the next power of two from 256 KiB,
    at most _POOL_BUFFER (requests above it get a buffer of their own)."""
    n = 256 << 10
    while n < size:
        n <<= 1
    return min(n, _POOL_BUFFER)


# ================================================================ building
class _DataWriter:
    """Coalesces consecutive block writes into large pwritev calls and copies ranges with copy_file_range.

    With a file descriptor, the I/O runs on one background thread (in submission order), so the
    kernel's copying overlaps the Python work of the next files; ``finish()`` waits for it and
    raises the first error it met.  Without one (a memory device) everything runs inline.
    """

    def __init__(self, fs: WritableFilesystem, *, threaded: bool = True) -> None:
        self.fs = fs
        self.bs = fs.block_size
        self.dev = fs.dev
        self.dst_fd = getattr(fs.dev, "fd", -1)
        self.start = -1
        self.end = -1
        self.parts: list[bytes | bytearray | memoryview] = []
        self.pending = 0
        self.written = 0
        self.can_copy = self.dst_fd >= 0 and hasattr(os, "copy_file_range")
        # Early writeback pays off for big sources only (a small one's range can still span gigabytes
        # of a sparse image, which fadvise walks).
        self.can_advise = threaded and self.dst_fd >= 0 and hasattr(os, "posix_fadvise")
        self.can_pwritev = self.dst_fd >= 0 and hasattr(os, "pwritev")
        self.advise_lo = -1
        self.advise_hi = -1
        self.zeros = memoryview(bytes(self.bs))
        self.error: BaseException | None = None  # the I/O thread's first error, until reported
        self.failed = False
        self.lock = threading.Lock()  # counters shared by the I/O thread and copies made at once
        # Blocks written twice (a tar member replaced, its blocks reused) need every write in order:
        # then no copy runs ahead of the queue.
        self.strict_order = False
        self.pool: queue.Queue[bytearray] = queue.Queue()
        self.pool_made = 0
        self.spare: list[bytearray] = []
        self.jobs: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] | None = None
        self.thread: threading.Thread | None = None
        if threaded and self.dst_fd >= 0:
            self.jobs = queue.Queue(maxsize=_QUEUED_JOBS)
            self.thread = threading.Thread(target=self._work, name="pyext4-populate-io", daemon=True)
            self.thread.start()

    # ------------------------------------------------------------ front
    def write(self, block: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``block``; a partial last block is padded with zeros.  ``data`` must not change
        afterwards (it is written later)."""
        offset = block * self.bs
        if offset != self.end or self.pending >= _WRITE_BUFFER:
            self.flush()
            self.start = offset
        self.parts.append(data)
        n = len(data)
        tail = -n % self.bs
        if tail:
            self.parts.append(self.zeros[:tail])
            n += tail
        self.pending += n
        self.end = offset + n

    def copy(self, block: int, src_fd: int, src_offset: int, length: int) -> None:
        """Copy ``length`` bytes of ``src_fd`` to ``block`` onward (zero-padded to a block)."""
        self.flush()
        if self.jobs is not None and (length >= _ASYNC_COPY or self.strict_order):
            src_fd = os.dup(src_fd)  # the caller may close its descriptor before the copy runs
            self._submit(self._copy, block * self.bs, src_fd, src_offset, length, True)
        else:
            self._copy(block * self.bs, src_fd, src_offset, length, False)

    def flush(self) -> None:
        """Hand the coalesced writes over (to the I/O thread, or write them now)."""
        if self.pending:
            self._submit(self._write, self.start, self.parts, self.pending)
        self.parts = []
        self.pending = 0
        self.start = self.end = -1

    def buffer(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes for write_buffer (reused: it holds old bytes)."""
        if size > _POOL_BUFFER:
            return bytearray(size)
        if self.jobs is None:
            if not self.spare or len(self.spare[0]) < size:
                self.spare[:] = [bytearray(_pool_size(size))]
            return self.spare[0]
        try:
            buf = self.pool.get_nowait()
        except queue.Empty:
            if self.pool_made < _POOL_SIZE:
                self.pool_made += 1
                return bytearray(_pool_size(size))
            buf = self._wait_for_buffer()
        # Pooled buffers start as small as their first use (zeroing 16 MiB costs milliseconds) and grow.
        return buf if len(buf) >= size else bytearray(_pool_size(size))

    def _wait_for_buffer(self) -> bytearray:
        while True:  # all in flight: wait for the I/O thread to give one back
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            try:
                return self.pool.get(timeout=0.1)
            except queue.Empty:
                continue

    def write_buffer(self, buf: bytearray, runs: list[tuple[int, int]]) -> None:
        """Write ``buf`` (from buffer()) to ``runs`` of blocks in order; the buffer goes back to the pool."""
        self.flush()
        self._submit(self._write_runs, buf, runs)

    def _write_runs(self, buf: bytearray, runs: list[tuple[int, int]]) -> None:
        view = memoryview(buf)
        offset = 0
        try:
            for start, n in runs:
                size = n * self.bs
                self._write(start * self.bs, [view[offset : offset + size]], size)
                offset += size
        finally:
            del view
            if len(buf) <= _POOL_BUFFER and self.jobs is not None:
                self.pool.put(buf)

    def finish(self) -> None:
        """Everything written (and writeback started); raises the first I/O error."""
        self.flush()
        self._submit(self._advise_all)
        self.stop()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def stop(self) -> None:
        """Wait for the I/O thread to finish what it was given, and end it."""
        if self.thread is not None and self.jobs is not None:
            self.jobs.put(None)
            self.thread.join()
            self.thread = None
            self.jobs = None

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if self.jobs is None:
            fn(*args)
        else:
            self.jobs.put((fn, args))

    def _work(self) -> None:
        jobs = self.jobs
        assert jobs is not None
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, args = job
            if self.failed:  # after a failure: drop the rest (the caller is told at its next call)
                if fn == self._copy and args[-1]:
                    os.close(args[1])
                continue
            try:
                fn(*args)
            except BaseException as exc:  # handed to the caller's thread
                self.failed = True
                self.error = exc

    # ------------------------------------------------------------- I/O
    def _write(self, start: int, parts: list[bytes | bytearray | memoryview], pending: int) -> None:
        if self.can_pwritev:
            offset = start
            for i in range(0, len(parts), _IOV_MAX):
                group = parts[i : i + _IOV_MAX]
                want = sum(len(p) for p in group)
                done = os.pwritev(self.dst_fd, group, offset)
                if done < want:  # a short write: finish it piece by piece
                    rest = memoryview(b"".join(group))[done:]
                    while rest:
                        n = os.pwrite(self.dst_fd, rest, offset + done)
                        if n <= 0:  # pragma: no cover - pwrite raises instead
                            raise OSError(errno.EIO, "short write")
                        rest = rest[n:]
                        done += n
                offset += want
            with self.lock:
                self.written += pending
        else:
            self.dev.pwrite(start, parts[0] if len(parts) == 1 else b"".join(parts))
        self._advance(start, pending)

    def _copy(self, dst: int, src_fd: int, src_offset: int, length: int, close: bool) -> None:
        try:
            done = 0
            if self.can_copy:
                try:
                    while done < length:
                        n = os.copy_file_range(src_fd, self.dst_fd, min(length - done, _COPY_PIECE),
                                               src_offset + done, dst + done)
                        if n <= 0:
                            break
                        with self.lock:
                            self.written += n
                        self._advance(dst + done, n)
                        done += n
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                        raise
                    self.can_copy = False
            while done < length:
                n = min(length - done, _WRITE_BUFFER)
                chunk = os.pread(src_fd, n, src_offset + done)
                if not chunk:
                    chunk = bytes(n)  # the source shrank: zeros, as the size was promised
                self._write(dst + done, [chunk], len(chunk))
                done += len(chunk)
            tail = -length % self.bs
            if tail:
                self._write(dst + length, [bytes(tail)], tail)
        finally:
            if close:
                os.close(src_fd)

    def _advance(self, offset: int, n: int) -> None:
        if not self.can_advise:
            return
        with self.lock:
            if self.advise_lo < 0:
                self.advise_lo, self.advise_hi = offset, offset + n
            else:
                self.advise_lo = min(self.advise_lo, offset)
                self.advise_hi = max(self.advise_hi, offset + n)
            if self.advise_hi - self.advise_lo < _ADVISE_BYTES:
                return
        self._advise_all()

    def _advise_all(self) -> None:
        """Start writing back what was written so far (the final fsync then has less to wait for)."""
        with self.lock:
            lo, hi = self.advise_lo, self.advise_hi
            self.advise_lo = self.advise_hi = -1
        if self.can_advise and lo >= 0:
            try:
                os.posix_fadvise(self.dst_fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)
            except OSError:
                self.can_advise = False


class _Cursor:
    """Hands out blocks in order from large runs reserved from the writer's allocator."""

    def __init__(self, fs: WritableFilesystem, goal: int) -> None:
        self.fs = fs
        self.goal = goal
        self.runs: list[list[int]] = []  # [start, length] reserved, unused

    def take(self, count: int) -> list[tuple[int, int]]:
        """``count`` blocks as (start, length) runs, in order; NoSpace when the filesystem is full."""
        out: list[tuple[int, int]] = []
        while count > 0:
            if not self.runs:
                free = self.fs.sb.free_blocks_count
                if free <= 0:
                    raise NoSpace("no space left in the image for the source")
                want = max(count, min(_CHUNK_BLOCKS, free))
                try:
                    reserved = self.fs.allocate_blocks(min(want, free), self.goal)
                except NoSpace:
                    reserved = self.fs.allocate_blocks(min(count, free), self.goal)
                self.runs = [[s, n] for s, n in reserved]
            run = self.runs[0]
            n = min(count, run[1])
            if out and out[-1][0] + out[-1][1] == run[0]:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((run[0], n))
            run[0] += n
            run[1] -= n
            count -= n
            self.goal = run[0]
            if run[1] == 0:
                self.runs.pop(0)
        return out

    def release(self) -> None:
        for start, length in self.runs:
            if length:
                self.fs.free_blocks(start, length)
        self.runs = []


@dataclass
class _DirState:
    ino: int
    parent: int
    entries: dict[bytes, tuple[int, int]]  # name -> (ino, file type)
    inode: Inode | None = None  # a new directory; None for one already in the image
    changed: bool = False  # an existing directory whose entries changed
    subdir_delta: int = 0  # subdirectories added (minus removed) in an existing directory


class _Builder:
    """Creates the entries of one populate() call; finish() writes directories and inodes."""

    def __init__(self, fs: WritableFilesystem, opts: PopulateOptions, report: PopulateReport,
                 progress: Callable[[int], None] | None, *, threaded: bool = True) -> None:
        self.fs = fs
        self.opts = opts
        self.report = report
        self.progress = progress
        self.bs = fs.block_size
        self.now = opts.now_ns
        self.dirs: dict[bytes, _DirState] = {}
        self.new: dict[int, Inode] = {}  # inodes created here, written by finish()
        self.owned: dict[int, list[tuple[int, int]]] = {}  # blocks of new inodes (to undo a replaced entry)
        self.links: dict[Any, int] = {}
        self.paths: dict[bytes, int] = {}
        self.pending_links: dict[bytes, list[Node]] = {}
        self.xattrs: dict[int, dict[str, bytes]] = {}
        self.meta: dict[int, Node] = {}  # existing directories whose metadata the source sets
        self.data = _DataWriter(fs, threaded=threaded)
        self.cursor = _Cursor(fs, fs.geo.group_first_block(0))
        self.extents_ok = fs.extents_feature
        self.csum = fs.metadata_csum
        self.ipg = fs.geo.inodes_per_group
        self.isize = fs.geo.inode_size
        self.extra = fs._want_extra if self.isize > K.GOOD_OLD_INODE_SIZE else 0
        self.ino_groups: dict[int, list[Any]] = {}  # group -> [descriptor, inode bitmap, next index]
        self.gd_csum = fs.sb.group_desc_csum
        self.track = True  # remember new inodes' blocks (a later tar entry may replace one)
        self.ft = fs.filetype
        # New plain files' inodes already packed (see add_small_files): the common layout only
        # (i_extra_isize 32), and only where no entry is replaced later (never in a tar).
        self.packed: dict[int, bytes] = {}
        self.packable = self.extra == _INODE_EXTRA and self.isize >= K.GOOD_OLD_INODE_SIZE + _INODE_EXTRA

    # ------------------------------------------------------------ inodes
    def _inode(self, node: Node, kind: str) -> Inode:
        inode = Inode()
        inode.mode = _MODE_OF_KIND[kind] | (node.mode & 0o7777)
        inode.uid = node.uid
        inode.gid = node.gid
        inode.atime = node.atime_ns
        inode.mtime = node.mtime_ns
        inode.ctime = node.ctime_ns if node.ctime_ns is not None else self.now
        if self.extra:
            inode.extra_isize = self.extra
            inode.crtime = self.now
        inode.links_count = 1
        return inode

    def _alloc_ino(self, parent_ino: int, is_dir: bool, name: bytes) -> int:
        """Directories through the writer's Orlov-style choice; files next to their directory,
        in increasing order (so their table blocks fill up in sequence)."""
        fs = self.fs
        if is_dir:
            return fs.allocate_inode(parent_ino, is_dir=True, name=name)
        ipg = self.ipg
        start = (parent_ino - 1) // ipg
        state = self.ino_groups.get(start)
        if state is not None:  # the common case: the parent's group, already in use here
            desc, bm, hint = state
            index = bm.find_zero(hint)
            if index >= 0:
                return self._take_ino(start, index, desc, bm, state)
        if fs.sb["s_free_inodes_count"] == 0:
            raise NoSpace("no free inodes left in the image for the source")
        groups = fs.geo.group_count
        first_ino = fs.sb.first_ino
        for step in range(groups):
            group = (start + step) % groups
            state = self.ino_groups.get(group)
            if state is None:
                desc = fs.group_desc(group)
                if desc.free_inodes == 0:
                    continue
                bm = fs._inode_bitmap(group)
                state = [desc, bm, max(0, first_ino - 1 - group * ipg)]
                index = bm.find_zero(state[2])
                if index < 0:
                    continue
                # The first change of a group goes through the writer (bitmap undo, dirty marks).
                fs._mark_ib(group, index, True)
                fs._touch_desc(group)
                fs._touch_sb()
                self.ino_groups[group] = state
                return self._take_ino(group, index, desc, bm, state, marked=True)
            desc, bm, hint = state
            index = bm.find_zero(hint)
            if index < 0:
                index = bm.find_zero(0)
            if index >= 0:
                return self._take_ino(group, index, desc, bm, state)
        raise NoSpace("no free inodes left in the image for the source")

    def _take_ino(self, group: int, index: int, desc: Any, bm: Any, state: list[Any], marked: bool = False) -> int:
        fs = self.fs
        ipg = self.ipg
        if not marked:
            bm.bits |= 1 << index  # the group's first _mark_ib recorded its undo
        desc.free_inodes -= 1
        if self.gd_csum:
            desc.flags &= ~K.BG_INODE_UNINIT
            if index >= ipg - desc.itable_unused:
                desc.itable_unused = ipg - index - 1
        sb = fs.sb
        sb["s_free_inodes_count"] -= 1
        state[2] = index + 1
        ino = group * ipg + index + 1
        fs._inode_cache.pop(ino, None)  # a number used before (an image with history)
        fs._map_cache.pop(ino, None)
        fs._dir_cache.pop(ino, None)
        return ino

    # ------------------------------------------------------- directories
    def _ensure_dir(self, path: bytes) -> _DirState:
        state = self.dirs.get(path)
        if state is not None:
            return state
        if path == b"/":
            return self._existing_dir(path, K.ROOT_INO, K.ROOT_INO)
        parent_path, _, name = path.rpartition(b"/")
        parent = self._ensure_dir(parent_path or b"/")
        found = parent.entries.get(name)
        if found is not None:
            ino = found[0]
            if not self._is_dir(ino):
                raise InvalidOptions(f"{decode_name(path)}: is in the way of a directory (not a directory)")
            return self._existing_dir(path, ino, parent.ino)
        # A directory the archive never lists: made with default metadata.
        implicit = Node(path, "dir", 0o755, 0, 0, self.now, self.now)
        apply_policy([implicit], PopulateOptions(owner=self.opts.owner, rules=self.opts.rules,
                                                 timestamp=self.opts.timestamp, now_ns=self.now))
        return self._make_dir(implicit, parent, name)

    def _is_dir(self, ino: int) -> bool:
        new = self.new.get(ino)
        if new is not None:
            return new.is_dir()
        if ino in self.packed:
            return False
        return self.fs.inode(ino).is_dir()

    def _existing_dir(self, path: bytes, ino: int, parent: int) -> _DirState:
        entries = {name: (child, ft) for name, child, ft in self.fs.dir_entries(ino)}
        state = _DirState(ino, parent, entries)
        self.dirs[path] = state
        self.paths[path] = ino
        return state

    def _make_dir(self, node: Node, parent: _DirState, name: bytes) -> _DirState:
        ino = self._alloc_ino(parent.ino, True, name)
        inode = self._inode(node, "dir")
        inode.links_count = 2
        self.new[ino] = inode
        state = _DirState(ino, parent.ino, {}, inode)
        self.dirs[node.path] = state
        self.paths[node.path] = ino
        self._link_into(parent, name, ino, K.FT_DIR, is_dir=True)
        if node.xattrs:
            self.xattrs[ino] = node.xattrs
        self.report.directories += 1
        return state

    def _link_into(self, parent: _DirState, name: bytes, ino: int, ft: int, *, is_dir: bool = False) -> None:
        parent.entries[name] = (ino, ft if self.ft else 0)
        if parent.inode is None:
            parent.changed = True
            if is_dir:
                parent.subdir_delta += 1
        elif is_dir:
            parent.inode.links_count += 1

    def _remove_child(self, parent: _DirState, name: bytes, path: bytes) -> None:
        """A later entry for the same path (tar) or an entry already in the image: drop the old one."""
        found = parent.entries.get(name)
        if found is None:
            return
        ino = found[0]
        if ino in self.packed:  # pragma: no cover - packed only where no path comes twice
            raise AssertionError(f"{decode_name(path)}: a packed inode cannot be replaced")
        new = self.new.get(ino)
        if self._is_dir(ino):
            raise InvalidOptions(f"{decode_name(path)}: a directory is in the way")
        del parent.entries[name]
        if parent.inode is None:
            parent.changed = True
        self.paths.pop(path, None)
        if new is not None:
            new.links_count -= 1
            if new.links_count == 0:
                for start, count in self.owned.pop(ino, []):
                    self.fs.free_blocks(start, count)
                self.fs._free_inode(ino, is_dir=False)
                del self.new[ino]
                self.xattrs.pop(ino, None)
                for key in [k for k, v in self.links.items() if v == ino]:
                    del self.links[key]
            return
        old = self.fs._edit_inode(ino)
        old.links_count = max(0, old.links_count - 1)
        old.ctime = self.now
        if old.links_count == 0:
            self.fs._delete_inode(ino, old)

    # ------------------------------------------------------------- nodes
    def add(self, node: Node, reader: Reader | None) -> None:
        """Create one entry (its parents as needed); ``reader`` gives a file's data."""
        self.report.entries += 1
        path = node.path
        if not (0 <= node.uid <= 0xFFFFFFFF and 0 <= node.gid <= 0xFFFFFFFF):
            raise InvalidOptions(f"{decode_name(path)}: owner {node.uid}:{node.gid} does not fit in 32 bits")
        if path == b"/":
            self._ensure_dir(b"/")
            self.meta[K.ROOT_INO] = node
            if node.xattrs:
                self.xattrs[K.ROOT_INO] = node.xattrs
            return
        parent_path, _, name = path.rpartition(b"/")
        parent = self.dirs.get(parent_path or b"/") or self._ensure_dir(parent_path or b"/")
        if len(name) > K.NAME_LEN:
            raise InvalidOptions(f"{decode_name(path)}: name longer than {K.NAME_LEN} bytes")
        kind = node.kind
        if kind == "dir":
            found = parent.entries.get(name)
            if found is not None:
                ino = found[0]
                if self._is_dir(ino):
                    # Listed again (tar) or already in the image: its metadata comes from the source.
                    state = self.dirs.get(path) or self._existing_dir(path, ino, parent.ino)
                    if state.inode is not None:
                        self._set_meta(state.inode, node)
                    else:
                        self.meta[ino] = node
                    if node.xattrs:
                        self.xattrs[ino] = node.xattrs
                    return
                self._remove_child(parent, name, path)
            self._make_dir(node, parent, name)
            self._resolve_pending(path)
            return
        if name in parent.entries:
            self._remove_child(parent, name, path)
        if kind == "hardlink" or (node.link_key is not None and node.link_key in self.links):
            if kind == "hardlink":
                linked = self.paths.get(node.target)
                if linked is None:
                    # The target comes later in the archive: link once it is there.
                    self.pending_links.setdefault(node.target, []).append(node)
                    return
            else:
                linked = self.links[node.link_key]
            self._hardlink(node, parent, name, linked)
            return
        ino = self._alloc_ino(parent.ino, False, name)
        inode = self._inode(node, kind)
        self.new[ino] = inode
        if kind == "file":
            size = node.size
            if reader is _host_reader and node.data_ranges is None and 0 < size <= _SMALL_FILE:
                self._small_file(ino, inode, _read_small(node.source, size))
            else:
                self._write_data(ino, inode, node, reader)
            self.report.files += 1
            self.report.bytes += size
        elif kind == "symlink":
            target = node.target
            if not target or len(target) > K.MAX_SYMLINK_LEN or b"\0" in target:
                raise InvalidOptions(f"{decode_name(path)}: invalid symlink target ({len(target)} bytes)")
            inode.size = len(target)
            if len(target) < 60:
                inode.block = target.ljust(60, b"\0")
            else:
                runs = self.cursor.take(1)
                self.data.write(runs[0][0], target)
                self.owned[ino] = list(runs)
                self._map(ino, inode, [E.Extent(0, runs[0][0], 1)])
        elif kind == "char" or kind == "block":
            inode.set_rdev(*node.rdev)
        if node.link_key is not None:
            self.links[node.link_key] = ino
        self.paths[path] = ino
        self._link_into(parent, name, ino, K.MODE_TO_FT.get(inode.mode & K.S_IFMT, 0))
        if node.xattrs:
            self.xattrs[ino] = node.xattrs
        if self.pending_links:
            self._resolve_pending(path)

    def add_small_files(self, parent_path: bytes, batch: list[Node]) -> None:
        """Plain small host files of one directory (no links, no holes), in bulk: one inode run, one
        run of blocks, each file read straight into its place in one buffer written with few pwrites."""
        parent = self.dirs.get(parent_path) or self._ensure_dir(parent_path)
        entries = parent.entries
        simple = []
        for node in batch:
            name = node.path.rpartition(b"/")[2]
            if (name in entries or len(name) > K.NAME_LEN or node.uid > 0xFFFFFFFF or node.gid > 0xFFFFFFFF
                    or not self.extents_ok):
                self.add(node, _host_reader)
            else:
                simple.append((node, name))
        if not simple:
            return
        bs = self.bs
        inos = self._alloc_inos(parent.ino, len(simple))
        counts = [(node.size + bs - 1) // bs for node, _ in simple]
        total_blocks = sum(counts)
        runs = self.cursor.take(total_blocks)
        buf = self.data.buffer(total_blocks * bs)
        view = memoryview(buf)
        zeros = self.data.zeros
        now = self.now
        extra = self.extra
        sectors = bs // 512
        new = self.new
        paths = self.paths
        xattrs = self.xattrs
        ft = K.FT_REG_FILE if self.ft else 0
        pack_eh = _EH.pack_into
        pack_ex = _EX.pack_into
        magic = K.EXT4_EXT_MAGIC
        flags = K.EXTENTS_FL
        run_index = 0
        run_start, run_left = runs[0]
        pos = 0  # block index within buf
        total = 0
        # Without xattrs (and not straddling two runs), a file's inode is packed right here: no Inode
        # object, the same bytes _pack would make (ctime and crtime are the same for all).
        packed = self.packed if self.packable else None
        pack = _FAST_INODE.pack
        now_lo, now_x = encode_time(now)
        for (node, name), ino, count in zip(simple, inos, counts):
            size = node.size
            at = pos * bs
            _read_into(node.source, view[at : at + size])
            if size % bs:  # a reused buffer: the block's slack must be zeros
                view[at + size : at + count * bs] = zeros[: count * bs - size]
            if packed is not None and count <= run_left and not node.xattrs:
                small = bytearray(60)
                pack_eh(small, 0, magic, 1, 4, 0, 0)
                pack_ex(small, 12, 0, count, run_start >> 32, run_start & 0xFFFFFFFF)
                t = node.atime_ns
                sec, nsec = divmod(t, _NS)
                atime, atime_x = (sec, nsec << 2) if 0 <= sec < 0x80000000 else encode_time(t)
                t = node.mtime_ns
                sec, nsec = divmod(t, _NS)
                mtime, mtime_x = (sec, nsec << 2) if 0 <= sec < 0x80000000 else encode_time(t)
                uid, gid, blocks = node.uid, node.gid, count * sectors
                packed[ino] = pack(
                    K.S_IFREG | (node.mode & 0o7777), uid & 0xFFFF, size & 0xFFFFFFFF, atime, now_lo, mtime, 0,
                    gid & 0xFFFF, 1, blocks & 0xFFFFFFFF, flags, 0, small, 0, 0, size >> 32, 0,
                    (blocks >> 32) & 0xFFFF, 0, uid >> 16, gid >> 16, 0, 0,
                    _INODE_EXTRA, 0, now_x, mtime_x, atime_x, now_lo, now_x, 0, 0,
                )
                entries[name] = (ino, ft)
                paths[node.path] = ino
                run_start += count
                run_left -= count
                if not run_left and run_index + 1 < len(runs):
                    run_index += 1
                    run_start, run_left = runs[run_index]
                pos += count
                total += size
                continue
            inode = Inode()
            inode.mode = K.S_IFREG | (node.mode & 0o7777)
            inode.uid = node.uid
            inode.gid = node.gid
            inode.atime = node.atime_ns
            inode.mtime = node.mtime_ns
            inode.ctime = now
            if extra:
                inode.extra_isize = extra
                inode.crtime = now
            inode.links_count = 1
            inode.size = size
            new[ino] = inode
            entries[name] = (ino, ft)
            paths[node.path] = ino
            if count <= run_left:
                small = bytearray(60)
                pack_eh(small, 0, magic, 1, 4, 0, 0)
                pack_ex(small, 12, 0, count, run_start >> 32, run_start & 0xFFFFFFFF)
                inode.block = bytes(small)
                inode.flags = flags
                inode.blocks = count * sectors
                run_start += count
                run_left -= count
            else:  # straddles the end of a run
                extents = []
                logical = 0
                while logical < count:
                    if not run_left:
                        run_index += 1
                        run_start, run_left = runs[run_index]
                    n = min(run_left, count - logical)
                    extents.append(E.Extent(logical, run_start, n))
                    run_start += n
                    run_left -= n
                    logical += n
                self._map(ino, inode, extents)
            if not run_left and run_index + 1 < len(runs):
                run_index += 1
                run_start, run_left = runs[run_index]
            if node.xattrs:
                xattrs[ino] = node.xattrs
            pos += count
            total += size
        self.data.write_buffer(buf, runs)
        if parent.inode is None:
            parent.changed = True
        report = self.report
        report.entries += len(simple)
        report.files += len(simple)
        report.bytes += total
        if self.progress:
            self.progress(total)

    def _alloc_inos(self, parent_ino: int, count: int) -> list[int]:
        """``count`` file inode numbers next to the directory, in increasing order, in runs."""
        fs = self.fs
        ipg = self.ipg
        out: list[int] = []
        while len(out) < count:
            ino = self._alloc_ino(parent_ino, False, b"")  # finds a group with room (and sets it up)
            out.append(ino)
            group = (ino - 1) // ipg
            desc, bm, hint = state = self.ino_groups[group]
            need = min(count - len(out), desc.free_inodes)
            if need <= 0:
                continue
            base = group * ipg + 1
            last = -1
            taken = 0
            for start, length in bm.zero_runs(hint):
                n = min(length, need - taken)
                bm.bits |= ((1 << n) - 1) << start
                out.extend(range(base + start, base + start + n))
                taken += n
                last = start + n - 1
                if taken == need:
                    break
            if not taken:
                continue
            desc.free_inodes -= taken
            if self.gd_csum and last >= ipg - desc.itable_unused:
                desc.itable_unused = ipg - last - 1
            fs.sb["s_free_inodes_count"] -= taken
            state[2] = last + 1
        for ino in out:
            fs._inode_cache.pop(ino, None)
            fs._map_cache.pop(ino, None)
            fs._dir_cache.pop(ino, None)
        return out

    def _hardlink(self, node: Node, parent: _DirState, name: bytes, linked: int) -> None:
        linked_inode = self.new.get(linked)
        if linked_inode is None:
            raise InvalidOptions(f"{decode_name(node.path)}: hard link to {decode_name(node.target)}, "
                                 "which is not an entry of this source")
        if linked_inode.is_dir():
            raise InvalidOptions(f"{decode_name(node.path)}: hard link to a directory")
        if linked_inode.links_count >= K.LINK_MAX:
            raise InvalidOptions(f"{decode_name(node.path)}: too many hard links")
        linked_inode.links_count += 1
        self._link_into(parent, name, linked, K.MODE_TO_FT.get(linked_inode.mode & K.S_IFMT, 0))
        self.paths[node.path] = linked
        self.report.hardlinks += 1
        if self.pending_links:
            self._resolve_pending(node.path)

    def _resolve_pending(self, path: bytes) -> None:
        waiting = self.pending_links.pop(path, None)
        if not waiting:
            return
        linked = self.paths[path]
        for node in waiting:
            parent_path, _, name = node.path.rpartition(b"/")
            parent = self._ensure_dir(parent_path or b"/")
            if name in parent.entries:
                self._remove_child(parent, name, node.path)
            self._hardlink(node, parent, name, linked)

    def _set_meta(self, inode: Inode, node: Node) -> None:
        inode.mode = (inode.mode & K.S_IFMT) | (node.mode & 0o7777)
        inode.uid, inode.gid = node.uid, node.gid
        inode.atime, inode.mtime = node.atime_ns, node.mtime_ns
        inode.ctime = node.ctime_ns if node.ctime_ns is not None else self.now

    def _map(self, ino: int, inode: Inode, extents: list[E.Extent]) -> None:
        """Set a new inode's mapping (extent tree or block map) for data already placed."""
        bs = self.bs
        if len(extents) > 1:
            extents = E.merge(extents)
        data_blocks = 0
        for e in extents:
            data_blocks += e.length
        if self.extents_ok and len(extents) <= 4:  # in the inode
            inode.flags |= K.EXTENTS_FL
            small = bytearray(60)
            _EH.pack_into(small, 0, K.EXT4_EXT_MAGIC, len(extents), 4, 0, 0)
            for i, e in enumerate(extents):
                _EX.pack_into(small, 12 + 12 * i, e.logical, e.length, e.physical >> 32, e.physical & 0xFFFFFFFF)
            inode.block = bytes(small)
            inode.blocks = data_blocks * (bs // 512)
            return
        owned = self.owned.setdefault(ino, []) if self.track else []
        if self.extents_ok:
            inode.flags |= K.EXTENTS_FL
            _depth, needed = E.tree_shape(len(extents), bs)
            meta: list[int] = []
            for s, n in self.cursor.take(needed) if needed else []:
                meta.extend(range(s, s + n))
                owned.append((s, n))
            root, blocks = E.build(extents, block_size=bs, tree_blocks=meta, ino=ino, generation=0,
                                   csum_seed=self.fs.seed if self.csum else None)
        else:
            from .blockmap import build as bm_build
            from .blockmap import meta_needed

            runs = [(e.logical, e.physical, e.length) for e in extents]
            needed = meta_needed(runs, bs)
            meta = []
            for s, n in self.cursor.take(needed) if needed else []:
                meta.extend(range(s, s + n))
                owned.append((s, n))
            root, blocks = bm_build(runs, block_size=bs, meta_blocks=meta)
        inode.block = bytes(root)
        for block, data in blocks:
            self.data.write(block, data)
        inode.set_blocks_512((data_blocks + needed) * (bs // 512), self.fs.huge_file, bs)

    def _place(self, ino: int, logical: int, count: int) -> list[tuple[int, int]]:
        runs = self.cursor.take(count)
        if self.track:
            owned = self.owned.get(ino)
            if owned is None:
                self.owned[ino] = list(runs)
            else:
                owned.extend(runs)
        return runs

    def _small_file(self, ino: int, inode: Inode, data: bytes) -> None:
        """A whole small file's data: one run of blocks in the common case."""
        size = len(data)
        inode.size = size
        bs = self.bs
        count = (size + bs - 1) // bs
        runs = self._place(ino, 0, count)
        if len(runs) == 1 and self.extents_ok:
            start = runs[0][0]
            self.data.write(start, data)
            small = bytearray(60)
            _EH.pack_into(small, 0, K.EXT4_EXT_MAGIC, 1, 4, 0, 0)
            _EX.pack_into(small, 12, 0, count, start >> 32, start & 0xFFFFFFFF)
            inode.block = bytes(small)
            inode.flags |= K.EXTENTS_FL
            inode.blocks = count * (bs // 512)
        else:
            extents = []
            view = memoryview(data)
            logical = 0
            for start, n in runs:
                self.data.write(start, view[logical * bs : (logical + n) * bs])
                extents.append(E.Extent(logical, start, n))
                logical += n
            self._map(ino, inode, extents)
        if self.progress:
            self.progress(size)

    def _write_data(self, ino: int, inode: Inode, node: Node, reader: Reader | None) -> None:
        bs = self.bs
        inode.size = node.size
        if node.size == 0 or reader is None:
            if self.extents_ok:
                inode.flags |= K.EXTENTS_FL
                inode.block = _empty_extent_root()
            return
        extents: list[E.Extent] = []
        for offset, piece in _aligned(reader(node), bs, self.progress):
            first = offset // bs
            if isinstance(piece, tuple):  # (src_fd, src_offset, length): a range copy
                src_fd, src_offset, length = piece
                done = 0
                logical = first
                for start, n in self._place(ino, first, -(-length // bs)):
                    take = min(n * bs, length - done)
                    self.data.copy(start, src_fd, src_offset + done, take)
                    extents.append(E.Extent(logical, start, n))
                    logical += n
                    done += take
            else:
                view = memoryview(piece)
                done = 0
                logical = first
                for start, n in self._place(ino, first, -(-len(view) // bs)):
                    self.data.write(start, view[done : done + n * bs])
                    extents.append(E.Extent(logical, start, n))
                    logical += n
                    done += n * bs
        if extents:
            self._map(ino, inode, extents)
        elif self.extents_ok:
            inode.flags |= K.EXTENTS_FL
            inode.block = _empty_extent_root()

    # ----------------------------------------------------------- finish
    def finish(self) -> None:
        fs = self.fs
        if self.pending_links:
            target, nodes = next(iter(self.pending_links.items()))
            raise InvalidOptions(f"{decode_name(nodes[0].path)}: hard link to {decode_name(target)}, "
                                 "which is not in the source")
        self.data.flush()
        for state in self.dirs.values():
            if state.inode is not None:
                self._build_dir(state, state.inode)
            elif state.changed:
                inode = fs._edit_inode(state.ino)
                fs._release_data(state.ino, inode)
                inode.flags &= ~(K.INDEX_FL | K.INLINE_DATA_FL)
                self._build_dir(state, inode)
                if inode.file_acl:
                    inode.set_blocks_512(inode.blocks_in_512(fs.huge_file, self.bs) + self.bs // 512,
                                         fs.huge_file, self.bs)
                links = inode.links_count
                if links != 1:
                    links += state.subdir_delta
                    if links >= K.LINK_MAX:
                        links = 1
                inode.links_count = links
                inode.mtime = inode.ctime = self.now
                fs._put_inode(state.ino, inode)
        for ino, values in sorted(self.xattrs.items()):
            entries = self._xattr_entries(ino, values)
            try:
                if ino in self.new:
                    self._store_new_xattrs(ino, self.new[ino], entries)
                else:
                    keep = {e.key: e for e in fs.xattr_entries(ino)}
                    for e in entries:
                        keep[e.key] = e
                    fs._store_xattrs(ino, list(keep.values()))
            except X.XattrNoSpace as exc:  # not a matter of image size: say which entry
                raise InvalidOptions(f"{self._where(ino)}: {exc}") from None
        clamp = self.opts.timestamp * _NS if self.opts.timestamp is not None else None
        for ino, node in self.meta.items():
            inode = fs._edit_inode(ino)
            self._set_meta(inode, node)
            if clamp is not None and inode.crtime > clamp:
                inode.crtime = clamp
            fs._put_inode(ino, inode)
        for inode in self.new.values():
            if inode.links_count >= K.LINK_MAX and inode.is_dir():
                if not fs.sb.has_ro_compat("dir_nlink"):
                    raise InvalidOptions("a directory has too many subdirectories (dir_nlink is off)")
                inode.links_count = 1
        self._write_inodes()
        self.data.finish()
        self.cursor.release()
        fs._data_written += self.data.written

    def _where(self, ino: int) -> str:
        """An entry's path for messages (slow: only on the way to an error or a warning)."""
        return next((decode_name(p) for p, i in self.paths.items() if i == ino), f"inode {ino}")

    def _xattr_entries(self, ino: int, values: dict[str, bytes]) -> list[X.XattrEntry]:
        entries = []
        for name, value in values.items():
            if name in ("system.posix_acl_access", "system.posix_acl_default"):
                try:
                    value = X.acl_xattr_to_disk(value)
                except Ext4Error:
                    self.report.warnings.append(f"{self._where(ino)}: {name} is not a Linux POSIX ACL; left out")
                    continue
            try:
                entry = X.XattrEntry.from_name(name, bytes(value))
            except Ext4Error as exc:
                self.report.warnings.append(f"{self._where(ino)}: xattr {name!r} left out: {exc}")
                continue
            if entry.name_index == 0:  # no Linux namespace (user., trusted., security., system.)
                self.report.warnings.append(f"{self._where(ino)}: xattr {name!r} has no Linux namespace; left out")
                continue
            entries.append(entry)
        return entries

    def _store_new_xattrs(self, ino: int, inode: Inode, entries: list[X.XattrEntry]) -> None:
        if not entries:
            return
        space = self.isize - K.GOOD_OLD_INODE_SIZE - inode.extra_isize if self.isize > K.GOOD_OLD_INODE_SIZE else 0
        plan = X.plan_storage(entries, space, self.bs, ea_inode=False)
        block_entries = list(plan.block)
        if space > 0:
            if plan.ibody:
                body = X.build_ibody(list(plan.ibody), space)
                if body is None:  # pragma: no cover - plan_storage sized it
                    raise X.XattrNoSpace("extended attributes do not fit in the inode")
                inode.tail = body
        elif plan.ibody:
            block_entries = list(plan.ibody) + block_entries
        if block_entries:
            buf = X.build_block(block_entries, self.bs)
            [(block, _)] = self._place(ino, 0, 1)
            if self.csum:
                X.set_block_csum(self.fs.seed, block, buf)
            self.data.write(block, buf)
            inode.file_acl = block
            inode.set_blocks_512(inode.blocks_in_512(self.fs.huge_file, self.bs) + self.bs // 512,
                                 self.fs.huge_file, self.bs)

    def _build_dir(self, state: _DirState, inode: Inode) -> None:
        fs = self.fs
        bs = self.bs
        ft_dir = K.FT_DIR if self.ft else 0
        items = [(ino, name, ft) for name, (ino, ft) in sorted(state.entries.items())]
        usable = bs - (12 if self.csum else 0)
        linear_size = 24
        for _, name, _ in items:
            linear_size += (8 + len(name) + 3) & ~3
        if linear_size <= usable or not fs.dir_index:
            blocks = D.build_linear_blocks(
                [(state.ino, b".", ft_dir), (state.parent, b"..", ft_dir)] + items,
                block_size=bs, filetype=self.ft, csum=self.csum,
            )
            indexed = False
        else:
            version = fs.sb["s_def_hash_version"]
            if version > 2:
                version = K.HASH_HALF_MD4
            version = D.effective_hash_version(version, fs._hash_unsigned)
            blocks = D.build_htree(
                items, block_size=bs, hash_version=version, seed=fs._hash_seed, filetype=self.ft,
                csum=self.csum, dir_ino=state.ino, parent_ino=state.parent, large_dir=fs.large_dir,
                slack_percent=0,
            )
            indexed = True
        runs = self._place(state.ino, 0, len(blocks))
        extents = []
        logical = 0
        iseed = fs._dir_iseed(state.ino, inode) if self.csum else 0
        for start, n in runs:
            extents.append(E.Extent(logical, start, n))
            for i in range(n):
                buf = blocks[logical + i]
                if self.csum:
                    D.set_dir_block_csum(buf, iseed, block_size=bs)
                self.data.write(start + i, buf)
            logical += n
        self._map(state.ino, inode, extents)
        inode.size = len(blocks) * bs
        if indexed:
            inode.flags |= K.INDEX_FL

    # ------------------------------------------------------------ inodes
    def _write_inodes(self) -> None:
        """Pack the new inodes into whole inode-table blocks and write them in runs."""
        fs = self.fs
        bs = self.bs
        isz = self.isize
        per_block = bs // isz
        ipg = self.ipg
        seed = fs.seed
        csum = self.csum
        new = self.new
        itable_cache = fs._itable_cache
        inode_cache = fs._inode_cache
        dirty = fs._dirty_inodes
        current = -1
        buf = bytearray()
        tables: dict[int, int] = {}
        packed = self.packed
        fixed = _FAST_INODE.size
        tail = self.data.zeros[: isz - fixed]
        gen = _INO_GEN.pack
        view = memoryview(buf)
        for ino in sorted(new.keys() | packed.keys()) if packed else sorted(new):
            group, index = divmod(ino - 1, ipg)
            table = tables.get(group)
            if table is None:
                table = tables[group] = fs.group_desc(group).inode_table
            block = table + index // per_block
            if block != current:
                if current >= 0:
                    self.data.write(current, buf)
                    itable_cache.pop(current, None)
                current = block
                buf = self._table_block(group, block, index - index % per_block)
                view = memoryview(buf)
            off = (index % per_block) * isz
            raw = packed.get(ino)
            if raw is None:
                self._pack(buf, off, ino, new[ino], seed, csum)
            else:
                buf[off : off + fixed] = raw
                buf[off + fixed : off + isz] = tail
                if csum:
                    crc = crc32c_raw(crc32c_raw(seed, gen(ino, 0)), view[off : off + isz])
                    _U16.pack_into(buf, off + 0x7C, crc & 0xFFFF)
                    _U16.pack_into(buf, off + 0x82, crc >> 16)
            inode_cache.pop(ino, None)
            if ino in dirty:  # a number freed earlier in this call (a replaced entry): the new inode wins
                old = dirty.pop(ino)
                fs._record(lambda ino=ino, old=old: dirty.__setitem__(ino, old))  # type: ignore[misc]
        if current >= 0:
            self.data.write(current, buf)
            itable_cache.pop(current, None)

    def _table_block(self, group: int, block: int, first_index: int) -> bytearray:
        """A table block's current bytes when an inode not made here lives in it, else zeros."""
        fs = self.fs
        bm = fs._inode_bitmap(group)
        base = group * self.ipg + 1
        for index in range(first_index, min(first_index + self.bs // self.isize, self.ipg)):
            if bm.test(index) and base + index not in self.new and base + index not in self.packed:
                return bytearray(Filesystem.read_block(fs, block))
        return bytearray(self.bs)

    def _pack(self, buf: bytearray, off: int, ino: int, inode: Inode, seed: int, csum: bool) -> None:
        isz = self.isize
        if inode.extra_isize == _INODE_EXTRA and isz >= K.GOOD_OLD_INODE_SIZE + _INODE_EXTRA:
            # Times inline for the common range (1970..2038); encode_time handles the rest.
            t = inode.atime
            sec, nsec = divmod(t, _NS)
            atime, atime_x = (sec, nsec << 2) if 0 <= sec < 0x80000000 else encode_time(t)
            t = inode.ctime
            sec, nsec = divmod(t, _NS)
            ctime, ctime_x = (sec, nsec << 2) if 0 <= sec < 0x80000000 else encode_time(t)
            t = inode.mtime
            sec, nsec = divmod(t, _NS)
            mtime, mtime_x = (sec, nsec << 2) if 0 <= sec < 0x80000000 else encode_time(t)
            t = inode.crtime
            sec, nsec = divmod(t, _NS)
            crtime, crtime_x = (sec, nsec << 2) if 0 <= sec < 0x80000000 else encode_time(t)
            size = inode.size
            blocks = inode.blocks
            acl = inode.file_acl
            uid = inode.uid
            gid = inode.gid
            _FAST_INODE.pack_into(
                buf, off,
                inode.mode, uid & 0xFFFF, size & 0xFFFFFFFF, atime, ctime, mtime, 0, gid & 0xFFFF,
                inode.links_count, blocks & 0xFFFFFFFF, inode.flags, 0, inode.block, 0, acl & 0xFFFFFFFF,
                size >> 32, 0, (blocks >> 32) & 0xFFFF, (acl >> 32) & 0xFFFF, uid >> 16, gid >> 16, 0, 0,
                _INODE_EXTRA, 0, ctime_x, mtime_x, atime_x, crtime, crtime_x, 0, 0,
            )
            tail = inode.tail
            start = off + K.GOOD_OLD_INODE_SIZE + _INODE_EXTRA
            room = isz - K.GOOD_OLD_INODE_SIZE - _INODE_EXTRA
            tail = tail[:room] if tail else b""
            buf[start : start + len(tail)] = tail
            buf[start + len(tail) : off + isz] = bytes(room - len(tail))  # no old bytes in a reused slot
            if csum:
                crc = crc32c_raw(crc32c_raw(seed, _INO_GEN.pack(ino, 0)), memoryview(buf)[off : off + isz])
                _U16.pack_into(buf, off + 0x7C, crc & 0xFFFF)
                _U16.pack_into(buf, off + 0x82, crc >> 16)
            return
        inode.checksum = 0
        buf[off : off + isz] = inode.pack(isz)
        if csum:
            crc = crc32c_raw(inode_seed(seed, ino, 0), memoryview(buf)[off : off + isz])
            _U16.pack_into(buf, off + 0x7C, crc & 0xFFFF)
            if inode.extra_isize >= 4 and isz > K.GOOD_OLD_INODE_SIZE:
                _U16.pack_into(buf, off + 0x82, crc >> 16)


# ================================================================ readers
def _aligned(pieces: Iterator[tuple[int, bytes | tuple[int, int, int]]], bs: int,
             progress: Callable[[int], None] | None
             ) -> Iterator[tuple[int, bytes | bytearray | memoryview | tuple[int, int, int]]]:
    """A file's data pieces (in increasing offset order) cut and joined into whole target blocks.

    Sources with smaller blocks (a 1 KiB ext4 image, a tar sparse map in 512-byte units, a host
    filesystem with small blocks) give ranges that start or end inside a target block: those bytes
    are gathered in one block buffer (zeros elsewhere) so that no block is placed twice.  Range
    copies stay copies when they start on a block boundary.  ``progress`` gets the input lengths.
    """
    carry: bytearray | None = None
    carry_block = -1
    for offset, piece in pieces:
        if isinstance(piece, tuple):
            fd, src_offset, length = piece
            if length <= 0:
                continue
            if progress:
                progress(length)
            if offset % bs == 0 and (carry is None or carry_block < offset // bs):
                if carry is not None:
                    yield carry_block * bs, carry
                    carry = None
                body = length - length % bs
                if body:
                    yield offset, (fd, src_offset, body)
                if body == length:
                    continue
                datas: Iterator[tuple[int, bytes]] = iter([(offset + body, _pread(fd, length - body, src_offset + body))])
            else:
                datas = ((offset + done, _pread(fd, min(_WRITE_BUFFER, length - done), src_offset + done))
                         for done in range(0, length, _WRITE_BUFFER))
        else:
            if not piece:
                continue
            if progress:
                progress(len(piece))
            datas = iter([(offset, piece)])
        for pos, data in datas:
            view = memoryview(data)
            i = 0
            n_total = len(view)
            while i < n_total:
                block, within = divmod(pos + i, bs)
                if carry is not None and block != carry_block:
                    yield carry_block * bs, carry
                    carry = None
                left = n_total - i
                if within == 0 and carry is None and left >= bs:
                    whole = left - left % bs
                    yield pos + i, view[i : i + whole]
                    i += whole
                    continue
                if carry is None:
                    carry = bytearray(bs)
                    carry_block = block
                n = min(bs - within, left)
                carry[within : within + n] = view[i : i + n]
                i += n
    if carry is not None:
        yield carry_block * bs, carry


def _pread(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            return data.ljust(length, b"\0")
        data += more
    return data


def _read_small(path: bytes, size: int) -> bytes:
    """A host file of ``size`` bytes, whole (zero-filled if it shrank since the scan)."""
    fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    try:
        data = os.read(fd, size)
        if len(data) < size:  # a short read (or the file shrank): read on, then zero-fill
            parts = [data]
            got = len(data)
            while got < size:
                more = os.read(fd, size - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts).ljust(size, b"\0")
        return data
    finally:
        os.close(fd)


def _read_into(path: bytes, view: memoryview) -> None:
    """Fill ``view`` from the start of a host file (zeros where it is shorter than at the scan)."""
    fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    try:
        got = os.readv(fd, (view,))
        want = len(view)
        while got < want:
            n = os.readv(fd, (view[got:],))
            if n <= 0:  # the file shrank since the scan: zeros for the rest
                view[got:] = bytes(want - got)
                break
            got += n
    finally:
        os.close(fd)


def _host_reader(node: Node) -> Iterator[tuple[int, bytes | tuple[int, int, int]]]:
    size = node.size
    ranges = node.data_ranges
    if ranges is None and size <= _SMALL_FILE:
        yield 0, _read_small(node.source, size)
        return
    fd = os.open(node.source, os.O_RDONLY | _OPEN_FLAGS)
    try:
        for start, length in ranges if ranges is not None else [(0, size)]:
            end = min(start + length, size)
            if end <= start:
                continue
            if end - start <= _SMALL_FILE:
                yield start, os.pread(fd, end - start, start).ljust(end - start, b"\0")
            else:
                yield start, (fd, start, end - start)
    finally:
        os.close(fd)


def _ext4_reader(src_fs: Filesystem) -> Reader:
    src_fd = src_fs.dev.fd if isinstance(src_fs.dev, FileDevice) else -1
    bs_src = src_fs.block_size

    def read(node: Node) -> Iterator[tuple[int, bytes | tuple[int, int, int]]]:
        ino = node.source
        inode = src_fs.inode(ino)
        if inode.has_inline_data():
            yield 0, src_fs.read_range(ino, inode, 0, inode.size)
            return
        for offset, length, phys in src_fs.data_segments(ino, inode):
            if phys is None:
                continue
            if src_fd >= 0 and length > 65536:
                yield offset, (src_fd, phys * bs_src, length)
            else:
                yield offset, src_fs.read_blocks(phys, -(-length // bs_src))[:length]

    return read


def _tar_reader(member: Any) -> Reader:
    def read(node: Node) -> Iterator[tuple[int, bytes | tuple[int, int, int]]]:
        if member is None:
            return
        ranges = node.data_ranges
        if ranges is None:
            offset = 0
            while True:
                chunk = member.read(_WRITE_BUFFER)
                if not chunk:
                    return
                yield offset, chunk
                offset += len(chunk)
        for start, length in ranges:
            member.seek(start)
            done = 0
            while done < length:
                chunk = member.read(min(_WRITE_BUFFER, length - done))
                if not chunk:
                    return
                yield start + done, chunk
                done += len(chunk)

    return read


# =============================================================== front door
def populate(
    fs: WritableFilesystem,
    source: str | os.PathLike[str] | BinaryIO | Filesystem,
    *,
    owner: tuple[int, int] | None = None,
    root_owner: tuple[int, int] | None = None,
    root_mode: int | None = None,
    rules: list[Rule] | str | None = None,
    timestamp: int | None = None,
    now: int | None = None,
    xattrs: bool = True,
    progress: Callable[[int], None] | None = None,
    nodes: list[Node] | None = None,
    dest: str | bytes = "/",
) -> PopulateReport:
    """Copy a whole tree into ``fs``: a host directory, a tar archive (path or binary stream) or an ext4 image.

    Entries already in ``fs`` stay; a source entry at the same path replaces a
    non-directory and updates a directory's metadata.  ``owner`` squashes every
    entry's owner; ``rules`` (text or parsed) set owners and modes by glob,
    later rules winning; ``root_owner``/``root_mode`` apply to the root
    directory; ``timestamp`` (seconds) clamps every time, and is the time of
    new inodes (else ``now``, else the filesystem's clock).  ``progress`` is
    called with byte counts as data is copied.  ``nodes`` is a scan of the
    same source made earlier (see source_needs); it is changed in place.  ``dest``
    (an absolute image path) is where the source's root goes: missing parents
    are made 0755 with the new owner, and ``root_owner``/``root_mode`` apply
    to ``dest``; rules still match the source's paths.  Nothing reaches the disk
    before the end except file data; the writer's flush (close) writes the
    rest.  Raises InvalidOptions for bad sources, NoSpace when ``fs`` is too
    small, Ext4Error subclasses for a damaged ext4 source, OSError for host errors.
    """
    if not isinstance(fs, WritableFilesystem):
        raise InvalidOptions("populate needs a filesystem opened with writable=True")
    if fs._undo is not None:
        raise InvalidOptions("populate cannot run inside another operation")
    if isinstance(rules, str):
        rules = parse_rules(rules)
    now_ns = now * _NS if now is not None else fs._now()
    if timestamp is not None:
        now_ns = timestamp * _NS
    opts = PopulateOptions(owner=owner, root_owner=root_owner, root_mode=root_mode, rules=list(rules or []),
                           timestamp=timestamp, now_ns=now_ns, xattrs=xattrs, dest=_dest_path(dest))
    report = PopulateReport()
    kind, handle = classify_source(source)
    try:
        if kind == "ext4" and handle is fs:
            raise InvalidOptions("cannot populate a filesystem from itself")
        if nodes is None and not (kind == "tar" and not isinstance(handle, (str, os.PathLike))):
            nodes = scan_source(kind, handle)
        if nodes is not None:
            apply_policy(nodes, opts)
        # One writer operation: on any error the in-memory metadata is rolled back, so closing the
        # filesystem afterwards leaves it as it was (data already written went to blocks still free).
        with fs._op():
            # A small source is written inline: handing its few writes to the I/O thread costs more
            # (about half a millisecond) than the overlap gains.
            small = nodes is not None and sum(n.size for n in nodes if n.kind == "file") < _INLINE_BYTES
            builder = _Builder(fs, opts, report, progress, threaded=not small)
            builder.track = builder.data.strict_order = kind == "tar"  # only an archive names a path twice
            builder.packable = builder.packable and not builder.track
            try:
                if kind == "dir":
                    assert nodes is not None
                    _populate_dir(builder, nodes)
                elif kind == "ext4":
                    assert nodes is not None
                    reader = _ext4_reader(handle)
                    for node in nodes:
                        builder.add(node, reader if node.kind == "file" else None)
                else:
                    _populate_tar(builder, handle, nodes, opts)
                builder.finish()
            finally:
                builder.data.stop()
    finally:
        if kind == "ext4" and handle is not source:
            handle.close()
    return report


def _plain_small(node: Node) -> bool:
    return (node.kind == "file" and node.link_key is None and node.data_ranges is None
            and 0 < node.size <= _SMALL_FILE)


def _populate_dir(builder: _Builder, nodes: list[Node]) -> None:
    """A scanned host tree: runs of plain small files of one directory go in bulk."""
    bs = builder.bs
    i = 0
    count = len(nodes)
    while i < count:
        node = nodes[i]
        if _plain_small(node):
            parent = node.path.rpartition(b"/")[0] or b"/"
            j = i + 1
            size = -(-node.size // bs) * bs
            while j < count and j - i < 4096:
                other = nodes[j]
                if not _plain_small(other) or (other.path.rpartition(b"/")[0] or b"/") != parent:
                    break
                size += -(-other.size // bs) * bs
                if size > _BATCH_BYTES:
                    break
                j += 1
            if j - i > 1:
                builder.add_small_files(parent, nodes[i:j])
                i = j
                continue
        builder.add(node, _host_reader if node.kind == "file" else None)
        i += 1


def _populate_tar(builder: _Builder, handle: Any, nodes: list[Node] | None, opts: PopulateOptions) -> None:
    """Second pass over a scanned archive (``nodes`` by member index), or one pass over a stream."""
    import tarfile

    by_index = {n.source: n for n in nodes} if nodes is not None else None
    with open_tar(handle) as tf:
        try:
            for index, info in enumerate(tf):
                if by_index is not None:
                    node = by_index.get(index)
                else:
                    node = _tar_node(info, index)
                    if node is not None:
                        apply_policy([node], opts)
                if node is None:
                    continue
                if node.kind == "file":
                    builder.add(node, _tar_reader(tf.extractfile(info)))
                else:
                    builder.add(node, None)
        except (tarfile.TarError, EOFError) as exc:
            raise _tar_errors(exc) from None


def classify_source(source: Any) -> tuple[str, Any]:
    """("dir" | "tar" | "ext4", handle) for a populate source; an ext4 image path is opened read-only.

    Raises InvalidOptions when a path does not exist.
    """
    if isinstance(source, Filesystem):
        return "ext4", source
    if hasattr(source, "read"):
        return "tar", source
    path = os.fspath(source)
    if os.path.isdir(path):
        return "dir", path
    if not os.path.exists(path):
        raise InvalidOptions(f"{os.fsdecode(path)}: source does not exist")
    with open(path, "rb") as f:
        f.seek(1080)
        magic = f.read(2)
    if magic == b"\x53\xef":
        return "ext4", Filesystem.open(path)
    return "tar", path


def scan_source(kind: str, handle: Any, *, exclude: set[tuple[int, int]] | frozenset[tuple[int, int]]
                = frozenset()) -> list[Node]:
    """The entries of a classified source (see classify_source); ``exclude`` as for scan_directory."""
    if kind == "dir":
        return scan_directory(handle, exclude=exclude)
    if kind == "ext4":
        return scan_ext4(handle)
    if isinstance(handle, (str, os.PathLike)):
        return scan_tar(handle)
    raise InvalidOptions("a tar stream must be saved to a file before it can be scanned")


def source_needs(source: Any, block_size: int, *, exclude: set[tuple[int, int]] | frozenset[tuple[int, int]]
                 = frozenset(), **features: Any) -> tuple[list[Node], SpaceNeeds]:
    """Scan a source once: its entries and (an upper bound of) the space they need.

    ``features`` are estimate()'s keywords (extents, dir_index, inode_size, metadata_csum); ``exclude``
    as for scan_directory.  Raises what the scan raises.
    """
    kind, handle = classify_source(source)
    try:
        nodes = scan_source(kind, handle, exclude=exclude)
    finally:
        if kind == "ext4" and handle is not source:
            handle.close()
    return nodes, estimate(nodes, block_size, **features)


class _CallableModule(types.ModuleType):
    """``pyext4.populate`` is both this module and the function: importing the module (``import
    pyext4.populate``, ``from pyext4.populate import ...``) rebinds the package attribute to the module,
    so the module itself forwards calls to :func:`populate`."""

    def __call__(self, *args: Any, **kwargs: Any) -> PopulateReport:
        return populate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["populate", "parse_rules", "scan_directory", "scan_tar", "scan_ext4", "estimate", "source_needs",
           "Node", "PopulateReport", "Rule"]
