"""The read commands through the real CLI: info, ls, stat, cat, extract.

Both ways in: click's CliRunner (fast, in-process) and ``python -m pyext4.cli`` in a subprocess
(real exit codes, real pipes, real memory use).  Errors are one line ``pyext4: error: ...`` with
exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pyext4.cli import main
from tests.conftest import debugfs, mke2fs, tool
from tests.integration.test_reader import IS_ROOT, _data, make_tree

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "pyext4.cli", *args], capture_output=True, cwd=ROOT,
                          input=input, timeout=120)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    src = make_tree(tmp / "src", block_size=4096)
    img = tmp / "img.img"
    mke2fs(img, "-t", "ext4", "-b", "4096", "-L", "clitest", size="64M", root=str(src))
    return {"src": src, "img": img, "tmp": tmp}


def one_error_line(stderr: str | bytes) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {text!r}"
    assert lines[0].startswith("pyext4: error: "), lines[0]
    return lines[0]


# ------------------------------------------------------------------ info
def test_info_text_and_json(image: dict[str, Path]) -> None:
    result = invoke("info", str(image["img"]))
    assert result.exit_code == 0
    assert "Filesystem volume name:   clitest" in result.output
    assert "Block size:" in result.output and "4096" in result.output
    proc = cli("info", str(image["img"]), "--json")
    assert proc.returncode == 0
    info = json.loads(proc.stdout)
    assert info["Filesystem volume name"] == "clitest"
    assert info["Block size"] == 4096
    assert "metadata_csum" in info["Filesystem features"]
    # Agrees with dumpe2fs -h on the main numbers.
    dump = subprocess.run([tool("dumpe2fs"), "-h", str(image["img"])], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in dump.splitlines() if ":" in line)
    for key in ("Inode count", "Block count", "Free blocks", "Free inodes", "Inodes per group", "Filesystem UUID"):
        assert str(info[key]) == fields[key].strip(), key


# ------------------------------------------------------------------ ls
def test_ls_plain_long_recursive_json(image: dict[str, Path]) -> None:
    img = str(image["img"])
    result = invoke("ls", img)
    assert result.exit_code == 0
    assert sorted(result.output.split()) == sorted(os.listdir(image["src"]) + ["lost+found"])
    long = invoke("ls", img, "/modes", "-l").output.splitlines()
    by_name = {line.split()[-1]: line for line in long}
    assert by_name["m4755"].startswith("-rwsr-xr-x")
    assert by_name["sticky-dir"].startswith("drwxrwxrwt")
    links = invoke("ls", img, "/links", "-l").output
    assert "relative -> target" in links
    rec = invoke("ls", img, "/deep", "-R").output
    assert "/deep/d0/d1/d2:" in rec and "bottom" in rec
    proc = cli("ls", img, "/owners", "--json")
    assert proc.returncode == 0
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    names = {r["name"]: r for r in records}
    if IS_ROOT:
        assert names["u70000-g80000"]["st_uid"] == 70000
        assert names["u4000000000-g3000000000"]["st_gid"] == 3_000_000_000
    assert all(r["path"].startswith("/owners/") for r in records)
    # Unicode names survive the round trip through JSON.
    uni = [json.loads(line)["name"] for line in cli("ls", img, "/names", "--json").stdout.decode().splitlines()]
    assert "héllo wörld ☃ 世界 🎉" in uni and "a" * 255 in uni


def test_ls_of_a_file_and_devices(image: dict[str, Path]) -> None:
    result = invoke("ls", str(image["img"]), "/files/size-1", "-l")
    assert result.exit_code == 0 and result.output.split()[-1] == "size-1"
    if IS_ROOT:
        line = invoke("ls", str(image["img"]), "/", "-l").output
        assert "300, 70000" in line  # major, minor of bigdev


# ------------------------------------------------------------------ stat
def test_stat_text_and_json(image: dict[str, Path]) -> None:
    img = str(image["img"])
    text = invoke("stat", img, "/xattrs/small").output
    assert "Xattr: user.one=1" in text
    proc = cli("stat", img, "/times/pre-1970", "--json")
    rec = json.loads(proc.stdout)
    assert rec["st_mtime_ns"] == -315_619_201 * 10**9  # mke2fs -d keeps whole seconds
    assert rec["type"] == "file"
    link = json.loads(cli("stat", img, "/links/len-100", "--json").stdout)
    assert link["type"] == "symlink" and link["target"] == "t" * 100
    followed = json.loads(cli("stat", img, "/links/relative", "-L", "--json").stdout)
    assert followed["type"] == "file"
    frag = json.loads(cli("stat", img, "/files/fragmented", "--json").stdout)
    assert len(frag["extents"]) == 40


# ------------------------------------------------------------------ cat
def test_cat_content(image: dict[str, Path]) -> None:
    img = str(image["img"])
    for path in ("/files/size-0", "/files/size-61", "/files/size-300000", "/files/sparse", "/files/fallocated",
                 "/links/relative"):
        proc = cli("cat", img, path)
        assert proc.returncode == 0, proc.stderr
        src_path = image["src"] / path.lstrip("/")
        assert hashlib.sha256(proc.stdout).digest() == hashlib.sha256(src_path.read_bytes()).digest(), path
    assert invoke("cat", img, "/files/size-59").stdout_bytes == _data(59, 59)


def test_cat_streams_a_huge_sparse_file_in_constant_memory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "huge", "wb") as f:
        f.write(b"head" * 1000)
        f.seek(2 << 30)
        f.write(b"tail")
        f.truncate((2 << 30) + 4096)
    img = tmp_path / "h.img"
    mke2fs(img, "-t", "ext4", size="32M", root=str(src))
    # The whole 2 GiB through a pipe: right length and ends, peak RSS well under 100 MiB.
    # The child reports its own peak (VmHWM) at exit: ru_maxrss from wait4 would include the
    # parent's RSS at fork time (Linux carries the old mm's high-water mark across exec).
    peak_report = (
        "import atexit, sys, runpy\n"
        "def report():\n"
        "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "    sys.stderr.write('PEAK ' + hwm.split()[1] + '\\n')\n"
        "atexit.register(report)\n"
        "sys.argv = ['pyext4', 'cat', sys.argv[1], '/huge']\n"
        "runpy.run_module('pyext4.cli', run_name='__main__')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", peak_report, str(img)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    total = 0
    first = b""
    last = b""
    while True:
        chunk = proc.stdout.read(1 << 20)
        if not chunk:
            break
        if not first:
            first = chunk[:4000]
        total += len(chunk)
        last = (last + chunk)[-4096:]
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert proc.wait() == 0, err
    assert total == (2 << 30) + 4096
    assert first == b"head" * 1000
    assert last.startswith(b"tail") and not any(last[4:])
    peak_kib = int(err.rsplit("PEAK ", 1)[1].split()[0])
    assert peak_kib < 100 * 1024, f"peak RSS {peak_kib} KiB"
    # Stopping early (head -c) ends quietly: no traceback, no partial-write error.
    shell = subprocess.run(
        f"{sys.executable} -m pyext4.cli cat {img} /huge | head -c 3000000 | wc -c; echo ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, cwd=ROOT, timeout=60)
    out = shell.stdout.decode().split()
    assert out[0] == "3000000"
    assert out[1] in ("0", "1", "141")
    assert b"Traceback" not in shell.stderr and b"Exception ignored" not in shell.stderr


# ------------------------------------------------------------------ extract
def test_extract_command(image: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "out"
    proc = cli("extract", str(image["img"]), str(dest), "-q")
    assert proc.returncode == 0, proc.stderr
    assert (dest / "files" / "size-300000").read_bytes() == (image["src"] / "files" / "size-300000").read_bytes()
    assert os.readlink(dest / "links" / "relative") == "target"
    # Again: everything exists, nothing is overwritten, errors name the entries, exit 1.
    again = cli("extract", str(image["img"]), str(dest / "files"), "--path", "/files")  # its contents
    assert again.returncode == 1
    err = again.stderr.decode().splitlines()
    assert err[-1].startswith("pyext4: error: ") and "could not be extracted" in err[-1]
    assert any("exists in the destination" in line for line in err)
    # --path of one file, --overwrite.
    (dest / "files" / "size-1").write_bytes(b"changed")
    proc = cli("extract", str(image["img"]), str(dest / "files"), "--path", "/files/size-1", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (dest / "files" / "size-1").read_bytes() == _data(1, 1)
    result = invoke("extract", str(image["img"]), str(tmp_path / "sub"), "--path", "/names", "--no-same-owner")
    assert result.exit_code == 0
    assert (tmp_path / "sub" / ("a" * 255)).exists()


def test_extract_jobs(image: dict[str, Path], tmp_path: Path) -> None:
    """-j 1 and -j 3 make the same tree; the second run's refusals come from every process; -j 0 is
    a usage error."""
    trees = {}
    for jobs in ("1", "3"):
        dest = tmp_path / f"j{jobs}"
        proc = cli("extract", "-j", jobs, str(image["img"]), str(dest), "-q")
        assert proc.returncode == 0, proc.stderr
        tree = {}
        for p in sorted(dest.rglob("*")):
            st = p.lstat()
            content = p.read_bytes() if stat.S_ISREG(st.st_mode) else os.readlink(p) if p.is_symlink() else None
            tree[str(p.relative_to(dest))] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, content)
        trees[jobs] = tree
    assert trees["1"] == trees["3"] and len(trees["1"]) > 50
    again = cli("extract", "-j", "3", str(image["img"]), str(tmp_path / "j3"))
    assert again.returncode == 1
    refused = [line for line in again.stderr.decode().splitlines()[:-1] if "exists" in line.lower()]
    files = sum(1 for p in (tmp_path / "j3").rglob("*") if not stat.S_ISDIR(p.lstat().st_mode))
    assert len(refused) == files  # every file, whichever process met it
    usage = cli("extract", "-j", "0", str(image["img"]), str(tmp_path / "j0"))
    assert usage.returncode == 2 and not (tmp_path / "j0").exists()
    assert b"Traceback" not in usage.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="as root setuid/setgid bits are kept by default")
def test_extract_setuid_bits_kept_by_default_as_root_dropped_on_request(image: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    m4755 = image["src"] / "modes" / "m4755"
    assert stat.S_IMODE(os.stat(m4755).st_mode) == 0o4755
    assert invoke("extract", str(image["img"]), str(tmp_path / "a"), "--path", "/modes").exit_code == 0
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "m4755").st_mode) == 0o4755
    result = invoke("extract", str(image["img"]), str(tmp_path / "b"), "--path", "/modes", "--no-preserve-permissions")
    assert result.exit_code == 0
    assert stat.S_IMODE(os.stat(tmp_path / "b" / "m4755").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "b" / "m6711").st_mode) == 0o711


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("args,needle", [
    (["cat", "{img}", "/nope"], "/nope: no such file or directory"),
    (["cat", "{img}", "/files"], "/files: is a directory"),
    (["ls", "{img}", "/files/size-1/x"], "not a directory"),
    (["stat", "{img}", "/nope/deeper"], "no such file"),
    (["info", "{junk}"], "superblock"),
    (["ls", "{junk}"], "superblock"),
    (["extract", "{img}", "{tmp}/x", "--path", "/nope"], "no such file"),
])
def test_errors_are_one_line_exit_1(args: list[str], needle: str, image: dict[str, Path]) -> None:
    junk = image["tmp"] / "junk.img"
    junk.write_bytes(b"not a filesystem" * 1000)
    argv = [a.format(img=image["img"], junk=junk, tmp=image["tmp"]) for a in args]
    proc = cli(*argv)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert needle in line
    if "{junk}" in args:  # a damaged image is named, not only the structure
        assert f"pyext4: error: {junk}: superblock: " in line
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1


@pytest.mark.parametrize("args", [["ls"], ["cat", "{img}"], ["stat"], ["ls", "{img}", "--bogus"],
                                  ["info", "/does/not/exist.img"], ["ls", "{img}", "/", "--verify", "maybe"],
                                  ["nosuchcommand"]])
def test_usage_errors_exit_2(args: list[str], image: dict[str, Path]) -> None:
    proc = cli(*[a.format(img=image["img"]) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert b"Traceback" not in proc.stderr


def test_debug_shows_the_traceback(image: dict[str, Path]) -> None:
    proc = cli("--debug", "cat", str(image["img"]), "/nope")
    assert proc.returncode != 0
    assert b"Traceback" in proc.stderr and b"FileNotFound" in proc.stderr


def test_checksum_error_and_verify_option(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data\n")
    img = tmp_path / "c.img"
    mke2fs(img, "-t", "ext4", size="16M", root=str(src))
    # Corrupt f's inode (its mtime) without fixing the checksum.
    debugfs(img, "sif /f mtime 0x12345678", write=True)
    from pyext4.reader import Filesystem
    from tests.integration.test_reader import _flip_inode_byte

    with Filesystem.open(img) as fs:
        ino = fs.resolve("/f")
    _flip_inode_byte(img, ino, 0x11)
    proc = cli("cat", str(img), "/f")
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert "checksum" in line and f"inode {ino}" in line
    warn = cli("cat", str(img), "/f", "--verify", "warn")
    assert warn.returncode == 0 and warn.stdout == b"data\n"
    assert b"pyext4: warning:" in warn.stderr and b"checksum" in warn.stderr
    off = cli("cat", str(img), "/f", "--verify", "off")
    assert off.returncode == 0 and off.stdout == b"data\n" and not off.stderr


def test_needs_recovery_message_and_override(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("j\n")
    img = tmp_path / "j.img"
    mke2fs(img, "-t", "ext4", size="16M", root=str(src))
    debugfs(img, "feature needs_recovery", write=True)
    proc = cli("ls", str(img))
    assert proc.returncode == 1
    assert "needs_recovery" in one_error_line(proc.stderr)
    ok = cli("cat", str(img), "/f", "--allow-needs-recovery")
    assert ok.returncode == 0 and ok.stdout == b"j\n"
    assert b"warning" in ok.stderr


def test_ls_recursive_goes_on_past_a_broken_directory(tmp_path: Path) -> None:
    import struct

    from pyext4.reader import Filesystem

    src = tmp_path / "src"
    for d in ("a", "b", "c"):
        (src / d).mkdir(parents=True)
        (src / d / f"in-{d}").write_text(d)
    img = tmp_path / "r.img"
    mke2fs(img, "-t", "ext4", "-O", "^metadata_csum", size="16M", root=str(src))
    with Filesystem.open(img) as fs:
        block = fs.extents_of(fs.resolve("/b"))[0].physical
        bs = fs.block_size
    with open(img, "r+b") as f:
        f.seek(block * bs + 12 + 4)  # '..' entry's rec_len
        f.write(struct.pack("<H", 0))
    proc = cli("ls", str(img), "-R")
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert "in-a" in out and "in-c" in out and "in-b" not in out
    err = proc.stderr.decode().splitlines()
    assert err[0].startswith("pyext4: warning: ") and "rec_len" in err[0]
    assert err[-1] == "pyext4: error: 1 directories could not be read (see above)"
