"""A hypothesis state machine: random operation sequences applied to an image and to a model tree.

After each run pyext4's view must equal the model and ``e2fsck -fn`` must
be clean; where loop mounts work, the kernel's view must equal the model too,
and after the kernel writes more and unmounts, e2fsck must still be clean.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyext4 import (
    DirectoryNotEmpty,
    Ext4Error,
    FileExists,
    InvalidPath,
    IsADirectory,
    NoSpace,
    NotADirectory,
)
from tests.conftest import loop_mounted, mount_unavailable
from tests.integration.test_writer import (
    NOW,
    NS,
    MNode,
    Model,
    assert_clean,
    assert_fs_matches_model,
    diff_snapshots,
    fsck_output,
    is_ancestor,
    kernel_writes_more,
    make_image,
    open_rw,
    snapshot_host,
)

_CACHE: dict[str, Path] = {}
_WORK = Path(tempfile.mkdtemp(prefix="pyext4-state-"))

SHORT_NAME = st.text(alphabet="abcdefgxyz0123-_.é", min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
LONG_NAME = st.builds(lambda n, c: (c * 255)[:n], st.integers(100, 255), st.sampled_from("LMNOP"))
NAMES = st.one_of(SHORT_NAME, SHORT_NAME, SHORT_NAME, LONG_NAME).map(lambda s: s.encode())


def _child(parent: str, name: bytes) -> str:
    sname = name.decode("utf-8", "surrogateescape")
    return "/" + sname if parent == "/" else parent + "/" + sname


class WriterMachine(RuleBasedStateMachine):
    flavour = "default"

    def __init__(self) -> None:
        super().__init__()
        self.image = Path(tempfile.mkstemp(dir=_WORK, suffix=".img")[1])
        make_image(self.image, self.flavour, _CACHE)
        self.fs = open_rw(self.image)
        self.model = Model.from_fs(self.fs)
        self.bs = self.fs.block_size
        self.inode_size = self.fs.geo.inode_size
        self.steps = 0

    # ------------------------------------------------------------ helpers
    def _pick(self, data: Any, choices: list[str], label: str) -> str:
        return data.draw(st.sampled_from(choices), label=label)

    def _removable(self) -> list[str]:
        return [p for p in self.model.entries() if p != "/lost+found"]

    def _expect(self, errors: tuple[type[BaseException], ...] | None, fn: Any, *args: Any, **kwargs: Any) -> bool:
        """Run ``fn``; when ``errors`` is given it must raise one of them. True when it succeeded."""
        try:
            fn(*args, **kwargs)
        except NoSpace:
            return False
        except Ext4Error as exc:
            assert errors, f"{fn.__name__}{args} raised {exc!r} unexpectedly"
            assert isinstance(exc, errors), f"{fn.__name__}{args} raised {exc!r}, expected {errors}"
            return False
        assert not errors, f"{fn.__name__}{args} succeeded, expected {errors}"
        return True

    def _sizes(self) -> st.SearchStrategy[int]:
        bs = self.bs
        return st.one_of(
            st.sampled_from([0, 1, 59, 60, 61, bs - 1, bs, bs + 1, 4 * bs, 12 * bs + 5, 13 * bs]),
            st.integers(0, 3 * bs),
            st.sampled_from([1 << 20, 2_500_000]).filter(lambda _: True),
        )

    def _content(self, size: int, seed: int) -> bytes:
        return random.Random(seed).randbytes(size)

    def _touch_dir(self, node: MNode) -> None:
        node.mtime = NOW * NS

    # -------------------------------------------------------------- rules
    @rule(data=st.data(), name=NAMES, seed=st.integers(0, 1 << 30), mode=st.sampled_from([0o644, 0o600, 0o4755]),
          owner=st.sampled_from([(0, 0), (1000, 1000), (70000, 5)]), replace=st.booleans())
    def write_file(self, data: Any, name: bytes, seed: int, mode: int, owner: tuple[int, int], replace: bool) -> None:
        size = data.draw(self._sizes(), label="size")
        parent = self._pick(data, self.model.dirs(), "parent")
        path = _child(parent, name)
        existing = self.model.get(path)
        payload = self._content(size, seed)
        errors: tuple[type[BaseException], ...] | None = None
        if existing is not None and not replace:
            errors = (FileExists,)
        elif existing is not None and existing.kind == "dir":
            errors = (IsADirectory,)
        if path == "/lost+found":
            return
        if self._expect(errors, self.fs.write_file, path, payload, mode=mode, uid=owner[0], gid=owner[1],
                        replace=replace):
            pnode = self.model.get(parent)
            assert pnode is not None
            if existing is not None and existing.kind == "file":
                node = existing
            else:
                node = MNode("file", mode)
                pnode.children[name] = node
                self._touch_dir(pnode)
            node.perm, node.uid, node.gid = mode, owner[0], owner[1]
            node.data = bytearray(payload)
            node.mtime = NOW * NS

    @rule(data=st.data(), name=NAMES, seed=st.integers(0, 1 << 30))
    def write_sparse_host_file(self, data: Any, name: bytes, seed: int) -> None:
        """A host file with holes (SEEK_DATA/SEEK_HOLE path)."""
        parent = self._pick(data, self.model.dirs(), "parent")
        path = _child(parent, name)
        if self.model.get(path) is not None:
            return
        rng = random.Random(seed)
        size = rng.choice([self.bs * 40 + 7, 1 << 20, 3 * self.bs])
        host = _WORK / f"host-{seed}"
        buf = bytearray(size)
        with open(host, "wb") as f:
            f.truncate(size)
            for _ in range(rng.randint(0, 4)):
                off = rng.randrange(0, size)
                piece = rng.randbytes(min(rng.randint(1, 3 * self.bs), size - off))
                os.pwrite(f.fileno(), piece, off)
                buf[off : off + len(piece)] = piece
        try:
            ok = self._expect(None, self.fs.write_file, path, str(host), mode=0o640)
        finally:
            host.unlink()
        if ok:
            pnode = self.model.get(parent)
            assert pnode is not None
            node = MNode("file", 0o640)
            node.data = buf
            pnode.children[name] = node
            self._touch_dir(pnode)

    @rule(data=st.data(), name=NAMES, mode=st.sampled_from([0o755, 0o700, 0o1777]))
    def mkdir(self, data: Any, name: bytes, mode: int) -> None:
        parent = self._pick(data, self.model.dirs(), "parent")
        path = _child(parent, name)
        existing = self.model.get(path)
        if self._expect((FileExists,) if existing is not None else None, self.fs.mkdir, path, mode, 5, 6):
            pnode = self.model.get(parent)
            assert pnode is not None
            pnode.children[name] = MNode("dir", mode, 5, 6)
            self._touch_dir(pnode)

    @rule(data=st.data(), name=NAMES, n=st.integers(20, 250), long=st.booleans())
    def many_files(self, data: Any, name: bytes, n: int, long: bool) -> None:
        """Enough entries in one directory to make it an htree and split leaves."""
        parent = self._pick(data, self.model.dirs(), "parent")
        pnode = self.model.get(parent)
        assert pnode is not None
        for i in range(n):
            entry = name[:40] + (b"-%04d" % i) + (b"z" * 150 if long else b"")
            path = _child(parent, entry)
            if entry in pnode.children:
                continue
            if not self._expect(None, self.fs.write_file, path, entry[:20], mode=0o644):
                return
            node = MNode("file", 0o644)
            node.data = bytearray(entry[:20])
            pnode.children[entry] = node
            self._touch_dir(pnode)

    @rule(data=st.data(), name=NAMES, length=st.sampled_from([1, 20, 59, 60, 61, 200, 1000]),
          seed=st.integers(0, 1000))
    def symlink(self, data: Any, name: bytes, length: int, seed: int) -> None:
        parent = self._pick(data, self.model.dirs(), "parent")
        path = _child(parent, name)
        length = min(length, self.bs - 1)
        target = (b"../target/%d/" % seed * 100)[:length]
        existing = self.model.get(path)
        if self._expect((FileExists,) if existing is not None else None, self.fs.symlink, target, path,
                        uid=3, gid=4):
            pnode = self.model.get(parent)
            assert pnode is not None
            node = MNode("symlink", 0o777, 3, 4)
            node.target = target
            pnode.children[name] = node
            self._touch_dir(pnode)

    @precondition(lambda self: any(n.kind != "dir" for _p, n in self.model.walk()))
    @rule(data=st.data(), name=NAMES)
    def link(self, data: Any, name: bytes) -> None:
        sources = [p for p, n in self.model.walk() if n.kind != "dir"]
        src = self._pick(data, sorted(sources), "src")
        parent = self._pick(data, self.model.dirs(), "parent")
        path = _child(parent, name)
        existing = self.model.get(path)
        if self._expect((FileExists,) if existing is not None else None, self.fs.link, src, path):
            pnode = self.model.get(parent)
            node = self.model.get(src)
            assert pnode is not None and node is not None
            pnode.children[name] = node
            self._touch_dir(pnode)

    @rule(data=st.data(), name=NAMES, kind=st.sampled_from(["chr", "blk", "fifo", "sock"]),
          rdev=st.tuples(st.integers(0, 4095), st.integers(0, 1 << 19)))
    def mknod(self, data: Any, name: bytes, kind: str, rdev: tuple[int, int]) -> None:
        import stat as statmod

        parent = self._pick(data, self.model.dirs(), "parent")
        path = _child(parent, name)
        ftype = {"chr": statmod.S_IFCHR, "blk": statmod.S_IFBLK, "fifo": statmod.S_IFIFO, "sock": statmod.S_IFSOCK}
        if kind not in ("chr", "blk"):
            rdev = (0, 0)
        existing = self.model.get(path)
        if self._expect((FileExists,) if existing is not None else None, self.fs.mknod, path,
                        ftype[kind] | 0o640, rdev, uid=7, gid=8):
            pnode = self.model.get(parent)
            assert pnode is not None
            node = MNode(kind, 0o640, 7, 8)
            node.rdev = rdev
            pnode.children[name] = node
            self._touch_dir(pnode)

    @precondition(lambda self: len(self.model.entries()) > 1)
    @rule(data=st.data())
    def unlink(self, data: Any) -> None:
        path = self._pick(data, self._removable(), "path")
        node = self.model.get(path)
        assert node is not None
        if self._expect((IsADirectory,) if node.kind == "dir" else None, self.fs.unlink, path):
            pnode, name = self.model.parent_of(path)
            assert pnode is not None
            del pnode.children[name]
            self._touch_dir(pnode)

    @precondition(lambda self: len(self.model.dirs()) > 2)
    @rule(data=st.data())
    def rmdir(self, data: Any) -> None:
        path = self._pick(data, [p for p in self.model.dirs() if p not in ("/", "/lost+found")], "path")
        node = self.model.get(path)
        assert node is not None
        errors = (DirectoryNotEmpty,) if node.children else None
        if self._expect(errors, self.fs.rmdir, path):
            pnode, name = self.model.parent_of(path)
            assert pnode is not None
            del pnode.children[name]
            self._touch_dir(pnode)

    @precondition(lambda self: len(self.model.entries()) > 1)
    @rule(data=st.data())
    def remove_tree(self, data: Any) -> None:
        path = self._pick(data, self._removable(), "path")
        if self._expect(None, self.fs.remove_tree, path):
            pnode, name = self.model.parent_of(path)
            assert pnode is not None
            del pnode.children[name]
            self._touch_dir(pnode)

    @precondition(lambda self: len(self.model.entries()) > 1)
    @rule(data=st.data(), name=NAMES, onto_existing=st.booleans())
    def rename(self, data: Any, name: bytes, onto_existing: bool) -> None:
        src = self._pick(data, self._removable(), "src")
        if onto_existing:
            dst = self._pick(data, self._removable(), "dst")
        else:
            parent = self._pick(data, self.model.dirs(), "parent")
            dst = _child(parent, name)
        snode = self.model.get(src)
        dnode = self.model.get(dst)
        assert snode is not None
        errors: tuple[type[BaseException], ...] | None = None
        if dst == "/lost+found":
            return
        if snode.kind == "dir" and is_ancestor(src, dst) and src != dst:
            errors = (InvalidPath, DirectoryNotEmpty)
        elif dnode is not None and dnode is not snode:
            if dnode.kind == "dir":
                if snode.kind != "dir":
                    errors = (IsADirectory,)
                elif dnode.children:
                    errors = (DirectoryNotEmpty, InvalidPath)
            elif snode.kind == "dir":
                errors = (NotADirectory,)
        if self._expect(errors, self.fs.rename, src, dst):
            if dnode is snode:
                return  # same file (or hard links of one file): rename does nothing
            sparent, sname = self.model.parent_of(src)
            dparent, dname = self.model.parent_of(dst)
            assert sparent is not None and dparent is not None
            del sparent.children[sname]
            dparent.children[dname] = snode
            self._touch_dir(sparent)
            self._touch_dir(dparent)

    @precondition(lambda self: len(self.model.entries()) > 1)
    @rule(data=st.data(), mode=st.integers(0, 0o7777))
    def chmod(self, data: Any, mode: int) -> None:
        path = self._pick(data, [p for p, n in self.model.walk() if n.kind != "symlink"], "path")
        if self._expect(None, self.fs.chmod, path, mode):
            node = self.model.get(path)
            assert node is not None
            node.perm = mode

    @rule(data=st.data(), uid=st.integers(0, (1 << 32) - 2), gid=st.integers(0, 70000))
    def chown(self, data: Any, uid: int, gid: int) -> None:
        path = self._pick(data, [p for p, _n in self.model.walk()], "path")
        if self._expect(None, self.fs.chown, path, uid, gid, follow_symlinks=False):
            node = self.model.get(path)
            assert node is not None
            node.uid, node.gid = uid, gid

    @rule(data=st.data(), mtime=st.integers(1, (1 << 31) - 1), frac=st.integers(0, NS - 1))
    def utime(self, data: Any, mtime: int, frac: int) -> None:
        path = self._pick(data, [p for p, n in self.model.walk() if n.kind != "symlink"], "path")
        ns = mtime * NS + (frac if self.inode_size > 128 else 0)
        if self._expect(None, self.fs.utime, path, ns=(ns, ns)):
            node = self.model.get(path)
            assert node is not None
            node.mtime = ns

    @rule(data=st.data(), key=st.sampled_from(["user.a", "user.bb", "user.long-name-" + "q" * 40]),
          size=st.sampled_from([0, 1, 30, 100, 300, 700]), seed=st.integers(0, 100))
    def setxattr(self, data: Any, key: str, size: int, seed: int) -> None:
        path = self._pick(data, [p for p, n in self.model.walk() if n.kind in ("file", "dir")], "path")
        size = min(size, self.bs // 4)
        value = self._content(size, seed)
        if self._expect(None, self.fs.setxattr, path, key, value):
            node = self.model.get(path)
            assert node is not None
            node.xattrs[key] = value

    @precondition(lambda self: any(n.xattrs for _p, n in self.model.walk()))
    @rule(data=st.data())
    def removexattr(self, data: Any) -> None:
        path = self._pick(data, [p for p, n in self.model.walk() if n.xattrs], "path")
        node = self.model.get(path)
        assert node is not None
        key = self._pick(data, sorted(node.xattrs), "key")
        if self._expect(None, self.fs.removexattr, path, key):
            del node.xattrs[key]

    @precondition(lambda self: any(n.kind == "file" for _p, n in self.model.walk()))
    @rule(data=st.data())
    def truncate(self, data: Any) -> None:
        path = self._pick(data, [p for p, n in self.model.walk() if n.kind == "file"], "path")
        node = self.model.get(path)
        assert node is not None
        size = data.draw(st.one_of(self._sizes(), st.integers(0, max(1, len(node.data))),
                                   st.just(len(node.data) + 50 * self.bs)), label="size")
        if self._expect(None, self.fs.truncate, path, size):
            if size < len(node.data):
                del node.data[size:]
            else:
                node.data += bytes(size - len(node.data))
            node.mtime = NOW * NS

    @precondition(lambda self: any(n.kind == "file" for _p, n in self.model.walk()))
    @rule(data=st.data(), seed=st.integers(0, 1000))
    def write_at(self, data: Any, seed: int) -> None:
        """pwrite into a file: inside it, at its end, or past it (leaving a hole)."""
        path = self._pick(data, [p for p, n in self.model.walk() if n.kind == "file"], "path")
        node = self.model.get(path)
        assert node is not None
        size = len(node.data)
        offset = data.draw(st.one_of(st.integers(0, size), st.just(size),
                                     st.integers(size, size + 20 * self.bs)), label="offset")
        length = data.draw(st.sampled_from([1, 10, 100, self.bs - 1, self.bs, 3 * self.bs + 7, 40 * self.bs]),
                           label="length")
        payload = self._content(length, seed)
        if self._expect(None, self.fs.write_at, path, offset, payload):
            if offset > size:
                node.data += bytes(offset - size)
            node.data[offset : offset + length] = payload
            node.mtime = NOW * NS

    @rule()
    def reopen(self) -> None:
        """Flush, check with e2fsck and our reader, and go on in a fresh instance."""
        self.fs.close()
        out = fsck_output(self.image)
        assert out.startswith("status 0"), out
        assert_fs_matches_model(self.image, self.model)
        self.fs = open_rw(self.image)

    @invariant()
    def count_steps(self) -> None:
        self.steps += 1

    def teardown(self) -> None:
        try:
            self.fs.close()
            out = fsck_output(self.image)
            assert out.startswith("status 0"), out
            assert_fs_matches_model(self.image, self.model)
            if mount_unavailable() is None:
                with loop_mounted(self.image) as mnt:
                    got = snapshot_host(mnt)
                    want = self.model.snapshot()
                    diff = diff_snapshots(want, got, ("model", "kernel"))
                    assert not diff, diff
                    kernel_writes_more(mnt)
                assert_clean(self.image)
        finally:
            self.image.unlink(missing_ok=True)


def _machine(flavour: str, examples: int, steps: int) -> Any:
    cls = type(f"WriterMachine_{flavour}", (WriterMachine,), {"flavour": flavour})
    test_case: Any = cls.TestCase  # type: ignore[attr-defined]
    test_case.settings = settings(
        max_examples=examples * int(os.environ.get("PYEXT4_STATE_SCALE", "1")), stateful_step_count=int(os.environ.get("PYEXT4_STATE_STEPS", steps)), deadline=None,
        suppress_health_check=list(HealthCheck), print_blob=True,
        # PYEXT4_STATE_NOSHRINK=1 reports the first failure unshrunk (shrinking image runs is slow).
        phases=[Phase.explicit, Phase.reuse, Phase.generate] if os.environ.get("PYEXT4_STATE_NOSHRINK") else list(Phase),
    )
    return test_case


# About a minute in all (PYEXT4_STATE_SCALE=N runs N times the examples, PYEXT4_STATE_STEPS=M longer ones).
TestDefault = _machine("default", 30, 50)
TestOneK = _machine("1k", 24, 50)
TestNoCsum = _machine("nocsum", 12, 40)
TestNo64 = _machine("no64", 12, 40)
TestExt3 = _machine("ext3", 24, 50)
TestInline = _machine("inline", 24, 50)


def teardown_module() -> None:
    import shutil

    shutil.rmtree(_WORK, ignore_errors=True)


@pytest.fixture(autouse=True)
def _quiet_warnings() -> None:
    return None
