"""extract: an exact round trip of the source tree, and safety against hostile images and destinations.

Round trips compare the extracted tree with the source (``mke2fs -d`` images: what mke2fs keeps)
and with the kernel's view (kernel-written images: everything, ns times included).  The safety
tests craft images whose directory entries were edited byte by byte (names with '/', NUL, '..';
a symlink and a directory of the same name; a hardlink whose first name is refused; a directory
that contains its ancestor) and destinations with things in the way, and check that nothing
outside DEST is created or changed (DEST's parent is snapshotted before and after).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pyext4 import dirent as D
from pyext4 import extract as extract_mod
from pyext4.extract import extract
from pyext4.reader import Filesystem
from tests.conftest import mke2fs
from tests.integration.test_reader import (
    IS_ROOT,
    compare,
    host_view,
    kernel_mount,
    make_big_dir,
    make_tree,
)

needs_root = pytest.mark.skipif(not IS_ROOT, reason="owners, devices and trusted xattrs need root")


@pytest.fixture(autouse=True, params=[1, 2], ids=["1job", "2jobs"])
def jobs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Every test here runs twice: one process, and two (forked) sharing even the smallest tree."""
    monkeypatch.setattr(extract_mod, "_PARALLEL_MIN_ENTRIES", 1)
    monkeypatch.setattr(sys.modules[__name__], "extract", functools.partial(extract, jobs=request.param))
    return int(request.param)


# ====================================================================== helpers
def snapshot(top: Path, exclude: Path | None = None) -> dict[str, Any]:
    """Everything under ``top`` (except ``exclude``): type, mode, owner, size, times, content hash, target."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if exclude is not None and Path(dirpath) == exclude.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath) / d != exclude]
        for name in dirnames + filenames + ["."]:
            p = Path(dirpath) / name
            if exclude is not None and p == exclude:
                continue
            st = os.lstat(p)
            rec = [st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_nlink]
            if stat.S_ISLNK(st.st_mode):
                rec.append(os.readlink(p))
            elif stat.S_ISREG(st.st_mode) and st.st_size < (1 << 20):
                rec.append(hashlib.sha256(p.read_bytes()).hexdigest())
            out[os.path.relpath(p, top)] = rec
    return out


def dir_entries_raw(fs: Filesystem, path: str) -> list[tuple[int, int, D.DirEntry]]:
    """(byte offset in the image, block size, entry) of every live entry of a linear directory."""
    ino = fs.resolve(path)
    inode = fs.inode(ino)
    out = []
    bs = fs.block_size
    for ext in fs.extents_of(ino, inode):
        for k in range(ext.length):
            block = ext.physical + k
            raw = fs.read_block(block)
            for e in D.parse_block(raw, block_size=bs, filetype=fs.filetype, has_tail=D.has_tail(raw)):
                out.append((block * bs, bs, e))
    return out


def edit_entries(image: Path, dir_path: str, edits: dict[int, dict[str, Any]]) -> None:
    """Change entries of ``dir_path`` in place (by their index in on-disk order).

    Each edit may set ``name`` (same length as before), ``ino`` and ``file_type``; the
    directory block checksum is recomputed when the image has metadata_csum.
    """
    with Filesystem.open(image) as fs:
        entries = dir_entries_raw(fs, dir_path)
        dir_ino = fs.resolve(dir_path)
        iseed = fs._iseed(dir_ino, fs.inode(dir_ino)) if fs.metadata_csum else None
    data = bytearray(image.read_bytes())
    touched = set()
    for index, change in edits.items():
        block_offset, bs, e = entries[index]
        at = block_offset + e.offset
        if "name" in change:
            name = change["name"]
            assert len(name) == len(e.name), "names keep their length"
            data[at + 8 : at + 8 + len(name)] = name
        if "ino" in change:
            struct.pack_into("<I", data, at, change["ino"])
        if "file_type" in change:
            data[at + 7] = change["file_type"]
        touched.add((block_offset, bs))
    if iseed is not None:
        for block_offset, bs in touched:
            buf = bytearray(data[block_offset : block_offset + bs])
            D.set_leaf_csum(buf, iseed)
            data[block_offset : block_offset + bs] = buf
    image.write_bytes(bytes(data))


def names_in_order(image: Path, dir_path: str) -> list[bytes]:
    with Filesystem.open(image) as fs:
        return [e.name for _, _, e in dir_entries_raw(fs, dir_path)]


def build(tmp: Path, populate: Any, *args: str, name: str = "img") -> Path:
    src = tmp / f"src-{name}"
    src.mkdir()
    populate(src)
    image = tmp / f"{name}.img"
    mke2fs(image, "-t", "ext4", "-b", "1024", *args, size="8M", root=str(src))
    return image


@pytest.fixture
def arena(tmp_path: Path) -> dict[str, Path]:
    """A parent directory holding DEST and an 'outside' directory that must stay untouched."""
    parent = tmp_path / "arena"
    parent.mkdir()
    outside = parent / "outside"
    outside.mkdir()
    (outside / "victim").write_text("must not change\n")
    return {"parent": parent, "dest": parent / "dest", "outside": outside}


def assert_untouched(arena: dict[str, Path], before: dict[str, Any]) -> None:
    after = snapshot(arena["parent"], exclude=arena["dest"])
    # The parent's own mtime changes when DEST is created in it; nothing else may.
    before = {k: v for k, v in before.items() if k != "."}
    after = {k: v for k, v in after.items() if k != "."}
    assert after == before, f"outside DEST changed: {set(after) ^ set(before) or 'contents'}"


# ====================================================================== round trips
def _sparse_blocks(p: Path) -> int:
    return os.stat(p).st_blocks


@pytest.mark.parametrize("fs_args", [["-t", "ext4", "-b", "4096"], ["-t", "ext2", "-b", "1024"],
                                     ["-t", "ext4", "-b", "4096", "-O", "inline_data"]],
                         ids=["ext4-4k", "ext2-1k", "ext4-inline"])
def test_round_trip_mke2fs(fs_args: list[str], tmp_path: Path) -> None:
    """Source -> mke2fs -d -> extract equals the source in everything mke2fs -d keeps."""
    src = make_tree(tmp_path / "src", block_size=4096, acl=True)
    image = tmp_path / "img.img"
    mke2fs(image, *fs_args, size="64M", root=str(src))
    dest = tmp_path / "dest"
    with Filesystem.open(image) as fs:
        report = extract(fs, dest)
    assert not report.errors, report.errors
    lost: tuple[str, ...] = ()
    if "inline_data" in fs_args:
        lost = ("/files/sparse", "/files/fallocated")  # mke2fs -d drops their trailing holes (see test_reader)
    # host_view of DEST also gives lost+found, made by mke2fs: compare it separately.
    extracted = host_view(dest)
    assert stat.S_ISDIR(extracted.pop("/lost+found")["mode"])
    compare(host_view(src), extracted, times="mke2fs", data_lost=lost)
    # Sparse files stay sparse.
    if not lost:
        assert _sparse_blocks(dest / "files" / "sparse") <= _sparse_blocks(src / "files" / "sparse") + 16
    assert _sparse_blocks(dest / "files" / "sparse") < (8 << 20) // 512 // 4
    # Hardlinks are hardlinks on the host.
    assert os.stat(dest / "links" / "hard-a").st_ino == os.stat(dest / "files" / "hard-c").st_ino
    assert report.hardlinks == 2


def test_parallel_workers_share_the_tree(jobs: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With jobs=2 a forked worker extracts part of the files (and its report is merged); when a
    worker dies, the extraction says so instead of passing over the missing files."""
    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(50):
            (src / f"d{d}" / f"f{f}").write_bytes(bytes([f]) * (f * 997))
    image = tmp_path / "img.img"
    mke2fs(image, "-t", "ext4", size="16M", root=str(src))
    parent = os.getpid()
    real_chunk = extract_mod._Extractor._extract_chunk
    first_call = [True]

    def chunk(self: Any, leaves: Any, **kw: Any) -> Any:
        if os.getpid() == parent:
            if first_call[0]:  # let the child take chunks before this process takes them all
                first_call[0] = False
                time.sleep(0.2)
        else:  # tell the parent, through a file, how much a child did
            with open(tmp_path / f"child-{os.getpid()}", "a") as f:
                f.write(f"{len(leaves)}\n")
        return real_chunk(self, leaves, **kw)

    monkeypatch.setattr(extract_mod._Extractor, "_extract_chunk", chunk)
    with Filesystem.open(image) as fs:
        report = extract(fs, tmp_path / "dest")
    assert not report.errors, report.errors
    assert report.files == 200 and report.directories == 5  # d0..d3 and lost+found
    for d in range(4):
        for f in range(50):
            assert (tmp_path / "dest" / f"d{d}" / f"f{f}").read_bytes() == bytes([f]) * (f * 997)
    children = [p for p in tmp_path.iterdir() if p.name.startswith("child-")]
    assert len(children) == jobs - 1
    if jobs == 1:
        return
    assert sum(int(n) for n in children[0].read_text().split()) > 0  # the child extracted some files

    def dying(self: Any, leaves: Any, **kw: Any) -> Any:
        if os.getpid() != parent:
            os._exit(3)
        return real_chunk(self, leaves, **kw)

    monkeypatch.setattr(extract_mod._Extractor, "_extract_chunk", dying)
    with Filesystem.open(image) as fs:
        report = extract(fs, tmp_path / "dest2")
    assert any("extraction worker" in e and "failed" in e for e in report.errors), report.errors

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(extract_mod._Extractor, "_extract_chunk", real_chunk)
    monkeypatch.setattr(os, "fork", no_fork)  # no process to be had: this one does everything
    with Filesystem.open(image) as fs:
        report = extract(fs, tmp_path / "dest3")
    assert not report.errors and report.files == 200
    assert (tmp_path / "dest3" / "d3" / "f49").read_bytes() == bytes([49]) * (49 * 997)


def _linked_tree(src: Path, files: int = 200, links: int = 20) -> None:
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(files // 4):
            (src / f"d{d}" / f"f{f}").write_bytes(b"%d-%d\n" % (d, f))
    (src / "links").mkdir()
    for i in range(links):
        os.link(src / "d0" / f"f{i}", src / "links" / f"l{i}")


def test_parallel_ignores_a_default_socket_timeout(tmp_path: Path) -> None:
    """socket.setdefaulttimeout() (here: non-blocking) must not make a worker give up waiting."""
    import socket

    _linked_tree(tmp_path / "src")
    image = tmp_path / "img.img"
    mke2fs(image, "-t", "ext4", size="16M", root=str(tmp_path / "src"))
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.0)
    try:
        with Filesystem.open(image) as fs:
            listing = fs.dir_entries

            def slow_listing(*args: Any) -> Any:  # a slow walk: workers wait for the next chunk
                time.sleep(0.05)
                return listing(*args)

            fs.dir_entries = slow_listing  # type: ignore[method-assign]
            report = extract(fs, tmp_path / "dest")
    finally:
        socket.setdefaulttimeout(before)
    assert not report.errors, report.errors
    assert report.files == 200 and report.hardlinks == 20
    assert os.stat(tmp_path / "dest" / "links" / "l7").st_ino == os.stat(tmp_path / "dest" / "d0" / "f7").st_ino


def test_children_reaped_elsewhere(tmp_path: Path) -> None:
    """With SIGCHLD ignored the kernel reaps the workers itself: no ChildProcessError escapes."""
    import signal

    _linked_tree(tmp_path / "src")
    image = tmp_path / "img.img"
    mke2fs(image, "-t", "ext4", size="16M", root=str(tmp_path / "src"))
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with Filesystem.open(image) as fs:
            report = extract(fs, tmp_path / "dest")
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert not report.errors, report.errors
    assert report.files == 200 and report.hardlinks == 20


def test_entry_that_says_file_but_is_a_directory(tmp_path: Path) -> None:
    """A damaged entry's file type (regular file, for a directory) does not lose the subtree."""
    src = tmp_path / "src"
    _linked_tree(src, links=0)
    image = tmp_path / "img.img"
    mke2fs(image, "-t", "ext4", size="16M", root=str(src))
    order = names_in_order(image, "/")
    edit_entries(image, "/", {order.index(b"d2"): {"file_type": 1}})
    with Filesystem.open(image) as fs:
        report = extract(fs, tmp_path / "dest")
    assert not report.errors, report.errors
    assert sorted(p.name for p in (tmp_path / "dest" / "d2").iterdir()) == sorted(f"f{i}" for i in range(50))
    assert (tmp_path / "dest" / "d2" / "f3").read_bytes() == b"2-3\n"
    assert report.files == 200 and report.directories == 6  # d0-d3, links, lost+found


def test_warnings_of_every_process_reach_the_caller(tmp_path: Path) -> None:
    """verify="warn": a bad inode checksum is a Python warning in the caller, whichever process read it."""
    import warnings

    from pyext4.reader import Ext4Warning

    src = tmp_path / "src"
    _linked_tree(src, links=0)
    image = tmp_path / "img.img"
    mke2fs(image, "-t", "ext4", size="16M", root=str(src))
    data = bytearray(image.read_bytes())
    with Filesystem.open(image) as fs:
        bs, isz, ipg = fs.block_size, fs.geo.inode_size, fs.geo.inodes_per_group
        for f in range(0, 50, 5):  # ten files in each of two directories
            for d in ("d1", "d3"):
                ino = fs.resolve(f"/{d}/f{f}")
                group, index = divmod(ino - 1, ipg)
                at = fs.group_desc(group).inode_table * bs + index * isz
                data[at + 0x7C] ^= 0xFF  # i_checksum_lo
    image.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Filesystem.open(image, verify="warn") as fs:
            report = extract(fs, tmp_path / "dest")
    assert not report.errors, report.errors
    assert report.files == 200
    assert len([w for w in caught if issubclass(w.category, Ext4Warning)]) == 20


@pytest.mark.mount
@needs_root
def test_round_trip_kernel_exact(tmp_path: Path) -> None:
    """Kernel-written image -> extract equals the kernel's view exactly: ns times, atime, owners, xattrs."""
    from pyext4 import mkfs
    from tests.conftest import HASH_SEED, NOW, UUID

    image = tmp_path / "k.img"
    image.touch()
    mkfs(image, "256M", uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    with kernel_mount(image) as mnt:
        make_tree(mnt / "tree", block_size=4096, huge=True, acl=True)
        make_big_dir(mnt / "tree" / "many", 20_000)  # 20,000 names (hard links), an htree made by the kernel
        kernel = host_view(mnt / "tree")
        huge_blocks = os.stat(mnt / "tree" / "files" / "huge").st_blocks
    dest = tmp_path / "dest"
    with Filesystem.open(image) as fs:
        assert fs.inode(fs.resolve("/tree/many/big")).flags & 0x1000  # INDEX_FL
        report = extract(fs, dest, path="/tree")
    assert not report.errors, report.errors
    assert not report.warnings, report.warnings
    compare(kernel, host_view(dest), times="exact", atime=True)
    # The 5 GiB sparse file takes about what it took in the image.
    assert os.stat(dest / "files" / "huge").st_blocks <= huge_blocks + 64
    st = os.stat(dest / "modes" / "m6711")
    assert stat.S_IMODE(st.st_mode) == 0o6711
    assert os.lstat(dest / "links" / "relative").st_uid == 123456


def test_single_file_and_subtree(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", block_size=1024, special=False)
    image = tmp_path / "img.img"
    mke2fs(image, "-t", "ext4", "-b", "1024", size="64M", root=str(src))
    with Filesystem.open(image) as fs:
        extract(fs, tmp_path / "one", path="/files/size-300000")
        assert (tmp_path / "one" / "size-300000").read_bytes() == (src / "files" / "size-300000").read_bytes()
        extract(fs, tmp_path / "sub", path="/deep/d0/d1")
        bottom = tmp_path / "sub" / "/".join(f"d{i}" for i in range(2, 60)) / "bottom"
        assert bottom.read_text() == "deep\n"


def test_root_without_owner_and_permissions(tmp_path: Path) -> None:
    """same_owner=False / preserve_permissions=False: owners are ours, setuid and setgid are dropped."""
    src = make_tree(tmp_path / "src", block_size=1024, special=False)
    image = tmp_path / "img.img"
    mke2fs(image, "-t", "ext4", "-b", "1024", size="64M", root=str(src))
    dest = tmp_path / "dest"
    before = snapshot(tmp_path, exclude=dest)
    with Filesystem.open(image) as fs:
        report = extract(fs, dest, same_owner=False, preserve_permissions=False)
    assert not report.errors
    after = snapshot(tmp_path, exclude=dest)
    assert {k: v for k, v in after.items() if k != "."} == {k: v for k, v in before.items() if k != "."}
    me = os.geteuid()
    assert os.stat(dest / "owners" / "u70000-g80000").st_uid == me
    assert stat.S_IMODE(os.stat(dest / "modes" / "m4755").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(dest / "modes" / "m6711").st_mode) == 0o711
    assert stat.S_IMODE(os.stat(dest / "modes" / "sticky-dir").st_mode) == 0o1777
    with Filesystem.open(image) as fs:
        extract(fs, tmp_path / "dest-p", preserve_permissions=True, same_owner=False)
    assert stat.S_IMODE(os.stat(tmp_path / "dest-p" / "modes" / "m6711").st_mode) == 0o6711


def _run_as(uid: int, fn: Any, *args: Any) -> dict[str, Any]:
    """fn(*args) in a forked child running as ``uid``; its JSON-able result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            result = fn(*args)
            os.write(w, json.dumps(result).encode())
        except BaseException as exc:
            os.write(w, json.dumps({"exception": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))  # type: ignore[no-any-return]


def _extract_report(image: str, dest: str) -> dict[str, Any]:
    with Filesystem.open(image) as fs:
        report = extract(fs, dest)
    return {"errors": report.errors, "warnings": report.warnings, "skipped": report.skipped}


@pytest.fixture
def open_tmp() -> Any:
    """A temporary directory an unprivileged user can reach (pytest's tmp_path is root-only)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="pyext4-user-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_root
def test_extract_as_an_ordinary_user(open_tmp: Path) -> None:
    """Not root: devices skipped with a warning, setuid/setgid dropped, owners ours, user.* xattrs only,
    and a directory without owner permissions still gets its hardlinks (its mode is set at the end)."""
    tmp_path = open_tmp
    src = make_tree(tmp_path / "src", block_size=1024)
    locked = src / "locked"
    locked.mkdir()
    (locked / "inside").write_text("linked\n")
    os.link(locked / "inside", src / "zz-second-name")
    os.chmod(locked, 0o000)
    image = tmp_path / "img.img"
    mke2fs(image, "-t", "ext4", "-b", "1024", size="64M", root=str(src))
    os.chmod(tmp_path, 0o755)
    os.chmod(image, 0o644)
    dest = tmp_path / "dest"
    dest.mkdir()
    os.chown(dest, 65534, 65534)
    before = snapshot(tmp_path, exclude=dest)
    result = _run_as(65534, _extract_report, str(image), str(dest))
    assert "exception" not in result, result
    assert snapshot(tmp_path, exclude=dest) == before  # nothing beside DEST changed (not even its parent)
    assert not result["errors"], result["errors"]
    warned = " ".join(result["warnings"])
    assert "null" in warned and "device node skipped" in warned
    assert result["skipped"] == 3  # null, blk, bigdev
    assert not (dest / "null").exists()
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)
    st = os.stat(dest / "modes" / "m4755")
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == 65534
    assert os.stat(dest / "owners" / "u70000-g80000").st_uid == 65534
    names = os.listxattr(dest / "xattrs" / "small")
    assert "user.one" in names and "trusted.t" not in names
    assert stat.S_IMODE(os.stat(dest / "locked").st_mode) == 0
    assert os.stat(dest / "zz-second-name").st_ino == os.stat(dest / "locked" / "inside").st_ino


# ====================================================================== safety
def _files(names: dict[str, bytes]) -> Any:
    def populate(src: Path) -> None:
        for name, data in names.items():
            p = src / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    return populate


@pytest.mark.parametrize("csum", [True, False], ids=["metadata_csum", "no-csum"])
def test_unsafe_names_are_refused(csum: bool, arena: dict[str, Path], tmp_path: Path) -> None:
    image = build(tmp_path, _files({"aXb": b"slash\n", "cXd": b"nul\n", "XX": b"dotdot\n",
                                    "ok": b"fine\n", "X": b"dot\n"}),
                  *([] if csum else ["-O", "^metadata_csum"]))
    order = names_in_order(image, "/")
    edits = {order.index(b"aXb"): {"name": b"a/b"}, order.index(b"cXd"): {"name": b"c\0d"},
             order.index(b"XX"): {"name": b".."}, order.index(b"X"): {"name": b"."}}
    edit_entries(image, "/", edits)
    before = snapshot(arena["parent"])
    with Filesystem.open(image) as fs:
        names = fs.listdir("/")
        assert "a/b" in names and "c\0d" in names
        report = extract(fs, arena["dest"])
    assert (arena["dest"] / "ok").read_text() == "fine\n"
    refused = " ".join(report.errors)
    assert "a/b" in refused and "unsafe name" in refused
    assert "c\\x00d" in refused or "c\x00d" in refused
    assert not (arena["dest"] / "a").exists() and not (arena["dest"] / "c").exists()
    assert sorted(os.listdir(arena["dest"])) == ["lost+found", "ok"]
    assert_untouched(arena, before)


@pytest.mark.parametrize("symlink_first", [True, False])
@pytest.mark.parametrize("target_kind", ["etc", "outside"])
def test_symlink_then_directory_of_the_same_name(symlink_first: bool, target_kind: str, jobs: int,
                                                  arena: dict[str, Path], tmp_path: Path) -> None:
    """A symlink ``a -> /etc`` (or -> a directory beside DEST) and a directory ``a`` holding ``passwd``.

    The first of the two made wins: in walk order with one process; with more, every
    directory is made before any other entry, so the directory wins."""
    target = "/etc" if target_kind == "etc" else os.fspath(arena["outside"])

    def populate(src: Path) -> None:
        os.symlink(target, src / "s")
        (src / "d").mkdir()
        (src / "d" / "passwd").write_text("root::0:0:pwned:/:/bin/sh\n")
        (src / "d" / "victim").write_text("overwritten\n")

    image = build(tmp_path, populate)
    order = names_in_order(image, "/")
    i_s, i_d = order.index(b"s"), order.index(b"d")
    with Filesystem.open(image) as fs:
        ino_s, ino_d = fs.resolve("/s", follow=False), fs.resolve("/d")
    first, second = sorted((i_s, i_d))
    if symlink_first:
        edits = {first: {"name": b"a", "ino": ino_s, "file_type": 7},
                 second: {"name": b"a", "ino": ino_d, "file_type": 2}}
    else:
        edits = {first: {"name": b"a", "ino": ino_d, "file_type": 2},
                 second: {"name": b"a", "ino": ino_s, "file_type": 7}}
    edit_entries(image, "/", edits)
    passwd = Path("/etc/passwd")
    passwd_before = (passwd.stat().st_mtime_ns, passwd.read_bytes()) if passwd.exists() else None
    before = snapshot(arena["parent"])
    with Filesystem.open(image) as fs:
        report = extract(fs, arena["dest"])
    assert report.errors, "one of the two 'a' entries must be refused"
    a = arena["dest"] / "a"
    if symlink_first and jobs == 1:
        assert os.path.islink(a) and os.readlink(a) == target
    else:
        assert a.is_dir() and not a.is_symlink() and (a / "passwd").exists()
    assert_untouched(arena, before)
    if passwd_before is not None:
        assert (passwd.stat().st_mtime_ns, passwd.read_bytes()) == passwd_before
    if target_kind == "etc":
        assert not Path("/etc/victim").exists()


def test_hardlink_whose_first_name_was_refused(arena: dict[str, Path], tmp_path: Path) -> None:
    def populate(src: Path) -> None:
        (src / "one").write_text("shared\n")
        os.link(src / "one", src / "two")

    image = build(tmp_path, populate)
    order = names_in_order(image, "/")
    first = min(order.index(b"one"), order.index(b"two"))
    edit_entries(image, "/", {first: {"name": b"../"}})
    before = snapshot(arena["parent"])
    with Filesystem.open(image) as fs:
        report = extract(fs, arena["dest"])
    assert len(report.errors) == 1 and "unsafe" in report.errors[0]
    survivor = "two" if order[first] == b"one" else "one"
    assert (arena["dest"] / survivor).read_text() == "shared\n"
    assert report.hardlinks == 0 and report.files == 1
    assert_untouched(arena, before)


def test_directory_cycle_ends(arena: dict[str, Path], tmp_path: Path) -> None:
    """A directory entry pointing back at the root: the walk and the extraction both end."""
    def populate(src: Path) -> None:
        (src / "d" / "e").mkdir(parents=True)
        (src / "d" / "e" / "f").write_text("x\n")

    image = build(tmp_path, populate)
    with Filesystem.open(image) as fs:
        order = [e.name for _, _, e in dir_entries_raw(fs, "/d/e")]
    edit_entries(image, "/d/e", {order.index(b"f"): {"name": b"f", "ino": 2, "file_type": 2}})
    before = snapshot(arena["parent"])
    with Filesystem.open(image) as fs:
        paths = [e.path for e in fs.walk_entries("/")]
        assert "/d/e/f" in paths and len(paths) < 20
        assert sum(1 for _ in fs.walk("/")) < 10
        report = extract(fs, arena["dest"])
    assert any("cycle" in e for e in report.errors)
    assert (arena["dest"] / "d" / "e").is_dir()
    assert_untouched(arena, before)


def test_existing_files_are_kept_unless_overwrite(arena: dict[str, Path], tmp_path: Path) -> None:
    image = build(tmp_path, _files({"a": b"from image\n", "sub/b": b"image b\n"}))
    dest = arena["dest"]
    with Filesystem.open(image) as fs:
        assert not extract(fs, dest).errors
        (dest / "a").write_text("changed by the user\n")
        report = extract(fs, dest)
        assert any("exists" in e for e in report.errors)
        assert (dest / "a").read_text() == "changed by the user\n"
        # overwrite=True replaces it, and never through a hardlink planted in DEST.
        (dest / "sub" / "b").unlink()
        os.link(arena["outside"] / "victim", dest / "sub" / "b")
        before = snapshot(arena["parent"], exclude=dest)
        before["outside/victim"][5] = 1  # the planted link in DEST goes away, nothing else changes
        report = extract(fs, dest, overwrite=True)
        assert not report.errors, report.errors
    assert (dest / "a").read_text() == "from image\n"
    assert (dest / "sub" / "b").read_text() == "image b\n"
    assert (arena["outside"] / "victim").read_text() == "must not change\n"
    assert_untouched(arena, before)


@pytest.mark.parametrize("overwrite", [False, True])
def test_symlinks_in_the_way_in_dest(overwrite: bool, arena: dict[str, Path], tmp_path: Path) -> None:
    image = build(tmp_path, _files({"dir/inner": b"inner\n", "file": b"file\n", "fifo-later": b"x"}))
    dest = arena["dest"]
    dest.mkdir()
    os.symlink(arena["outside"], dest / "dir")  # a directory of the image lands on a symlink
    os.symlink(arena["outside"] / "victim", dest / "file")  # a file lands on a symlink to a file
    before = snapshot(arena["parent"], exclude=dest)
    with Filesystem.open(image) as fs:
        report = extract(fs, dest, overwrite=overwrite)
    assert any("dir" in e and "not a directory" in e for e in report.errors)
    assert not (arena["outside"] / "inner").exists()
    if overwrite:
        assert not os.path.islink(dest / "file") and (dest / "file").read_text() == "file\n"
    else:
        assert os.path.islink(dest / "file")
        assert any("file" in e for e in report.errors)
    assert (arena["outside"] / "victim").read_text() == "must not change\n"
    assert_untouched(arena, before)
