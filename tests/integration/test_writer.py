"""The writer against its oracles: a model tree, e2fsck, our own reader, refusals, ENOSPC, write safety.

The helpers at the top (image flavours, snapshots of a tree as pyext4, the
kernel or a model sees it) are shared with test_writer_state.py,
test_writer_kernel.py and test_cli_write.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat as statmod
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyext4 import (
    ChecksumError,
    CorruptError,
    Ext4Error,
    FileExists,
    FileNotFound,
    ImageBusy,
    InvalidPath,
    IsADirectory,
    NameTooLong,
    NeedsRecovery,
    NoSpace,
    NotADirectory,
    UnsupportedFeature,
    mkfs,
)
from pyext4.blockdev import FileDevice
from pyext4.reader import Filesystem
from pyext4.writer import WritableFilesystem
from tests.conftest import HASH_SEED, NOW, UUID, e2fsck, loop_mounted, mke2fs, run, tool

NS = 1_000_000_000

# =============================================================== image flavours
# name -> (maker, size); makers take (path) and build an empty filesystem deterministically.
FLAVOURS: dict[str, Callable[[Path], Any]] = {
    "default": lambda p: mkfs(p, "160M", uuid=UUID, hash_seed=HASH_SEED, now=NOW),
    "1k": lambda p: mkfs(p, "64M", block_size=1024, uuid=UUID, hash_seed=HASH_SEED, now=NOW),
    "nocsum": lambda p: mkfs(p, "160M", features="^metadata_csum,uninit_bg", uuid=UUID, hash_seed=HASH_SEED,
                             now=NOW),
    "no64": lambda p: mkfs(p, "160M", features="^64bit", uuid=UUID, hash_seed=HASH_SEED, now=NOW),
    "ext3": lambda p: mke2fs(p, "-t", "ext3", "-b", "1024", size="64M"),
    "inline": lambda p: mke2fs(p, "-t", "ext4", "-O", "inline_data", "-b", "1024", size="64M"),
}


def make_image(path: Path, flavour: str, cache: dict[str, Path] | None = None) -> Path:
    """An empty image of ``flavour`` at ``path`` (copied sparsely from ``cache`` when given)."""
    if cache is not None and flavour in cache:
        copy_image(cache[flavour], path)
        return path
    FLAVOURS[flavour](path)
    if cache is not None:
        master = path.with_name(path.name + ".master")
        copy_image(path, master)
        cache[flavour] = master
    return path


def copy_image(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def fsck_output(image: Path) -> str:
    proc = e2fsck(image)
    return f"status {proc.returncode}\n" + (proc.stdout + proc.stderr).decode(errors="replace")


def assert_clean(image: Path) -> None:
    proc = e2fsck(image)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")


def open_rw(image: Path, **kwargs: Any) -> WritableFilesystem:
    fs = Filesystem.open(image, writable=True, now=kwargs.pop("now", NOW), **kwargs)
    assert isinstance(fs, WritableFilesystem)
    return fs


# ===================================================================== snapshots
# A snapshot maps each path (str, "/a/b") to a record; hard links are reported as groups of paths.
Record = tuple[Any, ...]


def _kind(mode: int) -> str:
    return {
        statmod.S_IFREG: "file", statmod.S_IFDIR: "dir", statmod.S_IFLNK: "symlink", statmod.S_IFCHR: "chr",
        statmod.S_IFBLK: "blk", statmod.S_IFIFO: "fifo", statmod.S_IFSOCK: "sock",
    }[statmod.S_IFMT(mode)]


def _digest(data: bytes) -> str:
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()[:16]}"


def snapshot_fs(fs: Filesystem, *, times: bool = True, skip: tuple[str, ...] = (),
                top: str = "/") -> tuple[dict[str, Record], set[frozenset[str]]]:
    """Every path under ``top`` as pyext4 reads it: (kind, perm, uid, gid, nlink, payload, xattrs, mtime).

    Paths are relative to ``top`` ("/" is ``top`` itself).
    """
    records: dict[str, Record] = {}
    by_ino: dict[int, list[str]] = {}
    top_ino = fs.resolve(top)
    records["/"] = _record_fs(fs, top_ino, fs.stat_ino(top_ino), times)
    prefix = "" if top.rstrip("/") == "" else "/" + top.strip("/")
    for entry in fs.walk_entries(top):
        path = entry.path[len(prefix):]
        if path in skip or any(path.startswith(s + "/") for s in skip):
            continue
        st = fs.stat_ino(entry.ino)
        records[path] = _record_fs(fs, entry.ino, st, times)
        if not st.is_dir():
            by_ino.setdefault(entry.ino, []).append(path)
    groups = {frozenset(paths) for paths in by_ino.values() if len(paths) > 1}
    return records, groups


def _record_fs(fs: Filesystem, ino: int, st: Any, times: bool) -> Record:
    kind = _kind(st.st_mode)
    if kind == "file":
        payload: Any = _digest(fs.read_bytes(ino))
    elif kind == "symlink":
        payload = fs.readlink_ino(ino, fs.inode(ino))
    elif kind in ("chr", "blk"):
        payload = (os.major(st.st_rdev), os.minor(st.st_rdev))
    else:
        payload = None
    xattrs = tuple(sorted((k, v) for k, v in fs.xattrs_ino(ino).items() if k.startswith("user.")))
    return (kind, statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_nlink, payload, xattrs,
            st.st_mtime_ns if times else None)


def snapshot_host(root: Path, *, times: bool = True, skip: tuple[str, ...] = ()) -> tuple[dict[str, Record], set[frozenset[str]]]:
    """The same records for a host directory (a loop mount: the kernel's view)."""
    records: dict[str, Record] = {"/": _record_host(root, times)}
    by_ino: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = "/" + os.path.relpath(dirpath, root) if dirpath != str(root) else ""
        rel_dir = "" if rel_dir == "/." else rel_dir
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = f"{rel_dir}/{name}"
            if rel in skip or any(rel.startswith(s + "/") for s in skip):
                continue
            records[rel] = _record_host(full, times)
            st = os.lstat(full)
            if not statmod.S_ISDIR(st.st_mode):
                by_ino.setdefault(st.st_ino, []).append(rel)
        if skip:
            dirnames[:] = [d for d in dirnames if f"{rel_dir}/{d}" not in skip]
    groups = {frozenset(paths) for paths in by_ino.values() if len(paths) > 1}
    return records, groups


def _record_host(path: Path, times: bool) -> Record:
    st = os.lstat(path)
    kind = _kind(st.st_mode)
    if kind == "file":
        payload: Any = _digest(path.read_bytes())
    elif kind == "symlink":
        payload = os.fsencode(os.readlink(path))
    elif kind in ("chr", "blk"):
        payload = (os.major(st.st_rdev), os.minor(st.st_rdev))
    else:
        payload = None
    xattrs: tuple[tuple[str, bytes], ...] = ()
    if kind in ("file", "dir"):
        names = [n for n in os.listxattr(path, follow_symlinks=False) if n.startswith("user.")]
        xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))
    return (kind, statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_nlink, payload, xattrs,
            st.st_mtime_ns if times else None)


def diff_snapshots(a: tuple[dict[str, Record], set[frozenset[str]]],
                   b: tuple[dict[str, Record], set[frozenset[str]]], labels: tuple[str, str] = ("a", "b")) -> str:
    """A readable description of the differences ('' when equal)."""
    ra, ga = a
    rb, gb = b
    lines = []
    for path in sorted(set(ra) | set(rb)):
        if ra.get(path) != rb.get(path):
            lines.append(f"{path}:\n  {labels[0]}: {ra.get(path)}\n  {labels[1]}: {rb.get(path)}")
    if ga != gb:
        lines.append(f"hard link groups differ:\n  {labels[0]}: {sorted(map(sorted, ga))}\n"
                     f"  {labels[1]}: {sorted(map(sorted, gb))}")
    return "\n".join(lines[:40])


# ========================================================================= model
class MNode:
    """A model inode: kind, perm, owner, mtime, xattrs, and the kind's payload."""

    def __init__(self, kind: str, perm: int, uid: int = 0, gid: int = 0, mtime: int = NOW * NS) -> None:
        self.kind = kind
        self.perm = perm
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.xattrs: dict[str, bytes] = {}
        self.data = bytearray()  # file
        self.target = b""  # symlink
        self.rdev = (0, 0)  # devices
        self.children: dict[bytes, MNode] = {}  # dir


class Model:
    """A dict tree standing for the filesystem: the expected outcome of every operation."""

    def __init__(self, root: MNode) -> None:
        self.root = root

    @classmethod
    def from_fs(cls, fs: Filesystem) -> Model:
        nodes: dict[int, MNode] = {}

        def build(ino: int) -> MNode:
            if ino in nodes:
                return nodes[ino]
            st = fs.stat_ino(ino)
            node = MNode(_kind(st.st_mode), statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
            node.xattrs = {k: v for k, v in fs.xattrs_ino(ino).items() if k.startswith("user.")}
            nodes[ino] = node
            if node.kind == "dir":
                for name, child, _ft in fs.dir_entries(ino):
                    node.children[name] = build(child)
            elif node.kind == "file":
                node.data = bytearray(fs.read_bytes(ino))
            elif node.kind == "symlink":
                node.target = fs.readlink_ino(ino, fs.inode(ino))
            elif node.kind in ("chr", "blk"):
                node.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            return node

        return cls(build(2))

    # -------------------------------------------------------------- lookup
    def get(self, path: str) -> MNode | None:
        node = self.root
        for part in _parts(path):
            if node.kind != "dir" or part not in node.children:
                return None
            node = node.children[part]
        return node

    def parent_of(self, path: str) -> tuple[MNode | None, bytes]:
        parts = _parts(path)
        return self.get("/" + "/".join(p.decode("utf-8", "surrogateescape") for p in parts[:-1])), parts[-1]

    def walk(self) -> Iterator[tuple[str, MNode]]:
        pending = [("/", self.root)]
        while pending:
            path, node = pending.pop()
            yield path, node
            if node.kind == "dir":
                for name, child in node.children.items():
                    pending.append((_join(path, name), child))

    def dirs(self) -> list[str]:
        return sorted(p for p, n in self.walk() if n.kind == "dir")

    def entries(self) -> list[str]:
        return sorted(p for p, _n in self.walk() if p != "/")

    def snapshot(self, *, times: bool = True) -> tuple[dict[str, Record], set[frozenset[str]]]:
        counts: dict[int, int] = {}
        for _path, node in self.walk():
            counts[id(node)] = counts.get(id(node), 0) + 1
        records: dict[str, Record] = {}
        by_id: dict[int, list[str]] = {}
        for path, node in self.walk():
            if node.kind == "dir":
                nlink = 2 + sum(1 for c in node.children.values() if c.kind == "dir")
                payload: Any = None
            else:
                nlink = counts[id(node)]
                by_id.setdefault(id(node), []).append(path)
                payload = {
                    "file": lambda n: _digest(bytes(n.data)), "symlink": lambda n: n.target,
                    "chr": lambda n: n.rdev, "blk": lambda n: n.rdev,
                }.get(node.kind, lambda n: None)(node)
            xattrs = tuple(sorted(node.xattrs.items()))
            records[path] = (node.kind, node.perm, node.uid, node.gid, nlink, payload, xattrs,
                             node.mtime if times else None)
        groups = {frozenset(paths) for paths in by_id.values() if len(paths) > 1}
        return records, groups


def _parts(path: str) -> list[bytes]:
    return [p for p in os.fsencode(path).split(b"/") if p]


def _join(parent: str, name: bytes) -> str:
    sname = name.decode("utf-8", "surrogateescape")
    return "/" + sname if parent == "/" else parent + "/" + sname


def is_ancestor(ancestor: str, path: str) -> bool:
    a, p = _parts(ancestor), _parts(path)
    return len(a) <= len(p) and p[: len(a)] == a


def assert_fs_matches_model(image: Path, model: Model, *, times: bool = True) -> None:
    with Filesystem.open(image) as fs:
        got = snapshot_fs(fs, times=times)
    want = model.snapshot(times=times)
    diff = diff_snapshots(want, got, ("model", "pyext4"))
    assert not diff, diff


# ================================================================ kernel helpers
def kernel_writes_more(mnt: Path) -> None:
    """Changes the kernel makes on top of an image we wrote (then e2fsck must still be clean)."""
    extra = mnt / "kernel-extra"
    try:  # the image we wrote may be full (blocks or inodes): the kernel then writes what fits
        extra.mkdir()
        for i in range(50):
            (extra / f"k{i:03d}-{'x' * (i % 40)}").write_bytes(os.urandom(i * 97))
        (extra / "big").write_bytes(os.urandom(300_000))
        for path in sorted(mnt.rglob("*")):
            if path.is_file() and not path.is_symlink() and extra not in path.parents:
                with open(path, "ab") as f:
                    f.write(b"appended by the kernel")
                break
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    victims = [p for p in sorted(mnt.iterdir()) if p.name not in ("lost+found", "kernel-extra")]
    if victims:
        victim = victims[-1]
        if victim.is_dir() and not victim.is_symlink():
            shutil.rmtree(victim)
        else:
            victim.unlink()
    os.sync()


# ===================================================================== fixtures
@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A small default image with a few files, directories and links."""
    img = tmp_path / "w.img"
    mkfs(img, "64M", uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    with open_rw(img) as fs:
        fs.mkdir("/d")
        for i in range(5):
            fs.write_file(f"/d/f{i}", bytes([i]) * (i * 3000))
        fs.mkdir("/keep")
        fs.write_file("/keep/a", b"a" * 70_000)
        fs.symlink("/keep/a", "/keep/link")
    return img


def _flip(image: Path, offset: int) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def _edit_superblock(image: Path, edit: Callable[[bytearray], None]) -> None:
    from pyext4.csum import superblock_csum

    with open(image, "r+b") as f:
        f.seek(1024)
        raw = bytearray(f.read(1024))
        edit(raw)
        if int.from_bytes(raw[0x64:0x68], "little") & 0x400:  # metadata_csum
            raw[0x3FC:0x400] = superblock_csum(raw).to_bytes(4, "little")
        f.seek(1024)
        f.write(raw)


def _or_field(offset: int, bits: int) -> Callable[[bytearray], None]:
    def edit(raw: bytearray) -> None:
        value = int.from_bytes(raw[offset : offset + 4], "little") | bits
        raw[offset : offset + 4] = value.to_bytes(4, "little")

    return edit


# ================================================================ basics
def test_basic_operations_round_trip(image: Path) -> None:
    with open_rw(image) as fs:
        ino = fs.write_file("/d/new", b"hello", mode=0o600, uid=5, gid=6, mtime=1234)
        assert fs.mkdir("/d/sub/deeper", 0o700, parents=True) > 0
        assert fs.mkdir("/d/sub", exist_ok=True) == fs.resolve("/d/sub")
        fs.link("/d/new", "/d/sub/hard")
        fs.symlink("x" * 100, "/d/long-link")
        fs.mknod("/d/null", statmod.S_IFCHR | 0o666, (1, 3))
        fs.setxattr("/d/new", "user.k", b"v" * 2000)  # too big for the inode: an xattr block
        fs.chmod("/d/new", 0o4755)
        fs.chown("/d/new", 70000, 80000)
        fs.utime("/d/new", ns=(5 * NS + 1, 6 * NS + 2))
        fs.rename("/d/f1", "/d/sub/f1-moved")
        fs.truncate("/d/f2", 10)
        assert fs.read_bytes("/d/new") == b"hello"  # read your own writes before flush
    assert_clean(image)
    with Filesystem.open(image) as fs:
        st = fs.stat("/d/new")
        assert (st.st_ino, statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_nlink) == (ino, 0o4755, 70000,
                                                                                               80000, 2)
        assert st.st_mtime_ns == 6 * NS + 2
        assert fs.xattrs("/d/new") == {"user.k": b"v" * 2000}
        assert fs.inode(ino).file_acl != 0
        assert fs.readlink("/d/long-link") == "x" * 100
        assert fs.stat("/d/null").rdev_major == 1
        assert fs.read_bytes("/d/sub/f1-moved") == b"\x01" * 3000
        assert fs.read_bytes("/d/f2") == b"\x02" * 10
        assert fs.stat("/d").st_nlink == 3


def test_lock_released_and_context_manager(image: Path) -> None:
    with open_rw(image) as fs:
        fs.write_file("/one", b"1")
    with open_rw(image) as fs:  # a second open after close works: the lock went with the first
        assert fs.read_bytes("/one") == b"1"
        assert fs.dirty_metadata()["superblock"] is False


def test_remove_tree_frees_everything(image: Path) -> None:
    with Filesystem.open(image) as fs:
        free_before = (fs.sb.free_blocks_count, fs.sb["s_free_inodes_count"])
    with open_rw(image) as fs:
        fs.mkdir("/t")
        for i in range(200):
            fs.write_file(f"/t/{i:03d}-{'z' * 100}", os.urandom(i * 50))
        fs.mkdir("/t/sub/sub2", parents=True)
        fs.write_file("/t/sub/sub2/big", bytes(3 << 20))
        fs.setxattr("/t/sub", "user.x", b"y" * 3000)
    with open_rw(image) as fs:
        fs.remove_tree("/t")
    assert_clean(image)
    with Filesystem.open(image) as fs:
        assert (fs.sb.free_blocks_count, fs.sb["s_free_inodes_count"]) == free_before


# ================================================================ refusals
def _refused(image: Path, action: Callable[[WritableFilesystem], Any], error: type[BaseException],
             **open_kwargs: Any) -> BaseException:
    """``action`` raises ``error`` and the image is byte-for-byte what it was."""
    before = sha256_file(image)
    with pytest.raises(error) as info:
        with open_rw(image, **open_kwargs) as fs:
            action(fs)
    assert sha256_file(image) == before
    return info.value


def test_refuse_path_errors(image: Path) -> None:
    _refused(image, lambda fs: fs.write_file("/d/" + "n" * 256, b"x"), NameTooLong)
    _refused(image, lambda fs: fs.mkdir("/d/" + "n" * 256), NameTooLong)
    _refused(image, lambda fs: fs.write_file("/keep/a/x", b"x"), NotADirectory)
    _refused(image, lambda fs: fs.write_file("/keep/a", b"x", replace=False), FileExists)
    _refused(image, lambda fs: fs.write_file("/d", b"x"), IsADirectory)
    _refused(image, lambda fs: fs.mkdir("/keep/a"), FileExists)
    _refused(image, lambda fs: fs.symlink("t", "/keep/a"), FileExists)
    _refused(image, lambda fs: fs.link("/keep/a", "/d/f0"), FileExists)
    _refused(image, lambda fs: fs.link("/d", "/d2"), IsADirectory)
    _refused(image, lambda fs: fs.unlink("/missing"), FileNotFound)
    _refused(image, lambda fs: fs.unlink("/d"), IsADirectory)
    _refused(image, lambda fs: fs.rmdir("/d"), OSError)  # not empty
    _refused(image, lambda fs: fs.rename("/d", "/d/f0/x"), NotADirectory)
    _refused(image, lambda fs: fs.rename("/d", "/keep/a"), NotADirectory)
    _refused(image, lambda fs: fs.rename("/keep/a", "/d"), IsADirectory)
    _refused(image, lambda fs: fs.rename("/keep", "/d"), OSError)  # onto a non-empty directory
    _refused(image, lambda fs: fs.rename("/keep", "/keep/inside"), InvalidPath)
    _refused(image, lambda fs: fs.removexattr("/keep/a", "user.none"), FileNotFound)


def test_failed_operations_leave_nothing(image: Path) -> None:
    """Several refused operations in one session, then a clean close: not a byte changes."""
    before = sha256_file(image)
    with open_rw(image) as fs:
        for action in (
            lambda: fs.write_file("/keep/a", b"x", replace=False),
            lambda: fs.mkdir("/d/f0/sub"),
            lambda: fs.write_file("/d/" + "q" * 300, b"x"),
            lambda: fs.rename("/keep", "/keep/x"),
        ):
            with pytest.raises(Ext4Error):
                action()
        assert fs.dirty_metadata() == {"blocks": [], "inodes": [], "block_bitmaps": [], "inode_bitmaps": [],
                                       "group_descriptors": [], "superblock": False, "deferred_data": []}
    assert sha256_file(image) == before


def test_refuse_mounted(image: Path) -> None:
    from tests.conftest import loop_mounted

    with loop_mounted(image, readonly=True):
        with pytest.raises(ImageBusy, match="mounted"):
            open_rw(image)


def test_refuse_locked_by_another_process(image: Path) -> None:
    script = (
        "import sys; from pyext4.reader import Filesystem\n"
        f"fs = Filesystem.open({str(image)!r}, writable=True)\n"
        "print('ready', flush=True); sys.stdin.read(); fs.close()\n"
    )
    before = sha256_file(image)
    proc = subprocess.Popen(["python", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        with pytest.raises(ImageBusy, match="another process"):
            open_rw(image)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
    assert sha256_file(image) == before
    open_rw(image).close()


def test_refuse_needs_recovery(image: Path) -> None:
    _edit_superblock(image, _or_field(0x60, 0x4))
    _refused(image, lambda fs: None, NeedsRecovery)


@pytest.mark.parametrize(("field", "bit", "readable"), [(0x60, 0x80000, False), (0x64, 0x100000, True),
                                                        (0x64, 0x0100, True)])
def test_refuse_unknown_features(image: Path, field: int, bit: int, readable: bool) -> None:
    _edit_superblock(image, _or_field(field, bit))
    _refused(image, lambda fs: fs.write_file("/x", b"x"), UnsupportedFeature)
    if readable:
        with Filesystem.open(image) as fs:
            assert fs.read_bytes("/keep/a") == b"a" * 70_000
    else:
        with pytest.raises(UnsupportedFeature):
            Filesystem.open(image)


def _dir_block_offset(image: Path, path: str, logical: int = 0) -> int:
    with Filesystem.open(image) as fs:
        ino = fs.resolve(path)
        ext = [e for e in fs.extents_of(ino) if e.logical <= logical < e.logical + e.length][0]
        return (ext.physical + logical - ext.logical) * fs.block_size


def test_refuse_checksum_error_in_directory(image: Path) -> None:
    _flip(image, _dir_block_offset(image, "/d") + 12 + 12 + 8 + 1)  # inside the first name after '..'
    err = _refused(image, lambda fs: fs.write_file("/d/new", b"x"), ChecksumError)
    assert "directory" in str(err)
    _refused(image, lambda fs: fs.unlink("/d/f3"), ChecksumError)
    from pyext4.reader import Ext4Warning

    with pytest.warns(Ext4Warning, match="force"):  # forced: a warning, and the write goes ahead
        with open_rw(image, force=True) as fs:
            fs.write_file("/d/new", b"x")
    with Filesystem.open(image) as fs:
        assert fs.read_bytes("/d/new") == b"x"


def test_refuse_checksum_error_in_inode(image: Path) -> None:
    with Filesystem.open(image) as fs:
        ino = fs.resolve("/keep/a")
        group, index = divmod(ino - 1, fs.geo.inodes_per_group)
        offset = fs.group_desc(group).inode_table * fs.block_size + index * fs.geo.inode_size
    _flip(image, offset + 0x10)  # i_mtime
    _refused(image, lambda fs: fs.chmod("/keep/a", 0o600), ChecksumError)
    _refused(image, lambda fs: fs.unlink("/keep/a"), ChecksumError)


def test_refuse_checksum_error_in_extent_block(image: Path) -> None:
    with open_rw(image) as fs:
        fs.write_file("/frag", b"")
        for i in range(12):  # 12 extents: a leaf block under the inode
            fs.write_at("/frag", i * 2 * 4096, b"x" * 4096)
            fs.write_file(f"/spacer{i}", b"s" * 4096)
        ino = fs.resolve("/frag")
    with Filesystem.open(image) as fs:
        inode = fs.inode(ino)
        assert int.from_bytes(inode.block[6:8], "little") == 1
        leaf = int.from_bytes(inode.block[12 + 4 : 12 + 8], "little")
    _flip(image, leaf * 4096 + 12 + 12 * 100)  # an unused slot: only the checksum notices
    _refused(image, lambda fs: fs.truncate("/frag", 100), ChecksumError)
    _refused(image, lambda fs: fs.unlink("/frag"), ChecksumError)


@pytest.mark.parametrize("which", ["block", "inode"])
def test_refuse_checksum_error_in_bitmap(image: Path, which: str) -> None:
    with Filesystem.open(image) as fs:
        desc = fs.group_desc(0)
        block = desc.block_bitmap if which == "block" else desc.inode_bitmap
        bs = fs.block_size
    _flip(image, block * bs + 100)  # bits 800-807 of group 0
    err = _refused(image, lambda fs: fs.write_file("/new", b"x" * 10000), ChecksumError)
    assert f"{which} bitmap" in str(err) and "group 0" in str(err)


# ======================================================= write safety (counts)
def _debugfs_script(image: Path, *lines: str) -> None:
    script = image.with_suffix(".debugfs")
    script.write_text("\n".join(lines) + "\n")
    run(tool("debugfs"), "-w", "-f", script, image)


@pytest.mark.parametrize("field", ["free_blocks_count", "free_inodes_count"])
def test_refuse_descriptor_count_contradicting_bitmap(image: Path, field: str) -> None:
    with Filesystem.open(image) as fs:
        desc = fs.group_desc(0)
        free = desc.free_blocks if field == "free_blocks_count" else desc.free_inodes
    _debugfs_script(image, f"set_bg 0 {field} {free - 7}", "set_bg 0 checksum calc")
    err = _refused(image, lambda fs: fs.write_file("/x", b"x" * 10000), CorruptError)
    assert "e2fsck" in str(err) and "group 0" in str(err)
    with open_rw(image, force=True) as fs:  # forced: the writer goes on
        fs.write_file("/x", b"x" * 10000)
    subprocess.run([tool("e2fsck"), "-fy", str(image)], capture_output=True)
    assert_clean(image)


def test_refuse_inode_bitmap_contradicting_inode(image: Path) -> None:
    with Filesystem.open(image) as fs:
        ino = fs.resolve("/d/f1")
    _debugfs_script(image, f"freei <{ino}>")
    # The lowest free inode is now one still in use: handing it out would cross-link two files.
    _refused(image, lambda fs: fs.write_file("/new", b"x"), CorruptError)


def test_refuse_double_free(image: Path) -> None:
    with Filesystem.open(image) as fs:
        block = fs.extents_of(fs.resolve("/keep/a"))[0].physical
        group = fs.geo.group_of_block(block)
        free = fs.group_desc(group).free_blocks
    # Free one of the file's blocks in the bitmap, with counts that agree: only the delete can notice.
    _debugfs_script(image, f"freeb {block}", f"set_bg {group} free_blocks_count {free + 1}",
                    f"set_bg {group} checksum calc")
    err = _refused(image, lambda fs: fs.unlink("/keep/a"), CorruptError)
    assert "already free" in str(err)


# ===================================================================== ENOSPC
def test_fill_until_enospc(tmp_path: Path) -> None:
    img = tmp_path / "full.img"
    mkfs(img, "16M", block_size=1024, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    written: dict[str, bytes] = {}
    with open_rw(img) as fs:
        fs.mkdir("/fill")
        i = 0
        with pytest.raises(NoSpace) as info:
            while True:
                data = os.urandom(37_000 + i)
                fs.write_file(f"/fill/{i:04d}-{'f' * (i % 50)}", data)
                written[f"/fill/{i:04d}-{'f' * (i % 50)}"] = data
                i += 1
        assert info.value.errno == errno.ENOSPC
        assert not fs.exists(f"/fill/{i:04d}-{'f' * (i % 50)}")
        free = fs.sb.free_blocks_count
        staged = fs.dirty_metadata()
        with pytest.raises(NoSpace):
            fs.write_file("/big", bytes(free * 1024 + 1))
        assert fs.sb.free_blocks_count == free and fs.dirty_metadata() == staged
        assert not fs.exists("/big")
        # Replacing a file with something too big leaves the old content.
        victim = next(iter(written))
        with pytest.raises(NoSpace):
            fs.write_file(victim, os.urandom(len(written[victim]) + (free + 5) * 1024))
        assert fs.read_bytes(victim) == written[victim]
        with pytest.raises(NoSpace):
            fs.write_at(victim, 0, bytes(len(written[victim]) + (free + 5) * 1024))
        assert fs.read_bytes(victim) == written[victim]
    assert_clean(img)
    with Filesystem.open(img) as fs:
        for path, data in written.items():
            assert fs.read_bytes(path) == data
    # Delete and rewrite in one session: the new data may only land on freed blocks once flushed.
    with open_rw(img) as fs:
        names = list(written)[:40]
        total = sum(len(written[n]) for n in names)
        for name in names:
            fs.unlink(name)
            del written[name]
        big = os.urandom(total - 10_000)
        fs.write_file("/reuse", big)
        assert fs.read_bytes("/reuse") == big
        written["/reuse"] = big
    assert_clean(img)
    with Filesystem.open(img) as fs:
        for path, data in written.items():
            assert fs.read_bytes(path) == data


def test_replace_in_full_image_keeps_old_data_on_failure(tmp_path: Path) -> None:
    """A replacement that fails with ENOSPC after taking the file's own freed blocks leaves them intact."""
    img = tmp_path / "tight.img"
    mkfs(img, "8M", block_size=1024, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    with open_rw(img) as fs:
        free = fs.sb.free_blocks_count
        old = os.urandom((free - 40) * 1024)
        fs.write_file("/victim", old)
    with open_rw(img) as fs:
        with pytest.raises(NoSpace):
            fs.write_file("/victim", os.urandom(len(old) + 100 * 1024))
        assert fs.read_bytes("/victim") == old
        new = os.urandom(len(old) - 5000)
        fs.write_file("/victim", new)  # fits only in the blocks it frees: held back until flush
        assert fs.read_bytes("/victim") == new
    assert_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.read_bytes("/victim") == new


def test_no_free_inodes(tmp_path: Path) -> None:
    img = tmp_path / "inodes.img"
    mkfs(img, "16M", inodes=64, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    with open_rw(img) as fs:
        made = []
        with pytest.raises(NoSpace, match="inode"):
            for i in range(100):
                fs.write_file(f"/f{i}", b"data %d" % i)
                made.append(i)
        for action in (lambda: fs.mkdir("/dir"), lambda: fs.symlink("x", "/l"), lambda: fs.mknod(
                "/p", statmod.S_IFIFO | 0o600)):
            with pytest.raises(NoSpace):
                action()
        fs.link("/f0", "/f0-link")  # a link needs no inode
    assert_clean(img)
    with Filesystem.open(img) as fs:
        assert [fs.read_bytes(f"/f{i}") for i in made] == [b"data %d" % i for i in made]
        assert fs.sb["s_free_inodes_count"] == 0


# =================================================== write safety: failing device
class FaultyDevice:
    """A FileDevice whose writes fail from the ``fail_at``-th on (a crash mid-way), or with ``only`` just
    that one write (a bad sector: the writes after it succeed)."""

    def __init__(self, inner: FileDevice, fail_at: int | None, *, only: bool = False) -> None:
        self.inner = inner
        self.fail_at = fail_at
        self.only = only
        self.writes = 0
        self.size = inner.size
        self.fd = -1  # no copy_file_range shortcut past the fault injection

    def pread(self, offset: int, length: int) -> bytes:
        return self.inner.pread(offset, length)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        if self._failing(self.writes):
            raise OSError(errno.EIO, f"injected failure at write {self.writes}")
        self.inner.pwrite(offset, data)

    def _failing(self, n: int) -> bool:
        if self.fail_at is None:
            return False
        return n == self.fail_at if self.only else n >= self.fail_at

    def zero_range(self, offset: int, length: int) -> None:
        self.pwrite(offset, bytes(length))

    def sync(self) -> None:
        if not self.only and self._failing(self.writes):
            raise OSError(errno.EIO, "injected failure at sync")
        self.inner.sync()

    def close(self) -> None:
        self.inner.close()


FRAG4 = b"".join(b"%d" % i * 1024 + (bytes(1024) if i < 3 else b"") for i in range(4))  # /frag4: 4 extents


def _fault_base(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """1 KiB blocks, 4 groups: an htree directory, a file of 4 extents, a tree spread over groups."""
    img = tmp_path / "base.img"
    mkfs(img, "32M", block_size=1024, flex_bg_size=1, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    keep: dict[str, bytes] = {}
    with open_rw(img) as fs:
        fs.mkdir("/keep")
        fs.mkdir("/htree")
        for i in range(300):
            fs.write_file(f"/htree/entry-{i:04d}-{'h' * 20}", b"%d" % i)
            if i % 50 == 0:
                keep[f"/htree/entry-{i:04d}-{'h' * 20}"] = b"%d" % i
        for i in range(4):
            fs.write_file(f"/keep/k{i}", data := os.urandom(9000 * (i + 1)))
            keep[f"/keep/k{i}"] = data
        fs.write_file("/frag4", b"")
        for i in range(4):
            fs.write_at("/frag4", i * 2 * 1024, b"%d" % i * 1024)
            fs.write_file(f"/keep/spacer{i}", data := os.urandom(1024))
            keep[f"/keep/spacer{i}"] = data
        for d in range(4):  # top-level directories: spread over the groups
            fs.mkdir(f"/tree{d}/sub", parents=True)
            for i in range(15):
                fs.write_file(f"/tree{d}/f{i}", os.urandom(i * 1500))
                fs.symlink("y" * (i * 20 + 1), f"/tree{d}/sub/l{i}")
            fs.setxattr(f"/tree{d}", "user.big", b"x" * 700)
    with Filesystem.open(img) as fs:
        assert fs.inode(fs.resolve("/htree")).flags & 0x1000  # INDEX_FL
        assert len(fs.extents_of(fs.resolve("/frag4"))) == 4
        assert fs.read_bytes("/frag4") == FRAG4
        assert len({fs.geo.group_of_ino(fs.resolve(f"/tree{d}")) for d in range(4)}) > 1
    return img, keep


def _put_many(fs: WritableFilesystem) -> None:
    for i in range(40):
        fs.write_file(f"/htree/new-{i:02d}-" + "n" * 40, os.urandom(2000))


FAULT_OPS: dict[str, Callable[[WritableFilesystem], Any]] = {
    "put into htree": _put_many,
    "grow past 4 extents": lambda fs: fs.write_at("/frag4", 40 * 1024, b"z" * 10_000),
    "delete a tree": lambda fs: [fs.remove_tree(f"/tree{d}") for d in range(4)],  # type: ignore[func-returns-value]
}


@pytest.mark.parametrize("only", [False, True], ids=["from-nth-on", "only-nth"])
@pytest.mark.parametrize("op", sorted(FAULT_OPS))
def test_fault_injection(tmp_path: Path, op: str, only: bool) -> None:
    base, keep = _fault_base(tmp_path)
    action = FAULT_OPS[op]
    copy_image(base, tmp_path / "count.img")
    counter = FaultyDevice(FileDevice.open(tmp_path / "count.img", writable=True), None)
    fs = WritableFilesystem(counter, now=NOW)
    action(fs)
    fs.close()
    total = counter.writes
    assert total > 3
    work = tmp_path / "work.img"
    for fail_at in range(1, total + 1):
        copy_image(base, work)
        dev = FaultyDevice(FileDevice.open(work, writable=True), fail_at, only=only)
        fs = WritableFilesystem(dev, now=NOW)
        with pytest.raises(OSError):
            try:
                action(fs)
            finally:
                fs.close()
        # What was there before is intact, read by our reader ...
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Filesystem.open(work, verify="warn") as check:
                for path, data in keep.items():
                    assert check.read_bytes(path) == data, (fail_at, path)
                assert check.read_bytes("/frag4")[: len(FRAG4)] == FRAG4, fail_at  # written before the op
        # ... and e2fsck repairs what remains.
        proc = subprocess.run([tool("e2fsck"), "-fy", str(work)], capture_output=True)
        assert proc.returncode in (0, 1), (fail_at, proc.stdout.decode(errors="replace"))
        assert e2fsck(work).returncode == 0, (fail_at, fsck_output(work))
        with Filesystem.open(work) as check:
            for path, data in keep.items():
                assert check.read_bytes(path) == data, (fail_at, path)
            assert check.read_bytes("/frag4")[: len(FRAG4)] == FRAG4, fail_at


def test_meta_bg_descriptors(tmp_path: Path) -> None:
    """meta_bg: descriptors live in several places; changes in far groups reach the right blocks."""
    img = tmp_path / "meta.img"
    mkfs(img, "384M", block_size=1024, features="meta_bg,^resize_inode", flex_bg_size=1, uuid=UUID,
         hash_seed=HASH_SEED, now=NOW)
    with open_rw(img) as fs:
        assert fs.geo.group_count > 2 * fs.geo.desc_per_block
        for d in range(40):  # top-level directories spread over the groups
            fs.mkdir(f"/top{d}")
            fs.write_file(f"/top{d}/f", os.urandom(20_000))
        groups = {fs.geo.group_of_ino(fs.resolve(f"/top{d}")) for d in range(40)}
        assert max(groups) >= fs.geo.desc_per_block  # a second meta group was changed
    assert_clean(img)


@pytest.mark.parametrize("flavour", ["default", "ext3"])
def test_deleted_inode_is_left_as_the_kernel_leaves_it(tmp_path: Path, flavour: str) -> None:
    """After unlink: no links, i_dtime = now, size and i_blocks 0, no xattr block, an empty mapping
    (an extent header with no entries, or zeroed block pointers), and its blocks free again."""
    img = make_image(tmp_path / "d.img", flavour)
    when = NOW + 12345
    with open_rw(img) as fs:
        fs.write_file("/f", os.urandom(300_000))
        fs.setxattr("/f", "user.big", b"v" * 700)  # too big for the inode: an xattr block
        ino = fs.resolve("/f")
        assert fs.inode(ino).file_acl
        free_before = fs.sb.free_blocks_count
    with open_rw(img, now=when) as fs:
        fs.unlink("/f")
    assert_clean(img)
    with Filesystem.open(img) as fs:
        inode = fs.inode(ino)
        assert inode.links_count == 0 and inode.dtime == when
        assert inode.size == 0 and inode.blocks == 0 and inode.file_acl == 0
        if flavour == "default":
            assert inode.has_extents()
            assert inode.block[:8] == bytes.fromhex("0af3 0000 0400 0000")  # magic, 0 entries, max 4, depth 0
            assert inode.block[12:] == bytes(48)
        else:
            assert inode.block == bytes(60)
        assert fs.sb.free_blocks_count > free_before + 300_000 // fs.block_size


@pytest.mark.slow
def test_dir_nlink_past_65000_subdirectories(tmp_path: Path) -> None:
    """dir_nlink: past 65,000 subdirectories the parent's link count is 1 ("many"), as the kernel sets
    it, and stays 1 when some go again; e2fsck and the kernel agree."""
    img = tmp_path / "n.img"
    mkfs(img, "400M", inodes=70_000, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    with open_rw(img) as fs:
        fs.mkdir("/p")
        for i in range(64_990):
            fs.mkdir(f"/p/d{i}")
        assert fs.inode(fs.resolve("/p")).links_count == 64_992  # 2 + one per subdirectory
        for i in range(64_990, 65_010):
            fs.mkdir(f"/p/d{i}")
        assert fs.inode(fs.resolve("/p")).links_count == 1
    with open_rw(img) as fs:
        for i in range(20):
            fs.rmdir(f"/p/d{i}")
        assert fs.inode(fs.resolve("/p")).links_count == 1
    assert_clean(img)
    with loop_mounted(img) as mnt:
        assert os.stat(mnt / "p").st_nlink == 1
        assert len(os.listdir(mnt / "p")) == 64_990
        os.mkdir(mnt / "p" / "by-kernel")
    assert_clean(img)


def test_abandon_commits_nothing_since_the_last_flush(tmp_path: Path) -> None:
    img = make_image(tmp_path / "a.img", "default")
    fs = open_rw(img)
    fs.write_file("/kept", b"flushed")
    fs.flush()
    fs.write_file("/dropped", os.urandom(50_000))
    fs.mkdir("/dropped-dir")
    fs.write_file("/kept", b"replaced, then abandoned")
    fs.abandon()
    assert_clean(img)
    with Filesystem.open(img) as check:
        assert sorted(check.listdir("/")) == ["kept", "lost+found"]
        assert check.read_bytes("/kept") == b"flushed"
    with open_rw(img) as again:  # the lock went with it
        again.write_file("/later", b"x")
    assert_clean(img)
