"""The reader against its oracles: the source tree of ``mke2fs -d``, and the kernel's own view.

Trees are generated at test time with every file type, sizes around 0, 60 and the block size,
sparse and fallocated files, hardlinks, deep nesting, unicode and 255-byte names, xattrs, owners
above 65535 and timestamps before 1970 and after 2038.  pyext4's view of the image (paths, types,
modes, owners, sizes, sha256, link targets, xattrs, rdev, mtime in ns) must equal the source's as
far as ``mke2fs -d`` preserves it (whole seconds in 32 bits, no atime), and the kernel's view
exactly for images the kernel wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import stat
import struct
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyext4 import (
    ChecksumError,
    Ext4Error,
    FileNotFound,
    NeedsRecovery,
    NotADirectory,
    SymlinkLoop,
    UnsupportedFeature,
    mkfs,
)
from pyext4.reader import Ext4Warning, Filesystem
from tests.conftest import HASH_SEED, NOW, UUID, debugfs, mke2fs, mount_unavailable, run, tool

IS_ROOT = os.geteuid() == 0
NS = 1_000_000_000
PRE_1970_NS = -315_619_200 * NS - 987_654_321  # 1959-12-31, with nanoseconds
POST_2038_NS = 4_102_444_800 * NS + 123_456_789  # 2100-01-01
BIG_DATA_FILE = 64 << 20  # files larger than this are compared region by region, not hashed whole


# ====================================================================== trees
def _data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _acl_xattr(entries: list[tuple[int, int, int]]) -> bytes:
    """A system.posix_acl_access value (version 2; (tag, perm, id) entries)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


def make_tree(root: Path, *, block_size: int = 4096, xattrs: bool = True, huge: bool = False,
              special: bool = True, names_255: bool = True, acl: bool = False) -> Path:
    """Build the test tree under ``root`` (created); times are set last, bottom-up.

    ``huge`` adds a sparse file whose data reaches past 4 GiB (and the triple-indirect range of a
    1 KiB block map).  Device nodes and owners above 65535 only as root.
    """
    root.mkdir(parents=True, exist_ok=True)
    bs = block_size
    files = root / "files"
    files.mkdir()
    for size in sorted({0, 1, 59, 60, 61, 100, bs - 1, bs, bs + 1, 3 * bs + 7, 12 * bs, 13 * bs + 1, 300_000}):
        (files / f"size-{size}").write_bytes(_data(size, size))
    (files / "text.txt").write_text("hello, ext4\n" * 100)
    # Sparse: data, a hole, data, a hole at the end.
    with open(files / "sparse", "wb") as f:
        f.write(_data(1, 5000))
        f.seek(3 << 20)
        f.write(_data(2, 10_000))
        f.truncate(8 << 20)
    # Many extents (a tree deeper than i_block) from alternating data and holes.
    with open(files / "fragmented", "wb") as f:
        for i in range(40):
            f.seek(i * 2 * bs)
            f.write(_data(100 + i, bs))
    # Fallocated: unwritten extents in the source (and in the image when the kernel writes it).
    fd = os.open(files / "fallocated", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, 16 * bs)
        os.pwrite(fd, b"written in the middle", 5 * bs + 3)
    finally:
        os.close(fd)
    if huge:
        with open(files / "huge", "wb") as f:
            for offset in (0, 12 * 1024, 300 * 1024, 70 << 20, (4 << 30) + 12345, (5 << 30)):
                f.seek(offset)
                f.write(_data(offset & 0xFFFF, 3000))
            f.truncate((5 << 30) + 8192)
    # Links.
    links = root / "links"
    links.mkdir()
    (links / "target").write_bytes(b"target data\n")
    for n in (1, 58, 59, 60, 61, 100, 500, 1000):
        target = ("t" * n)[:n]
        os.symlink(target, links / f"len-{n}")
    os.symlink("target", links / "relative")
    os.symlink("/links/target", links / "absolute")
    os.symlink("../files/size-1", links / "updir")
    os.symlink("nowhere", links / "dangling")
    os.symlink("sub/../target", links / "dotdot")
    (links / "sub").mkdir()
    os.symlink("../sub", links / "sub" / "self-parent")
    hard = links / "hard-a"
    hard.write_bytes(b"three names\n")
    os.link(hard, links / "hard-b")
    os.link(hard, root / "files" / "hard-c")
    # Special files.
    if special:
        os.mkfifo(root / "fifo", 0o640)
        sock_path = root / "socket"
        if len(os.fsencode(sock_path)) < 100:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.bind(os.fspath(sock_path))
            finally:
                s.close()
        if IS_ROOT:
            os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
            os.mknod(root / "blk", stat.S_IFBLK | 0o660, os.makedev(8, 1))
            os.mknod(root / "bigdev", stat.S_IFCHR | 0o600, os.makedev(300, 70000))
    # Names.
    names = root / "names"
    names.mkdir()
    (names / "héllo wörld ☃ 世界 🎉").write_text("unicode\n")
    (names / "with space and 'quote'").write_text("q\n")
    (names / "-dash").write_text("d\n")
    if names_255:
        (names / ("a" * 255)).write_text("255 ascii\n")
        (names / ("é" * 127 + "x")).write_text("255 bytes of utf-8\n")
    # Deep nesting.
    deep = root / "deep"
    for i in range(60):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "bottom").write_text("deep\n")
    # Modes.
    modes = root / "modes"
    modes.mkdir()
    for mode in (0o4755, 0o2755, 0o6711, 0o1777, 0o640, 0o600, 0o000, 0o777):
        p = modes / f"m{mode:04o}"
        p.write_text(f"{mode:o}\n")
        os.chmod(p, mode)
    sticky = modes / "sticky-dir"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    sgid = modes / "sgid-dir"
    sgid.mkdir()
    os.chmod(sgid, 0o2775)
    # Extended attributes.
    if xattrs:
        xa = root / "xattrs"
        xa.mkdir()
        small = xa / "small"
        small.write_text("x\n")
        os.setxattr(small, "user.one", b"1")
        os.setxattr(small, "user.empty", b"")
        big = xa / "big"
        big.write_text("x\n")
        os.setxattr(big, "user.big", _data(7, min(700, bs // 2)))
        many = xa / "many"
        many.write_text("x\n")
        for i in range(12):
            os.setxattr(many, f"user.attr{i:02d}", f"value {i}".encode())
        os.setxattr(xa, "user.on-a-dir", b"dir value")
        if IS_ROOT:
            os.setxattr(small, "trusted.t", b"trusted value")
            os.setxattr(small, "security.s", b"security value")
        if acl and IS_ROOT:
            with contextlib.suppress(OSError):
                os.setxattr(big, "system.posix_acl_access",
                            _acl_xattr([(0x01, 6, 0xFFFFFFFF), (0x02, 4, 1000), (0x04, 4, 0xFFFFFFFF),
                                        (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]))
    # Owners.
    owners = root / "owners"
    owners.mkdir()
    for uid, gid in ((0, 0), (1000, 1000), (65535, 65534), (70000, 80000), (4_000_000_000, 3_000_000_000)):
        p = owners / f"u{uid}-g{gid}"
        p.write_text("owned\n")
        if IS_ROOT:
            os.chown(p, uid, gid)
    if IS_ROOT:
        os.lchown(links / "relative", 123456, 654321)
    # Times, bottom-up (directories after their contents).
    times = root / "times"
    times.mkdir()
    for name, ns in (("pre-1970", PRE_1970_NS), ("epoch", 0), ("y2038-edge", (2**31 - 1) * NS + 999_999_999),
                     ("post-2038", POST_2038_NS), ("ns", 1_600_000_000 * NS + 1)):
        p = times / name
        p.write_text(name)
        os.utime(p, ns=(ns + 5 * NS, ns))
    os.utime(links / "relative", ns=(1_500_000_000 * NS + 7, 1_400_000_000 * NS + 3), follow_symlinks=False)
    rng = random.Random(42)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            if p.parent == times and name in ("pre-1970", "epoch", "y2038-edge", "post-2038", "ns"):
                continue
            if p == links / "relative":
                continue
            t = 1_650_000_000 * NS + rng.randrange(10**15)
            os.utime(p, ns=(t + 1000, t), follow_symlinks=False)
    os.utime(times, ns=(POST_2038_NS, PRE_1970_NS))
    return root


def make_big_dir(parent: Path, count: int = 20_000, *, name_len: int = 40) -> Path:
    """A directory of ``count`` hardlinks to one file (cheap to create, many entries)."""
    d = parent / "big"
    d.mkdir(parents=True)
    first = d / _big_name(0, name_len)
    first.write_text("shared\n")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(1, count):
            os.link(first.name, _big_name(i, name_len), src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
    return d


def _big_name(i: int, length: int) -> str:
    return f"entry-{i:06d}-".ljust(length, "x")


# ====================================================================== views
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _host_regions(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of the data regions of a host file (SEEK_DATA/SEEK_HOLE)."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end - start))
            pos = end
    finally:
        os.close(fd)
    return out


def host_view(root: Path) -> dict[str, dict[str, Any]]:
    """What the host (or the kernel, for a mount point) says about every entry under ``root``."""
    view: dict[str, dict[str, Any]] = {}
    for p in _walk_nofollow(root):
        rel = "/" + os.fsdecode(os.path.relpath(p, root))
        st = os.lstat(p)
        rec: dict[str, Any] = {
            "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns,
            "atime_ns": st.st_atime_ns, "ino": st.st_ino, "nlink": st.st_nlink,
        }
        if stat.S_ISREG(st.st_mode):
            rec["size"] = st.st_size
            fd = os.open(p, os.O_RDONLY | os.O_NOATIME)  # reading must not change what we compare
            try:
                if st.st_size > BIG_DATA_FILE:
                    rec["regions"] = _host_regions(p)
                    rec["region_data"] = [_sha(os.pread(fd, n, o)) for o, n in rec["regions"]]
                else:
                    rec["sha256"] = _sha(_read_fd(fd, st.st_size))
            finally:
                os.close(fd)
        elif stat.S_ISLNK(st.st_mode):
            rec["size"] = st.st_size
            rec["target"] = os.readlink(p)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            rec["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        rec["xattrs"] = {} if stat.S_ISLNK(st.st_mode) and not IS_ROOT else _host_xattrs(p)
        view[rel] = rec
    return view


def _walk_nofollow(root: Path) -> Iterator[Path]:
    """Every path under ``root``, parents first, without following (or even resolving) a symlink:
    following one would update its atime on the host."""
    pending = [root]
    while pending:
        d = pending.pop()
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            p = Path(e.path)
            yield p
            if e.is_dir(follow_symlinks=False):
                pending.append(p)


def _read_fd(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _host_xattrs(p: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(p, n, follow_symlinks=False) for n in names if n != "security.selinux"}


def image_view(fs: Filesystem, *, big_regions: dict[str, list[tuple[int, int]]] | None = None,
               skip: tuple[str, ...] = ("/lost+found",)) -> dict[str, dict[str, Any]]:
    """pyext4's view of every entry of the image, in the shape host_view returns."""
    view: dict[str, dict[str, Any]] = {}
    for entry in fs.walk_entries("/"):
        if entry.path in skip or any(entry.path.startswith(s + "/") for s in skip):
            continue
        st = fs.stat_ino(entry.ino)
        rec: dict[str, Any] = {
            "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns,
            "atime_ns": st.st_atime_ns, "ino": st.st_ino, "nlink": st.st_nlink,
        }
        if st.is_file():
            rec["size"] = st.st_size
            if st.st_size > BIG_DATA_FILE:
                regions = (big_regions or {}).get(entry.path, [])
                rec["regions"] = regions
                rec["region_data"] = [_sha(fs.read_range(entry.ino, fs.inode(entry.ino), o, n)) for o, n in regions]
                # Whatever the image stores outside those regions must read as zeros.
                rec["outside_zero"] = _outside_is_zero(fs, entry.ino, regions)
            else:
                rec["sha256"] = _sha(fs.read_bytes(entry.ino))
        elif st.is_symlink():
            rec["size"] = st.st_size
            rec["target"] = fs.readlink(entry.path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            rec["rdev"] = (st.rdev_major, st.rdev_minor)
        rec["xattrs"] = fs.xattrs_ino(entry.ino)
        view[entry.path] = rec
    return view


def _outside_is_zero(fs: Filesystem, ino: int, regions: list[tuple[int, int]]) -> bool:
    inode = fs.inode(ino)
    for offset, length, phys in fs.data_segments(ino, inode):
        if phys is None:
            continue
        pos = offset
        while pos < offset + length:
            inside = next(((o, n) for o, n in regions if o <= pos < o + n), None)
            if inside:
                pos = inside[0] + inside[1]
                continue
            nxt = min([o for o, _ in regions if o > pos] + [offset + length])
            n = min(nxt - pos, 1 << 20)
            if any(fs.read_range(ino, inode, pos, n)):
                return False
            pos += n
    return True


def compare(host: dict[str, dict[str, Any]], image: dict[str, dict[str, Any]], *, times: str = "exact",
            atime: bool = False, xattrs: bool = True, data_lost: tuple[str, ...] = ()) -> None:
    """Assert the two views agree; ``times`` is "exact" (ns) or "mke2fs" (32-bit whole seconds).

    ``data_lost`` names files whose size and content the image maker is known not to keep.
    """
    problems: list[str] = []
    missing = sorted(set(host) - set(image))
    extra = sorted(set(image) - set(host))
    if missing:
        problems.append(f"missing from the image: {missing[:10]}")
    if extra:
        problems.append(f"only in the image: {extra[:10]}")
    for path in sorted(set(host) & set(image)):
        h, i = host[path], image[path]
        fields = ["mode", "uid", "gid", "size", "sha256", "target", "rdev", "region_data"]
        for field in fields:
            if path in data_lost and field in ("size", "sha256"):
                continue
            if h.get(field) != i.get(field):
                problems.append(f"{path}: {field} host={h.get(field)!r} image={i.get(field)!r}")
        if "regions" in h:
            if "regions" not in i:
                problems.append(f"{path}: not compared by regions")
            elif not i.get("outside_zero", True):
                problems.append(f"{path}: the image stores non-zero data outside the source's data regions")
        if xattrs and h["xattrs"] != i["xattrs"]:
            problems.append(f"{path}: xattrs host={sorted(h['xattrs'])} image={sorted(i['xattrs'])}")
        if not stat.S_ISDIR(h["mode"]) and h["nlink"] != i["nlink"]:
            problems.append(f"{path}: nlink host={h['nlink']} image={i['nlink']}")
        for key in ("mtime_ns",) + (("atime_ns",) if atime else ()):
            hv, iv = h[key], i[key]
            if times == "exact":
                ok = hv == iv
            else:  # mke2fs -d keeps st_mtime (whole seconds) in the 32-bit field only
                sec = hv // NS
                ok = iv == sec * NS if -(2**31) <= sec < 2**31 else True
            if not ok:
                problems.append(f"{path}: {key} host={hv} image={iv}")
    # Hardlinks: the same groups of names share an inode on both sides.
    def groups(view: dict[str, dict[str, Any]]) -> set[frozenset[str]]:
        by_ino: dict[int, set[str]] = {}
        for path, rec in view.items():
            if not stat.S_ISDIR(rec["mode"]):
                by_ino.setdefault(rec["ino"], set()).add(path)
        return {frozenset(v) for v in by_ino.values() if len(v) > 1}

    if groups(host) != groups(image):
        problems.append(f"hardlink groups differ: host={groups(host)} image={groups(image)}")
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:40])


def regions_of(view: dict[str, dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    return {p: r["regions"] for p, r in view.items() if "regions" in r}


# ====================================================================== images
def mke2fs_image(tmp: Path, src: Path, args: list[str], size: str, name: str = "img") -> Path:
    image = tmp / f"{name}.img"
    mke2fs(image, *args, size=size, root=str(src))
    return image


@contextlib.contextmanager
def kernel_mount(image: Path) -> Iterator[Path]:
    """Mount with the kernel (noatime, so reading for the comparison changes nothing); skip if impossible."""
    reason = mount_unavailable()
    if reason:
        pytest.skip(reason)
    mnt = Path(tempfile.mkdtemp(prefix="pyext4-mnt-"))
    proc = subprocess.run(["mount", "-o", "loop,noatime", str(image), str(mnt)], capture_output=True)
    if proc.returncode != 0:
        mnt.rmdir()
        raise AssertionError("kernel refused to mount: " + proc.stderr.decode(errors="replace"))
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        mnt.rmdir()


@pytest.fixture(scope="module")
def source_trees(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("src")
    return {bs: make_tree(base / f"bs{bs}", block_size=bs, acl=True) for bs in (1024, 4096)}


MKE2FS_CONFIGS = [
    # id, block size, mke2fs arguments, image size
    ("ext2-1k", 1024, ["-t", "ext2", "-b", "1024"], "64M"),
    ("ext2-4k-128", 4096, ["-t", "ext2", "-b", "4096", "-I", "128"], "64M"),
    ("ext3-1k", 1024, ["-t", "ext3", "-b", "1024"], "64M"),
    ("ext4-4k", 4096, ["-t", "ext4", "-b", "4096"], "64M"),
    ("ext4-1k-nocsum-32bit", 1024, ["-t", "ext4", "-b", "1024", "-O", "^metadata_csum,^64bit"], "64M"),
    ("ext4-4k-gdtcsum", 4096, ["-t", "ext4", "-b", "4096", "-O", "^metadata_csum,uninit_bg,^64bit"], "64M"),
    ("ext4-4k-inline", 4096, ["-t", "ext4", "-b", "4096", "-O", "inline_data"], "64M"),
    ("ext4-1k-inline-nocsum", 1024, ["-t", "ext4", "-b", "1024", "-O", "inline_data,^metadata_csum"], "64M"),
    ("ext4-1k-metabg", 1024, ["-t", "ext4", "-b", "1024", "-O", "meta_bg,^resize_inode", "-g", "1024"], "64M"),
    ("ext4-4k-sparse2-1024", 4096, ["-t", "ext4", "-b", "4096", "-O", "sparse_super2", "-I", "1024"], "64M"),
    ("ext4-2k-noflex-noextra", 2048, ["-t", "ext4", "-b", "2048", "-O", "^flex_bg", "-I", "128"], "64M"),
    ("ext4-64k", 65536, ["-t", "ext4", "-b", "65536", "-O", "^has_journal"], "256M"),
]


@pytest.mark.parametrize("config", MKE2FS_CONFIGS, ids=[c[0] for c in MKE2FS_CONFIGS])
def test_mke2fs_image_matches_source(config: tuple[str, int, list[str], str], source_trees: dict[int, Path],
                                     tmp_path: Path) -> None:
    name, bs, args, size = config
    src = source_trees[1024 if bs == 1024 else 4096]
    image = mke2fs_image(tmp_path, src, args, size)
    host = host_view(src)
    lost: tuple[str, ...] = ()
    if "inline_data" in " ".join(args):
        # mke2fs -d with inline_data drops a sparse file's trailing hole (i_size ends at the last
        # data block): check that pyext4 agrees with debugfs on those instead.
        lost = ("/files/sparse", "/files/fallocated")
    with Filesystem.open(image) as fs:
        view = image_view(fs)
        assert fs.block_size == bs
        for path in lost:
            out = debugfs(image, f"stat {path}")
            size = int(out.split("Size:", 1)[1].split()[0])
            assert fs.stat(path).st_size == size
            assert fs.read_bytes(path) == (src / path.lstrip("/")).read_bytes()[:size]
    compare(host, view, times="mke2fs", data_lost=lost)


def test_inline_data_is_really_inline(source_trees: dict[int, Path], tmp_path: Path) -> None:
    """Small files and directories of an inline_data image are read from the inode itself."""
    from pyext4 import constants as K

    image = mke2fs_image(tmp_path, source_trees[4096], ["-t", "ext4", "-b", "4096", "-O", "inline_data"], "64M")
    with Filesystem.open(image) as fs:
        for path, size in (("/files/size-59", 59), ("/files/size-100", 100)):
            ino = fs.resolve(path)
            inode = fs.inode(ino)
            assert inode.flags & K.INLINE_DATA_FL
            assert fs.read_bytes(path) == _data(size, size)
        assert fs.inode(fs.resolve("/links/sub")).flags & K.INLINE_DATA_FL
        assert fs.listdir("/links/sub") == ["self-parent"]
        assert fs.resolve("/links/sub/..") == fs.resolve("/links")


def test_deep_extent_tree_and_indirect_maps(source_trees: dict[int, Path], tmp_path: Path) -> None:
    """The fragmented file needs an extent tree below i_block; the 1k ext2 file needs DIND."""
    from pyext4 import extents as E

    src = source_trees[4096]
    image = mke2fs_image(tmp_path, src, ["-t", "ext4", "-b", "4096"], "64M", "e4")
    with Filesystem.open(image) as fs:
        ino = fs.resolve("/files/fragmented")
        inode = fs.inode(ino)
        depth = struct.unpack_from("<H", inode.block, 6)[0]
        assert depth >= 1
        assert len(fs.extents_of(ino, inode)) == 40
        assert fs.read_bytes(ino) == (src / "files" / "fragmented").read_bytes()
        assert E.tree_blocks(inode.block, fs.read_block, block_size=fs.block_size,
                             blocks_count=fs.geo.blocks_count, first_data_block=fs.geo.first_data_block,
                             ino=ino)
    src1 = source_trees[1024]
    image = mke2fs_image(tmp_path, src1, ["-t", "ext2", "-b", "1024"], "64M", "e2")
    with Filesystem.open(image) as fs:
        ino = fs.resolve("/files/size-300000")
        i_block = struct.unpack_from("<15I", fs.inode(ino).block)
        assert i_block[12] and i_block[13]  # single and double indirect in use
        assert fs.read_bytes(ino) == _data(300_000, 300_000)


@pytest.mark.parametrize("bs,args", [(1024, ["-t", "ext2", "-b", "1024"]),
                                     (4096, ["-t", "ext4", "-b", "4096", "-O", "^metadata_csum"]),
                                     (4096, ["-t", "ext2", "-b", "4096"])], ids=["ext2-1k-tind", "ext4-4k", "ext2-4k-tind"])
def test_huge_sparse_file(bs: int, args: list[str], tmp_path: Path) -> None:
    """A sparse file over 4 GiB (triple indirect on ext2) reads right around every boundary."""
    src = tmp_path / "src"
    src.mkdir()
    huge = src / "huge"
    offsets = [0, 12 * 1024, 300 * 1024, 70 << 20, (4 << 30) - 1500, (4 << 30) + 12345, 5 << 30]
    with open(huge, "wb") as f:
        for offset in offsets:
            f.seek(offset)
            f.write(_data(offset & 0xFFFF, 3000))
        f.truncate((5 << 30) + 8192)
    image = mke2fs_image(tmp_path, src, args, "128M")
    regions = _host_regions(huge)
    with Filesystem.open(image) as fs:
        st = fs.stat("/huge")
        assert st.st_size == (5 << 30) + 8192
        ino = fs.resolve("/huge")
        inode = fs.inode(ino)
        with open(huge, "rb") as f:
            for offset in offsets:
                for o in (offset, max(0, offset - 100)):
                    f.seek(o)
                    assert fs.read_range(ino, inode, o, 4096) == f.read(4096), o
        assert _outside_is_zero(fs, ino, regions)
        with fs.open("/huge") as f2:
            f2.seek((4 << 30) + 12345)
            assert f2.read(3000) == _data(((4 << 30) + 12345) & 0xFFFF, 3000)
            f2.seek(-4096, os.SEEK_END)
            assert f2.read() == bytes(4096)
        if bs == 1024 and "ext2" in args:
            assert struct.unpack_from("<15I", inode.block)[14], "triple indirect block expected"


# ------------------------------------------------------------ kernel-written images
KERNEL_CONFIGS = [
    ("pyext4-mkfs-4k", lambda img: mkfs(img, "256M", uuid=UUID, hash_seed=HASH_SEED, now=NOW)),
    ("pyext4-mkfs-1k", lambda img: mkfs(img, "256M", block_size=1024, uuid=UUID, hash_seed=HASH_SEED, now=NOW)),
    ("mke2fs-ext4-inline", lambda img: mke2fs(img, "-t", "ext4", "-O", "inline_data", size="256M")),
    ("mke2fs-ext4-32bit-nocsum", lambda img: mke2fs(img, "-t", "ext4", "-O", "^64bit,^metadata_csum", size="256M")),
    ("mke2fs-ext2", lambda img: mke2fs(img, "-t", "ext2", "-b", "1024", size="256M")),
    ("mke2fs-ext3", lambda img: mke2fs(img, "-t", "ext3", size="256M")),
]


@pytest.mark.mount
@pytest.mark.parametrize("config", KERNEL_CONFIGS, ids=[c[0] for c in KERNEL_CONFIGS])
def test_kernel_written_image_matches_kernel_view(config: Any, tmp_path: Path) -> None:
    """The kernel writes the tree; pyext4 must see exactly what the kernel saw (ns times, atime too)."""
    name, make = config
    image = tmp_path / "k.img"
    image.touch()
    make(image)
    with kernel_mount(image) as mnt:
        bs = os.statvfs(mnt).f_bsize
        make_tree(mnt / "tree", block_size=bs, huge=True, acl=True)
        # Fallocated regions written by the kernel are unwritten extents in the image.
        fd = os.open(mnt / "prealloc", os.O_WRONLY | os.O_CREAT, 0o600)
        os.posix_fallocate(fd, 0, 1 << 20)
        os.pwrite(fd, b"middle", 300_000)
        os.close(fd)
        os.utime(mnt / "prealloc", ns=(1, 2))
        os.sync()
        kernel = host_view(mnt)
    with Filesystem.open(image) as fs:
        view = image_view(fs, big_regions=regions_of(kernel), skip=())
        if "inline" not in name and "ext2" not in name and "ext3" not in name:
            ino = fs.resolve("/prealloc")
            assert any(e.unwritten for e in fs.extents_of(ino)), "fallocate should leave unwritten extents"
    compare(kernel, view, times="exact", atime=True)


# ------------------------------------------------------------ htree lookups
def _htree_fs(tmp: Path, args: list[str], *, count: int = 20_000, name_len: int = 40,
              hash_alg: str | None = None, unsigned: bool = False, size: str = "64M") -> tuple[Path, list[str]]:
    """An image whose /big holds ``count`` empty files, indexed by the kernel as it created them.

    (``mke2fs -d`` takes over 30 s for 20,000 files; the kernel takes well under one.)  With
    ``hash_alg``/``unsigned``, e2fsck -fyD then rebuilds every index with that hash.
    """
    image = tmp / "h.img"
    mke2fs(image, *args, "-N", str(count + 2000), size=size)
    names = sorted(_big_name(i, name_len) for i in range(count))
    with kernel_mount(image) as mnt:
        big = mnt / "big"
        big.mkdir()
        fd = os.open(big, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for n in names:
                os.close(os.open(n, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        finally:
            os.close(fd)
    if hash_alg or unsigned:
        if hash_alg:
            debugfs(image, f"ssv def_hash_version {hash_alg}", write=True)
        if unsigned:
            debugfs(image, "ssv flags 2", write=True)  # EXT2_FLAGS_UNSIGNED_HASH only
        proc = run(tool("e2fsck"), "-fyD", image, check=False)
        assert proc.returncode in (0, 1), proc.stdout.decode(errors="replace")
    return image, names


HTREE_CONFIGS = [
    # id, mke2fs args, hash to rebuild with, unsigned, extra, expected hash version, levels
    ("kernel-half_md4-4k", ["-t", "ext4", "-b", "4096"], None, False, {}, 1, 0),
    ("legacy-1k", ["-t", "ext4", "-b", "1024"], "legacy", False, {}, 0, 1),
    ("tea-unsigned-1k-nocsum", ["-t", "ext4", "-b", "1024", "-O", "^metadata_csum"], "tea", True, {}, 2, 1),
    ("half_md4-unsigned-ext3", ["-t", "ext3", "-b", "4096"], "half_md4", True, {}, 1, 0),
    ("kernel-two-levels-1k", ["-t", "ext4", "-b", "1024"], None, False, {"count": 8000, "name_len": 250}, 1, 1),
    ("kernel-large_dir-three-levels", ["-t", "ext4", "-b", "1024", "-O", "large_dir"], None, False,
     {"count": 60_000, "name_len": 250, "size": "200M"}, 1, 2),
]


@pytest.mark.mount
@pytest.mark.parametrize("config", HTREE_CONFIGS, ids=[c[0] for c in HTREE_CONFIGS])
def test_htree_lookup_by_path(config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names of a big indexed directory are found through the index (cache cold), every hash kind."""
    from pyext4 import constants as K

    _name, args, hash_alg, unsigned, kw, version, levels = config
    image, names = _htree_fs(tmp_path, args, hash_alg=hash_alg, unsigned=unsigned, **kw)
    with Filesystem.open(image) as fs:
        big = fs.resolve("/big")
        inode = fs.inode(big)
        assert inode.flags & K.INDEX_FL, "the directory should be indexed"
        root = fs.read_range(big, inode, 0, fs.block_size)
        assert (root[0x1C], root[0x1E]) == (version, levels), "hash version / indirect levels"
        assert fs._hash_unsigned == unsigned
        calls = {"n": 0}
        real = fs._htree_lookup

        def counting(*a: Any, **k: Any) -> Any:
            calls["n"] += 1
            return real(*a, **k)

        monkeypatch.setattr(fs, "_htree_lookup", counting)
        step = max(1, len(names) // 2500)
        sample = names[::step] + names[-3:]
        inos = set()
        for n in sample:
            inos.add(fs.resolve("/big/" + n))
        assert len(inos) == len(set(sample))
        with pytest.raises(FileNotFound):
            fs.resolve("/big/" + _big_name(10**6 - 1, len(names[0])))
        with pytest.raises(FileNotFound):
            fs.resolve("/big/nope")
        assert calls["n"] >= len(sample), "lookups did not go through the htree"
        assert big not in fs._dir_cache
    # A cold reader's linear listing agrees with the names created, and so do lookups after it.
    with Filesystem.open(image) as fs:
        assert sorted(e.name for e in fs.scandir("/big")) == names
        assert fs.resolve("/big/" + names[len(names) // 2])


# ------------------------------------------------------------ symlinks
def test_symlink_resolution_and_eloop(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "dir" / "sub" / "file").write_text("found\n")
    chain = src / "chain"
    chain.mkdir()
    # c0 -> c1 -> ... -> c40 -> /dir/sub/file: resolving c1 takes 40 follows, c0 takes 41.
    os.symlink("/dir/sub/file", chain / "c40")
    for i in range(39, -1, -1):
        os.symlink(f"c{i + 1}", chain / f"c{i}")
    os.symlink("loop-b", src / "loop-a")
    os.symlink("loop-a", src / "loop-b")
    os.symlink("self", src / "self")
    os.symlink("/../../../dir/./sub//file", src / "abs-dotdot")
    os.symlink("dir/sub/../sub/file", src / "rel-dotdot")
    os.symlink("/dir/sub/file/", src / "trailing-slash-on-file")
    os.symlink("../../../../../etc/passwd", src / "escape")
    os.symlink("dir", src / "dirlink")
    image = tmp_path / "s.img"
    mke2fs(image, "-t", "ext4", size="16M", root=str(src))
    with Filesystem.open(image) as fs:
        target = fs.resolve("/dir/sub/file")
        assert fs.resolve("/chain/c1") == target
        with pytest.raises(SymlinkLoop):
            fs.resolve("/chain/c0")
        for p in ("/loop-a", "/self"):
            with pytest.raises(SymlinkLoop):
                fs.resolve(p)
        assert fs.resolve("/loop-a", follow=False) != target
        assert fs.resolve("/abs-dotdot") == target
        assert fs.resolve("/rel-dotdot") == target
        assert fs.resolve("/dirlink/sub/file") == target
        assert fs.read_bytes("/dirlink/sub/../sub/file") == b"found\n"
        # '..' past the root stays at the root; nothing outside the image is reached.
        with pytest.raises(FileNotFound):
            fs.resolve("/escape")
        with pytest.raises(NotADirectory):
            fs.resolve("/dir/sub/file/x")
        assert fs.readlink("/loop-a") == "loop-b"
        assert fs.stat("/dirlink").is_dir() and fs.lstat("/dirlink").is_symlink()
        # realpath: the same walk, naming where it ends.
        for p, want in (("/chain/c1", "/dir/sub/file"), ("/abs-dotdot", "/dir/sub/file"),
                        ("/rel-dotdot", "/dir/sub/file"), ("dirlink/sub/../sub", "/dir/sub"), ("/dirlink", "/dir"),
                        ("/", "/"), ("/dir/..", "/"), ("/../dir/./sub", "/dir/sub"), ("/chain", "/chain")):
            assert fs.realpath(p) == want, p
        with pytest.raises(SymlinkLoop):
            fs.realpath("/chain/c0")
        with pytest.raises(FileNotFound):
            fs.realpath("/escape")


# ------------------------------------------------------------ verify policy, journal, features
def _flip_inode_byte(image: Path, fs_ino: int, offset_in_inode: int) -> None:
    with Filesystem.open(image) as fs:
        group, index = divmod(fs_ino - 1, fs.geo.inodes_per_group)
        table = fs.group_desc(group).inode_table
        pos = table * fs.block_size + index * fs.geo.inode_size + offset_in_inode
    with open(image, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x01]))


def test_verify_modes_on_a_flipped_checksum(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data\n")
    image = tmp_path / "c.img"
    mke2fs(image, "-t", "ext4", size="16M", root=str(src))
    with Filesystem.open(image) as fs:
        ino = fs.resolve("/f")
        mtime = fs.stat("/f").st_mtime_ns
    _flip_inode_byte(image, ino, 0x10)  # i_mtime's lowest byte: the checksum no longer matches
    with Filesystem.open(image, verify="strict") as fs:
        with pytest.raises(ChecksumError) as info:
            fs.stat("/f")
        assert f"inode {ino}" in str(info.value)
    with Filesystem.open(image, verify="warn") as fs:
        with pytest.warns(Ext4Warning, match="checksum"):
            st = fs.stat("/f")
        assert abs(st.st_mtime_ns - mtime) == NS
        assert fs.read_bytes("/f") == b"data\n"
    with Filesystem.open(image, verify="off") as fs, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fs.read_bytes("/f") == b"data\n"


def test_flipped_directory_block_checksum(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "name").write_text("x")
    image = tmp_path / "c.img"
    mke2fs(image, "-t", "ext4", size="16M", root=str(src))
    with Filesystem.open(image) as fs:
        d = fs.resolve("/d")
        block = fs.extents_of(d)[0].physical
        offset = block * fs.block_size
    with open(image, "r+b") as f:
        data = bytearray(f.read())
    pos = data.index(b"name", offset)
    data[pos] ^= 0x20  # "Name": a different name, the checksum tail still describes "name"
    image.write_bytes(bytes(data))
    with Filesystem.open(image) as fs, pytest.raises(ChecksumError):
        fs.listdir("/d")
    with Filesystem.open(image, verify="warn") as fs, pytest.warns(Ext4Warning):
        assert fs.listdir("/d") == ["Name"]


def test_needs_recovery_refused_unless_allowed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("journal\n")
    image = tmp_path / "j.img"
    mke2fs(image, "-t", "ext4", size="16M", root=str(src))
    debugfs(image, "feature needs_recovery", write=True)
    with pytest.raises(NeedsRecovery, match="needs_recovery"):
        Filesystem.open(image)
    with pytest.warns(Ext4Warning, match="journal"), Filesystem.open(image, allow_needs_recovery=True) as fs:
        assert fs.read_text("/f") == "journal\n"


def _set_incompat_bits(image: Path, bits: int) -> None:
    from pyext4.csum import superblock_csum

    with open(image, "r+b") as f:
        f.seek(1024)
        raw = bytearray(f.read(1024))
        value = struct.unpack_from("<I", raw, 0x60)[0] | bits
        struct.pack_into("<I", raw, 0x60, value)
        if struct.unpack_from("<I", raw, 0x64)[0] & 0x400:  # metadata_csum
            struct.pack_into("<I", raw, 0x3FC, superblock_csum(bytes(raw)))
        f.seek(1024)
        f.write(raw)


@pytest.mark.parametrize("bits,name", [(0x80000, "FEATURE_I19"), (0x10000, "encrypt"), (0x1000, "dirdata"),
                                       (0x0001, "compression")])
def test_unknown_incompat_feature_is_named(bits: int, name: str, tmp_path: Path) -> None:
    image = tmp_path / "u.img"
    mke2fs(image, "-t", "ext4", size="16M")
    _set_incompat_bits(image, bits)
    with pytest.raises(UnsupportedFeature) as info:
        Filesystem.open(image)
    assert name in str(info.value)
    assert name in info.value.features


def test_bigalloc_is_refused_as_unsupported_not_corrupt(tmp_path: Path) -> None:
    # Its blocks per group (clusters x ratio) exceeds 8 x block size: that must not read as corruption.
    image = tmp_path / "big.img"
    mke2fs(image, "-t", "ext4", "-O", "bigalloc", "-C", "65536", size="64M")
    with pytest.raises(UnsupportedFeature) as info:
        Filesystem.open(image)
    assert info.value.features == ("bigalloc",)


def test_reads_through_backup_superblock(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("backup\n")
    image = tmp_path / "b.img"
    mke2fs(image, "-t", "ext4", "-b", "1024", size="16M", root=str(src))
    with open(image, "r+b") as f:
        f.seek(1024)
        f.write(bytes(1024))  # the primary superblock is gone
    with pytest.raises(Exception):  # noqa: B017 - any Ext4Error
        Filesystem.open(image)
    with Filesystem.open(image, superblock=8193) as fs:
        assert fs.read_text("/f") == "backup\n"


# ------------------------------------------------------------ loops and bombs (hostile structures)
def _hostile_image(tmp: Path, populate: Any, *args: str) -> Path:
    src = tmp / "hsrc"
    src.mkdir()
    populate(src)
    image = tmp / "hostile.img"
    mke2fs(image, "-t", "ext4", "-b", "1024", "-O", "^metadata_csum", *args, size="16M", root=str(src))
    return image


def _write_at(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _inode_offset(fs: Filesystem, ino: int) -> int:
    group, index = divmod(ino - 1, fs.geo.inodes_per_group)
    return fs.group_desc(group).inode_table * fs.block_size + index * fs.geo.inode_size


def _ext_node(depth: int, children: list[tuple[int, int]], eh_max: int) -> bytes:
    """An extent index node: header + (logical, child block) entries."""
    out = struct.pack("<HHHHI", 0xF30A, len(children), eh_max, depth, 0)
    for logical, block in children:
        out += struct.pack("<IIHH", logical, block & 0xFFFFFFFF, block >> 32, 0)
    return out


def _fragmented(src: Path) -> None:
    with open(src / "frag", "wb") as f:
        for i in range(20):
            f.seek(i * 2048)
            f.write(b"%d" % i * 100)
    (src / "plain").write_text("plain\n")


def _free_block(fs: Filesystem) -> int:
    """A block no file uses (near the end of the filesystem)."""
    return fs.geo.blocks_count - 10


@pytest.mark.parametrize("shape", ["self", "parent", "twice"])
def test_extent_tree_loops_end(shape: str, tmp_path: Path) -> None:
    from pyext4 import LoopError

    image = _hostile_image(tmp_path, _fragmented)
    with Filesystem.open(image) as fs:
        ino = fs.resolve("/frag")
        inode = fs.inode(ino)
        leaf = struct.unpack_from("<I", inode.block, 16)[0]  # the root's only index entry -> leaf
        spare = _free_block(fs)
        bs = fs.block_size
        at = _inode_offset(fs, ino) + 40  # i_block
        cap = (bs - 12) // 12
    if shape == "self":  # the leaf becomes an index pointing at itself
        _write_at(image, leaf * bs, _ext_node(0 + 1, [(0, leaf)], cap).ljust(bs, b"\0"))
        _write_at(image, at, _ext_node(2, [(0, leaf)], 4))
    elif shape == "parent":  # root -> spare (depth 2) -> leaf (depth 1) -> spare
        _write_at(image, at, _ext_node(3, [(0, spare)], 4))
        _write_at(image, spare * bs, _ext_node(2, [(0, leaf)], cap).ljust(bs, b"\0"))
        _write_at(image, leaf * bs, _ext_node(1, [(0, spare)], cap).ljust(bs, b"\0"))
    else:  # two index entries share one leaf
        _write_at(image, at, _ext_node(1, [(0, leaf), (1000, leaf)], 4))
    with Filesystem.open(image) as fs:
        started = time.monotonic()
        with pytest.raises((LoopError, Exception)) as info:
            fs.read_bytes("/frag")
        assert isinstance(info.value, Ext4Error), info.value
        assert time.monotonic() - started < 1
        assert fs.read_text("/plain") == "plain\n"
        st = fs.stat("/frag")  # stat does not need the mapping
        assert st.st_size > 0


def test_extents_out_of_range_or_overlapping(tmp_path: Path) -> None:
    from pyext4 import CorruptError

    def populate(src: Path) -> None:
        (src / "small").write_bytes(b"x" * 3000)

    image = _hostile_image(tmp_path, populate)
    with Filesystem.open(image) as fs:
        ino = fs.resolve("/small")
        at = _inode_offset(fs, ino) + 40
        count = fs.geo.blocks_count
        phys = fs.extents_of(ino)[0].physical
    for extents in ([(0, 3, count - 1)], [(0, 3, phys), (2, 3, phys + 10)], [(0, 0, phys)],
                    [(0, 3, 0)], [(0xFFFFFFF0, 100, phys)]):
        node = struct.pack("<HHHHI", 0xF30A, len(extents), 4, 0, 0)
        for logical, length, block in extents:
            node += struct.pack("<IHHI", logical, length, block >> 32, block & 0xFFFFFFFF)
        _write_at(image, at, node.ljust(60, b"\0"))
        with Filesystem.open(image) as fs, pytest.raises(CorruptError):
            fs.read_bytes("/small")


def test_truncated_image_is_an_error_not_short_data(tmp_path: Path) -> None:
    """A file whose one extent lies past the end of a truncated image: TruncatedError (the
    single-extent pread fast path must not hand back short data), for read_bytes and for open()."""
    from pyext4.errors import TruncatedError

    def populate(src: Path) -> None:
        (src / "tail").write_bytes(os.urandom(5000))

    image = _hostile_image(tmp_path, populate)
    with Filesystem.open(image) as fs:
        ino = fs.resolve("/tail")
        (ext,) = fs.extents_of(ino)
        cut = ext.physical * fs.block_size + 2048  # inside the file's data
    os.truncate(image, cut)
    with Filesystem.open(image) as fs:
        with pytest.raises(TruncatedError):
            fs.read_bytes("/tail")
        with fs.open_file("/tail") as f, pytest.raises(TruncatedError):
            f.read()


def test_absurd_sizes_do_not_allocate(tmp_path: Path) -> None:
    """An i_size of 2^60 (or 2^64-1) is refused before anything is allocated; stat still works."""
    from pyext4 import CorruptError
    from pyext4.reader import FileTooLarge

    def populate(src: Path) -> None:
        (src / "f").write_bytes(b"data")
        with open(src / "sparse", "wb") as f:
            f.truncate(3 << 30)

    image = _hostile_image(tmp_path, populate)
    with Filesystem.open(image) as fs:
        at = _inode_offset(fs, fs.resolve("/f"))
    for size in (1 << 60, (1 << 64) - 1):
        _write_at(image, at + 4, struct.pack("<I", size & 0xFFFFFFFF))
        _write_at(image, at + 108, struct.pack("<I", size >> 32))
        with Filesystem.open(image) as fs:
            assert fs.stat("/f").st_size == size
            for call in (lambda: fs.read_bytes("/f"), lambda: fs.open("/f"), lambda: list(fs.data_segments(fs.resolve("/f")))):
                with pytest.raises(CorruptError, match="larger than any file"):
                    call()
    with Filesystem.open(image) as fs:
        with pytest.raises(FileTooLarge):
            fs.read_bytes("/sparse", max_size=1 << 30)
        with fs.open("/sparse") as f:
            f.seek((3 << 30) - 5)
            assert f.read() == bytes(5)


def test_huge_directory_extent_is_read_in_pieces(tmp_path: Path) -> None:
    """64 KiB blocks: one extent of 32,768 blocks makes a 2 GiB root directory; reading it must not
    allocate by that number (the first bad block ends it)."""
    import tracemalloc

    from pyext4 import CorruptError

    image = tmp_path / "b64.img"
    mke2fs(image, "-t", "ext4", "-b", "65536", "-O", "^metadata_csum,^has_journal", size="3G")
    with Filesystem.open(image) as fs:
        at = _inode_offset(fs, 2)
        root = fs.inode(2)
        assert root.has_extents()
        first = fs.extents_of(2)[0].physical
    _write_at(image, at + 4, struct.pack("<I", 1 << 31))  # i_size 2 GiB
    # The root's extent tree: one leaf entry, 32,768 blocks from its first block (all inside the image).
    _write_at(image, at + 40, struct.pack("<HHHHI", 0xF30A, 1, 4, 0, 0) + struct.pack("<IHHI", 0, 32768, 0, first))
    tracemalloc.start()
    try:
        with Filesystem.open(image) as fs:
            with pytest.raises(CorruptError):
                fs.listdir("/")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


def test_directory_bombs(tmp_path: Path) -> None:
    """Zero rec_len, a rec_len past the block, a name longer than its record: errors, never a hang."""
    from pyext4 import CorruptError

    def populate(src: Path) -> None:
        (src / "d").mkdir()
        for i in range(5):
            (src / "d" / f"file{i}").write_text(str(i))

    for patch in ("zero", "past", "name"):
        (tmp_path / patch).mkdir()
        image = _hostile_image(tmp_path / patch, populate)
        with Filesystem.open(image) as fs:
            d = fs.resolve("/d")
            block = fs.extents_of(d)[0].physical
            bs = fs.block_size
        raw = bytearray(Path(image).read_bytes()[block * bs : (block + 1) * bs])
        third = 24  # '.' (12) and '..' (12) come first
        if patch == "zero":
            struct.pack_into("<H", raw, third + 4, 0)
        elif patch == "past":
            struct.pack_into("<H", raw, third + 4, 0xFFFC)
        else:
            raw[third + 6] = 250
        _write_at(image, block * bs, bytes(raw))
        with Filesystem.open(image) as fs:
            started = time.monotonic()
            with pytest.raises(CorruptError):
                fs.listdir("/d")
            with pytest.raises(CorruptError):
                fs.resolve("/d/file3")
            assert time.monotonic() - started < 1


def test_htree_loop_ends(tmp_path: Path) -> None:
    """An htree whose interior node points at itself: lookups fail with LoopError, listing still works."""
    from pyext4 import LoopError

    def populate(src: Path) -> None:
        (src / "h").mkdir()
        for i in range(200):
            (src / "h" / f"name-{i:04d}-{'y' * 40}").write_text("")

    image = _hostile_image(tmp_path, populate)
    proc = run(tool("e2fsck"), "-fyD", image, check=False)  # index /h
    assert proc.returncode in (0, 1), proc.stdout
    with Filesystem.open(image) as fs:
        h = fs.resolve("/h")
        inode = fs.inode(h)
        assert inode.flags & 0x1000, "expected an indexed directory"
        bs = fs.block_size
        exts = fs.extents_of(h, inode)
        phys = {ext.logical + k: ext.physical + k for ext in exts for k in range(ext.length)}
        root = bytearray(fs.read_block(phys[0]))
        names = fs.listdir("/h")
    victim_logical = 1
    node = bytearray(bs)
    struct.pack_into("<IHBB", node, 0, 0, bs if bs < 65536 else 0, 0, 0)  # fake empty entry spanning the block
    limit = (bs - 8) // 8
    struct.pack_into("<HHI", node, 8, limit, 1, victim_logical)  # count 1, block -> itself
    _write_at(image, phys[victim_logical] * bs, bytes(node))
    root[0x1E] = 1  # indirect_levels 1: the root's entries now lead to interior nodes
    _write_at(image, phys[0] * bs, bytes(root))
    with Filesystem.open(image) as fs:
        started = time.monotonic()
        with pytest.raises((LoopError, Exception)) as info:
            for n in names[:50]:
                fs.resolve("/h/" + n)
        assert isinstance(info.value, Ext4Error)
        assert time.monotonic() - started < 2
    with Filesystem.open(image, verify="warn") as fs:
        listed = fs.listdir("/h")  # the linear listing does not follow the index
        assert set(listed) <= set(names)


def test_xattr_bombs(tmp_path: Path) -> None:
    """A 2^32-1 value size or an offset past the block: CorruptError, not a huge allocation."""
    from pyext4 import CorruptError

    def populate(src: Path) -> None:
        (src / "x").write_text("x")
        os.setxattr(src / "x", "user.big", b"v" * 400)

    image = _hostile_image(tmp_path, populate)
    with Filesystem.open(image) as fs:
        block = fs.inode(fs.resolve("/x")).file_acl
        bs = fs.block_size
    assert block
    raw = bytearray(Path(image).read_bytes()[block * bs : (block + 1) * bs])
    entry = 32  # the first entry follows the 32-byte header
    for field_offset, value in ((8, 0xFFFFFFFF), (2, 0xFFFF)):
        patched = bytearray(raw)
        if field_offset == 8:
            struct.pack_into("<I", patched, entry + 8, value)  # e_value_size
        else:
            struct.pack_into("<H", patched, entry + 2, value)  # e_value_offs
        _write_at(image, block * bs, bytes(patched))
        with Filesystem.open(image) as fs, pytest.raises(CorruptError):
            fs.xattrs("/x")
