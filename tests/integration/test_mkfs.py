"""mkfs against the oracles: e2fsck, dumpe2fs of mke2fs with the same options, the kernel."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyext4 import Filesystem, InvalidOptions, mkfs
from pyext4.cli import main
from tests.conftest import HASH_SEED, NOW, UUID, assert_fsck_clean, loop_mounted, mke2fs, run, tool

# Lines that legitimately differ: bytes written by the tool, the superblock checksum that covers them,
# and the journal features pyext4 sets at creation (checksum v3, 64-bit) where mke2fs leaves them to
# the kernel's first mount.
_IGNORED = re.compile(r"^(Lifetime writes|Checksum:|Journal features|Journal checksum)")


def _dumpe2fs(image: Path, header_only: bool = False) -> list[str]:
    args = [tool("dumpe2fs")] + (["-h"] if header_only else []) + [str(image)]
    out = run(*args).stdout.decode()
    return [line for line in out.splitlines() if not _IGNORED.match(line)]


def _mke2fs_args(block_size: int, features: str | None, inode_size: int = 256) -> list[str]:
    args = ["-t", "ext4", "-b", str(block_size), "-i", "16384", "-I", str(inode_size)]
    if features:
        args += ["-O", features]
    return args


def _make_both(tmp: Path, size: str, block_size: int, features: str | None = None) -> tuple[Path, Path]:
    ours = tmp / "pyext4.img"
    theirs = tmp / "mke2fs.img"
    mkfs(ours, size, block_size=block_size, features=features, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    theirs.touch()
    os.truncate(theirs, os.path.getsize(ours))
    mke2fs(theirs, *_mke2fs_args(block_size, features))
    return ours, theirs


MATRIX = [
    ("8M", 1024, None), ("8M", 2048, None), ("8M", 4096, None),
    ("64M", 1024, None), ("64M", 2048, None), ("64M", 4096, None),
    ("1G", 1024, None), ("1G", 2048, None), ("1G", 4096, None),
    ("100G", 1024, None), ("100G", 4096, None),
    ("2T", 4096, None),
    ("1G", 4096, "^metadata_csum,uninit_bg"),
    ("1G", 4096, "^64bit"),
    ("1G", 4096, "^has_journal"),
    ("1G", 4096, "^flex_bg"),
    ("1G", 1024, "^flex_bg"),
    ("100G", 4096, "^metadata_csum,uninit_bg,^64bit"),
    ("3G", 4096, "meta_bg,^resize_inode"),
    # Larger than the page size (mke2fs warns; most kernels cannot mount them): groups capped at
    # 65528 blocks, a short last group dropped, as mke2fs does.
    ("1G", 8192, None), ("64M", 16384, None), ("20G", 65536, None),
]


@pytest.mark.parametrize(("size", "block_size", "features"), MATRIX, ids=lambda v: str(v))
def test_matches_mke2fs_and_fsck_clean(tmp: Path, size: str, block_size: int, features: str | None) -> None:
    ours, theirs = _make_both(tmp, size, block_size, features)
    assert_fsck_clean(ours)
    # The whole dumpe2fs report (every group's tables, counts and flags), not just -h.
    assert _dumpe2fs(ours) == _dumpe2fs(theirs)


@pytest.mark.slow
def test_2t_1k_blocks_uses_meta_bg_like_mke2fs(tmp: Path) -> None:
    ours, theirs = _make_both(tmp, "2T", 1024)
    header = _dumpe2fs(ours, header_only=True)
    assert any("meta_bg" in line for line in header if line.startswith("Filesystem features"))
    assert header == _dumpe2fs(theirs, header_only=True)
    assert_fsck_clean(ours)


def test_metadata_is_byte_identical_to_mke2fs_except_write_counter(tmp: Path) -> None:
    ours, theirs = _make_both(tmp, "1G", 4096)
    a, b = ours.read_bytes(), theirs.read_bytes()
    bs = 4096
    differing = {i // bs for i in range(0, len(a), bs) if a[i : i + bs] != b[i : i + bs]}
    # superblock copies (s_kbytes_written and checksum) and the journal superblock (features)
    journal_sb = 131072
    assert differing <= {0, 32768, 98304, 163840, 229376, journal_sb}


@pytest.mark.parametrize("owner", [(0, 0), (1000, 1000)])
@pytest.mark.parametrize("block_size", [1024, 2048, 4096])
def test_kernel_mounts_writes_and_stays_clean(tmp: Path, owner: tuple[int, int], block_size: int) -> None:
    img = tmp / "k.img"
    mkfs(img, "64M", block_size=block_size, root_owner=owner, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    with loop_mounted(img) as mnt:
        st = os.stat(mnt)
        assert (st.st_uid, st.st_gid) == owner
        assert st.st_mode & 0o7777 == 0o755
        lpf = os.stat(mnt / "lost+found")
        assert lpf.st_mode & 0o7777 == 0o700 and (lpf.st_uid, lpf.st_gid) == (0, 0)
        assert sorted(os.listdir(mnt)) == ["lost+found"]
        for i in range(200):
            (mnt / f"file{i}").write_bytes(os.urandom(100) * (i + 1))
        (mnt / "dir").mkdir()
        (mnt / "dir" / "big").write_bytes(b"x" * (3 << 20))
    assert_fsck_clean(img)


@pytest.mark.parametrize("features", [None, "^metadata_csum,uninit_bg", "^64bit", "^has_journal", "^flex_bg"])
def test_kernel_mounts_feature_variants(tmp: Path, features: str | None) -> None:
    img = tmp / "v.img"
    mkfs(img, "256M", features=features, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    with loop_mounted(img) as mnt:
        (mnt / "a").write_bytes(b"hello")
        os.mkdir(mnt / "d")
    assert_fsck_clean(img)


@pytest.mark.parametrize("size", ["100G", "2T"])
def test_kernel_mounts_large_sparse_images(tmp: Path, size: str) -> None:
    img = tmp / "big.img"
    mkfs(img, size, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    with loop_mounted(img) as mnt:
        vfs = os.statvfs(mnt)
        assert vfs.f_blocks * vfs.f_frsize > 0.95 * os.path.getsize(img)
        (mnt / "d").mkdir()
        (mnt / "d" / "f").write_bytes(b"y" * (5 << 20))
    assert_fsck_clean(img)
    assert os.stat(img).st_blocks * 512 < os.path.getsize(img) // 100  # still sparse


def test_reproducible(tmp: Path) -> None:
    digests = []
    for name in ("a.img", "b.img"):
        mkfs(tmp / name, "256M", uuid=UUID, hash_seed=HASH_SEED, now=NOW)
        digests.append(hashlib.sha256((tmp / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]


@pytest.mark.parametrize("flag", ["sync", "writeback"])
def test_sync_and_writeback_change_no_byte(tmp: Path, flag: str) -> None:
    """sync fsyncs and writeback only starts the write-out (posix_fadvise): the image is the same."""
    mkfs(tmp / "plain.img", "1G", uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    mkfs(tmp / "flag.img", "1G", uuid=UUID, hash_seed=HASH_SEED, now=NOW, **{flag: True})
    assert (tmp / "flag.img").read_bytes() == (tmp / "plain.img").read_bytes()
    assert_fsck_clean(tmp / "flag.img")


def test_cli_reproducible_with_source_date_epoch(tmp: Path) -> None:
    digests = []
    for name in ("a.img", "b.img"):
        result = CliRunner().invoke(
            main, ["mkfs", "-q", "-U", UUID, "-E", f"hash_seed={HASH_SEED}", str(tmp / name), "64M"],
            env={"SOURCE_DATE_EPOCH": str(NOW)},
        )
        assert result.exit_code == 0, result.output
        digests.append(hashlib.sha256((tmp / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    out = run(tool("dumpe2fs"), "-h", tmp / "a.img").stdout.decode()
    assert "Tue Nov 14 22:13:20 2023" in out


def test_image_is_sparse(tmp: Path) -> None:
    img = tmp / "big.img"
    mkfs(img, "100G", uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    assert os.path.getsize(img) == 100 << 30
    assert os.stat(img).st_blocks * 512 < 64 << 20  # metadata only; inode tables and journal stay holes


def test_existing_file_keeps_size_and_old_data_is_gone(tmp: Path) -> None:
    img = tmp / "keep.img"
    with open(img, "wb") as f:
        f.write(b"\xaa" * (32 << 20))
    mkfs(img, None, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    assert os.path.getsize(img) == 32 << 20
    assert_fsck_clean(img)
    # Nothing of the old content survives anywhere (unwritten space reads as zeros).
    assert b"\xaa" * 64 not in img.read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": "4K"}, "too small"),
        ({"size": "64M", "inode_size": 300}, "inode size"),
        ({"size": "64M", "block_size": 3000}, "block size"),
        ({"size": "17T", "features": "^64bit"}, "64bit"),
        ({"size": "64M", "inodes": 10**9}, "inode"),
        ({"size": "64M", "label": "x" * 17}, "label"),
        ({"size": "64M", "features": "bogus_feature"}, "unknown"),
    ],
)
def test_bad_options_raise_before_writing(tmp: Path, kwargs: dict, message: str) -> None:
    img = tmp / "bad.img"
    size = kwargs.pop("size")
    with pytest.raises(InvalidOptions, match=message):
        mkfs(img, size, **kwargs)
    assert not img.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["mkfs", "IMG", "4K"],
        ["mkfs", "-I", "300", "IMG", "64M"],
        ["mkfs", "-b", "3000", "IMG", "64M"],
        ["mkfs", "-O", "^64bit", "IMG", "17T"],
        ["mkfs", "IMG", "12Q"],
        ["mkfs", "-E", "root_owner=abc", "IMG", "64M"],
    ],
)
def test_cli_bad_options_one_line(tmp: Path, args: list[str]) -> None:
    args = [a.replace("IMG", str(tmp / "bad.img")) for a in args]
    proc = subprocess.run([sys.executable, "-m", "pyext4.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyext4: error: "), proc.stderr
    assert not (tmp / "bad.img").exists()


def test_cli_host_failure_names_the_image_and_leaves_nothing(tmp: Path) -> None:
    """The host refuses the size (here a 1 MiB file-size limit, EFBIG as for > 16 TiB on ext4)."""
    img = tmp / "new.img"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "from pyext4.cli import run\n"
        "sys.argv = ['pyext4', 'mkfs', '-q', sys.argv[1], '64M']\n"
        "sys.exit(run())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(img)], capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyext4: error: ") and str(img) in lines[0], proc.stderr
    assert not img.exists()


def test_cli_inode_count_0_means_the_default(tmp: Path) -> None:
    for name, extra in (("a.img", ["-N", "0"]), ("b.img", [])):
        result = CliRunner().invoke(main, ["mkfs", "-q", *extra, str(tmp / name), "64M"])
        assert result.exit_code == 0, result.output
    with Filesystem.open(tmp / "a.img") as a, Filesystem.open(tmp / "b.img") as b:
        assert a.sb["s_inodes_count"] == b.sb["s_inodes_count"] > 1000


def test_cli_warns_about_blocks_larger_than_a_page(tmp: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pyext4.cli", "mkfs", "-q", "-b", "65536", str(tmp / "x.img"), "1G"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("pyext4: warning: 65536-byte blocks are larger than the page size")
    assert_fsck_clean(tmp / "x.img")


@pytest.mark.parametrize("args", [["mkfs", "--bogus"], ["--bogus"], ["bogus-command"], ["cat"],
                                  ["mkfs", "-b", "big", "x.img"], ["ls", "/nonexistent.img"]])
def test_cli_usage_error_exits_2_with_one_line(tmp: Path, args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pyext4.cli", *args], capture_output=True, text=True, cwd=tmp)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyext4: error: ") and "--help" in lines[0], proc.stderr
    assert proc.stdout == "" and list(tmp.iterdir()) == []


def test_cli_refuses_to_overwrite_without_force(tmp: Path) -> None:
    img = tmp / "x.img"
    mkfs(img, "16M", uuid=UUID, hash_seed=HASH_SEED, now=NOW, label="keepme")
    before = img.read_bytes()
    result = CliRunner().invoke(main, ["mkfs", str(img), "16M"])
    assert result.exit_code == 1
    assert "use -F" in result.output and "keepme" in result.output
    assert img.read_bytes() == before
    result = CliRunner().invoke(main, ["mkfs", "-q", "-F", "-L", "new", str(img)])
    assert result.exit_code == 0, result.output
    assert "new" in run(tool("dumpe2fs"), "-h", img).stdout.decode()


def test_cli_options_reach_the_image(tmp: Path) -> None:
    img = tmp / "o.img"
    result = CliRunner().invoke(
        main,
        ["mkfs", "-q", "-b", "2048", "-I", "512", "-N", "5000", "-L", "vmroot", "-U", UUID,
         "-O", "^has_journal", "-E", "root_owner=1000:1001", "-m", "1", str(img), "300M"],
    )
    assert result.exit_code == 0, result.output
    header = run(tool("dumpe2fs"), "-h", img).stdout.decode()
    assert re.search(r"Block size:\s+2048", header)
    assert re.search(r"Inode size:\s+512", header)
    assert re.search(r"Filesystem volume name:\s+vmroot", header)
    assert "has_journal" not in header
    inodes = int(re.search(r"Inode count:\s+(\d+)", header).group(1))
    theirs = tmp / "m.img"
    theirs.touch()
    os.truncate(theirs, 300 << 20)
    mke2fs(theirs, "-t", "ext4", "-b", "2048", "-I", "512", "-N", "5000", "-O", "^has_journal")
    assert f"Inode count:              {inodes}" in run(tool("dumpe2fs"), "-h", theirs).stdout.decode()
    stat = run(tool("debugfs"), "-R", "stat /", img).stdout.decode()
    assert "User:  1000" in stat and "Group:  1001" in stat
    assert_fsck_clean(img)


def test_journal_size_option(tmp: Path) -> None:
    img = tmp / "j.img"
    result = CliRunner().invoke(main, ["mkfs", "-q", "-J", "size=16", str(img), "1G"])
    assert result.exit_code == 0, result.output
    header = run(tool("dumpe2fs"), "-h", img).stdout.decode()
    assert re.search(r"Total journal size:\s+16M", header)
    assert_fsck_clean(img)


@pytest.mark.parametrize(("features", "csum_v3", "bits64"), [
    (None, True, True),
    ("^metadata_csum,uninit_bg", False, True),
    ("^64bit", True, False),
])
def test_journal_superblock(tmp: Path, features: str | None, csum_v3: bool, bits64: bool) -> None:
    """Inode 8 holds a jbd2 v2 superblock: empty, one user, the filesystem's UUID, checksum v3 (crc32c,
    a valid superblock checksum) under metadata_csum and 64-bit block tags with 64bit."""
    import uuid as uuidlib

    from pyext4.journal import checksum_ok, parse_superblock

    img = tmp / "j.img"
    mkfs(img, "1G", features=features, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    with Filesystem.open(img) as fs:
        ino = fs.sb["s_journal_inum"]
        assert ino == 8
        extents = fs.extents_of(ino)
        raw = fs.read_block(extents[0].physical)
        jsb = parse_superblock(raw)
        blocks = sum(e.length for e in extents)
        assert (jsb.blocktype, jsb.block_size, jsb.maxlen, jsb.first) == (4, fs.block_size, blocks, 1)
        assert (jsb.start, jsb.sequence >= 1, jsb.nr_users, jsb.errno) == (0, True, 1, 0)
        assert jsb.uuid == bytes(fs.sb["s_uuid"]) == uuidlib.UUID(UUID).bytes
        assert ("journal_checksum_v3" in jsb.features) == csum_v3
        assert ("journal_64bit" in jsb.features) == bits64
        assert (jsb.checksum_type == 4) == csum_v3  # JBD2_CRC32C_CHKSUM
        if csum_v3:
            assert checksum_ok(raw)
            bad = bytearray(raw)
            bad[0x30] ^= 1
            assert not checksum_ok(bad)


def test_memory_device(tmp: Path) -> None:
    from pyext4.blockdev import MemoryDevice

    dev = MemoryDevice(32 << 20)
    mkfs(dev, None, uuid=UUID, hash_seed=HASH_SEED, now=NOW)
    img = tmp / "mem.img"
    img.write_bytes(bytes(dev.buf))
    assert_fsck_clean(img)
