"""Pinned checksum vectors and checksums of structures mke2fs wrote."""

from __future__ import annotations

from pathlib import Path

from pyext4.csum import bitmap_csum, crc16, crc32c_raw, group_desc_csum_crc16, superblock_csum
from pyext4.groupdesc import GroupDesc
from pyext4.superblock import Superblock
from tests.conftest import mke2fs


def test_crc32c_check_value() -> None:
    # The standard CRC-32C check value, expressed through ext4's raw form.
    assert crc32c_raw(0xFFFFFFFF, b"123456789") ^ 0xFFFFFFFF == 0xE3069283
    assert crc32c_raw(0xFFFFFFFF, b"") == 0xFFFFFFFF
    # Chaining is associative over concatenation.
    assert crc32c_raw(crc32c_raw(7, b"abc"), b"def") == crc32c_raw(7, b"abcdef")


def test_crc16_check_value() -> None:
    assert crc16(0, b"123456789") == 0xBB3D  # CRC-16/ARC



def test_checksums_match_mke2fs(tmp_path: Path) -> None:
    img = tmp_path / "m.img"
    img.touch()
    import os

    os.truncate(img, 64 << 20)
    mke2fs(img, "-t", "ext4", "-b", "4096", "-O", "^flex_bg")
    raw = img.read_bytes()
    sb_raw = raw[1024:2048]
    sb = Superblock.parse(sb_raw)
    assert superblock_csum(sb_raw) == sb["s_checksum"]
    desc = GroupDesc.parse(raw, 4096, 64)
    from pyext4.csum import group_desc_csum_crc32c

    assert group_desc_csum_crc32c(sb.csum_seed, 0, raw[4096 : 4096 + 64]) == desc.checksum
    bb = raw[desc.block_bitmap * 4096 : desc.block_bitmap * 4096 + 4096]
    expected = desc.block_bitmap_csum
    assert bitmap_csum(sb.csum_seed, bb[: sb["s_blocks_per_group"] // 8]) == expected


def test_crc16_group_desc_matches_mke2fs(tmp_path: Path) -> None:
    img = tmp_path / "g.img"
    img.touch()
    import os

    os.truncate(img, 64 << 20)
    mke2fs(img, "-t", "ext4", "-b", "4096", "-O", "^metadata_csum,uninit_bg,^64bit")
    raw = img.read_bytes()
    sb = Superblock.parse(raw[1024:2048])
    desc = GroupDesc.parse(raw, 4096, 32)
    assert group_desc_csum_crc16(sb.uuid, 0, raw[4096 : 4096 + 32]) == desc.checksum
