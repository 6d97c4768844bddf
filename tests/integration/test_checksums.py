"""The reader's checksum checks, one structure at a time: a flipped bit is ChecksumError (strict) or a warning (warn)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyext4 import ChecksumError, Filesystem
from pyext4.reader import Ext4Warning
from tests.conftest import mke2fs, tool

BS = 4096
BIG = "/big/entry-0100-" + "n" * 30


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("csum-src")
    (src / "big").mkdir()
    for i in range(400):  # several blocks: an htree after e2fsck -D
        (src / "big" / f"entry-{i:04d}-{'n' * 30}").touch()
    with open(src / "frag", "wb") as f:  # 20 extents: an extent tree of depth 1
        for i in range(20):
            f.seek(i * 2 * BS)
            f.write(os.urandom(BS))
    (src / "xa").write_text("x")
    os.setxattr(src / "xa", "user.big", os.urandom(1500))  # too big for the inode: an xattr block
    return src


def _image(tmp: Path, source: Path, *features: str) -> Path:
    img = tmp / "img"
    mke2fs(img, "-t", "ext4", "-b", str(BS), *(["-O", ",".join(features)] if features else []), size="16M",
           root=str(source))
    return img


def _flip(img: Path, offset: int) -> None:
    with open(img, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 1]))


def _everything(fs: Filesystem) -> None:
    for dirpath, _dirnames, filenames in fs.walk("/"):
        for name in filenames:
            path = f"{dirpath.rstrip('/')}/{name}"
            fs.read_bytes(path)
            fs.xattrs(path)
    fs.stat(BIG)


def _superblock(img: Path) -> None:
    _flip(img, 1024 + 0x30)  # s_wtime


def _descriptor(img: Path) -> None:
    _flip(img, BS + 0x0C)  # group 0's bg_free_blocks_count_lo


def _extent_block(img: Path) -> None:
    with Filesystem.open(img) as fs:
        inode = fs.inode(fs.resolve("/frag"))
        assert struct.unpack_from("<H", inode.block, 6)[0] == 1  # depth 1: a leaf block
        leaf = struct.unpack_from("<I", inode.block, 16)[0]
    _flip(img, leaf * BS + 12 + 12 * 300)  # an unused slot, covered by the tail checksum


def _xattr_block(img: Path) -> None:
    with Filesystem.open(img) as fs:
        block = fs.inode(fs.resolve("/xa")).file_acl
    assert block
    _flip(img, block * BS + 0x20 + 100)


def _dx_root(img: Path) -> None:
    subprocess.run([tool("e2fsck"), "-fyD", str(img)], capture_output=True)  # index the big directory
    with Filesystem.open(img) as fs:
        ino = fs.resolve("/big")
        assert fs.inode(ino).flags & 0x1000  # INDEX_FL
        root = fs.extents_of(ino)[0].physical
    with open(img, "rb") as f:
        f.seek(root * BS + 0x20)
        _limit, count = struct.unpack("<HH", f.read(4))
    assert count > 2
    # The last entry's hash, low bit (hash + 1: one boundary moves by one). The checksum covers the
    # entries in use and the tail, not the unused slots (as the kernel computes it).
    _flip(img, root * BS + 0x20 + 8 * (count - 1))


CASES: dict[str, tuple[tuple[str, ...], Callable[[Path], None], str]] = {
    "superblock": ((), _superblock, "superblock checksum"),
    "descriptor crc32c": ((), _descriptor, "group descriptor checksum"),
    "descriptor crc16": (("^metadata_csum", "uninit_bg"), _descriptor, "group descriptor checksum"),
    "extent block": ((), _extent_block, "extent block checksum"),
    "xattr block": ((), _xattr_block, "xattr block checksum"),
    "dx root": ((), _dx_root, "htree block checksum"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_checksum_is_caught(tmp_path: Path, source: Path, case: str) -> None:
    features, damage, message = CASES[case]
    img = _image(tmp_path, source, *features)
    pristine = tmp_path / "pristine"
    shutil.copy(img, pristine)
    damage(img)
    assert img.read_bytes() != pristine.read_bytes()
    with Filesystem.open(pristine) as fs:  # the same walk is clean before the damage
        _everything(fs)

    with pytest.raises(ChecksumError, match=message):
        with Filesystem.open(img, verify="strict") as fs:
            _everything(fs)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Filesystem.open(img, verify="warn") as fs:
            _everything(fs)
            seen: Any = fs.read_bytes("/frag")
    assert len(seen) == 39 * BS
    assert any(issubclass(w.category, Ext4Warning) and message in str(w.message) for w in caught), \
        [str(w.message) for w in caught]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Filesystem.open(img, verify="off") as fs:
            _everything(fs)
    assert not [w for w in caught if issubclass(w.category, Ext4Warning)]
