"""The writer on images the kernel wrote, and the kernel on images the writer changed.

Every test here needs a loop mount (root); without one it is skipped with the reason.
"""

from __future__ import annotations

import os
import random
import stat as statmod
from pathlib import Path
from typing import Any

import pytest

from pyext4 import constants as K
from pyext4 import mkfs
from pyext4.reader import Filesystem
from tests.conftest import HASH_SEED, NOW, UUID, loop_mounted, mke2fs, mount_unavailable
from tests.integration.test_writer import (
    assert_clean,
    copy_image,
    diff_snapshots,
    make_image,
    open_rw,
    snapshot_fs,
    snapshot_host,
)

pytestmark = pytest.mark.skipif(mount_unavailable() is not None, reason=str(mount_unavailable()))


def _block(i: int, bs: int) -> bytes:
    return (b"%08d" % i) * (bs // 8)


# ======================================================== htree of 20,000 entries
@pytest.mark.parametrize("block_size", [4096, 1024])
def test_kernel_htree_add_and_remove(tmp_path: Path, block_size: int) -> None:
    """A 20,000-entry htree the kernel made (two levels at 1 KiB): pyext4 adds and removes names."""
    img = tmp_path / "htree.img"
    mkfs(img, "512M" if block_size == 4096 else "160M", block_size=block_size, inode_ratio=4096,
         uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    names = [f"kernel-{i:05d}-{'k' * (i % 37)}" for i in range(20000)]
    with loop_mounted(img) as mnt:
        big = mnt / "big"
        big.mkdir()
        for name in names:
            os.close(os.open(big / name, os.O_CREAT | os.O_WRONLY, 0o644))
    with Filesystem.open(img) as fs:
        ino = fs.resolve("/big")
        inode = fs.inode(ino)
        assert inode.flags & K.INDEX_FL
        levels = fs.read_block(fs.extents_of(ino)[0].physical)[0x1E]  # dx_root_info.indirect_levels
        assert levels == (1 if block_size == 1024 else 0)
    removed = set(names[::5])
    added = [f"pyext4-{i:05d}-{'p' * (i % 61)}" for i in range(4000)]
    with open_rw(img) as fs:
        for name in sorted(removed):
            fs.unlink(f"/big/{name}")
        for name in added:
            fs.write_file(f"/big/{name}", name.encode())
        fs.mkdir("/big/subdir")
    assert_clean(img)
    expected = (set(names) - removed) | set(added) | {"subdir"}
    with Filesystem.open(img) as fs:
        assert set(fs.listdir("/big")) == expected
        for name in added[::97]:
            assert fs.read_bytes(f"/big/{name}") == name.encode()
    with loop_mounted(img) as mnt:
        big = mnt / "big"
        for name in expected:
            os.stat(big / name)  # a lookup by name: the kernel's htree walk must find it
        for name in list(removed)[:500]:
            assert not os.path.lexists(big / name)
        for name in added[::53]:
            assert (big / name).read_bytes() == name.encode()
        assert set(os.listdir(big)) == expected
        # The kernel keeps going on top of our edits.
        for i in range(300):
            (big / f"after-{i}").write_bytes(b"k")
        for name in added[:300]:
            (big / name).unlink()
    assert_clean(img)


# =========================================================== deep extent trees
def _fragmented(path: Path, blocks: int, bs: int) -> bytearray:
    """Write every other block of a sparse file: one extent per block."""
    expect = bytearray(blocks * bs)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for i in range(0, blocks, 2):
            data = _block(i, bs)
            os.pwrite(fd, data, i * bs)
            expect[i * bs : (i + 1) * bs] = data
        os.fsync(fd)
    finally:
        os.close(fd)
    return expect


def _depth(fs: Filesystem, path: str) -> int:
    inode = fs.inode(fs.resolve(path))
    assert inode.has_extents()
    return int.from_bytes(inode.block[6:8], "little")


def test_kernel_deep_extent_trees(tmp_path: Path) -> None:
    """Kernel-written fragmented files (depth 2 at 1 KiB): truncate, grow past 4 extents, fill, remove."""
    bs = 1024
    img = tmp_path / "deep.img"
    mkfs(img, "128M", block_size=bs, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    expected: dict[str, bytearray] = {}
    with loop_mounted(img) as mnt:
        for name in ("shrink", "grow", "fill", "remove"):
            expected[name] = _fragmented(mnt / name, 2400, bs)
        expected["four"] = _fragmented(mnt / "four", 8, bs)[: 7 * bs]
        with open(mnt / "four", "r+b") as f:
            f.truncate(7 * bs)
        (mnt / "keep").write_bytes(os.urandom(200_000))
        expected["keep"] = bytearray((mnt / "keep").read_bytes())
    with Filesystem.open(img) as fs:
        assert _depth(fs, "/shrink") == 2
        assert len(fs.extents_of(fs.resolve("/four"))) == 4
        assert _depth(fs, "/four") == 0
    rng = random.Random(7)
    with open_rw(img) as fs:
        # truncate: the tree shrinks to depth 1, then to the inode
        fs.truncate("/shrink", 300 * bs + 123)
        del expected["shrink"][300 * bs + 123 :]
        assert _depth(fs, "/shrink") == 1
        fs.truncate("/shrink", 5 * bs)
        del expected["shrink"][5 * bs :]
        assert _depth(fs, "/shrink") == 0
        # grow past 4 extents: the root becomes an index
        for offset in (9 * bs, 13 * bs + 100, 20 * bs):
            data = rng.randbytes(300)
            fs.write_at("/four", offset, data)
            buf = expected["four"]
            if offset > len(buf):
                buf += bytes(offset - len(buf))
            buf[offset : offset + len(data)] = data
        assert _depth(fs, "/four") == 1
        # append past the end and write into holes of a depth-2 tree
        grow = expected["grow"]
        for offset in (len(grow), len(grow) + 5 * bs + 17, 1 * bs, 301 * bs + 5, 1999 * bs - 3):
            data = rng.randbytes(3 * bs)
            fs.write_at("/grow", offset, data)
            if offset > len(grow):
                grow += bytes(offset - len(grow))
            grow[offset : offset + len(data)] = data
        # fill every hole: the extents merge back into a few
        fill = expected["fill"]
        for i in range(1, 2400, 2):
            data = _block(100000 + i, bs)
            fs.write_at("/fill", i * bs, data)
            fill[i * bs : (i + 1) * bs] = data
        fs.unlink("/remove")
        del expected["remove"]
    assert_clean(img)
    with Filesystem.open(img) as fs:
        for name, want in expected.items():
            assert fs.read_bytes(f"/{name}") == bytes(want), name
    with loop_mounted(img) as mnt:
        for name, want in expected.items():
            assert (mnt / name).read_bytes() == bytes(want), name
        assert not (mnt / "remove").exists()
        with open(mnt / "grow", "ab") as f:
            f.write(os.urandom(50_000))
    assert_clean(img)


# ====================================================== ext3: block-mapped files
def test_ext3_block_mapped(tmp_path: Path) -> None:
    """Double and triple indirect files on a kernel-used ext3 image: write, extend, truncate, delete."""
    bs = 1024
    img = tmp_path / "ext3.img"
    img.touch()
    os.truncate(img, 256 << 20)
    mke2fs(img, "-t", "ext3", "-b", str(bs))
    expected: dict[str, bytes | bytearray] = {}
    with loop_mounted(img) as mnt:
        (mnt / "dind").write_bytes(big := os.urandom(3 << 20))  # 12 + 256 + 256^2 blocks: double indirect
        expected["dind"] = big
        with open(mnt / "tind", "wb") as f:  # past 64 MiB at 1 KiB: triple indirect
            f.seek(70 << 20)
            f.write(b"far away")
        expected["tind"] = bytes(70 << 20) + b"far away"
        (mnt / "victim").write_bytes(os.urandom(1 << 20))
        (mnt / "dir").mkdir()
    rng = random.Random(3)
    with open_rw(img) as fs:
        assert not fs.inode(fs.resolve("/dind")).has_extents()
        data = rng.randbytes(5 << 20)
        fs.write_file("/dir/new-dind", data)
        expected["dir/new-dind"] = data
        fs.write_at("/dind", len(expected["dind"]) + 1000, b"tail")
        expected["dind"] = expected["dind"] + bytes(1000) + b"tail"
        fs.truncate("/dind", 200 * bs + 5)
        expected["dind"] = expected["dind"][: 200 * bs + 5]
        fs.write_at("/tind", 100 << 20, b"further")
        t = bytearray(expected["tind"])
        t += bytes((100 << 20) - len(t)) + b"further"
        fs.write_at("/tind", 5 * bs, b"near")
        t[5 * bs : 5 * bs + 4] = b"near"
        expected["tind"] = bytes(t)
        fs.unlink("/victim")
        sparse = tmp_path / "sparse-host"
        with open(sparse, "wb") as f:
            f.truncate(80 << 20)
            f.seek(66 << 20)
            f.write(b"hello")
        fs.write_file("/dir/from-host", str(sparse))
        expected["dir/from-host"] = bytes(66 << 20) + b"hello" + bytes((80 << 20) - (66 << 20) - 5)
    assert_clean(img)
    with Filesystem.open(img) as fs:
        for name, want in expected.items():
            assert fs.read_bytes(f"/{name}") == want, name
            assert not fs.inode(fs.resolve(f"/{name}")).has_extents()
    with loop_mounted(img) as mnt:
        for name, want in expected.items():
            assert (mnt / name).read_bytes() == want, name
        assert not (mnt / "victim").exists()
        (mnt / "dir" / "more").write_bytes(os.urandom(2 << 20))
        os.truncate(mnt / "dir" / "new-dind", 10_000)
    assert_clean(img)


# ============================================================ inline_data images
def test_inline_data_edits(tmp_path: Path) -> None:
    """Write into kernel-made inline directories and files; the kernel reads every change."""
    img = tmp_path / "inline.img"
    img.touch()
    os.truncate(img, 64 << 20)
    mke2fs(img, "-t", "ext4", "-O", "inline_data", "-I", "256")
    with loop_mounted(img) as mnt:
        (mnt / "inl").mkdir()
        for i in range(3):
            (mnt / "inl" / f"s{i}").write_bytes(b"x" * (i + 1))
        (mnt / "small").mkdir()
        (mnt / "tiny").write_bytes(b"tiny file")
        (mnt / "grows").write_bytes(b"0123456789")
        (mnt / "shrinks").write_bytes(os.urandom(5000))
    with Filesystem.open(img) as fs:
        for path in ("/inl", "/small", "/tiny", "/grows"):
            assert fs.inode(fs.resolve(path)).has_inline_data(), path
    expected: dict[str, bytes] = {"inl/s0": b"x", "inl/s1": b"xx", "inl/s2": b"xxx"}
    with open_rw(img) as fs:
        fs.write_file("/small/one", b"1")  # an entry into an inline directory
        expected["small/one"] = b"1"
        for i in range(40):  # outgrows the inode: the directory moves to a block
            fs.write_file(f"/inl/new-{i:02d}-{'n' * i}", b"n" * i)
            expected[f"inl/new-{i:02d}-{'n' * i}"] = b"n" * i
        fs.unlink("/inl/s1")
        del expected["inl/s1"]
        fs.rename("/inl/s2", "/small/moved")
        expected["small/moved"] = expected.pop("inl/s2")
        fs.write_file("/tiny", b"replaced, still inline")
        expected["tiny"] = b"replaced, still inline"
        fs.write_at("/grows", 10, b"a" * 100)  # past 60 bytes: leaves the inode
        expected["grows"] = b"0123456789" + b"a" * 100
        fs.write_file("/shrinks", b"now inline")
        expected["shrinks"] = b"now inline"
        fs.mkdir("/small/sub")
    assert_clean(img)
    with Filesystem.open(img) as fs:
        for name, data in expected.items():
            assert fs.read_bytes(f"/{name}") == data, name
    with loop_mounted(img) as mnt:
        for name, data in expected.items():
            assert (mnt / name).read_bytes() == data, name
        assert sorted(os.listdir(mnt / "small")) == ["moved", "one", "sub"]
        assert not (mnt / "inl" / "s1").exists()
        (mnt / "small" / "kernel").write_bytes(b"k")
        (mnt / "inl" / "kernel").write_bytes(b"k" * 3000)
    assert_clean(img)


# ========================================================= differential: pyext4 vs kernel
class _Plan:
    """A valid random operation sequence, tracked in a small path table."""

    def __init__(self, seed: int, bs: int) -> None:
        self.rng = random.Random(seed)
        self.bs = bs
        self.kinds: dict[str, str] = {"/": "dir"}
        self.sizes: dict[str, int] = {}
        self.ops: list[tuple[Any, ...]] = []
        self.counter = 0

    def _new_name(self) -> str:
        self.counter += 1
        long = self.rng.random() < 0.15
        return f"n{self.counter}" + ("-" + "w" * self.rng.randint(50, 200) if long else "")

    def _pick(self, *kinds: str) -> str | None:
        paths = sorted(p for p, k in self.kinds.items() if k in kinds and p != "/")
        return self.rng.choice(paths) if paths else None

    def _dir(self) -> str:
        return self.rng.choice(sorted(p for p, k in self.kinds.items() if k == "dir"))

    def _child(self, parent: str) -> str:
        return ("" if parent == "/" else parent) + "/" + self._new_name()

    def _data(self) -> bytes:
        size = self.rng.choice([0, 1, 59, 60, 61, 500, self.bs, self.bs + 1, 5 * self.bs, 70 * self.bs + 3, 1 << 20])
        return self.rng.randbytes(size)

    def generate(self, count: int) -> list[tuple[Any, ...]]:
        for _ in range(count):
            op = self.rng.choice(["mkdir", "write", "write", "write", "symlink", "link", "mknod", "chmod",
                                  "chown", "xattr", "rename", "unlink", "rmdir", "truncate", "write_at",
                                  "replace"])
            getattr(self, "_" + op)()
        return self.ops

    def _mkdir(self) -> None:
        path = self._child(self._dir())
        self.kinds[path] = "dir"
        self.ops.append(("mkdir", path, self.rng.choice([0o755, 0o700, 0o2775]), self.rng.randint(0, 2000),
                         self.rng.randint(0, 2000)))

    def _write(self) -> None:
        path = self._child(self._dir())
        data = self._data()
        self.kinds[path] = "file"
        self.sizes[path] = len(data)
        self.ops.append(("write", path, data, self.rng.choice([0o644, 0o600, 0o755]), self.rng.randint(0, 70000),
                         self.rng.randint(0, 70000)))

    def _replace(self) -> None:
        path = self._pick("file")
        if path:
            data = self._data()
            self.sizes[path] = len(data)
            self.ops.append(("write", path, data, 0o640, 11, 12))

    def _symlink(self) -> None:
        path = self._child(self._dir())
        target = "t/" * self.rng.choice([1, 20, 29, 30, 31, 100, 400])
        self.kinds[path] = "symlink"
        self.ops.append(("symlink", target, path))

    def _link(self) -> None:
        src = self._pick("file")
        if src:
            path = self._child(self._dir())
            self.kinds[path] = "file"
            self.ops.append(("link", src, path))

    def _mknod(self) -> None:
        path = self._child(self._dir())
        kind = self.rng.choice([statmod.S_IFCHR, statmod.S_IFBLK, statmod.S_IFIFO, statmod.S_IFSOCK])
        self.kinds[path] = "node"
        rdev = (self.rng.randint(0, 300), self.rng.randint(0, 70000)) if kind in (statmod.S_IFCHR, statmod.S_IFBLK) \
            else (0, 0)
        self.ops.append(("mknod", path, kind | 0o640, rdev))

    def _chmod(self) -> None:
        path = self._pick("file", "dir", "node")
        if path:
            self.ops.append(("chmod", path, self.rng.randint(0, 0o7777)))

    def _chown(self) -> None:
        path = self._pick("file", "dir", "node", "symlink")
        if path:
            self.ops.append(("chown", path, self.rng.randint(0, 100000), self.rng.randint(0, 100000)))

    def _xattr(self) -> None:
        path = self._pick("file", "dir")
        if path:
            size = self.rng.choice([0, 5, 100, self.bs // 3])
            self.ops.append(("setxattr", path, f"user.k{self.rng.randint(0, 3)}", self.rng.randbytes(size)))

    def _rename(self) -> None:
        src = self._pick("file", "symlink", "node", "dir")
        if not src:
            return
        kind = self.kinds[src]
        if kind != "dir" and self.rng.random() < 0.3:
            dst = self._pick("file", "symlink", "node")
            if dst is None or dst == src:
                return
        else:
            parent = self._dir()
            if kind == "dir" and (parent == src or parent.startswith(src + "/")):
                return
            dst = self._child(parent)
        moved = {p: k for p, k in self.kinds.items() if p == src or p.startswith(src + "/")}
        for p in moved:
            del self.kinds[p]
        self.kinds.pop(dst, None)
        self.sizes.pop(dst, None)
        for p, k in moved.items():
            newp = dst + p[len(src):]
            self.kinds[newp] = k
            if p in self.sizes:
                self.sizes[newp] = self.sizes.pop(p)
        self.ops.append(("rename", src, dst))

    def _unlink(self) -> None:
        path = self._pick("file", "symlink", "node")
        if path:
            del self.kinds[path]
            self.sizes.pop(path, None)
            self.ops.append(("unlink", path))

    def _rmdir(self) -> None:
        empty = [p for p, k in self.kinds.items() if k == "dir" and p != "/"
                 and not any(q.startswith(p + "/") for q in self.kinds)]
        if empty:
            path = self.rng.choice(sorted(empty))
            del self.kinds[path]
            self.ops.append(("rmdir", path))

    def _truncate(self) -> None:
        path = self._pick("file")
        if path:
            size = self.rng.choice([0, 10, self.bs, self.bs * 3 + 1, self.sizes.get(path, 0) + 40 * self.bs])
            self.sizes[path] = size
            self.ops.append(("truncate", path, size))

    def _write_at(self) -> None:
        path = self._pick("file")
        if path:
            offset = self.rng.choice([0, 7, self.sizes.get(path, 0), self.sizes.get(path, 0) + 3 * self.bs + 5])
            data = self.rng.randbytes(self.rng.choice([1, 100, self.bs, 5 * self.bs + 2]))
            self.sizes[path] = max(self.sizes.get(path, 0), offset + len(data))
            self.ops.append(("write_at", path, offset, data))


def apply_pyext4(fs: Any, ops: list[tuple[Any, ...]]) -> None:
    for op, *args in ops:
        if op == "mkdir":
            path, mode, uid, gid = args
            fs.mkdir(path, mode, uid, gid)
        elif op == "write":
            path, data, mode, uid, gid = args
            fs.write_file(path, data, mode=mode, uid=uid, gid=gid)
        elif op == "symlink":
            fs.symlink(args[0], args[1])
        elif op == "link":
            fs.link(args[0], args[1])
        elif op == "mknod":
            path, mode, rdev = args
            fs.mknod(path, mode, rdev)
        elif op == "chmod":
            fs.chmod(args[0], args[1])
        elif op == "chown":
            fs.chown(args[0], args[1], args[2], follow_symlinks=False)
        elif op == "setxattr":
            fs.setxattr(args[0], args[1], args[2])
        elif op == "rename":
            fs.rename(args[0], args[1])
        elif op == "unlink":
            fs.unlink(args[0])
        elif op == "rmdir":
            fs.rmdir(args[0])
        elif op == "truncate":
            fs.truncate(args[0], args[1])
        elif op == "write_at":
            fs.write_at(args[0], args[1], args[2])
        else:  # pragma: no cover
            raise AssertionError(op)


def apply_kernel(root: Path, ops: list[tuple[Any, ...]]) -> None:
    def p(path: str) -> str:
        return str(root) + path

    for op, *args in ops:
        if op == "mkdir":
            path, mode, uid, gid = args
            os.mkdir(p(path))
            os.chown(p(path), uid, gid)
            os.chmod(p(path), mode)
        elif op == "write":
            path, data, mode, uid, gid = args
            fd = os.open(p(path), os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
            try:
                os.write(fd, data)
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
        elif op == "symlink":
            os.symlink(args[0], p(args[1]))
            os.lchown(p(args[1]), 0, 0)
        elif op == "link":
            os.link(p(args[0]), p(args[1]))
        elif op == "mknod":
            path, mode, rdev = args
            os.mknod(p(path), mode, os.makedev(*rdev))
            os.chown(p(path), 0, 0)  # pyext4 takes owners as given: no setgid-directory inheritance
            os.chmod(p(path), mode & 0o7777)
        elif op == "chmod":
            os.chmod(p(args[0]), args[1])
        elif op == "chown":
            # chown(2) clears set-id bits on files (not directories); pyext4 leaves modes alone.
            st = os.lstat(p(args[0]))
            os.chown(p(args[0]), args[1], args[2], follow_symlinks=False)
            if not statmod.S_ISLNK(st.st_mode):
                os.chmod(p(args[0]), statmod.S_IMODE(st.st_mode))
        elif op == "setxattr":
            os.setxattr(p(args[0]), args[1], args[2])
        elif op == "rename":
            os.rename(p(args[0]), p(args[1]))
        elif op == "unlink":
            os.unlink(p(args[0]))
        elif op == "rmdir":
            os.rmdir(p(args[0]))
        elif op == "truncate":
            os.truncate(p(args[0]), args[1])
        elif op == "write_at":
            fd = os.open(p(args[0]), os.O_WRONLY)
            try:
                os.pwrite(fd, args[2], args[1])
            finally:
                os.close(fd)
        else:  # pragma: no cover
            raise AssertionError(op)


@pytest.mark.parametrize("flavour", ["default", "1k", "ext3", "inline"])
def test_differential_against_kernel(tmp_path: Path, flavour: str) -> None:
    """The same operations by pyext4 and by the kernel give the same tree."""
    base = make_image(tmp_path / "base.img", flavour)
    ours, theirs = tmp_path / "pyext4.img", tmp_path / "kernel.img"
    copy_image(base, ours)
    copy_image(base, theirs)
    with Filesystem.open(base) as fs:
        bs = fs.block_size
    ops = _Plan(sum(map(ord, flavour)), bs).generate(250)
    with open_rw(ours) as fs:
        apply_pyext4(fs, ops)
    assert_clean(ours)
    with loop_mounted(theirs) as mnt:
        os.umask(0)
        try:
            apply_kernel(mnt, ops)
        finally:
            os.umask(0o022)
    assert_clean(theirs)
    with Filesystem.open(ours) as a, Filesystem.open(theirs) as b:
        mine, kernel = snapshot_fs(a, times=False), snapshot_fs(b, times=False)
    diff = diff_snapshots(kernel, mine, ("kernel", "pyext4"))
    assert not diff, diff
    with loop_mounted(ours, readonly=True) as mnt:
        seen = snapshot_host(mnt, times=False)
    diff = diff_snapshots(kernel, seen, ("kernel image", "pyext4 image via the kernel"))
    assert not diff, diff


# ================================================================ more shapes
def test_pyext4_grows_a_two_level_htree(tmp_path: Path) -> None:
    """pyext4 alone turns a directory into an htree, splits leaves and grows the root to two levels."""
    img = tmp_path / "levels.img"
    mkfs(img, "64M", block_size=1024, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    names = [f"{i:05d}-" + "L" * 180 for i in range(1500)]
    with open_rw(img) as fs:
        fs.mkdir("/d")
        for name in names:
            fs.write_file(f"/d/{name}", b"")
        for name in names[::3]:
            fs.unlink(f"/d/{name}")
        ino = fs.resolve("/d")
    expected = set(names) - set(names[::3])
    assert_clean(img)
    with Filesystem.open(img) as fs:
        root = fs.read_block(fs.extents_of(ino)[0].physical)
        assert root[0x1E] == 1  # indirect_levels: a root, index nodes, leaves
        assert set(fs.listdir("/d")) == expected
    with loop_mounted(img) as mnt:
        for name in expected:
            os.stat(mnt / "d" / name)
        (mnt / "d" / "kernel-added").write_bytes(b"k")
    assert_clean(img)


@pytest.mark.slow
def test_pyext4_grows_a_three_level_htree_with_large_dir(tmp_path: Path) -> None:
    """large_dir: past two index levels the root grows a third (1 KiB blocks, 255-byte names: about
    three entries a leaf); e2fsck and the kernel find every name."""
    img = tmp_path / "large.img"
    mkfs(img, "256M", block_size=1024, features="large_dir", inodes=70_000, uuid=UUID, hash_seed=HASH_SEED,
         now=NOW)
    names: list[str] = []
    levels = 0
    with open_rw(img) as fs:
        fs.mkdir("/d")
        ino = fs.resolve("/d")
        while levels < 2 and len(names) < 65_000:
            for _ in range(2000):
                name = f"{len(names):06d}-" + "W" * 248
                fs.write_file(f"/d/{name}", b"")
                names.append(name)
            levels = fs.read_block(fs.extents_of(ino)[0].physical)[0x1E]
    assert levels == 2, len(names)
    assert_clean(img)
    with Filesystem.open(img) as fs:
        assert sorted(fs.listdir("/d")) == names
        for name in names[::97]:
            fs.stat(f"/d/{name}")  # looked up through the three levels
    with loop_mounted(img) as mnt:
        for name in names[::97]:
            os.stat(mnt / "d" / name)
        (mnt / "d" / "kernel-added").write_bytes(b"k")
    assert_clean(img)


def test_big_sparse_file_and_uninit_groups(tmp_path: Path) -> None:
    """A file past 4 GiB, and allocations in groups that were never initialised (BLOCK/INODE_UNINIT)."""
    img = tmp_path / "big.img"
    mkfs(img, "96M", block_size=1024, flex_bg_size=1, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    with Filesystem.open(img) as fs:
        uninit = [g for g in range(fs.geo.group_count) if fs.group_desc(g).flags & 0x3]
    assert len(uninit) > 4
    expected: dict[str, bytes] = {}
    with open_rw(img) as fs:
        fs.write_file("/huge", b"start")
        fs.write_at("/huge", 5 << 30, b"past four GiB")
        for d in range(12):  # top-level directories spread over the groups
            fs.mkdir(f"/top{d}")
            data = os.urandom(3 << 20)
            fs.write_file(f"/top{d}/blob", data)
            expected[f"top{d}/blob"] = data
    assert_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.stat("/huge").st_size == (5 << 30) + 13
        assert fs.read_range(fs.resolve("/huge"), fs.inode(fs.resolve("/huge")), 5 << 30, 13) == b"past four GiB"
        touched = [g for g in uninit if not fs.group_desc(g).flags & 0x3]
        assert touched, "no uninitialised group was used"
    with loop_mounted(img) as mnt:
        with open(mnt / "huge", "rb") as f:
            assert f.read(5) == b"start"
            f.seek(5 << 30)
            assert f.read() == b"past four GiB"
        for name, data in expected.items():
            assert (mnt / name).read_bytes() == data
        (mnt / "top3" / "more").write_bytes(os.urandom(1 << 20))
    assert_clean(img)


def test_shared_xattr_value_inodes(tmp_path: Path) -> None:
    """ea_inode: two files share one value inode; deleting one keeps it, deleting both frees it."""
    img = tmp_path / "ea.img"
    img.touch()
    os.truncate(img, 64 << 20)
    mke2fs(img, "-t", "ext4", "-O", "ea_inode", "-b", "1024")
    value = os.urandom(3000)  # bigger than a block: stored in an EA inode
    with loop_mounted(img) as mnt:
        for name in ("one", "two"):
            (mnt / name).write_bytes(b"data")
            os.setxattr(mnt / name, "user.big", value)
    with Filesystem.open(img) as fs:
        entries = [e for e in fs.xattr_entries(fs.resolve("/one")) if e.value_inum]
        assert entries, "the kernel did not use an EA inode"
        ea = entries[0].value_inum
        free_before = fs.sb["s_free_inodes_count"]
    with open_rw(img) as fs:
        fs.unlink("/one")
    assert_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.xattrs("/two") == {"user.big": value}
        assert fs.sb["s_free_inodes_count"] == free_before + 1
        assert fs.inode(ea).links_count == 1
    with open_rw(img) as fs:
        fs.unlink("/two")
    assert_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.sb["s_free_inodes_count"] == free_before + 3  # both files and the value inode


def test_shared_xattr_blocks(tmp_path: Path) -> None:
    """The kernel shares one xattr block between files with equal xattrs; pyext4 copies on write."""
    img = tmp_path / "xshare.img"
    mkfs(img, "32M", block_size=1024, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    value = b"v" * 400  # too big for the inode: an xattr block, shared by identical sets
    with loop_mounted(img) as mnt:
        for name in ("a", "b", "c", "d"):
            (mnt / name).write_bytes(name.encode())
            os.setxattr(mnt / name, "user.shared", value)
    with Filesystem.open(img) as fs:
        blocks = {fs.inode(fs.resolve(f"/{n}")).file_acl for n in "abcd"}
        assert len(blocks) == 1 and 0 not in blocks, "the kernel did not share the block"
    with open_rw(img) as fs:
        fs.setxattr("/a", "user.own", b"mine")  # a gets its own copy
        fs.unlink("/b")  # drops one reference
        fs.removexattr("/c", "user.shared")  # c leaves the shared block
    assert_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.xattrs("/a") == {"user.shared": value, "user.own": b"mine"}
        assert fs.xattrs("/c") == {}
        assert fs.xattrs("/d") == {"user.shared": value}
        shared = fs.inode(fs.resolve("/d")).file_acl
        assert int.from_bytes(fs.read_block(shared)[4:8], "little") == 1  # only d uses it now
    with loop_mounted(img) as mnt:
        assert os.getxattr(mnt / "a", "user.own") == b"mine"
        assert os.getxattr(mnt / "d", "user.shared") == value
        assert os.listxattr(mnt / "c") == []
        os.setxattr(mnt / "c", "user.shared", value)  # the kernel may share d's block again
    assert_clean(img)
