"""Populating an image from a host directory, a tar archive or another ext4 image, in bulk.

The source is first scanned into a deterministic list of entries (sorted by
name), which also gives the space it needs (for ``auto`` sizing and for
refusing a too-small size before anything is written).  Building then
allocates inodes (directories spread Orlov-style), packs file data into large
contiguous runs written with few big writes (``copy_file_range`` from host
files and ext4 sources), and builds each new directory once, complete — as an
htree when it needs more than one block.  All metadata is written by one
flush at the end.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat as _stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from . import _codecs as C
from . import constants as K
from . import dirent as D
from . import extents as E
from . import xattr as X
from .blockdev import FileDevice
from .errors import Ext4Error, InvalidOptions, NoSpace
from .inode import Inode
from .reader import Filesystem, decode_name
from .writer import WritableFilesystem, _data_ranges, _empty_extent_root

_NS = 1_000_000_000
_EH = C.EXTENT_HEADER
_EX = C.EXTENT
_SMALL_FILE = 1 << 20
_CHUNK_BLOCKS = 32768
_WRITE_BUFFER = 8 << 20

KINDS = ("dir", "file", "symlink", "char", "block", "fifo", "socket", "hardlink")
_MODE_OF_KIND = {
    "dir": K.S_IFDIR, "file": K.S_IFREG, "symlink": K.S_IFLNK, "char": K.S_IFCHR, "block": K.S_IFBLK,
    "fifo": K.S_IFIFO, "socket": K.S_IFSOCK,
}


@dataclass
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
    data_ranges: list[tuple[int, int]] | None = None  # (offset, length) of stored data; None = all


@dataclass
class PopulateReport:
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
    """``**`` crosses directories, ``*`` and ``?`` stay within one name, ``[...]`` as fnmatch."""
    if not pattern.startswith("/"):
        pattern = "/" + pattern
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
            j = pattern.find("]", i + 1)
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
    """Lines of ``GLOB UID:GID [MODE]`` (``#`` comments); later lines win."""
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
def _host_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def scan_directory(root: str) -> list[Node]:
    """Every entry under a host directory, parents first, names sorted bytewise."""
    nodes: list[Node] = []
    st = os.lstat(root)
    if not _stat.S_ISDIR(st.st_mode):
        raise InvalidOptions(f"{root}: not a directory")
    nodes.append(_host_node(b"/", root, st))
    pending = [(os.fsencode(root), b"")]
    while pending:
        host_dir, image_dir = pending.pop()
        with os.scandir(host_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            name = entry.name
            host_path = os.path.join(host_dir, name)
            image_path = image_dir + b"/" + name
            est = entry.stat(follow_symlinks=False)
            node = _host_node(image_path, os.fsdecode(host_path), est)
            nodes.append(node)
            if node.kind == "dir":
                subdirs.append((host_path, image_path))
        pending.extend(reversed(subdirs))
    return nodes


def _host_node(image_path: bytes, host_path: str, st: os.stat_result) -> Node:
    fmt = _stat.S_IFMT(st.st_mode)
    node = Node(
        path=image_path, kind="file", mode=_stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns,
    )
    if fmt == _stat.S_IFDIR:
        node.kind = "dir"
    elif fmt == _stat.S_IFREG:
        node.kind = "file"
        node.size = st.st_size
        node.source = host_path
        if st.st_nlink > 1:
            node.link_key = ("host", st.st_dev, st.st_ino)
        if st.st_blocks * 512 < st.st_size:
            node.data_ranges = None  # sparse: found with SEEK_DATA when writing
    elif fmt == _stat.S_IFLNK:
        node.kind = "symlink"
        node.target = os.fsencode(os.readlink(host_path))
        node.size = len(node.target)
    elif fmt in (_stat.S_IFCHR, _stat.S_IFBLK):
        node.kind = "char" if fmt == _stat.S_IFCHR else "block"
        node.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    elif fmt == _stat.S_IFIFO:
        node.kind = "fifo"
    elif fmt == _stat.S_IFSOCK:
        node.kind = "socket"
    if node.kind != "symlink" and image_path != b"/":
        node.xattrs = _host_xattrs(host_path)
    elif image_path == b"/":
        node.xattrs = _host_xattrs(host_path)
    if node.kind in ("char", "block", "fifo", "socket") and st.st_nlink > 1:
        node.link_key = ("host", st.st_dev, st.st_ino)
    return node


def _pax_time(info: tarfile.TarInfo, key: str, fallback: float) -> int:
    value = info.pax_headers.get(key)
    if value:
        try:
            sec, _, frac = value.partition(".")
            ns = int(sec) * _NS
            if frac:
                frac_ns = int((frac + "000000000")[:9])
                ns = ns + frac_ns if not value.startswith("-") else ns - frac_ns
            return ns
        except ValueError:
            pass
    return int(fallback * _NS)


def _tar_name(name: str) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    if any(p == b".." for p in parts):
        raise InvalidOptions(f"tar member {name!r} contains '..'")
    return b"/" + b"/".join(parts) if parts else b"/"


def open_tar(source: str | BinaryIO) -> tarfile.TarFile:
    """A tar archive (plain, gzip, bzip2 or xz) from a path or a binary stream."""
    try:
        if isinstance(source, str):
            return tarfile.open(source, "r:*")
        return tarfile.open(fileobj=source, mode="r|*")
    except tarfile.TarError as exc:
        raise InvalidOptions(f"not a readable tar archive: {exc}") from None


def scan_tar(path: str) -> list[Node]:
    """Entries of a tar archive (headers only), in archive order, with implicit parents added."""
    nodes: list[Node] = []
    with open_tar(path) as tf:
        index = 0
        for info in tf:
            try:
                node = _tar_node(info, index)
            except InvalidOptions:
                raise
            index += 1
            if node is not None:
                nodes.append(node)
    return nodes


def _tar_node(info: tarfile.TarInfo, index: int) -> Node | None:
    path = _tar_name(info.name)
    node = Node(
        path=path, kind="file", mode=info.mode & 0o7777, uid=info.uid, gid=info.gid,
        mtime_ns=_pax_time(info, "mtime", info.mtime),
    )
    node.atime_ns = _pax_time(info, "atime", node.mtime_ns / _NS) if "atime" in info.pax_headers else node.mtime_ns
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
    else:
        return None
    node.source = index
    for key, value in info.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            node.xattrs[key[len("SCHILY.xattr.") :]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            import base64
            import urllib.parse

            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
            try:
                node.xattrs[name] = base64.b64decode(value + "==")
            except ValueError:
                continue
    return node


def scan_ext4(fs: Filesystem) -> list[Node]:
    """Every entry of an ext4 image (read directly), parents first, names sorted bytewise."""
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
    kind = {K.S_IFDIR: "dir", K.S_IFREG: "file", K.S_IFLNK: "symlink", K.S_IFCHR: "char",
            K.S_IFBLK: "block", K.S_IFIFO: "fifo", K.S_IFSOCK: "socket"}.get(fmt)
    if kind is None:
        raise Ext4Error(f"source inode {ino} ({decode_name(path)}) has an unknown type {fmt:o}")
    node = Node(
        path=path, kind=kind, mode=inode.mode & 0o7777, uid=inode.uid, gid=inode.gid,
        atime_ns=inode.atime, mtime_ns=inode.mtime, ctime_ns=inode.ctime,
    )
    if kind == "file":
        node.size = inode.size
        node.source = ino
        if inode.links_count > 1:
            node.link_key = ("ext4", ino)
    elif kind == "symlink":
        node.target = fs.readlink_ino(ino, inode)
        node.size = len(node.target)
    elif kind in ("char", "block"):
        node.rdev = inode.rdev()
    if kind in ("char", "block", "fifo", "socket") and inode.links_count > 1:
        node.link_key = ("ext4", ino)
    node.xattrs = fs.xattrs_ino(ino, inode)
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


def apply_policy(nodes: list[Node], opts: PopulateOptions) -> None:
    """Owners, modes and times as the options say (in place)."""
    clamp = opts.timestamp * _NS if opts.timestamp is not None else None
    for node in nodes:
        if opts.owner is not None:
            node.uid, node.gid = opts.owner
        if opts.rules:
            text = decode_name(node.path)
            for rule in opts.rules:
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
            node.atime_ns = min(node.atime_ns, clamp)
            node.mtime_ns = min(node.mtime_ns, clamp)
            node.ctime_ns = clamp if node.ctime_ns is None else min(node.ctime_ns, clamp)
        if not opts.xattrs:
            node.xattrs = {}


# ================================================================ sizing
@dataclass
class SpaceNeeds:
    blocks: int  # data + directory + symlink + xattr blocks
    inodes: int


def estimate(nodes: list[Node], block_size: int, *, dir_index: bool = True) -> SpaceNeeds:
    """Blocks and inodes the entries need (not counting filesystem metadata or the journal)."""
    bs = block_size
    blocks = 0
    inodes = 0
    children: dict[bytes, int] = {}
    name_bytes: dict[bytes, int] = {}
    seen_links: set[Any] = set()
    for node in nodes:
        if node.path != b"/":
            parent = node.path.rsplit(b"/", 1)[0] or b"/"
            name = node.path.rsplit(b"/", 1)[1]
            children[parent] = children.get(parent, 0) + 1
            name_bytes[parent] = name_bytes.get(parent, 0) + ((8 + len(name) + 3) & ~3)
        if node.kind == "hardlink" or (node.link_key is not None and node.link_key in seen_links):
            continue
        if node.link_key is not None:
            seen_links.add(node.link_key)
        inodes += 1
        if node.kind == "file":
            data = -(-node.size // bs)
            blocks += data + _tree_blocks_for(data, bs)
        elif node.kind == "symlink" and node.size >= 60:
            blocks += 1
        elif node.kind == "dir":
            children.setdefault(node.path, 0)
        if node.xattrs and sum(len(k) + len(v) + 20 for k, v in node.xattrs.items()) > 80:
            blocks += 1
    for path in children:
        raw = name_bytes.get(path, 0) + 24
        usable = bs - 12
        nblocks = max(1, -(-raw // usable))
        if nblocks > 1 and dir_index:
            nblocks = -(-nblocks * 5 // 4) + 1 + nblocks // 500
        blocks += nblocks
    return SpaceNeeds(blocks=blocks, inodes=inodes)


def _tree_blocks_for(data_blocks: int, bs: int) -> int:
    extents = -(-data_blocks // K.EXT_INIT_MAX_LEN)
    return 0 if extents <= 4 else E.tree_shape(extents, bs)[1]


# ================================================================ building
class _DataWriter:
    """Coalesces consecutive block writes into large pwrites; copies ranges with copy_file_range."""

    def __init__(self, fs: WritableFilesystem) -> None:
        self.fs = fs
        self.bs = fs.block_size
        self.dev = fs.dev
        self.dst_fd = getattr(fs.dev, "fd", -1)
        self.start = -1
        self.buf = bytearray()
        self.written = 0
        self.can_copy = self.dst_fd >= 0 and hasattr(os, "copy_file_range")

    def write(self, block: int, data: bytes | bytearray | memoryview) -> None:
        offset = block * self.bs
        if self.start >= 0 and self.start + len(self.buf) == offset and len(self.buf) < _WRITE_BUFFER:
            self.buf += data
        else:
            self.flush()
            self.start = offset
            self.buf = bytearray(data)
        pad = -len(self.buf) % self.bs
        if pad and len(data) % self.bs:
            self.buf += bytes(pad)

    def copy(self, block: int, src_fd: int, src_offset: int, length: int) -> None:
        self.flush()
        dst = block * self.bs
        done = 0
        if self.can_copy:
            try:
                while done < length:
                    n = os.copy_file_range(src_fd, self.dst_fd, length - done, src_offset + done, dst + done)
                    if n <= 0:
                        break
                    done += n
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self.can_copy = False
        while done < length:
            n = min(length - done, _WRITE_BUFFER)
            chunk = os.pread(src_fd, n, src_offset + done)
            if not chunk:
                chunk = bytes(n)
            self.dev.pwrite(dst + done, chunk)
            done += len(chunk)
        tail = -length % self.bs
        if tail:
            self.dev.pwrite(dst + length, bytes(tail))
        self.written += length + tail

    def flush(self) -> None:
        if self.start >= 0 and self.buf:
            self.dev.pwrite(self.start, self.buf)
            self.written += len(self.buf)
        self.start = -1
        self.buf = bytearray()


class _Cursor:
    """Hands out blocks in order from large runs reserved from the writer's allocator."""

    def __init__(self, fs: WritableFilesystem, goal: int) -> None:
        self.fs = fs
        self.goal = goal
        self.runs: list[list[int]] = []  # [start, length] reserved, unused

    def take(self, count: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        while count > 0:
            if not self.runs:
                want = max(count, min(_CHUNK_BLOCKS, self.fs.sb.free_blocks_count))
                if want <= 0:
                    raise NoSpace("no space left for the source's data")
                try:
                    reserved = self.fs.allocate_blocks(want, self.goal)
                except NoSpace:
                    reserved = self.fs.allocate_blocks(count, self.goal)
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
    inode: Inode | None  # None: an existing directory (entries go in one by one)
    parent: int
    entries: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # name -> (ino, ft)


class _Builder:
    def __init__(self, fs: WritableFilesystem, opts: PopulateOptions, report: PopulateReport,
                 progress: Callable[[int], None] | None) -> None:
        self.fs = fs
        self.opts = opts
        self.report = report
        self.progress = progress
        self.bs = fs.block_size
        self.now = opts.now_ns
        self.dirs: dict[bytes, _DirState] = {}
        self.inodes: dict[int, Inode] = {}
        self.links: dict[Any, int] = {}
        self.paths: dict[bytes, int] = {}
        self.xattrs: dict[int, dict[str, bytes]] = {}
        self.data = _DataWriter(fs)
        goal = fs.geo.group_first_block(0)
        self.cursor = _Cursor(fs, goal)
        self.extents_ok = fs.extents_feature

    # ------------------------------------------------------------ inodes
    def _inode(self, node: Node, kind: str) -> Inode:
        inode = Inode()
        inode.mode = _MODE_OF_KIND[kind] | (node.mode & 0o7777)
        inode.uid, inode.gid = node.uid, node.gid
        inode.atime = node.atime_ns
        inode.mtime = node.mtime_ns
        inode.ctime = node.ctime_ns if node.ctime_ns is not None else self.now
        if self.fs.geo.inode_size > K.GOOD_OLD_INODE_SIZE:
            inode.extra_isize = self.fs._want_extra
            inode.crtime = min(self.now, inode.ctime) if self.opts.timestamp is not None else self.now
        inode.links_count = 1
        return inode

    def _ensure_dir(self, path: bytes) -> _DirState:
        state = self.dirs.get(path)
        if state is not None:
            return state
        if path == b"/":
            state = _DirState(K.ROOT_INO, None, K.ROOT_INO)
            self.dirs[path] = state
            self.paths[path] = K.ROOT_INO
            return state
        parent_path = path.rsplit(b"/", 1)[0] or b"/"
        parent = self._ensure_dir(parent_path)
        name = path.rsplit(b"/", 1)[1]
        existing = self._existing_child(parent, name)
        if existing is not None:
            inode = self.fs.inode(existing)
            if not inode.is_dir():
                raise InvalidOptions(f"{decode_name(path)}: exists in the image and is not a directory")
            state = _DirState(existing, None, parent.ino)
            self.dirs[path] = state
            self.paths[path] = existing
            return state
        # An implicit parent (a tar archive that never lists it).
        implicit = Node(path=path, kind="dir", mode=0o755, mtime_ns=self.opts.timestamp * _NS if self.opts.timestamp
                        is not None else self.now)
        implicit.atime_ns = implicit.mtime_ns
        apply_policy([implicit], PopulateOptions(owner=self.opts.owner, rules=self.opts.rules,
                                                 timestamp=self.opts.timestamp, now_ns=self.now))
        self._make_dir(implicit, parent, name)
        return self.dirs[path]

    def _existing_child(self, parent: _DirState, name: bytes) -> int | None:
        if parent.inode is not None:
            found = parent.entries.get(name)
            return found[0] if found else None
        found = self.fs.lookup(parent.ino, name)
        return found[0] if found else None

    def _make_dir(self, node: Node, parent: _DirState, name: bytes) -> None:
        ino = self.fs.allocate_inode(parent.ino, is_dir=True, name=name)
        inode = self._inode(node, "dir")
        inode.links_count = 2
        self.inodes[ino] = inode
        state = _DirState(ino, inode, parent.ino)
        self.dirs[node.path] = state
        self.paths[node.path] = ino
        self._link_into(parent, name, ino, K.FT_DIR, is_dir=True)
        if node.xattrs:
            self.xattrs[ino] = dict(node.xattrs)
        self.report.directories += 1

    def _link_into(self, parent: _DirState, name: bytes, ino: int, ft: int, *, is_dir: bool = False) -> None:
        ft = ft if self.fs.filetype else 0
        if parent.inode is not None:
            parent.entries[name] = (ino, ft)
            if is_dir:
                parent.inode.links_count += 1
        else:
            mode = {K.FT_DIR: K.S_IFDIR, K.FT_SYMLINK: K.S_IFLNK, K.FT_CHRDEV: K.S_IFCHR,
                    K.FT_BLKDEV: K.S_IFBLK, K.FT_FIFO: K.S_IFIFO, K.FT_SOCK: K.S_IFSOCK}.get(ft, K.S_IFREG)
            self.fs._add_entry(parent.ino, name, ino, mode)
            if is_dir:
                p = self.fs._edit_inode(parent.ino)
                if p.links_count >= K.LINK_MAX - 1 or p.links_count == 1:
                    p.links_count = 1
                else:
                    p.links_count += 1

    def _replace_existing(self, parent: _DirState, name: bytes, path: bytes) -> None:
        """A later entry for the same path (tar) or a file already in the image: remove the old one."""
        old = self._existing_child(parent, name)
        if old is None:
            return
        if parent.inode is not None:
            ino, _ft = parent.entries.pop(name)
            inode = self.inodes.get(ino)
            if inode is not None:
                if inode.is_dir():
                    raise InvalidOptions(f"{decode_name(path)}: listed as a directory and as a file")
                inode.links_count -= 1
                if inode.links_count == 0:
                    self.fs._release_data(ino, inode)
                    self.fs._free_inode(ino, is_dir=False)
                    del self.inodes[ino]
                    self.xattrs.pop(ino, None)
            return
        old_inode = self.fs.inode(old)
        if old_inode.is_dir():
            raise InvalidOptions(f"{decode_name(path)}: a directory in the image is in the way")
        self.fs._unlink_entry(parent.ino, name, old)

    # ------------------------------------------------------------- nodes
    def add(self, node: Node, reader: Callable[[Node], Iterator[tuple[int, bytes | tuple[int, int, int]]]] | None) -> None:
        self.report.entries += 1
        if node.path == b"/":
            state = self._ensure_dir(b"/")
            root = self.fs._edit_inode(K.ROOT_INO)
            root.mode = K.S_IFDIR | (node.mode & 0o7777)
            root.uid, root.gid = node.uid, node.gid
            root.atime, root.mtime = node.atime_ns, node.mtime_ns
            if node.ctime_ns is not None:
                root.ctime = node.ctime_ns
            if node.xattrs:
                self.xattrs[K.ROOT_INO] = dict(node.xattrs)
            assert state.ino == K.ROOT_INO
            return
        parent_path, name = node.path.rsplit(b"/", 1)
        parent = self._ensure_dir(parent_path or b"/")
        if len(name) > K.NAME_LEN:
            raise InvalidOptions(f"{decode_name(node.path)}: name longer than 255 bytes")
        if node.kind == "dir":
            existing = self._existing_child(parent, name)
            if existing is not None:
                existing_inode = self.inodes.get(existing) or self.fs.inode(existing)
                if existing_inode.is_dir():
                    # Listed again (tar) or already in the image: refresh its metadata.
                    state = self._ensure_dir(node.path)
                    target = state.inode if state.inode is not None else self.fs._edit_inode(existing)
                    target.mode = K.S_IFDIR | (node.mode & 0o7777)
                    target.uid, target.gid = node.uid, node.gid
                    target.atime, target.mtime = node.atime_ns, node.mtime_ns
                    if node.xattrs:
                        self.xattrs[existing] = dict(node.xattrs)
                    return
                self._replace_existing(parent, name, node.path)
            self._make_dir(node, parent, name)
            return
        self._replace_existing(parent, name, node.path)
        if node.kind == "hardlink" or (node.link_key is not None and node.link_key in self.links):
            linked: int | None
            if node.kind == "hardlink":
                linked = self.paths.get(node.target)
                if linked is None:
                    raise InvalidOptions(f"{decode_name(node.path)}: hard link to {decode_name(node.target)}, "
                                         "which is not in the archive before it")
            else:
                linked = self.links[node.link_key]
            linked_inode = self.inodes.get(linked)
            if linked_inode is None or linked_inode.is_dir():
                raise InvalidOptions(f"{decode_name(node.path)}: hard link to a directory or an earlier entry")
            linked_inode.links_count += 1
            if linked_inode.links_count > K.LINK_MAX:
                raise InvalidOptions(f"{decode_name(node.path)}: too many hard links")
            self._link_into(parent, name, linked, K.MODE_TO_FT.get(linked_inode.mode & K.S_IFMT, 0))
            self.paths[node.path] = linked
            self.report.hardlinks += 1
            return
        ino = self.fs.allocate_inode(parent.ino, is_dir=False, name=name)
        inode = self._inode(node, node.kind)
        self.inodes[ino] = inode
        if node.kind == "file":
            self._write_data(ino, inode, node, reader)
            self.report.files += 1
            self.report.bytes += node.size
        elif node.kind == "symlink":
            link_target = node.target
            if not link_target or len(link_target) > K.MAX_SYMLINK_LEN:
                raise InvalidOptions(f"{decode_name(node.path)}: symlink target of {len(link_target)} bytes")
            inode.size = len(link_target)
            if len(link_target) < 60:
                inode.block = link_target.ljust(60, b"\0")
            else:
                runs = self.cursor.take(1)
                self.data.write(runs[0][0], link_target.ljust(self.bs, b"\0"))
                self._map(ino, inode, [E.Extent(0, runs[0][0], 1)])
        elif node.kind in ("char", "block"):
            inode.set_rdev(*node.rdev)
        if node.link_key is not None:
            self.links[node.link_key] = ino
        self.paths[node.path] = ino
        ft = K.MODE_TO_FT.get(inode.mode & K.S_IFMT, 0)
        self._link_into(parent, name, ino, ft)
        if node.xattrs:
            self.xattrs[ino] = dict(node.xattrs)
        if self.progress:
            self.progress(node.size)

    def _map(self, ino: int, inode: Inode, extents: list[E.Extent]) -> None:
        """Set a new inode's mapping (extent tree or block map) for data already placed."""
        bs = self.bs
        if len(extents) > 1:
            extents = E.merge(extents)
        data_blocks = sum(e.length for e in extents)
        if self.extents_ok and len(extents) <= 4:
            inode.flags |= K.EXTENTS_FL
            small = bytearray(60)
            _EH.pack_into(small, 0, K.EXT4_EXT_MAGIC, len(extents), 4, 0, 0)
            for i, e in enumerate(extents):
                length = e.length + (K.EXT_INIT_MAX_LEN if e.unwritten else 0)
                _EX.pack_into(small, 12 + 12 * i, e.logical, length, e.physical >> 32, e.physical & 0xFFFFFFFF)
            inode.block = bytes(small)
            inode.set_blocks_512(data_blocks * (bs // 512), self.fs.huge_file, bs)
            return
        if self.extents_ok:
            inode.flags |= K.EXTENTS_FL
            _depth, needed = E.tree_shape(len(extents), bs)
            meta: list[int] = []
            for s, n in self.cursor.take(needed) if needed else []:
                meta.extend(range(s, s + n))
            root, blocks = E.build(extents, block_size=bs, tree_blocks=meta, ino=ino, generation=0,
                                   csum_seed=self.fs.seed if self.fs.metadata_csum else None)
        else:
            from .blockmap import build as bm_build
            from .blockmap import meta_needed

            runs = [(e.logical, e.physical, e.length) for e in extents]
            needed = meta_needed(runs, bs)
            meta = []
            for s, n in self.cursor.take(needed) if needed else []:
                meta.extend(range(s, s + n))
            root, blocks = bm_build(runs, block_size=bs, meta_blocks=meta)
        inode.block = bytes(root)
        for block, data in blocks:
            self.fs._put_block(block, data)
        inode.set_blocks_512((data_blocks + needed) * (bs // 512), self.fs.huge_file, bs)

    def _write_data(self, ino: int, inode: Inode, node: Node,
                    reader: Callable[[Node], Iterator[tuple[int, bytes | tuple[int, int, int]]]] | None) -> None:
        bs = self.bs
        inode.size = node.size
        if node.size == 0 or reader is None:
            if self.extents_ok:
                inode.flags |= K.EXTENTS_FL
                inode.block = _empty_extent_root()
            return
        extents: list[E.Extent] = []
        for offset, piece in reader(node):
            if isinstance(piece, tuple):  # (src_fd, src_offset, length): a range copy
                src_fd, src_offset, length = piece
                first = offset // bs
                count = -(-length // bs)
                logical = first
                done = 0
                for start, n in self.cursor.take(count):
                    take = min(n * bs, length - done)
                    self.data.copy(start, src_fd, src_offset + done, take)
                    extents.append(E.Extent(logical, start, n))
                    logical += n
                    done += take
            else:
                data = piece
                first = offset // bs
                count = -(-len(data) // bs)
                logical = first
                done = 0
                for start, n in self.cursor.take(count):
                    chunk = data[done : done + n * bs]
                    self.data.write(start, chunk)
                    extents.append(E.Extent(logical, start, n))
                    logical += n
                    done += n * bs
        self._map(ino, inode, extents)

    # ----------------------------------------------------------- finish
    def finish(self) -> None:
        fs = self.fs
        self.data.flush()
        # Directories built in one go.
        for state in self.dirs.values():
            if state.inode is None:
                continue
            self._build_dir(state)
        self.data.flush()
        self.cursor.release()
        for ino, inode in self.inodes.items():
            fs._put_inode(ino, inode)
        for ino, values in self.xattrs.items():
            entries = [e for e in fs.xattr_entries(ino) if e.key == X.INLINE_DATA_KEY]
            for name, value in values.items():
                if name in ("system.posix_acl_access", "system.posix_acl_default"):
                    try:
                        value = X.acl_xattr_to_disk(value)
                    except Ext4Error:
                        self.report.warnings.append(f"inode {ino}: ACL {name} is not in the Linux format; skipped")
                        continue
                try:
                    entries.append(X.XattrEntry.from_name(name, bytes(value)))
                except Ext4Error as exc:
                    self.report.warnings.append(f"inode {ino}: xattr {name!r} skipped: {exc}")
            fs._store_xattrs(ino, entries)
        fs._data_written += self.data.written

    def _build_dir(self, state: _DirState) -> None:
        fs = self.fs
        bs = self.bs
        inode = state.inode
        assert inode is not None
        ft_dir = K.FT_DIR if fs.filetype else 0
        items = [(ino, name, ft) for name, (ino, ft) in sorted(state.entries.items())]
        usable = bs - (12 if fs.metadata_csum else 0)
        linear_size = 24 + sum((8 + len(name) + 3) & ~3 for _, name, _ in items)
        if linear_size <= usable or not fs.dir_index:
            blocks = D.build_linear_blocks(
                [(state.ino, b".", ft_dir), (state.parent, b"..", ft_dir)] + items,
                block_size=bs, filetype=fs.filetype, csum=fs.metadata_csum,
            )
            indexed = False
        else:
            version = fs.sb["s_def_hash_version"]
            if version > 2:
                version = K.HASH_HALF_MD4
            version = D.effective_hash_version(version, fs._hash_unsigned)
            blocks = D.build_htree(
                items, block_size=bs, hash_version=version, seed=fs._hash_seed, filetype=fs.filetype,
                csum=fs.metadata_csum, dir_ino=state.ino, parent_ino=state.parent, large_dir=fs.large_dir,
                slack_percent=0,
            )
            indexed = True
        runs = self.cursor.take(len(blocks))
        extents = []
        logical = 0
        physical: list[int] = []
        for start, n in runs:
            extents.append(E.Extent(logical, start, n))
            physical.extend(range(start, start + n))
            logical += n
        iseed = fs._dir_iseed(state.ino, inode) if fs.metadata_csum else 0
        for buf, block in zip(blocks, physical):
            if fs.metadata_csum:
                D.set_dir_block_csum(buf, iseed, block_size=bs)
            self.data.write(block, buf)
        self._map(state.ino, inode, extents)
        inode.size = len(blocks) * bs
        if indexed:
            inode.flags |= K.INDEX_FL


def _host_reader(node: Node) -> Iterator[tuple[int, bytes | tuple[int, int, int]]]:
    path = node.source
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = node.size
        if size <= _SMALL_FILE:
            data = os.read(fd, size + 1)
            if len(data) != size:
                data = data[:size] if len(data) > size else data + bytes(size - len(data))
            yield 0, data
            return
        for start, end in _data_ranges(fd, size):
            yield start, (fd, start, end - start)
    finally:
        os.close(fd)


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
) -> PopulateReport:
    """Copy a whole tree into ``fs``: a host directory, a tar archive (path or binary stream) or an ext4 image.

    ``owner`` squashes every entry's owner; ``rules`` (text or parsed) set
    owners and modes by glob, later rules winning; ``root_owner``/``root_mode``
    apply to the root directory; ``timestamp`` (seconds) clamps every time.
    Raises InvalidOptions for bad sources, NoSpace when the image is too small.
    """
    if not isinstance(fs, WritableFilesystem):
        raise InvalidOptions("populate needs a filesystem opened with writable=True")
    if isinstance(rules, str):
        rules = parse_rules(rules)
    now_ns = now * _NS if now is not None else fs._now()
    if timestamp is not None:
        now_ns = timestamp * _NS
    opts = PopulateOptions(owner=owner, root_owner=root_owner, root_mode=root_mode, rules=list(rules or []),
                           timestamp=timestamp, now_ns=now_ns, xattrs=xattrs)
    report = PopulateReport()
    kind, handle = classify_source(source)
    try:
        if nodes is None and not (kind == "tar" and not isinstance(handle, str)):
            nodes = scan_source(kind, handle)
        if nodes is not None:
            apply_policy(nodes, opts)
        builder = _Builder(fs, opts, report, progress)
        if kind == "dir":
            assert nodes is not None
            for node in nodes:
                builder.add(node, _host_reader if node.kind == "file" else None)
        elif kind == "ext4":
            src_fs: Filesystem = handle
            src_fd = src_fs.dev.fd if isinstance(src_fs.dev, FileDevice) else -1
            bs_src = src_fs.block_size

            def ext4_reader(node: Node) -> Iterator[tuple[int, bytes | tuple[int, int, int]]]:
                ino = node.source
                inode = src_fs.inode(ino)
                if inode.has_inline_data():
                    yield 0, src_fs.read_range(ino, inode, 0, inode.size)
                    return
                for offset, length, phys in src_fs.data_segments(ino, inode):
                    if phys is None:
                        continue
                    if src_fd >= 0:
                        yield offset, (src_fd, phys * bs_src, length)
                    else:
                        yield offset, src_fs.dev.pread(phys * bs_src, length)

            assert nodes is not None
            for node in nodes:
                builder.add(node, ext4_reader if node.kind == "file" else None)
        else:
            _populate_tar(builder, handle, nodes, opts)
        builder.finish()
    finally:
        if kind == "ext4" and handle is not source:
            handle.close()
    return report


def _populate_tar(builder: _Builder, handle: Any, nodes: list[Node] | None, opts: PopulateOptions) -> None:
    """Second pass over a scanned archive (``nodes`` by member index), or one pass over a stream."""
    by_index = {n.source: n for n in nodes} if nodes is not None else None
    with open_tar(handle) as tf:
        index = 0
        for info in tf:
            if by_index is not None:
                node = by_index.get(index)
            else:
                node = _tar_node(info, index)
                if node is not None:
                    apply_policy([node], opts)
            index += 1
            if node is None:
                continue
            if node.kind == "file":
                member = tf.extractfile(info)

                def tar_reader(n: Node, member: Any = member) -> Iterator[tuple[int, bytes | tuple[int, int, int]]]:
                    offset = 0
                    while member is not None:
                        chunk = member.read(_WRITE_BUFFER)
                        if not chunk:
                            return
                        yield offset, chunk
                        offset += len(chunk)

                builder.add(node, tar_reader)
            else:
                builder.add(node, None)


def classify_source(source: Any) -> tuple[str, Any]:
    """("dir" | "tar" | "ext4", handle) for a populate source."""
    if isinstance(source, Filesystem):
        return "ext4", source
    if hasattr(source, "read"):
        return "tar", source
    path = os.fspath(source)
    if os.path.isdir(path):
        return "dir", path
    if not os.path.exists(path):
        raise InvalidOptions(f"{path}: source does not exist")
    with open(path, "rb") as f:
        f.seek(1080)
        magic = f.read(2)
    if magic == b"\x53\xef":
        return "ext4", Filesystem.open(path)
    return "tar", path


def scan_source(kind: str, handle: Any) -> list[Node]:
    if kind == "dir":
        return scan_directory(handle)
    if kind == "ext4":
        return scan_ext4(handle)
    if isinstance(handle, str):
        return scan_tar(handle)
    raise InvalidOptions("a tar stream must be saved to a file before it can be scanned")


def source_needs(source: Any, block_size: int) -> tuple[list[Node], SpaceNeeds]:
    """Scan a source once: its entries and the space they need."""
    kind, handle = classify_source(source)
    try:
        nodes = scan_source(kind, handle)
    finally:
        if kind == "ext4" and handle is not source:
            handle.close()
    return nodes, estimate(nodes, block_size)


__all__ = ["populate", "parse_rules", "scan_directory", "scan_tar", "scan_ext4", "estimate", "source_needs",
           "Node", "PopulateReport", "Rule"]
