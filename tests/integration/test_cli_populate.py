"""``pyext4 mkfs -d``: stdin and image sources, extract round trip, reproducibility, sizing, owners, progress.

Images are checked with e2fsck -fn and, where a loop mount works, against the
kernel's view (helpers shared with test_populate.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from pyext4 import mkfs
from pyext4.reader import Filesystem
from tests.conftest import NOW, assert_fsck_clean
from tests.integration.test_populate import (
    IS_ROOT,
    NS,
    _shape,
    _write,
    assert_same_tree,
    kernel_view,
    make_tar,
    make_tree,
    snapshot,
    tar_view,
)

CLI = [sys.executable, "-c", "from pyext4.cli import main; main()"]


def cli(*args: Any, env: dict[str, str] | None = None, cwd: Path | None = None, input: bytes | None = None,
        umask: int | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    full_env.update(env or {})
    proc = subprocess.run(
        [*CLI, *[str(a) for a in args]], capture_output=True, env=full_env, cwd=cwd, input=input,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,  # noqa: PLW1509
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"pyext4 {args} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clisrc") / "tree"
    make_tree(root)
    return root


@pytest.fixture(scope="module")
def tree_view(tree: Path) -> dict[bytes, dict[str, Any]]:
    return snapshot(tree, skip_lost_found=False)


# =================================================================== sources
@pytest.mark.parametrize("mode", ["w|", "w|gz"])
def test_tar_on_stdin(tree: Path, tree_view: dict[bytes, dict[str, Any]], tmp: Path, mode: str) -> None:
    buf = io.BytesIO()
    make_tar(tree, None, mode=mode, fileobj=buf)
    img = tmp / "stdin.img"
    cli("mkfs", "-q", "-d", "-", img, "auto", input=buf.getvalue())
    assert_fsck_clean(img)
    assert_same_tree(kernel_view(img), tar_view(tree_view, fmt=tarfile.PAX_FORMAT))


def test_ext4_image_source(tree: Path, tmp: Path) -> None:
    first = tmp / "first.img"
    cli("mkfs", "-q", "-d", tree, first, "auto")
    second = tmp / "second.img"
    cli("mkfs", "-q", "-d", first, second, "auto")
    assert_fsck_clean(second)
    assert_same_tree(kernel_view(second), kernel_view(first))


def test_tar_to_image_to_extract(tree: Path, tree_view: dict[bytes, dict[str, Any]], tmp: Path) -> None:
    archive = tmp / "src.tar.xz"
    make_tar(tree, archive, mode="w:xz")
    img = tmp / "x.img"
    cli("mkfs", "-q", "-d", archive, img, "auto")
    dest = tmp / "out"
    cli("extract", img, dest)
    expected = tar_view(tree_view, fmt=tarfile.PAX_FORMAT)
    actual = snapshot(dest)
    # The destination directory itself is the caller's; compare what was extracted into it.
    del expected[b"/"], actual[b"/"]
    if not IS_ROOT:  # without root, owners are the caller's (as tar does)
        for rec in list(expected.values()) + list(actual.values()):
            rec.pop("uid"), rec.pop("gid")
    assert_same_tree(actual, expected)


def test_image_inside_the_source_is_not_copied(tmp: Path) -> None:
    src = tmp / "src"
    _write(src / "a", b"a")
    img = src / "inside.img"
    img.write_bytes(b"")
    cli("mkfs", "-q", "-d", src, img, "16M")
    with Filesystem.open(img) as fs:
        assert sorted(fs.listdir("/")) == ["a", "lost+found"]


def test_missing_source(tmp: Path) -> None:
    img = tmp / "x.img"
    proc = cli("mkfs", "-d", tmp / "nope", img, "auto", check=False)
    assert proc.returncode == 1
    assert b"nope" in proc.stderr and b"Traceback" not in proc.stderr
    assert not img.exists()


# =========================================================== reproducibility
def _fresh_tree(root: Path) -> None:
    """A small tree with current times (so a clamp in the past changes every one of them)."""
    _write(root / "etc" / "hostname", b"box\n")
    _write(root / "usr" / "bin" / "tool", b"#!/bin/sh\n", 0o755)
    for i in range(150):
        _write(root / "var" / "lib" / f"entry-{i:03d}", b"e" * i)
    os.symlink("usr/bin", root / "bin")
    os.setxattr(root / "etc" / "hostname", "user.note", b"n")


def test_reproducible_across_cwd_umask_locale_and_clock(tmp: Path) -> None:
    src = tmp / "src"
    _fresh_tree(src)
    clamp = 1_600_000_000
    a, b = tmp / "a", tmp / "b"
    a.mkdir()
    (b / "deeper").mkdir(parents=True)
    started = time.time()
    cli("mkfs", "-q", "-d", src, "one.img", "auto", cwd=a, umask=0o022,
        env={"SOURCE_DATE_EPOCH": str(clamp), "LC_ALL": "C", "TZ": "UTC"})
    if time.time() - started < 1.1:
        time.sleep(1.1 - (time.time() - started))  # a different clock second for the second build
    cli("mkfs", "-q", "--timestamp", clamp, "-d", os.path.relpath(src, b / "deeper"), "two.img", "auto",
        cwd=b / "deeper", umask=0o077, env={"LC_ALL": "C.UTF-8", "TZ": "Asia/Tokyo", "LANG": "de_DE.UTF-8"})
    one, two = a / "one.img", b / "deeper" / "two.img"
    assert sha256(one) == sha256(two)
    assert_fsck_clean(one)
    # Every time in the image is the clamp: superblock and every inode's four times.
    with Filesystem.open(one) as fs:
        sb = fs.sb
        for name in ("s_mkfs_time", "s_wtime", "s_lastcheck"):
            assert sb[name] == clamp, name
        assert sb["s_mtime"] in (0, clamp)
        checked = 0
        for ino in range(1, sb["s_inodes_count"] + 1):
            inode = fs.inode(ino)
            if not inode.mode:
                continue
            checked += 1
            assert (inode.atime, inode.mtime, inode.ctime, inode.crtime) == (clamp * NS,) * 4, ino
        assert checked >= 155
    # A different clamp (or seed) gives a different image.
    three = tmp / "three.img"
    cli("mkfs", "-q", "--timestamp", clamp + 1, "-d", src, three, "auto")
    assert sha256(three) != sha256(one)


def test_reproducible_tar_stdin_and_seed(tree: Path, tmp: Path) -> None:
    buf = io.BytesIO()
    make_tar(tree, None, mode="w|gz", fileobj=buf)
    images = []
    for i in range(2):
        img = tmp / f"s{i}.img"
        cli("mkfs", "-q", "--seed", "fixed", "-d", "-", img, "auto", input=buf.getvalue(),
            env={"SOURCE_DATE_EPOCH": "1700000000"})
        images.append(sha256(img))
    assert images[0] == images[1]
    with Filesystem.open(tmp / "s0.img") as fs:
        uuid_one = fs.sb.uuid
    cli("mkfs", "-q", "--seed", "other", "-d", "-", tmp / "s2.img", "auto", input=buf.getvalue(),
        env={"SOURCE_DATE_EPOCH": "1700000000"})
    with Filesystem.open(tmp / "s2.img") as fs:
        assert fs.sb.uuid != uuid_one


# ==================================================================== owners
def test_rules_file_owner_and_root_owner(tmp: Path) -> None:
    src = tmp / "src"
    _write(src / "root" / ".bashrc", b"x")
    _write(src / "usr" / "bin" / "tool", b"t", 0o755)
    _write(src / "home" / "user" / "notes", b"n")
    rules = tmp / "rules"
    rules.write_text("/** 1000:1000\n/root/** 0:0 0700\n/usr/** 0:0\n/usr/bin/tool 0:0 4755\n")
    img = tmp / "r.img"
    cli("mkfs", "-q", "--rules", rules, "-E", "root_owner=0:0", "-d", src, img, "auto")
    assert_fsck_clean(img)
    with Filesystem.open(img) as fs:
        def own(p: str) -> tuple[int, int, int]:
            st = fs.lstat(p)
            return st.st_uid, st.st_gid, st.st_mode & 0o7777
        assert own("/root") == (0, 0, 0o700)
        assert own("/root/.bashrc") == (0, 0, 0o700)
        assert own("/usr/bin/tool") == (0, 0, 0o4755)
        assert own("/home/user/notes")[:2] == (1000, 1000)
        assert own("/")[:2] == (0, 0)
    img2 = tmp / "o.img"
    cli("mkfs", "-q", "--owner", "123:456", "-E", "root_owner=7:8", "-d", src, img2, "auto")
    with Filesystem.open(img2) as fs:
        assert (fs.stat("/").st_uid, fs.stat("/").st_gid) == (7, 8)
        for path in ("/root", "/root/.bashrc", "/usr/bin/tool", "/home/user/notes"):
            assert (fs.lstat(path).st_uid, fs.lstat(path).st_gid) == (123, 456)
    bad = tmp / "bad-rules"
    bad.write_text("/x 1:2\n/y nobody\n")
    proc = cli("mkfs", "--rules", bad, "-d", src, tmp / "b.img", "auto", check=False)
    assert proc.returncode == 1 and b"bad-rules:2" in proc.stderr
    assert not (tmp / "b.img").exists()


# ==================================================================== sizing
def _space(img: Path) -> tuple[int, int, int, int]:
    """(blocks, free blocks, reserved blocks, inodes) of an image."""
    with Filesystem.open(img) as fs:
        sb = fs.sb
        return fs.geo.blocks_count, sb.free_blocks_count, sb.r_blocks_count, sb["s_inodes_count"]


def _content_blocks(img: Path) -> int:
    """Blocks the populated content takes: the image's used blocks minus an empty twin's."""
    blocks, free, _, inodes = _space(img)
    twin = img.with_suffix(".empty")
    with Filesystem.open(img) as fs:
        bs = fs.block_size
    mkfs(twin, blocks * bs, block_size=bs, inodes=inodes, now=NOW)
    _, free_empty, _, _ = _space(twin)
    twin.unlink()
    return free_empty - free


def test_auto_size_leaves_the_headroom(tree: Path, tmp: Path) -> None:
    for headroom in (20, 50):
        img = tmp / f"auto{headroom}.img"
        cli("mkfs", "-q", "--headroom", headroom, "-d", tree, img, "auto")
        assert_fsck_clean(img)
        content = _content_blocks(img)
        _, free, reserved, _ = _space(img)
        spare = free - reserved
        # About the headroom: at least what was asked, and not much more (plus rounding).
        assert spare >= content * headroom / 100, (headroom, spare, content)
        assert spare <= content * (headroom + 10) / 100 + 512, (headroom, spare, content)


@pytest.mark.parametrize("shape", ["tiny-files", "sparse-and-big", "big-dirs", "xattrs-and-links"])
def test_auto_with_no_headroom_still_fits(tmp: Path, shape: str) -> None:
    src = tmp / "src"
    _shape(shape, src)
    for extra in ([], ["-b", "1024"], ["-t", "ext2"]):
        img = tmp / f"zero{len(extra)}.img"
        cli("mkfs", "-q", "--headroom", "0", *extra, "-d", src, img, "auto")
        assert_fsck_clean(img)
        img.unlink()


def test_too_small_fails_before_writing(tree: Path, tmp: Path) -> None:
    img = tmp / "small.img"
    proc = cli("mkfs", "-d", tree, img, "4M", check=False)
    assert proc.returncode == 1
    assert b"too small" in proc.stderr and b"Traceback" not in proc.stderr
    assert not img.exists()
    existing = tmp / "existing.img"
    existing.write_bytes(b"precious" * 1000)
    before = (sha256(existing), existing.stat().st_mtime_ns, existing.stat().st_size)
    proc = cli("mkfs", "-F", "-d", tree, existing, "4M", check=False)
    assert proc.returncode == 1 and b"too small" in proc.stderr
    assert (sha256(existing), existing.stat().st_mtime_ns, existing.stat().st_size) == before
    # The same through stdin: the spooled archive is gone too.
    buf = io.BytesIO()
    make_tar(tree, None, mode="w|", fileobj=buf)
    proc = cli("mkfs", "-d", "-", img, "4M", input=buf.getvalue(), check=False)
    assert proc.returncode == 1 and not img.exists()


# ================================================================== progress
class _FakeClock:
    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class _FakeTty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(("tty", "quiet", "step", "shown"), [
    (True, False, 0.4, True),  # a terminal and over a second: the bar
    (True, False, 0.0001, False),  # a terminal but quick: nothing
    (False, False, 0.4, False),  # not a terminal: nothing
    (True, True, 0.4, False),  # -q: nothing
])
def test_progress_decision(tty: bool, quiet: bool, step: float, shown: bool) -> None:
    from pyext4.cli import _PopulateProgress

    stream = _FakeTty(tty)
    progress = _PopulateProgress(1000, quiet=quiet, stream=stream, clock=_FakeClock(step))
    for _ in range(10):
        progress(100)
    progress.close()
    assert progress.shown is shown
    assert ("populating" in stream.getvalue()) is shown
    assert progress.done == 1000


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_on_a_pty(tree: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch, quiet: bool) -> None:
    """Through a real terminal (a pty as stderr) with a clock that runs fast: the bar appears unless -q."""
    import pty

    from pyext4.cli import main

    master, slave = pty.openpty()
    try:
        clock = _FakeClock(0.3)
        monkeypatch.setattr(time, "monotonic", clock)
        stderr = io.TextIOWrapper(os.fdopen(slave, "wb", buffering=0, closefd=False), write_through=True)
        monkeypatch.setattr(sys, "stderr", stderr)
        args = ["mkfs", *(["-q"] if quiet else []), "-d", str(tree), str(tmp / "p.img"), "auto"]
        main(args, standalone_mode=False)
        stderr.flush()
        os.set_blocking(master, False)
        out = b""
        try:
            while chunk := os.read(master, 65536):
                out += chunk
        except (BlockingIOError, OSError):
            pass
    finally:
        os.close(master)
        os.close(slave)
    assert (b"populating" in out) is not quiet
    assert_fsck_clean(tmp / "p.img")
