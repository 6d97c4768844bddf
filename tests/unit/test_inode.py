"""Inode values: pack and parse agree, whatever i_extra_isize says."""

from __future__ import annotations

import pytest

from pyext4.inode import Inode


@pytest.mark.parametrize("extra", [0, 4, 28, 32, 36, 64, 128])
def test_pack_keeps_the_inode_size_and_the_tail(extra: int) -> None:
    inode = Inode()
    inode.mode = 0o100644
    inode.uid, inode.gid = 70000, 80000
    inode.size = (5 << 32) + 7
    inode.mtime = 1_700_000_000_123_456_789
    inode.extra_isize = extra
    tail_room = 256 - 128 - extra
    inode.tail = bytes(range(1, 1 + min(tail_room, 40)))
    raw = inode.pack(256)
    assert len(raw) == 256
    back = Inode.parse(raw, 256)
    assert back.extra_isize == extra
    assert (back.uid, back.gid, back.size) == (70000, 80000, (5 << 32) + 7)
    assert back.tail[: len(inode.tail)] == inode.tail
    if extra >= 32:  # all the extra fields fit: nanoseconds kept
        assert back.mtime == inode.mtime
        assert raw[128 + 32 : 128 + extra] == bytes(extra - 32)  # reserved bytes past the known fields


@pytest.mark.parametrize(
    ("huge_file", "flag", "expected"),
    [
        (True, True, ((1 << 32) + 8) * 8),  # HUGE_FILE_FL: i_blocks counts 4 KiB blocks
        (True, False, (1 << 32) + 8),  # 512-byte units, 48 bits
        (False, True, 8),  # without the feature the kernel reads only i_blocks_lo
        (False, False, 8),
    ],
)
def test_block_count_as_the_kernel_reads_it(huge_file: bool, flag: bool, expected: int) -> None:
    inode = Inode()
    inode.mode = 0o100644
    inode.blocks = (1 << 32) + 8  # i_blocks_lo 8, i_blocks_high 1
    inode.flags = 0x40000 if flag else 0
    back = Inode.parse(inode.pack(256), 256)
    assert back.blocks_in_512(huge_file, 4096) == expected


@pytest.mark.parametrize("count", [0, 8, (1 << 32) + 8, (1 << 48) - 8, 1 << 50])
def test_set_blocks_512_round_trips(count: int) -> None:
    inode = Inode()
    inode.set_blocks_512(count, True, 4096)
    back = Inode.parse(inode.pack(256), 256)
    assert back.blocks_in_512(True, 4096) == count
    assert bool(back.flags & 0x40000) == (count >= 1 << 48)
