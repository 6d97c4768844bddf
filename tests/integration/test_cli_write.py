"""The write commands: put, mkdir, ln, mknod, rm, mv, chmod, chown, setfattr (exit codes and one-line errors)."""

from __future__ import annotations

import os
import stat as statmod
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pyext4 import mkfs
from pyext4.cli import main
from pyext4.reader import Filesystem
from tests.conftest import HASH_SEED, NOW, UUID, loop_mounted
from tests.integration.test_writer import (
    assert_clean,
    diff_snapshots,
    sha256_file,
    snapshot_fs,
    snapshot_host,
)


@pytest.fixture
def img(tmp_path: Path) -> Path:
    path = tmp_path / "cli.img"
    mkfs(path, "64M", uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    return path


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], env={"SOURCE_DATE_EPOCH": str(NOW)})


def ok(*args: str | Path) -> Result:
    result = cli(*args)
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


def fails(*args: str | Path, code: int = 1, needle: str = "") -> Result:
    """The command fails with ``code``; status 1 means exactly one ``pyext4: error:`` line on stderr."""
    result = cli(*args)
    assert result.exit_code == code, (result.output, result.stderr)
    if code == 1:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("pyext4: error: "), result.stderr
        assert needle in lines[0], lines[0]
    return result


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A host tree with every kind of entry, hard links, xattrs, odd modes and times."""
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "empty").write_bytes(b"")
    (src / "sub" / "big").write_bytes(os.urandom(300_000))
    with open(src / "sub" / "sparse", "wb") as f:
        f.truncate(5 << 20)
        f.seek(3 << 20)
        f.write(b"middle")
    (src / "sub" / "deeper" / "x").write_bytes(b"x" * 5000)
    os.link(src / "a.txt", src / "sub" / "a-hardlink")
    os.link(src / "a.txt", src / "sub" / "deeper" / "a-hardlink2")
    os.symlink("../a.txt", src / "sub" / "rel-link")
    os.symlink("/" + "long/" * 30, src / "long-link")
    os.mkfifo(src / "fifo")
    os.chmod(src / "sub" / "deeper" / "x", 0o4750)
    os.chmod(src / "empty-dir", 0o1777)
    os.chown(src / "sub" / "big", 1234, 5678)
    os.setxattr(src / "a.txt", "user.comment", b"hello xattr")
    os.setxattr(src / "sub", "user.dir", b"d" * 300)
    for i, path in enumerate(sorted(src.rglob("*"), reverse=True)):
        os.utime(path, ns=(1_600_000_000 * 10**9 + i, 1_500_000_000 * 10**9 + i * 1000), follow_symlinks=False)
    os.utime(src, ns=(1_600_000_000 * 10**9, 1_400_000_000 * 10**9))
    return src


# ======================================================================= put
def test_put_file(img: Path, tmp_path: Path) -> None:
    host = tmp_path / "hello"
    host.write_bytes(b"hi there")
    os.chmod(host, 0o640)
    ok("put", img, host, "/hello")
    ok("mkdir", img, "/etc")
    ok("put", img, host, "/etc")  # into a directory: keeps the name
    ok("put", img, host, "/etc/other", "--mode", "0600", "--owner", "10:20")
    host.write_bytes(b"replaced")
    ok("put", img, host, "/hello")
    assert_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.read_bytes("/hello") == b"replaced"
        st = fs.stat("/etc/hello")
        assert (statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, 0)
        st = fs.stat("/etc/other")
        assert (statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 10, 20)
        assert st.st_mtime_ns == NOW * 10**9  # SOURCE_DATE_EPOCH


def test_put_recursive(img: Path, tree: Path) -> None:
    ok("put", "-r", img, tree, "/copy")
    assert_clean(img)
    with Filesystem.open(img) as fs:
        got = snapshot_fs(fs, times=False, top="/copy")
        assert fs.read_bytes("/copy/sub/sparse")[3 << 20 : (3 << 20) + 6] == b"middle"
        assert fs.stat("/copy/sub/sparse").st_blocks < 100  # the holes stay holes
    want = snapshot_host(tree, times=False)
    # Without -p: owners are 0:0, xattrs are not copied, hard links become separate files.
    records = {}
    for path, rec in want[0].items():
        kind, perm, _uid, _gid, nlink, payload, _x, mtime = rec
        records[path] = (kind, perm, 0, 0, 1 if kind != "dir" else nlink, payload, (), mtime)
    diff = diff_snapshots((records, set()), got, ("host", "image"))
    assert not diff, diff


def test_put_recursive_preserve(img: Path, tree: Path) -> None:
    ok("mkdir", img, "/dst")
    ok("put", "-r", "-p", img, tree, "/dst")  # into a directory: /dst/src
    ok("put", "-r", "-p", img, tree, "/dst")  # again, over the first copy
    assert_clean(img)
    with Filesystem.open(img) as fs:
        got = snapshot_fs(fs, top="/dst/src")
        assert fs.stat("/dst/src/empty").st_atime_ns % 10**9 != 0  # atime copied (as it was before reading)
    want = snapshot_host(tree)
    diff = diff_snapshots(want, got, ("host", "image"))
    assert not diff, diff
    assert frozenset({"/a.txt", "/sub/a-hardlink", "/sub/deeper/a-hardlink2"}) in got[1]
    with loop_mounted(img, readonly=True) as mnt:
        diff = diff_snapshots(want, snapshot_host(mnt / "dst" / "src"), ("host", "kernel"))
        assert not diff, diff


def test_put_recursive_over_existing_directories(img: Path, tree: Path) -> None:
    """Without -p/--owner an existing directory keeps its metadata (as mkdir -p would); with
    --owner it takes the new owner and the host's mode."""
    ok("mkdir", img, "/dst/src/sub", "-p", "--mode", "0711", "--owner", "5:6")
    ok("put", img, tree / "a.txt", "/dst/src/sub/deeper")  # a file where the tree has a directory
    fails("put", "-r", img, tree, "/dst", needle="deeper")
    ok("rm", img, "/dst/src/sub/deeper")
    ok("put", "-r", img, tree, "/dst")  # /dst exists: the copy is /dst/src, which exists too
    with Filesystem.open(img) as fs:
        for path in ("/dst/src", "/dst/src/sub"):
            st = fs.stat(path)
            assert (statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o711, 5, 6), path
        st = fs.stat("/dst/src/sub/deeper")
        assert (statmod.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0)
        assert fs.read_bytes("/dst/src/sub/deeper/x") == b"x" * 5000
    ok("put", "-r", img, tree, "/dst", "--owner", "1:2")
    assert_clean(img)
    with Filesystem.open(img) as fs:
        st = fs.stat("/dst/src/sub")
        assert (statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 1, 2)
        st = fs.stat("/dst/src/empty-dir")
        assert (statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o1777, 1, 2)


def test_put_recursive_mode_is_for_files_not_directories(img: Path, tree: Path) -> None:
    """--mode 0600 on a tree: every file and fifo gets it; directories keep the host's mode (a 0600
    directory could not be entered), symlinks stay 0777."""
    ok("put", "-r", "--mode", "0600", img, tree, "/m")
    assert_clean(img)
    with Filesystem.open(img) as fs:
        for dirpath, dirnames, filenames in fs.walk("/m"):
            for name in dirnames:
                path = f"{dirpath}/{name}"
                host = tree / os.path.relpath(path, "/m")
                assert statmod.S_IMODE(fs.stat(path).st_mode) == statmod.S_IMODE(os.lstat(host).st_mode), path
            for name in filenames:
                path = f"{dirpath}/{name}"
                st = fs.lstat(path)
                assert statmod.S_IMODE(st.st_mode) == (0o777 if st.is_symlink() else 0o600), path
        assert statmod.S_IMODE(fs.stat("/m/empty-dir").st_mode) == 0o1777


def test_put_recursive_through_image_symlinks(img: Path, tree: Path) -> None:
    """DEST may go through symlinks in the image (followed inside it, as for a single file)."""
    ok("mkdir", img, "/real/deep", "-p")
    ok("ln", "-s", img, "/real", "/link")
    ok("ln", "-s", img, "../real/deep", "/real/rel")
    ok("put", "-r", img, tree, "/link")  # an existing directory through a symlink: /real/src
    ok("put", "-r", img, tree, "/link/rel/copy")  # a new name under a relative symlink: /real/deep/copy
    assert_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.lstat("/link").is_symlink() and fs.lstat("/real/rel").is_symlink()
        assert fs.read_bytes("/real/src/a.txt") == b"alpha\n"
        assert fs.read_bytes("/real/deep/copy/sub/deeper/x") == b"x" * 5000


def test_put_recursive_refusals_change_nothing(img: Path, tree: Path, tmp_path: Path) -> None:
    ok("put", img, tree / "a.txt", "/file")
    before = sha256_file(img)
    fails("put", "-r", img, tree, "/file", needle="/file")  # a file is in the way
    fails("put", "-r", img, tree, "/missing/x", needle="/missing")
    assert sha256_file(img) == before
    big = tmp_path / "big"
    big.mkdir()
    for i in range(8):
        (big / f"f{i}").write_bytes(os.urandom(10 << 20))
    fails("put", "-r", img, big, "/big", needle="space")  # 80 MiB into a 64 MiB image
    assert_clean(img)
    with Filesystem.open(img) as fs:
        assert sorted(fs.listdir("/")) == ["file", "lost+found"]
        assert fs.read_bytes("/file") == b"alpha\n"


def test_put_recursive_leaves_out_the_image_itself(tree: Path) -> None:
    inner = tree / "sub" / "inner.img"
    mkfs(inner, "16M", uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    ok("put", "-r", inner, tree, "/")
    assert_clean(inner)
    with Filesystem.open(inner) as fs:
        assert "inner.img" not in fs.listdir("/src/sub")
        assert fs.read_bytes("/src/sub/big") == (tree / "sub" / "big").read_bytes()


def test_put_errors(img: Path, tree: Path, tmp_path: Path) -> None:
    before = sha256_file(img)
    fails("put", img, tree, "/x", needle="is a directory (use -r)")
    fails("put", img, tree / "a.txt", "/missing-dir/x", needle="/missing-dir/x")
    fails("put", img, tmp_path / "nope", "/x", code=2)
    fails("put", img, tree / "a.txt", "/x", "--mode", "999", code=2)
    fails("put", img, tree / "a.txt", "/x", "--owner", "root", code=2)
    fails("put", "-r", img, code=2)
    assert sha256_file(img) == before


# ============================================================ the other commands
def test_mkdir_ln_mknod(img: Path) -> None:
    ok("mkdir", img, "/a/b/c", "-p", "--mode", "0700", "--owner", "5:6")
    ok("mkdir", img, "/a/b/c", "-p")  # exists: fine with -p
    fails("mkdir", img, "/a/b/c", needle="/a/b/c")
    fails("mkdir", img, "/q/r", needle="/q/r")
    ok("mkdir", img, "/dev")
    ok("mknod", img, "/dev/null", "c", "1", "3", "--mode", "0666")
    ok("mknod", img, "/dev/sda", "b", "8", "0")
    ok("mknod", img, "/dev/fifo", "p")
    ok("mknod", img, "/dev/sock", "s", "--owner", "7:8")
    fails("mknod", img, "/dev/bad", "c", code=2)
    fails("mknod", img, "/dev/bad", "p", "1", "2", code=2)
    fails("mknod", img, "/dev/bad", "x", code=2)
    fails("mknod", img, "/dev/null", "c", "1", "3", needle="/dev/null")
    ok("ln", "-s", img, "/dev/null", "/a/sym")
    ok("ln", "-s", img, "relative/target", "/a/b")  # into a directory: /a/b/target
    ok("ln", img, "/dev/sda", "/a/hard")
    ok("ln", img, "/dev/fifo", "/a/b/c")  # into a directory: /a/b/c/fifo
    fails("ln", img, "/a", "/a2", needle="/a")
    fails("ln", img, "/missing", "/x", needle="/missing")
    assert_clean(img)
    with Filesystem.open(img) as fs:
        st = fs.stat("/a/b/c")
        assert (statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 5, 6)
        assert statmod.S_IMODE(fs.stat("/a").st_mode) == 0o700
        null = fs.stat("/dev/null")
        assert statmod.S_ISCHR(null.st_mode) and (null.rdev_major, null.rdev_minor) == (1, 3)
        assert statmod.S_IMODE(null.st_mode) == 0o666
        assert statmod.S_ISBLK(fs.stat("/dev/sda").st_mode)
        assert statmod.S_ISFIFO(fs.stat("/dev/fifo").st_mode)
        sock = fs.lstat("/dev/sock")
        assert statmod.S_ISSOCK(sock.st_mode) and (sock.st_uid, sock.st_gid) == (7, 8)
        assert fs.readlink("/a/sym") == "/dev/null"
        assert fs.readlink("/a/b/target") == "relative/target"
        assert fs.lstat("/a/hard").st_ino == fs.lstat("/dev/sda").st_ino
        assert fs.lstat("/a/b/c/fifo").st_nlink == 2


def test_rm_mv(img: Path, tree: Path) -> None:
    ok("put", "-r", img, tree, "/t")
    ok("mkdir", img, "/dest")
    ok("mv", img, "/t/a.txt", "/dest")  # into a directory
    ok("mv", img, "/dest/a.txt", "/dest/renamed")
    ok("mv", img, "/t/sub", "/dest")  # a directory into a directory
    ok("mv", img, "/t/empty-dir", "/dest/sub")
    fails("mv", img, "/dest", "/dest/sub", needle="/dest")
    fails("mv", img, "/missing", "/x", needle="/missing")
    fails("rm", img, "/dest", needle="/dest")
    fails("rm", img, "/missing", needle="/missing")
    ok("rm", "-f", img, "/missing")
    ok("rm", img, "/dest/renamed", "/t/fifo")
    ok("rm", "-r", img, "/dest/sub")
    assert_clean(img)
    with Filesystem.open(img) as fs:
        assert fs.listdir("/dest") == []
        assert sorted(fs.listdir("/t")) == ["empty", "long-link"]
        assert fs.stat("/").st_nlink == 5  # lost+found, t, dest


def test_chmod_chown_setfattr(img: Path) -> None:
    ok("mkdir", img, "/d")
    ok("ln", "-s", img, "/d", "/link")
    ok("chmod", img, "2750", "/d")
    ok("chown", img, "100:200", "/d")
    ok("chown", img, "-h", "300:400", "/link")
    fails("chmod", img, "rwx", "/d", code=2)
    fails("chmod", img, "0644", "/missing", needle="/missing")
    fails("chown", img, "a:b", "/d", code=2)
    ok("setfattr", img, "/d", "-n", "user.text", "-v", "plain")
    ok("setfattr", img, "/d", "-n", "user.hex", "-v", "0x00ff10")
    ok("setfattr", img, "/d", "-n", "user.b64", "-v", "0sAAEC")
    ok("setfattr", img, "/d", "-n", "user.gone", "-v", "soon")
    ok("setfattr", img, "/d", "-n", "user.gone2", "-v", "soon")
    ok("setfattr", img, "/d", "-x", "user.gone")
    ok("setfattr", img, "/d", "-n", "user.gone2", "-x")
    fails("setfattr", img, "/d", "-x", "user.gone", needle="user.gone")
    fails("setfattr", img, "/d", code=2)
    fails("setfattr", img, "/d", "-x", "user.a", "-v", "1", code=2)
    fails("setfattr", img, "/d", "-n", "user.x", "-v", "0xZZ", code=2)
    assert_clean(img)
    with Filesystem.open(img) as fs:
        st = fs.stat("/d")
        assert (statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o2750, 100, 200)
        lst = fs.lstat("/link")
        assert (lst.st_uid, lst.st_gid) == (300, 400)
        assert fs.xattrs("/d") == {"user.text": b"plain", "user.hex": b"\x00\xff\x10", "user.b64": b"\x00\x01\x02"}


def test_refused_images(img: Path, tmp_path: Path) -> None:
    """A mounted image and a damaged one: one line, status 1, nothing written."""
    with loop_mounted(img, readonly=True):
        fails("mkdir", img, "/x", needle="mounted")
    before = sha256_file(img)
    fails("mkdir", tmp_path / "missing.img", "/x", code=2)
    notfs = tmp_path / "zeros.img"
    notfs.write_bytes(bytes(1 << 20))
    fails("mkdir", notfs, "/x")
    assert sha256_file(img) == before


def test_error_line_through_the_real_entry_point(img: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pyext4.cli", "rm", str(img), "/nothing/here"],
                          capture_output=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 1
    assert proc.stderr.decode().splitlines() == ["pyext4: error: /nothing/here: no such file or directory"]
    proc = subprocess.run([sys.executable, "-m", "pyext4.cli", "rm", "--bogus", str(img), "/x"],
                          capture_output=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2
