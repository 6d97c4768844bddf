"""populate() against its oracles: the kernel's view of the result (loop mount), e2fsck, our own reader.

Sources: a host directory, tar archives (GNU and PAX; plain, gzip, bzip2, xz),
ext4 images (made by mke2fs -d, so the source side is independent of pyext4).
The helpers at the top (a tree with every kind of entry, a snapshot of a tree
as the kernel shows it, tar writers) are shared with test_cli_populate.py.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat as statmod
import tarfile
from pathlib import Path
from typing import Any

import pytest

import pyext4
from pyext4 import InvalidOptions, NoSpace, mkfs
from pyext4 import constants as K
from pyext4.populate import estimate, parse_rules, scan_directory, source_needs
from pyext4.reader import Filesystem
from tests.conftest import HASH_SEED, NOW, UUID, assert_fsck_clean, debugfs, loop_mounted, mke2fs, run

NS = 1_000_000_000
IS_ROOT = os.geteuid() == 0
populate = pyext4.populate


# ====================================================================== trees
def _write(path: Path, data: bytes, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        os.chmod(path, mode)


def _pattern(n: int, seed: int) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def _acl_access(user_id: int) -> bytes:
    """A POSIX ACL in the Linux xattr format: u::rw- u:ID:r-- g::r-- m::r-- o::r--."""
    import struct

    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, user_id), (0x04, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
               (0x20, 4, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


LONG_NAME = "n" * 200 + "-long-" + "x" * 49  # 255 bytes
TIMES = [
    1_600_000_000 * NS + 123_456_789,
    1_234_567_890 * NS + 1,
    (1 << 32) * NS + 5 * NS + 999_999_999,  # after 2106 (the extra epoch bits)
    -86_400 * NS + 500,  # before 1970
]


def make_tree(root: Path, *, specials: bool = IS_ROOT, owners: bool = IS_ROOT, xattrs: bool = True,
              big_xattr: bool = True) -> None:
    """A tree with every kind of entry pyext4 must carry over (devices, owners and trusted xattrs as root)."""
    root.mkdir(parents=True)
    _write(root / "empty", b"")
    _write(root / "one", b"x")
    _write(root / "block-4095", _pattern(4095, 1))
    _write(root / "block-4096", _pattern(4096, 2))
    _write(root / "block-4097", _pattern(4097, 3))
    _write(root / "medium.bin", _pattern(300_000, 4))
    _write(root / "large.bin", _pattern(3 * 1024 * 1024 + 17, 5))  # > 1 MiB: the range-copy path
    _write(root / "setuid", b"#!/bin/sh\n", 0o4755)
    _write(root / "setgid", b"#!/bin/sh\n", 0o2751)
    _write(root / "no-perms", b"secret", 0o000)
    _write(root / "dir with space" / "ünïcödé name.txt", "ünïcödé\n".encode())
    _write(root / "deep" / "a" / "b" / "c" / "d" / "leaf", b"leaf\n")
    (root / "empty-dir").mkdir()
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "setgid-dir").mkdir()
    os.chmod(root / "setgid-dir", 0o2775)
    _write(root / "long" / LONG_NAME, b"long name\n")
    _write(root / "long" / ("d" * 120) / ("e" * 120) / "file", b"long path\n")
    for i in range(300):  # more than one block of entries: an htree
        _write(root / "many" / f"entry-{i:04d}-{'z' * (i % 40)}", _pattern(i % 50, 100 + i))
    # Sparse: a hole at the start, data in the middle, a hole at the end; and a small sparse file.
    with open(root / "sparse.img", "wb") as f:
        f.truncate(16 * 1024 * 1024)
        f.seek(4 * 1024 * 1024)
        f.write(_pattern(1024 * 1024, 6))
        f.seek(9 * 1024 * 1024 + 100)
        f.write(b"island")
    with open(root / "small-sparse", "wb") as f:
        f.truncate(512 * 1024)
        f.seek(200 * 1024)
        f.write(b"data in a small sparse file")
    # Symlinks: fast (< 60 bytes) and slow, dangling, to a directory, 59/60/61 bytes.
    os.symlink("one", root / "link-short")
    os.symlink("deep/a/b", root / "link-dir")
    os.symlink("does/not/exist", root / "link-dangling")
    for n in (59, 60, 61, 200):
        os.symlink("t" * n, root / f"link-{n}")
    # Hard links across directories (three names), and a pair in one directory.
    _write(root / "hl" / "a" / "first", _pattern(5000, 7))
    (root / "hl" / "b").mkdir()
    os.link(root / "hl" / "a" / "first", root / "hl" / "b" / "second")
    os.link(root / "hl" / "a" / "first", root / "hl" / "third")
    _write(root / "hl" / "pair-1", b"pair")
    os.link(root / "hl" / "pair-1", root / "hl" / "pair-2")
    if xattrs:
        os.setxattr(root / "one", "user.comment", b"hello")
        os.setxattr(root / "one", "user.binary", bytes(range(1, 256)))
        if big_xattr:
            os.setxattr(root / "medium.bin", "user.big", _pattern(3000, 8))  # an xattr block
        os.setxattr(root / "deep", "user.on-dir", b"dir value")
        os.setxattr(root, "user.on-root", b"root value")
        os.setxattr(root / "hl" / "a" / "first", "user.shared", b"one inode")
        os.setxattr(root / "block-4096", "system.posix_acl_access", _acl_access(1234))
        (root / "acl-dir").mkdir()
        os.setxattr(root / "acl-dir", "system.posix_acl_default", _acl_access(4321))
        if IS_ROOT:
            os.setxattr(root / "empty", "trusted.overlay.opaque", b"y")
            os.setxattr(root / "one", "security.test", b"label")
    if specials:
        (root / "dev").mkdir()
        os.mknod(root / "dev" / "null", 0o666 | statmod.S_IFCHR, os.makedev(1, 3))
        os.mknod(root / "dev" / "sda", 0o660 | statmod.S_IFBLK, os.makedev(8, 0))
        os.mknod(root / "dev" / "big-numbers", 0o600 | statmod.S_IFCHR, os.makedev(300, 70_000))
        os.mkfifo(root / "dev" / "fifo", 0o640)
        os.link(root / "dev" / "fifo", root / "dev" / "fifo-link")
        os.link(root / "dev" / "null", root / "hl" / "null-link")
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(root / "dev" / "socket"))
    if owners:
        os.chown(root / "one", 1000, 1000)
        os.chown(root / "medium.bin", 70_000, 80_000)  # > 65535: the high halves
        os.chown(root / "deep" / "a", 4_000_000_000, 123)
        os.chown(root / "link-short", 1001, 1002, follow_symlinks=False)
        os.chown(root / "setuid", 0, 50)
        os.chmod(root / "setuid", 0o4755)  # chown cleared the bit
        if specials:
            os.chown(root / "dev" / "sda", 0, 6)
    # Times last (deepest first, so directories keep theirs).
    paths = sorted((p for p in root.rglob("*")), key=lambda p: -len(p.parts))
    for i, p in enumerate(paths + [root]):
        mtime = TIMES[i % len(TIMES)] + i
        os.utime(p, ns=(mtime + 7, mtime), follow_symlinks=False)


# ================================================================= snapshots
def _xattrs(path: bytes) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def _sha(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path | str, *, skip_lost_found: bool = True, blocks: bool = False) -> dict[bytes, dict[str, Any]]:
    """Every entry under ``root`` as the kernel shows it (paths relative, b"/" for the root).

    Hard links show as ``link``: the first path (bytewise order) of the same inode.
    """
    base = os.fsencode(str(root))
    out: dict[bytes, dict[str, Any]] = {}
    first_path: dict[tuple[int, int], bytes] = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = base + rel if rel else base
        st = os.lstat(full)
        fmt = statmod.S_IFMT(st.st_mode)
        rec: dict[str, Any] = {
            "type": fmt, "mode": statmod.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns, "xattrs": _xattrs(full),
        }
        if fmt == statmod.S_IFREG:
            rec["size"] = st.st_size
            rec["sha256"] = _sha(full)
            if blocks:
                rec["blocks"] = st.st_blocks
        elif fmt == statmod.S_IFLNK:
            rec["target"] = os.readlink(full)
        elif fmt in (statmod.S_IFCHR, statmod.S_IFBLK):
            rec["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if fmt != statmod.S_IFDIR:
            rec["nlink"] = st.st_nlink
            key = (st.st_dev, st.st_ino)
            path_key = rel or b"/"
            if key in first_path:
                rec["link"] = first_path[key]
            else:
                first_path[key] = path_key
        elif rel:
            rec["nlink"] = st.st_nlink
        out[rel or b"/"] = rec
        if fmt == statmod.S_IFDIR:
            names = sorted(os.listdir(full))
            for name in reversed(names):
                if skip_lost_found and not rel and name == b"lost+found":
                    continue
                stack.append(rel + b"/" + name)
    # ``link`` must name the bytewise-first path whatever the walk order was.
    groups: dict[bytes, list[bytes]] = {}
    for path, rec in out.items():
        if "link" in rec:
            groups.setdefault(rec["link"], [rec["link"]]).append(path)
    for members in groups.values():
        first = min(members)
        for path in members:
            if path == first:
                out[path].pop("link", None)
            else:
                out[path]["link"] = first
    return out


def assert_same_tree(actual: dict[bytes, dict[str, Any]], expected: dict[bytes, dict[str, Any]]) -> None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing and not extra, f"missing {missing[:10]}, unexpected {extra[:10]}"
    diffs = []
    for path in sorted(expected):
        exp, act = expected[path], actual[path]
        for key in sorted(set(exp) | set(act)):
            if exp.get(key) != act.get(key):
                diffs.append(f"{path!r} {key}: expected {exp.get(key)!r}, got {act.get(key)!r}")
    assert not diffs, f"{len(diffs)} differences:\n" + "\n".join(diffs[:40])


def kernel_view(image: Path, **kwargs: Any) -> dict[bytes, dict[str, Any]]:
    with loop_mounted(image, readonly=True) as mnt:
        return snapshot(mnt, **kwargs)


def fresh_image(path: Path, size: str = "256M", **kwargs: Any) -> Path:
    mkfs(path, size, uuid=UUID, hash_seed=HASH_SEED, now=NOW, **kwargs)
    return path


def build(image: Path, source: Any, size: str = "256M", mkfs_args: dict[str, Any] | None = None,
          **kwargs: Any) -> pyext4.populate.__class__:
    fresh_image(image, size, **(mkfs_args or {}))
    with Filesystem.open(image, writable=True, now=NOW) as fs:
        report = populate(fs, source, **kwargs)
    return report


# ====================================================================== tars
def _tar_value(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def make_tar(src: Path, dest: Path | None, *, fmt: int = tarfile.PAX_FORMAT, mode: str = "w",
             xattrs: bool = True, fileobj: Any = None) -> None:
    """A tar of ``src`` written by Python's tarfile: names sorted, hard links for every file type,
    exact ns mtimes and SCHILY.xattr.* in PAX; sockets are left out (tar cannot hold them)."""
    seen: dict[tuple[int, int], str] = {}
    kwargs: dict[str, Any] = {"format": fmt}
    if "|" in mode:
        pass  # stream modes take no level
    elif mode.endswith("xz"):
        kwargs["preset"] = 0
    elif mode.endswith(("gz", "bz2")):
        kwargs["compresslevel"] = 1
    tf = tarfile.open(dest, mode, fileobj=fileobj, **kwargs) if fileobj is None else tarfile.open(
        fileobj=fileobj, mode=mode, **kwargs)
    with tf:
        stack = [(src, ".")]
        while stack:
            host, arc = stack.pop()
            st = os.lstat(host)
            if statmod.S_ISSOCK(st.st_mode):
                continue
            key = (st.st_dev, st.st_ino)
            if not statmod.S_ISDIR(st.st_mode) and st.st_nlink > 1 and key in seen:
                info = tarfile.TarInfo(arc)
                info.type = tarfile.LNKTYPE
                info.linkname = seen[key]
                info.mode = statmod.S_IMODE(st.st_mode)
                info.uid, info.gid = st.st_uid, st.st_gid
                info.mtime = st.st_mtime_ns // NS
                tf.addfile(info)
                continue
            seen[key] = arc
            info = tf.gettarinfo(str(host), arcname=arc)
            info.uname = info.gname = ""
            info.mtime = st.st_mtime_ns // NS
            if fmt == tarfile.PAX_FORMAT:
                sign = "-" if st.st_mtime_ns < 0 else ""
                sec, frac = divmod(abs(st.st_mtime_ns), NS)
                info.pax_headers["mtime"] = f"{sign}{sec}.{frac:09d}"
                if xattrs:
                    for name, value in _xattrs(os.fsencode(str(host))).items():
                        info.pax_headers["SCHILY.xattr." + name] = _tar_value(value)
            if info.isreg():
                with open(host, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)
            if statmod.S_ISDIR(st.st_mode):
                for name in sorted(os.listdir(host), reverse=True):
                    stack.append((host / name, f"{arc}/{name}"))


def tar_view(host: dict[bytes, dict[str, Any]], *, fmt: int, xattrs: bool = True) -> dict[bytes, dict[str, Any]]:
    """What a tar made by make_tar from a tree with snapshot ``host`` carries."""
    out = {}
    for path, rec in host.items():
        if rec["type"] == statmod.S_IFSOCK:
            continue
        rec = dict(rec)
        if fmt == tarfile.GNU_FORMAT:
            rec["mtime_ns"] = rec["mtime_ns"] // NS * NS
        if fmt != tarfile.PAX_FORMAT or not xattrs:
            rec["xattrs"] = {}
        if "blocks" in rec:
            del rec["blocks"]
        out[path] = rec
    # A socket in a hard-link group would change nlink; the tree has none.
    return out


# ================================================================== fixtures
@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src") / "tree"
    make_tree(root)
    return root


@pytest.fixture(scope="module")
def tree_view(tree: Path) -> dict[bytes, dict[str, Any]]:
    return snapshot(tree, skip_lost_found=False)


# ====================================================================== tests

def _sparse_blocks(view: dict[bytes, dict[str, Any]]) -> dict[bytes, int]:
    return {p: r["blocks"] for p, r in view.items() if p in (b"/sparse.img", b"/small-sparse")}


def test_directory_source_matches_kernel_view(tree: Path, tmp: Path) -> None:
    expected = snapshot(tree, skip_lost_found=False, blocks=True)
    img = tmp / "dir.img"
    report = build(img, tree)
    assert report.entries == len(expected)
    assert report.warnings == []
    assert_fsck_clean(img)
    actual = kernel_view(img, blocks=True)
    # Sparse files stay sparse (and every other file takes exactly its data's blocks, as on the host).
    assert _sparse_blocks(actual) == _sparse_blocks(expected)
    assert _sparse_blocks(actual)[b"/sparse.img"] < 3 * 1024 * 1024 // 512
    assert_same_tree(actual, expected)


def test_directory_source_through_our_reader(tree: Path, tmp: Path) -> None:
    """The same image read back by pyext4: big directories are htrees, holes stay holes."""
    img = tmp / "dir.img"
    build(img, tree)
    with Filesystem.open(img) as fs:
        many = fs.inode(fs.resolve("/many"))
        assert many.flags & K.INDEX_FL
        assert many.size > 4096
        ino = fs.resolve("/sparse.img")
        segments = [(o, n) for o, n, _ in fs.data_segments(ino)]
        assert segments == [(4 * 1024 * 1024, 1024 * 1024), (9 * 1024 * 1024, 4096)]
        assert fs.read_bytes("/large.bin") == (tree / "large.bin").read_bytes()
        # Each file's data in one extent.
        for name in ("large.bin", "medium.bin", "block-4097"):
            assert len(fs.extents_of(fs.resolve("/" + name))) == 1


@pytest.mark.parametrize(("fmt", "mode"), [
    (tarfile.GNU_FORMAT, "w"),
    (tarfile.PAX_FORMAT, "w"),
    (tarfile.PAX_FORMAT, "w:gz"),
    (tarfile.PAX_FORMAT, "w:bz2"),
    (tarfile.PAX_FORMAT, "w:xz"),
    (tarfile.GNU_FORMAT, "w:gz"),
], ids=["gnu", "pax", "pax-gz", "pax-bz2", "pax-xz", "gnu-gz"])
def test_tar_source_matches_kernel_view(tree: Path, tree_view: dict[bytes, dict[str, Any]], tmp: Path,
                                        fmt: int, mode: str) -> None:
    archive = tmp / "src.tar"
    make_tar(tree, archive, fmt=fmt, mode=mode)
    img = tmp / "tar.img"
    report = build(img, archive)
    assert report.warnings == []
    assert_fsck_clean(img)
    assert_same_tree(kernel_view(img), tar_view(tree_view, fmt=fmt))


def test_tar_stream_source(tree: Path, tree_view: dict[bytes, dict[str, Any]], tmp: Path) -> None:
    """A binary stream (one pass, nothing scanned first) gives the same tree."""
    archive = tmp / "src.tar.gz"
    make_tar(tree, archive, mode="w:gz")
    img = tmp / "stream.img"
    with open(archive, "rb") as f:
        build(img, f)
    assert_fsck_clean(img)
    assert_same_tree(kernel_view(img), tar_view(tree_view, fmt=tarfile.PAX_FORMAT))


def test_gnu_tar_binary_sparse_and_xattrs(tree: Path, tree_view: dict[bytes, dict[str, Any]], tmp: Path) -> None:
    """An archive written by GNU tar itself (posix format, --sparse, --xattrs): holes and xattrs survive."""
    gnutar = __import__("shutil").which("tar")
    if gnutar is None:
        pytest.skip("GNU tar is not installed")
    archive = tmp / "gnu.tar"
    run(gnutar, "--format=posix", "--sparse", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
        "--sort=name", "-C", tree, "-cf", archive, ".")
    img = tmp / "gnutar.img"
    build(img, archive)
    assert_fsck_clean(img)
    actual = kernel_view(img, blocks=True)
    expected = {p: dict(r) for p, r in snapshot(tree, skip_lost_found=False, blocks=True).items()
                if r["type"] != statmod.S_IFSOCK}
    # GNU tar (1.34) stores hard-linked devices and fifos as separate entries; POSIX ACLs go as
    # SCHILY.acl.* text, which populate turns back into the xattrs.
    for rec in expected.values():
        if rec["type"] in (statmod.S_IFCHR, statmod.S_IFBLK, statmod.S_IFIFO):
            rec["nlink"] = 1
            rec.pop("link", None)
    assert "system.posix_acl_default" in actual[b"/acl-dir"]["xattrs"]
    assert _sparse_blocks(actual) == _sparse_blocks(expected)
    for rec in list(actual.values()) + list(expected.values()):
        rec.pop("blocks", None)
    assert_same_tree(actual, expected)


# ================================================================ ext4 sources
SOURCE_FLAVOURS = {
    "ext4": ("-t", "ext4", "-b", "4096"),
    "inline": ("-t", "ext4", "-b", "4096", "-O", "inline_data"),
    "1k": ("-t", "ext4", "-b", "1024"),
    "ext3": ("-t", "ext3", "-b", "1024"),
}


@pytest.fixture(scope="module")
def tree_1k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tree without the 3000-byte xattr (it fits no 1 KiB xattr block)."""
    root = tmp_path_factory.mktemp("src1k") / "tree"
    make_tree(root, big_xattr=False)
    return root


@pytest.mark.parametrize("flavour", sorted(SOURCE_FLAVOURS))
def test_ext4_image_source(tree: Path, tree_1k: Path, tmp: Path, flavour: str) -> None:
    """A source image made by mke2fs -d: the new image's kernel view equals the source image's."""
    src = tmp / "src.img"
    mke2fs(src, *SOURCE_FLAVOURS[flavour], size="256M", root=str(tree_1k if flavour in ("1k", "ext3") else tree))
    expected = kernel_view(src, blocks=True)
    img = tmp / "copy.img"
    report = build(img, src)
    assert report.warnings == []
    assert_fsck_clean(img)
    actual = kernel_view(img, blocks=True)
    if flavour in ("ext4", "inline"):  # same block size: holes (and every file's allocation) stay as they were
        assert _sparse_blocks(actual) == _sparse_blocks(expected)
    assert _sparse_blocks(actual)[b"/sparse.img"] < 3 * 1024 * 1024 // 512
    for rec in list(actual.values()) + list(expected.values()):
        rec.pop("blocks", None)
    assert_same_tree(actual, expected)


def test_ext4_source_as_open_filesystem(tree: Path, tmp: Path) -> None:
    src = tmp / "src.img"
    build(src, tree)
    img = tmp / "copy.img"
    with Filesystem.open(src) as source_fs:
        build(img, source_fs)
        assert not source_fs._closed  # the caller's filesystem stays open
    assert_fsck_clean(img)
    assert_same_tree(kernel_view(img), kernel_view(src))


def test_populate_from_itself_is_refused(tmp: Path) -> None:
    img = fresh_image(tmp / "self.img", "32M")
    with Filesystem.open(img, writable=True, now=NOW) as fs:
        with pytest.raises(InvalidOptions, match="itself"):
            populate(fs, fs)
    assert_fsck_clean(img)


# ================================================================ hard links
def _tar_with(members: list[tuple[str, str, bytes | str]], path: Path) -> Path:
    """(kind, name, data or link target) members, in order: kind is file, link, dir, fifo, chr."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            info.mtime = NOW
            info.mode = 0o644
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tf.addfile(info, __import__("io").BytesIO(payload))
                continue
            if kind == "link":
                info.type = tarfile.LNKTYPE
                info.linkname = str(payload)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = 1, 3
            elif kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = str(payload)
            tf.addfile(info)
    return path


def test_tar_hard_links_in_any_order(tmp: Path) -> None:
    archive = _tar_with([
        ("link", "a/before-target", "z/target"),  # names a member that comes later
        ("dir", "z", b""),
        ("file", "z/target", b"shared data"),
        ("link", "b/after-target", "z/target"),  # across directories (b is implied)
        ("link", "z/second", "a/before-target"),  # a link to a link name
        ("fifo", "dev/fifo", b""),
        ("link", "dev/fifo-2", "dev/fifo"),
        ("chr", "dev/null", b""),
        ("link", "other/null", "dev/null"),
        ("sym", "sym", "z/target"),
        ("link", "sym-2", "sym"),
    ], tmp / "links.tar")
    img = tmp / "links.img"
    report = build(img, archive)
    assert report.hardlinks == 6
    assert_fsck_clean(img)
    view = kernel_view(img)
    assert view[b"/z/target"]["nlink"] == 4
    for p in (b"/a/before-target", b"/b/after-target", b"/z/second"):
        assert p == b"/a/before-target" or view[p]["link"] == b"/a/before-target"
        assert view[p]["sha256"] == hashlib.sha256(b"shared data").hexdigest()
    assert view[b"/dev/fifo-2"]["link"] == b"/dev/fifo" and view[b"/dev/fifo"]["nlink"] == 2
    assert view[b"/other/null"]["link"] == b"/dev/null" and view[b"/other/null"]["rdev"] == (1, 3)
    assert view[b"/sym-2"]["link"] == b"/sym" and view[b"/sym"]["target"] == b"z/target"


def test_tar_hard_link_to_nothing_is_an_error(tmp: Path) -> None:
    archive = _tar_with([("file", "a", b"x"), ("link", "b", "missing")], tmp / "bad.tar")
    img = fresh_image(tmp / "bad.img", "32M")
    with Filesystem.open(img, writable=True, now=NOW) as fs:
        with pytest.raises(InvalidOptions, match="missing"):
            populate(fs, archive)
    assert_fsck_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.listdir("/") == ["lost+found"]  # rolled back


def test_tar_later_member_replaces_earlier(tmp: Path) -> None:
    """tar semantics: a later member of the same name wins; an earlier hard link keeps the old data."""
    archive = _tar_with([
        ("file", "f", b"first version"),
        ("link", "keep", "f"),
        ("file", "f", b"second"),
        ("file", "g", b"g1" * 5000),
        ("file", "g", b"g2"),
        ("dir", "d", b""),
        ("file", "d/x", b"x"),
        ("dir", "d", b""),  # listed again: its metadata again, contents stay
    ], tmp / "dup.tar")
    img = tmp / "dup.img"
    build(img, archive)
    assert_fsck_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.read_bytes("/f") == b"second"
        assert fs.read_bytes("/keep") == b"first version"
        assert fs.read_bytes("/g") == b"g2"
        assert fs.listdir("/d") == ["x"]
        assert fs.stat("/keep").st_nlink == 1


def test_tar_unsafe_and_damaged_archives(tmp: Path) -> None:
    evil = _tar_with([("file", "../escape", b"x")], tmp / "evil.tar")
    good = _tar_with([("file", "a", b"x" * 100_000)], tmp / "good.tar")
    truncated = tmp / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[:5000])
    garbage = tmp / "garbage.tar"
    garbage.write_bytes(b"not a tar archive at all" * 100)
    img = fresh_image(tmp / "t.img", "32M")
    for archive, pattern in ((evil, r"\.\."), (truncated, "damaged|truncated|readable"),
                             (garbage, "tar")):
        with Filesystem.open(img, writable=True, now=NOW) as fs:
            with pytest.raises(InvalidOptions, match=pattern):
                populate(fs, archive)
    assert_fsck_clean(img)


# ================================================================ existing images
def test_populate_into_non_empty_filesystem(tmp: Path) -> None:
    img = fresh_image(tmp / "existing.img", "64M")
    with Filesystem.open(img, writable=True, now=NOW) as fs:
        fs.mkdir("/etc", 0o755)
        fs.write_file("/etc/passwd", b"old passwd\n")
        fs.write_file("/etc/keep", b"stays\n")
        fs.link("/etc/passwd", "/etc/passwd-hardlink")
        fs.mkdir("/bin", 0o755)
        fs.write_file("/was-a-file", b"becomes a directory")
        fs.mkdir("/big", 0o755)
        for i in range(200):
            fs.write_file(f"/big/old-{i:03d}", b"o")
    src = tmp / "src"
    _write(src / "etc" / "passwd", b"new passwd\n", 0o600)
    _write(src / "etc" / "new", b"added\n")
    _write(src / "bin" / "tool", b"#!\n", 0o755)
    _write(src / "was-a-file" / "inside", b"now a dir\n")
    _write(src / "fresh" / "dir" / "file", b"fresh\n")
    for i in range(300):
        _write(src / "big" / f"new-{i:03d}-{'q' * 30}", b"n")
    os.chmod(src / "etc", 0o750)
    with Filesystem.open(img, writable=True, now=NOW) as fs:
        populate(fs, src)
    assert_fsck_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.read_bytes("/etc/passwd") == b"new passwd\n"
        assert fs.stat("/etc/passwd").st_mode & 0o7777 == 0o600
        assert fs.read_bytes("/etc/passwd-hardlink") == b"old passwd\n"  # the old inode lives on
        assert fs.stat("/etc/passwd-hardlink").st_nlink == 1
        assert fs.read_bytes("/etc/keep") == b"stays\n"
        assert fs.stat("/etc").st_mode & 0o7777 == 0o750
        assert sorted(fs.listdir("/etc")) == ["keep", "new", "passwd", "passwd-hardlink"]
        assert fs.listdir("/bin") == ["tool"]
        assert fs.read_bytes("/was-a-file/inside") == b"now a dir\n"
        assert len(fs.listdir("/big")) == 500
        assert fs.inode(fs.resolve("/big")).flags & K.INDEX_FL
    view = kernel_view(img)
    assert len([p for p in view if p.startswith(b"/big/")]) == 500
    assert view[b"/fresh/dir/file"]["sha256"] == hashlib.sha256(b"fresh\n").hexdigest()
    with loop_mounted(img, readonly=True) as mnt:
        for i in range(200):
            assert (mnt / "big" / f"old-{i:03d}").read_bytes() == b"o"
        assert os.stat(mnt / "etc").st_nlink == 2
        assert os.stat(mnt).st_nlink == len([e for e in os.scandir(mnt) if e.is_dir(follow_symlinks=False)]) + 2


def test_dest_puts_the_source_root_at_a_path(tmp: Path) -> None:
    """dest=: a directory source and a tar (hard links rebased too) under paths of the image; missing
    parents are made, root_owner applies to dest, and the rest of the image stays."""
    img = fresh_image(tmp / "dest.img", "64M")
    with Filesystem.open(img, writable=True, now=NOW) as fs:
        fs.mkdir("/srv", 0o700, 5, 6)
        fs.write_file("/srv/keep", b"kept")
    src = tmp / "src"
    _write(src / "a" / "file", b"from the directory\n", 0o640)
    archive = _tar_with([
        ("dir", "z", b""),
        ("file", "z/target", b"shared"),
        ("link", "y/link", "z/target"),
    ], tmp / "dest.tar")
    with Filesystem.open(img, writable=True, now=NOW) as fs:
        populate(fs, src, dest="/srv/./tree/", root_owner=(7, 8), root_mode=0o750)
        report = populate(fs, archive, dest="/deep/er")
        with pytest.raises(InvalidOptions, match="absolute"):
            populate(fs, src, dest="relative")
        with pytest.raises(InvalidOptions, match="'..'"):
            populate(fs, src, dest="/srv/../etc")
    assert report.hardlinks == 1
    assert_fsck_clean(img)
    view = kernel_view(img)
    assert view[b"/srv/keep"]["sha256"] == hashlib.sha256(b"kept").hexdigest()
    assert (view[b"/srv"]["mode"] & 0o7777, view[b"/srv"]["uid"]) == (0o700, 5)  # dest's parent untouched
    tree_root = view[b"/srv/tree"]
    assert (tree_root["mode"] & 0o7777, tree_root["uid"], tree_root["gid"]) == (0o750, 7, 8)
    assert view[b"/srv/tree/a/file"]["sha256"] == hashlib.sha256(b"from the directory\n").hexdigest()
    assert view[b"/srv/tree/a/file"]["mode"] & 0o7777 == 0o640
    assert view[b"/deep/er/z/target"]["link"] == b"/deep/er/y/link"  # one inode (link: the first name)
    assert view[b"/deep/er/y/link"]["nlink"] == 2
    assert view[b"/deep"]["mode"] & 0o7777 == 0o755
    assert b"/a" not in view and b"/z" not in view


def test_directory_in_the_way_is_an_error(tmp: Path) -> None:
    img = fresh_image(tmp / "existing.img", "32M")
    with Filesystem.open(img, writable=True, now=NOW) as fs:
        fs.mkdir("/thing")
        fs.write_file("/thing/inside", b"x")
    src = tmp / "src"
    _write(src / "thing", b"a file where the image has a directory")
    with Filesystem.open(img, writable=True, now=NOW) as fs:
        with pytest.raises(InvalidOptions, match="thing"):
            populate(fs, src)
    assert_fsck_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.read_bytes("/thing/inside") == b"x"


def test_no_space_rolls_back(tmp: Path) -> None:
    """NoSpace part way: the filesystem is left as it was (nothing half-made reaches the disk)."""
    img = fresh_image(tmp / "small.img", "16M")
    with Filesystem.open(img, writable=True, now=NOW) as fs:
        fs.write_file("/before", b"before")
    src = tmp / "src"
    for i in range(40):
        _write(src / f"f{i:02d}", _pattern(1024 * 1024, i))
    with Filesystem.open(img, writable=True, now=NOW) as fs:
        free = fs.sb.free_blocks_count
        with pytest.raises(NoSpace):
            populate(fs, src)
        assert fs.sb.free_blocks_count == free
    assert_fsck_clean(img)
    with Filesystem.open(img) as fs:
        assert sorted(fs.listdir("/")) == ["before", "lost+found"]


# ================================================================ big directories
def test_30000_entry_directory_is_an_htree_the_kernel_reads(tmp: Path) -> None:
    src = tmp / "src" / "huge"
    src.mkdir(parents=True)
    names = [f"file-{i:05d}-{'x' * (i % 23)}" for i in range(30_000)]
    for name in names:
        os.close(os.open(src / name, os.O_CREAT | os.O_WRONLY, 0o644))
    img = tmp / "huge.img"
    build(img, src.parent, size="160M", mkfs_args={"inodes": 40_000})
    assert_fsck_clean(img)
    out = debugfs(img, "htree /huge")
    assert "Root node dump" in out and "Number of entries" in out
    with Filesystem.open(img) as fs:
        inode = fs.inode(fs.resolve("/huge"))
        assert inode.flags & K.INDEX_FL
    with loop_mounted(img, readonly=True) as mnt:
        for name in names:  # each a lookup through the kernel's htree code
            os.stat(mnt / "huge" / name)
        assert len(os.listdir(mnt / "huge")) == 30_000


# ================================================================ rules and owners
def test_rules_owner_and_root_owner(tmp: Path) -> None:
    src = tmp / "src"
    _write(src / "root" / ".profile", b"p")
    _write(src / "root" / "sub" / "secret", b"s")
    _write(src / "usr" / "bin" / "tool", b"t", 0o755)
    _write(src / "usr" / "bin" / "deep" / "other", b"o")
    _write(src / "etc" / "shadow", b"x", 0o644)
    os.symlink("usr/bin", src / "bin")
    rules = """
    # comment
    /** 1000:1000
    /root/** 0:0 0700
    /usr/bin/* 0:0 0755
    /etc/shadow 0:42 0640
    """
    img = tmp / "rules.img"
    build(img, src, rules=rules, root_owner=(0, 0))
    assert_fsck_clean(img)
    with Filesystem.open(img) as fs:
        def own(p: str) -> tuple[int, int, int]:
            st = fs.lstat(p)
            return st.st_uid, st.st_gid, st.st_mode & 0o7777
        assert own("/") == (0, 0, 0o755)  # root_owner wins over the rules for the root
        assert own("/root") == (0, 0, 0o700)
        assert own("/root/.profile") == (0, 0, 0o700)
        assert own("/root/sub/secret") == (0, 0, 0o700)
        assert own("/usr/bin/tool") == (0, 0, 0o755)
        assert own("/usr/bin/deep")[:2] == (0, 0)  # * matches the directory itself, one level
        assert own("/usr/bin/deep/other")[:2] == (1000, 1000)
        assert own("/etc/shadow") == (0, 42, 0o640)
        assert own("/usr")[:2] == (1000, 1000)
        assert fs.lstat("/bin").st_mode & 0o170000 == statmod.S_IFLNK
        assert own("/bin")[:2] == (1000, 1000)
    img2 = tmp / "owner.img"
    build(img2, src, owner=(4242, 4343), root_owner=(1, 2))
    with Filesystem.open(img2) as fs:
        for dirpath, dirnames, filenames in fs.walk("/"):
            for name in dirnames + filenames:
                if name == "lost+found":
                    continue
                st = fs.lstat(dirpath.rstrip("/") + "/" + name)
                assert (st.st_uid, st.st_gid) == (4242, 4343)
        assert (fs.stat("/").st_uid, fs.stat("/").st_gid) == (1, 2)


@pytest.mark.parametrize(("pattern", "yes", "no"), [
    ("/root/**", ["/root", "/root/a", "/root/a/b"], ["/rootx", "/", "/x/root"]),
    ("/usr/*/lib", ["/usr/x/lib"], ["/usr/lib", "/usr/x/y/lib"]),
    ("**/*.conf", ["/a.conf", "/etc/x/y.conf"], ["/etc/conf"]),
    ("/etc/[ab]?", ["/etc/a1", "/etc/bz"], ["/etc/c1", "/etc/a", "/etc/a12"]),
    ("etc/passwd", ["/etc/passwd"], ["/etc/passwd-"]),
    ("/", ["/"], ["/a"]),
])
def test_rule_globs(pattern: str, yes: list[str], no: list[str]) -> None:
    [rule] = parse_rules(f"{pattern} 1:2 0600")
    for path in yes:
        assert rule.regex.match(path), path
    for path in no:
        assert not rule.regex.match(path), path


@pytest.mark.parametrize("line", ["/a", "/a 1", "/a x:1", "/a 1:2 999", "/a 1:2 0644 extra", "/a 1:99999999999"])
def test_bad_rules(line: str) -> None:
    with pytest.raises(InvalidOptions, match="rules:1"):
        parse_rules(line)


def test_timestamp_clamps_every_time(tree: Path, tmp: Path) -> None:
    clamp = 1_500_000_000
    img = tmp / "clamp.img"
    build(img, tree, timestamp=clamp)
    limit = clamp * NS
    with Filesystem.open(img) as fs:
        seen = 0
        for ino in range(1, fs.sb["s_inodes_count"] + 1):
            inode = fs.inode(ino)
            if not inode.mode or ino in (1, 7, 8, 11):  # reserved inodes keep mkfs's time (NOW)
                continue
            seen += 1
            for t in (inode.atime, inode.mtime, inode.ctime, inode.crtime):
                assert t <= limit, (ino, t)
            assert inode.ctime == limit and inode.crtime == limit
        assert seen > 100


# ================================================================ sizing
def _shape(kind: str, root: Path) -> None:
    root.mkdir(parents=True)
    if kind == "tiny-files":
        for i in range(3000):
            _write(root / f"d{i % 7}" / f"f{i}", b"x" * (i % 5))
    elif kind == "sparse-and-big":
        with open(root / "sparse", "wb") as f:
            for i in range(40):
                f.seek(i * 3 * 1024 * 1024 + 4096 * (i % 3))
                f.write(_pattern(5000 + i, i))
        _write(root / "big", _pattern(9 * 1024 * 1024, 1))
    elif kind == "big-dirs":
        for d in range(3):
            for i in range(2500):
                os.close(os.open(root / "" if False else _mk(root / f"dir{d}") / f"{'n' * (i % 200)}-{i}",
                                 os.O_CREAT | os.O_WRONLY, 0o644))
    elif kind == "xattrs-and-links":
        for i in range(400):
            p = root / f"f{i}"
            _write(p, b"")
            os.setxattr(p, "user.big", _pattern(40 + i * 7 % 900, i))  # fits a 1 KiB xattr block
            os.symlink("t" * (60 + i % 200), root / f"l{i}")
    elif kind == "deep":
        p = root
        for i in range(300):
            p = p / f"level{i:03d}"
        p.mkdir(parents=True)
        _write(p / "bottom", b"b")


def _mk(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path


SHAPES = ["tiny-files", "sparse-and-big", "big-dirs", "xattrs-and-links", "deep"]
LAYOUTS = {
    "ext4": {},
    "1k": {"block_size": 1024},
    "ext2": {"features": "^has_journal,^extent,^flex_bg,^huge_file,^dir_nlink,^extra_isize,^64bit,^metadata_csum"},
    "128-byte-inodes": {"inode_size": 128},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_estimate_is_an_upper_bound(tmp_path_factory: pytest.TempPathFactory, layout: str) -> None:
    """estimate() never says less than populate() then uses (so 'auto' never runs out of space)."""
    base = tmp_path_factory.mktemp("shapes")
    opts = LAYOUTS[layout]
    bs = opts.get("block_size", 4096)
    feature_text = str(opts.get("features", ""))
    for shape in SHAPES:
        src = base / shape
        _shape(shape, src)
        nodes, needs = source_needs(src, bs, extents="^extent" not in feature_text,
                                    inode_size=int(opts.get("inode_size", 256)),
                                    metadata_csum="^metadata_csum" not in feature_text)
        img = fresh_image(base / f"{shape}.img", "128M", **opts)
        with Filesystem.open(img) as fs:
            free_blocks, free_inodes = fs.sb.free_blocks_count, fs.sb["s_free_inodes_count"]
        with Filesystem.open(img, writable=True, now=NOW) as fs:
            populate(fs, src, nodes=nodes)
        with Filesystem.open(img) as fs:
            used_blocks = free_blocks - fs.sb.free_blocks_count
            used_inodes = free_inodes - fs.sb["s_free_inodes_count"]
        assert used_blocks <= needs.blocks, (shape, used_blocks, needs)
        assert used_inodes <= needs.inodes, (shape, used_inodes, needs)
        # ... and not wildly more (long names in 1 KiB directory blocks are the worst case)
        assert needs.blocks <= used_blocks * 1.25 + 64, (shape, used_blocks, needs)
        assert_fsck_clean(img)


def test_estimate_counts_stored_data_of_sparse_files(tmp: Path) -> None:
    src = tmp / "src"
    src.mkdir()
    with open(src / "hole", "wb") as f:
        f.truncate(1 << 30)
        f.write(b"start")
    _, needs = source_needs(src, 4096)
    assert needs.blocks < 10


def test_progress_reports_every_byte(tree: Path, tmp: Path) -> None:
    seen: list[int] = []
    report = build(tmp / "p.img", tree, progress=seen.append)
    stored = sum(n.size if n.data_ranges is None else sum(r[1] for r in n.data_ranges)
                 for n in scan_directory(tree) if n.kind == "file" and n.link_key is None)
    linked = {n.link_key: n for n in scan_directory(tree) if n.kind == "file" and n.link_key is not None}
    stored += sum(n.size for n in linked.values())
    assert sum(seen) == stored
    assert report.bytes >= stored
    assert estimate(scan_directory(tree), 4096).inodes >= report.files


def test_tar_acl_text() -> None:
    from pyext4.populate import _acl_from_text

    full = "user::rw-\nuser:1234:r--\ngroup::r--\nmask::r--\nother::r--\n"
    assert _acl_from_text(full, minimal_is_mode=True) == _acl_access(1234)
    # Commas, short tags, comments and another order give the same value.
    assert _acl_from_text("u::rw-,o::r--,m::r--,g::r--,u:1234:r--#effective:r--",
                          minimal_is_mode=True) == _acl_access(1234)
    assert _acl_from_text("user:root:r--\nuser::rw-\ngroup::r--\nmask::r--\nother::r--",
                          minimal_is_mode=True) is not None  # names resolve on this host
    assert _acl_from_text("user::rwx\ngroup::r-x\nother::r-x\n", minimal_is_mode=True) is None  # just the mode
    assert _acl_from_text("user::rwx\ngroup::r-x\nother::r-x\n", minimal_is_mode=False) is not None
    for bad in ("user:no-such-user-here:r--\nuser::rw-\ngroup::r--\nmask::r--\nother::r--",
                "user::rw-\nuser:5:r--\ngroup::r--\nother::r--",  # a named entry needs a mask
                "user::rw-\ngroup::r--", "bogus::rwx", "user::rwz\ngroup::r--\nother::r--"):
        assert _acl_from_text(bad, minimal_is_mode=False) is None, bad


@pytest.mark.parametrize("threaded", [True, False], ids=["io-thread", "inline"])
def test_io_error_on_the_writer_thread(tree: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                       threaded: bool) -> None:
    """A failing write (on the I/O thread, or inline for a small source) reaches the caller; nothing
    is left half-made in the image."""
    import pyext4.populate as populate_module

    monkeypatch.setattr(populate_module, "_INLINE_BYTES", 0 if threaded else 1 << 40)
    img = fresh_image(tmp / "eio.img", "256M")
    calls = [0]
    real = os.pwritev

    def failing(fd: int, buffers: Any, offset: int) -> int:
        calls[0] += 1
        if calls[0] > 3:
            raise OSError(5, "Input/output error (injected)")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", failing)
    with Filesystem.open(img, writable=True, now=NOW) as fs:
        with pytest.raises(OSError, match="injected"):
            populate(fs, tree)
        monkeypatch.setattr(os, "pwritev", real)
    assert_fsck_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.listdir("/") == ["lost+found"]
    import threading

    assert not [t for t in threading.enumerate() if t.name == "pyext4-populate-io"]


def test_unstorable_xattrs_are_reported(tmp: Path) -> None:
    archive = tmp / "x.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"SCHILY.xattr.user.ok": "fine", "SCHILY.xattr.nonamespace": "x",
                            "SCHILY.xattr.system.posix_acl_access": "not an acl"}
        tf.addfile(info)
    img = tmp / "x.img"
    report = build(img, archive, size="32M")
    assert len(report.warnings) == 2 and all(w.startswith("/f: ") for w in report.warnings)
    assert_fsck_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.xattrs("/f") == {"user.ok": b"fine"}
