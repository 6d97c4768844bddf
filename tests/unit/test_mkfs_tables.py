"""mkfs's descriptor table, read back group by group from sparse in-memory images of terabytes."""

from __future__ import annotations

import importlib

import pytest

from pyext4 import constants as K
from pyext4.csum import bitmap_csum
from pyext4.geometry import Geometry
from pyext4.groupdesc import DescChecksummer, GroupDesc
from tests.conftest import HASH_SEED, NOW, UUID

M = importlib.import_module("pyext4.mkfs")  # the module, not the pyext4.mkfs function


class SparseDevice:
    """A device of any size that keeps only the pages written (the rest reads as zeros)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pages: dict[int, bytearray] = {}
        self.bytes_written = 0

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        self.bytes_written += len(data)
        pos = 0
        while pos < len(data):
            page_no, at = divmod(offset + pos, 4096)
            n = min(4096 - at, len(data) - pos)
            self.pages.setdefault(page_no, bytearray(4096))[at : at + n] = data[pos : pos + n]
            pos += n

    def pread(self, offset: int, length: int) -> bytes:
        out = bytearray()
        while len(out) < length:
            page_no, at = divmod(offset + len(out), 4096)
            n = min(4096 - at, length - len(out))
            out += self.pages.get(page_no, bytes(4096))[at : at + n]
        return bytes(out)

    def zero_range(self, offset: int, length: int) -> None:
        pass  # nothing was written before mkfs

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "size, options",
    [
        ("1T", {}),  # 512 flex groups: most descriptor blocks follow a shifted pattern
        ("1T", {"flex_bg_size": 128}),  # flex groups larger than a descriptor block
        ("1T", {"flex_bg_size": 4}),
        ("1T", {"features": "^metadata_csum,uninit_bg"}),  # crc16 checksums
        ("1T", {"features": "^flex_bg"}),
        ("200G", {"features": "^metadata_csum"}),  # no uninit flags: every group has bitmaps
        ("300G", {"features": "meta_bg,^resize_inode"}),
        ("70G", {"features": "^64bit"}),  # 32-byte descriptors
    ],
)
def test_every_descriptor_reads_back_as_planned(size: str, options: dict) -> None:
    dev = SparseDevice(M.parse_size(size))
    plan = M.mkfs(dev, size, uuid=UUID, hash_seed=HASH_SEED, now=NOW, **options)
    geo = plan.geo
    bs = geo.block_size
    ds = geo.desc_size
    checker = DescChecksummer(
        metadata_csum=plan.metadata_csum, gdt_csum=plan.csum and not plan.metadata_csum,
        seed=plan.seed, uuid=plan.opts.uuid, desc_size=ds,
    )
    counts = M._GroupCounts(plan)
    for index in range(geo.desc_blocks):
        raw = dev.pread(geo.descriptor_block(index) * bs, bs)
        for slot in range(min(geo.desc_per_block, geo.group_count - index * geo.desc_per_block)):
            group = index * geo.desc_per_block + slot
            chunk = raw[slot * ds : (slot + 1) * ds]
            desc = GroupDesc.parse(chunk, 0, ds)
            assert (desc.block_bitmap, desc.inode_bitmap, desc.inode_table) == plan.tables(group)
            flags, free_blocks, free_inodes, dirs, unused, _ = counts(group, plan.flex(group))
            assert (desc.flags, desc.free_blocks, desc.free_inodes, desc.used_dirs, desc.itable_unused) == (
                flags, free_blocks, free_inodes, dirs, unused,
            )
            if checker.enabled:
                assert desc.checksum == checker.compute(group, chunk), f"group {group}"
            if plan.metadata_csum and not flags & K.BG_BLOCK_UNINIT:
                bitmap = dev.pread(desc.block_bitmap * bs, bs)[: geo.blocks_per_group // 8]
                assert desc.block_bitmap_csum == bitmap_csum(plan.seed, bitmap) & (0xFFFFFFFF if ds >= 64 else 0xFFFF)
        if not geo.meta_bg:  # every backup holds the same table
            for group in geo.backup_groups:
                assert dev.pread((geo.group_first_block(group) + 1 + index) * bs, bs) == raw


def test_backup_groups_in() -> None:
    geo = Geometry(block_size=4096, blocks_count=1 << 28, first_data_block=0, blocks_per_group=32768,
                   inodes_per_group=8192, inode_size=256, desc_size=64)
    assert geo.backup_groups == [0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343, 625, 729, 2187, 2401, 3125, 6561]
    assert geo.backup_groups_in(0, 8) == [0, 1, 3, 5, 7]
    assert geo.backup_groups_in(10, 25) == [] and geo.backup_groups_in(25, 26) == [25]
    assert geo.backup_groups_in(6562, 1 << 40) == []
    assert geo == Geometry(**{name: getattr(geo, name) for name in Geometry._FIELDS})
