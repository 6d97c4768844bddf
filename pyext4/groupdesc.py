"""Group descriptors: 32- and 64-byte forms parsed into one typed value, and their checksums."""

from __future__ import annotations

from . import _codecs as C
from .csum import Crc16GroupDesc, group_desc_csum_crc32c

_D32 = C.GROUP_DESC_32
_D64 = C.GROUP_DESC_64


class GroupDesc:
    """One block group's descriptor with hi/lo halves joined."""

    __slots__ = (
        "block_bitmap",
        "inode_bitmap",
        "inode_table",
        "free_blocks",
        "free_inodes",
        "used_dirs",
        "flags",
        "exclude_bitmap",
        "block_bitmap_csum",
        "inode_bitmap_csum",
        "itable_unused",
        "checksum",
        "reserved",
    )

    def __init__(self) -> None:
        self.block_bitmap = 0
        self.inode_bitmap = 0
        self.inode_table = 0
        self.free_blocks = 0
        self.free_inodes = 0
        self.used_dirs = 0
        self.flags = 0
        self.exclude_bitmap = 0
        self.block_bitmap_csum = 0
        self.inode_bitmap_csum = 0
        self.itable_unused = 0
        self.checksum = 0
        self.reserved = 0

    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview, offset: int, desc_size: int) -> GroupDesc:
        d = cls()
        if desc_size >= 64:
            (bb, ib, it, fb, fi, ud, fl, ex, bbc, ibc, iu, ck,
             bb_hi, ib_hi, it_hi, fb_hi, fi_hi, ud_hi, iu_hi, ex_hi, bbc_hi, ibc_hi, rsv) = _D64.unpack_from(raw, offset)
            d.block_bitmap = bb | (bb_hi << 32)
            d.inode_bitmap = ib | (ib_hi << 32)
            d.inode_table = it | (it_hi << 32)
            d.free_blocks = fb | (fb_hi << 16)
            d.free_inodes = fi | (fi_hi << 16)
            d.used_dirs = ud | (ud_hi << 16)
            d.itable_unused = iu | (iu_hi << 16)
            d.exclude_bitmap = ex | (ex_hi << 32)
            d.block_bitmap_csum = bbc | (bbc_hi << 16)
            d.inode_bitmap_csum = ibc | (ibc_hi << 16)
            d.reserved = rsv
        else:
            (bb, ib, it, fb, fi, ud, fl, ex, bbc, ibc, iu, ck) = _D32.unpack_from(raw, offset)
            d.block_bitmap, d.inode_bitmap, d.inode_table = bb, ib, it
            d.free_blocks, d.free_inodes, d.used_dirs = fb, fi, ud
            d.itable_unused, d.exclude_bitmap = iu, ex
            d.block_bitmap_csum, d.inode_bitmap_csum = bbc, ibc
        d.flags = fl
        d.checksum = ck
        return d

    def pack(self, desc_size: int) -> bytes:
        """On-disk bytes with the checksum field as stored in ``self.checksum``."""
        if desc_size >= 64:
            raw = _D64.pack(
                self.block_bitmap & 0xFFFFFFFF,
                self.inode_bitmap & 0xFFFFFFFF,
                self.inode_table & 0xFFFFFFFF,
                self.free_blocks & 0xFFFF,
                self.free_inodes & 0xFFFF,
                self.used_dirs & 0xFFFF,
                self.flags,
                self.exclude_bitmap & 0xFFFFFFFF,
                self.block_bitmap_csum & 0xFFFF,
                self.inode_bitmap_csum & 0xFFFF,
                self.itable_unused & 0xFFFF,
                self.checksum,
                self.block_bitmap >> 32,
                self.inode_bitmap >> 32,
                self.inode_table >> 32,
                self.free_blocks >> 16,
                self.free_inodes >> 16,
                self.used_dirs >> 16,
                self.itable_unused >> 16,
                self.exclude_bitmap >> 32,
                self.block_bitmap_csum >> 16,
                self.inode_bitmap_csum >> 16,
                self.reserved,
            )
            return raw + bytes(desc_size - 64)
        return _D32.pack(
            self.block_bitmap,
            self.inode_bitmap,
            self.inode_table,
            self.free_blocks,
            self.free_inodes,
            self.used_dirs,
            self.flags,
            self.exclude_bitmap,
            self.block_bitmap_csum & 0xFFFF,
            self.inode_bitmap_csum & 0xFFFF,
            self.itable_unused,
            self.checksum,
        )

    def copy(self) -> GroupDesc:
        other = GroupDesc()
        for name in self.__slots__:
            setattr(other, name, getattr(self, name))
        return other

    def __repr__(self) -> str:
        return (
            f"GroupDesc(bb={self.block_bitmap}, ib={self.inode_bitmap}, it={self.inode_table}, "
            f"free_blocks={self.free_blocks}, free_inodes={self.free_inodes}, dirs={self.used_dirs}, "
            f"flags={self.flags:#x}, unused={self.itable_unused})"
        )


class DescChecksummer:
    """Computes group descriptor checksums for one filesystem (metadata_csum, gdt_csum or none)."""

    def __init__(self, *, metadata_csum: bool, gdt_csum: bool, seed: int, uuid: bytes, desc_size: int) -> None:
        self.desc_size = desc_size
        self.enabled = metadata_csum or gdt_csum
        self._metadata_csum = metadata_csum
        self._seed = seed
        self._crc16 = Crc16GroupDesc(uuid) if gdt_csum and not metadata_csum else None

    def compute(self, group: int, raw: bytes | bytearray | memoryview) -> int:
        """Checksum for the descriptor bytes ``raw`` (its checksum field is ignored)."""
        if self._metadata_csum:
            return group_desc_csum_crc32c(self._seed, group, raw)
        if self._crc16 is not None:
            return self._crc16(group, raw)
        return 0

    def pack(self, group: int, desc: GroupDesc) -> bytes:
        """Pack ``desc`` with its checksum filled in (and stored back on ``desc``)."""
        raw = desc.pack(self.desc_size)
        if not self.enabled:
            return raw
        desc.checksum = self.compute(group, raw)
        return raw[:0x1E] + desc.checksum.to_bytes(2, "little") + raw[0x20:]

    def bitmap_csums_hi(self) -> bool:
        """Whether the high 16 bits of the bitmap checksums are stored."""
        return self.desc_size >= 64
