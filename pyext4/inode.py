"""Inodes: one typed value per on-disk inode, timestamps in nanoseconds, checksums."""

from __future__ import annotations

import struct

from . import _codecs as C
from . import constants as K
from .csum import inode_crc, inode_csum

_BASE = C.INODE
_EXTRA = C.INODE_EXTRA
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_CSUM_HALVES = struct.Struct("<H4xH")  # i_checksum_lo at 0x7C, i_checksum_hi at 0x82

# Offsets (within the inode) of each extra field's end: a field exists when
# 128 + i_extra_isize reaches its end.
_EXTRA_END = {
    "checksum_hi": 4,
    "ctime_extra": 8,
    "mtime_extra": 12,
    "atime_extra": 16,
    "crtime": 20,
    "crtime_extra": 24,
    "version_hi": 28,
    "projid": 32,
}

NS = 1_000_000_000
_MIN_SEC = -(1 << 31)
_MAX_SEC = (1 << 34) - (1 << 31) - 1


def decode_time(base: int, extra: int | None) -> int:
    """Nanoseconds since the epoch from a 32-bit seconds field and its optional extra field."""
    sec = base - (1 << 32) if base & 0x80000000 else base
    if extra is None:
        return sec * NS
    sec += (extra & 3) << 32
    return sec * NS + ((extra >> 2) & 0x3FFFFFFF)


def _decode_time_x(base: int, extra: int) -> int:
    """decode_time with the extra field present (the hot path of Inode.parse)."""
    sec = (base - (1 << 32) if base & 0x80000000 else base) + ((extra & 3) << 32)
    return sec * NS + ((extra >> 2) & 0x3FFFFFFF)


def encode_time(ns: int) -> tuple[int, int]:
    """(seconds field, extra field) for a time in ns, clamped to ext4's range."""
    sec, nsec = divmod(ns, NS)
    if sec < _MIN_SEC:
        sec, nsec = _MIN_SEC, 0
    elif sec > _MAX_SEC:
        sec, nsec = _MAX_SEC, NS - 1
    low = sec & 0xFFFFFFFF
    signed_low = low - (1 << 32) if low & 0x80000000 else low
    epoch = ((sec - signed_low) >> 32) & 3
    return low, epoch | (nsec << 2)


def encode_time_32(ns: int) -> int:
    """The seconds field alone (for 128-byte inodes), clamped to the signed 32-bit range."""
    sec = ns // NS
    sec = max(-(1 << 31), min((1 << 31) - 1, sec))
    return sec & 0xFFFFFFFF


class Inode:
    """One inode.  Times are ns since the epoch; ``block`` is the raw 60-byte i_block."""

    __slots__ = (
        "mode", "uid", "gid", "size", "atime", "ctime", "mtime", "crtime", "dtime",
        "links_count", "blocks", "flags", "version", "block", "generation", "file_acl",
        "faddr", "extra_isize", "checksum", "projid", "l_i_reserved",
        "has_atime_extra", "has_ctime_extra", "has_mtime_extra", "has_crtime",
        "tail",
    )

    def __init__(self) -> None:
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.size = 0
        self.atime = 0
        self.ctime = 0
        self.mtime = 0
        self.crtime = 0
        self.dtime = 0
        self.links_count = 0
        self.blocks = 0
        self.flags = 0
        self.version = 0
        self.block = bytes(60)
        self.generation = 0
        self.file_acl = 0
        self.faddr = 0
        self.extra_isize = 0
        self.checksum = 0
        self.projid = 0
        self.l_i_reserved = 0
        self.has_atime_extra = self.has_ctime_extra = self.has_mtime_extra = self.has_crtime = False
        self.tail = b""  # bytes after 128 + extra_isize: in-inode xattrs

    # ------------------------------------------------------------- parse
    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview, inode_size: int) -> Inode:
        """Decode one inode of ``inode_size`` bytes (no checksum check; see verify_checksum)."""
        (
            mode, uid, size_lo, atime, ctime, mtime, dtime, gid, links, blocks_lo, flags,
            version, block, generation, acl_lo, size_hi, faddr, blocks_hi, acl_hi, uid_hi,
            gid_hi, csum_lo, reserved,
        ) = _BASE.unpack_from(raw, 0)
        ino = cls.__new__(cls)  # every slot is set below (no defaults to overwrite)
        ino.mode = mode
        ino.uid = uid | (uid_hi << 16)
        ino.gid = gid | (gid_hi << 16)
        ino.size = size_lo | (size_hi << 32)
        ino.dtime = dtime
        ino.links_count = links
        ino.blocks = blocks_lo | (blocks_hi << 32)
        ino.flags = flags
        ino.block = block
        ino.generation = generation
        ino.file_acl = acl_lo | (acl_hi << 32)
        ino.faddr = faddr
        ino.l_i_reserved = reserved
        extra = 0
        if inode_size > K.GOOD_OLD_INODE_SIZE:
            extra = _U16.unpack_from(raw, 128)[0]
            if extra & 3 or 128 + extra > inode_size:
                extra = 0  # invalid: treat as having no extra fields (the caller may flag it)
        ino.extra_isize = extra
        if extra >= 32:  # every extra field present (what mke2fs and the kernel write): no padding
            (_, csum_hi, ctime_x, mtime_x, atime_x, crtime, crtime_x, version_hi, projid) = _EXTRA.unpack_from(raw, 128)
            ino.checksum = csum_lo | csum_hi << 16
            ino.has_ctime_extra = ino.has_mtime_extra = ino.has_atime_extra = ino.has_crtime = True
            ino.ctime = _decode_time_x(ctime, ctime_x)
            ino.mtime = _decode_time_x(mtime, mtime_x)
            ino.atime = _decode_time_x(atime, atime_x)
            ino.crtime = _decode_time_x(crtime, crtime_x)
            ino.version = version | version_hi << 32
            ino.projid = projid
        elif extra >= 2:
            padded = bytes(raw[128 : 128 + extra]) + bytes(32 - extra)
            (_, csum_hi, ctime_x, mtime_x, atime_x, crtime, crtime_x, version_hi, projid) = _EXTRA.unpack_from(padded, 0)
            ino.checksum = csum_lo | csum_hi << 16 if extra >= _EXTRA_END["checksum_hi"] else csum_lo
            ino.has_ctime_extra = extra >= _EXTRA_END["ctime_extra"]
            ino.has_mtime_extra = extra >= _EXTRA_END["mtime_extra"]
            ino.has_atime_extra = extra >= _EXTRA_END["atime_extra"]
            ino.has_crtime = extra >= _EXTRA_END["crtime_extra"]
            ino.ctime = decode_time(ctime, ctime_x if ino.has_ctime_extra else None)
            ino.mtime = decode_time(mtime, mtime_x if ino.has_mtime_extra else None)
            ino.atime = decode_time(atime, atime_x if ino.has_atime_extra else None)
            ino.crtime = decode_time(crtime, crtime_x) if ino.has_crtime else 0
            ino.version = version | version_hi << 32 if extra >= _EXTRA_END["version_hi"] else version
            ino.projid = projid if extra >= _EXTRA_END["projid"] else 0
        else:
            ino.checksum = csum_lo
            ino.has_ctime_extra = ino.has_mtime_extra = ino.has_atime_extra = ino.has_crtime = False
            ino.ctime = decode_time(ctime, None)
            ino.mtime = decode_time(mtime, None)
            ino.atime = decode_time(atime, None)
            ino.crtime = 0
            ino.version = version
            ino.projid = 0
        ino.tail = bytes(raw[128 + extra : inode_size]) if inode_size > 128 + extra else b""
        return ino

    # -------------------------------------------------------------- pack
    def pack(self, inode_size: int) -> bytearray:
        """On-disk bytes (``inode_size`` long) with the checksum field as held in ``self.checksum``."""
        extra = self.extra_isize if inode_size > K.GOOD_OLD_INODE_SIZE else 0
        if extra >= _EXTRA_END["ctime_extra"]:
            ctime, ctime_x = encode_time(self.ctime)
        else:
            ctime, ctime_x = encode_time_32(self.ctime), 0
        if extra >= _EXTRA_END["mtime_extra"]:
            mtime, mtime_x = encode_time(self.mtime)
        else:
            mtime, mtime_x = encode_time_32(self.mtime), 0
        if extra >= _EXTRA_END["atime_extra"]:
            atime, atime_x = encode_time(self.atime)
        else:
            atime, atime_x = encode_time_32(self.atime), 0
        crtime, crtime_x = encode_time(self.crtime) if extra >= _EXTRA_END["crtime_extra"] else (0, 0)
        raw = bytearray(inode_size)
        _BASE.pack_into(
            raw, 0,
            self.mode, self.uid & 0xFFFF, self.size & 0xFFFFFFFF, atime, ctime, mtime,
            self.dtime & 0xFFFFFFFF, self.gid & 0xFFFF, self.links_count, self.blocks & 0xFFFFFFFF,
            self.flags, self.version & 0xFFFFFFFF, self.block, self.generation,
            self.file_acl & 0xFFFFFFFF, self.size >> 32, self.faddr, (self.blocks >> 32) & 0xFFFF,
            (self.file_acl >> 32) & 0xFFFF, self.uid >> 16, self.gid >> 16, self.checksum & 0xFFFF,
            self.l_i_reserved,
        )
        if extra >= 2:
            fields = _EXTRA.pack(
                extra, (self.checksum >> 16) & 0xFFFF, ctime_x, mtime_x, atime_x, crtime, crtime_x,
                (self.version >> 32) & 0xFFFFFFFF, self.projid,
            )
            known = min(extra, len(fields))  # past the known fields (i_extra_isize > 32): reserved zeros
            raw[128 : 128 + known] = fields[:known]
        if self.tail:
            start = 128 + extra
            raw[start : start + len(self.tail)] = self.tail[: inode_size - start]
        return raw

    # ---------------------------------------------------------- helpers
    @property
    def file_type(self) -> int:
        return self.mode & K.S_IFMT

    def is_dir(self) -> bool:
        return self.mode & K.S_IFMT == K.S_IFDIR

    def is_reg(self) -> bool:
        return self.mode & K.S_IFMT == K.S_IFREG

    def is_symlink(self) -> bool:
        return self.mode & K.S_IFMT == K.S_IFLNK

    def is_device(self) -> bool:
        return self.mode & K.S_IFMT in (K.S_IFCHR, K.S_IFBLK)

    def has_extents(self) -> bool:
        return bool(self.flags & K.EXTENTS_FL)

    def has_inline_data(self) -> bool:
        return bool(self.flags & K.INLINE_DATA_FL)

    def dir_size(self, large_dir: bool) -> int:
        """Directory size as the kernel reads it (i_size_high counts only with large_dir)."""
        return self.size if large_dir else self.size & 0xFFFFFFFF

    def blocks_in_512(self, huge_file: bool, block_size: int) -> int:
        """i_blocks in 512-byte units, as stat() reports it (as the kernel: without huge_file only
        the low 32 bits count; with it, HUGE_FILE_FL means units of filesystem blocks)."""
        if not huge_file:
            return self.blocks & 0xFFFFFFFF
        if self.flags & K.HUGE_FILE_FL:
            return self.blocks * (block_size // 512)
        return self.blocks

    def set_blocks_512(self, count_512: int, huge_file: bool, block_size: int) -> None:
        """Store an i_blocks value given in 512-byte units, using HUGE_FILE_FL when needed."""
        if count_512 < (1 << 48) or not huge_file:
            self.blocks = count_512
            self.flags &= ~K.HUGE_FILE_FL
        else:
            self.blocks = count_512 // (block_size // 512)
            self.flags |= K.HUGE_FILE_FL

    def rdev(self) -> tuple[int, int]:
        """(major, minor) of a device inode, old or new encoding (as the kernel decodes it)."""
        old = _U32.unpack_from(self.block, 0)[0]
        if old:
            return (old >> 8) & 0xFF, old & 0xFF
        new = _U32.unpack_from(self.block, 4)[0]
        return (new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00)

    def set_rdev(self, major: int, minor: int) -> None:
        """Encode a device number the way the kernel writes it (old form when it fits)."""
        block = bytearray(60)
        if major < 256 and minor < 256:
            _U32.pack_into(block, 0, (major << 8) | minor)
        else:
            _U32.pack_into(block, 4, (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12))
        self.block = bytes(block)

    def copy(self) -> Inode:
        other = Inode()
        for name in self.__slots__:
            setattr(other, name, getattr(self, name))
        return other

    def __repr__(self) -> str:
        return (
            f"Inode(mode={self.mode:o}, uid={self.uid}, gid={self.gid}, size={self.size}, "
            f"links={self.links_count}, flags={self.flags:#x})"
        )


def has_csum_hi(raw: bytes | bytearray | memoryview, inode_size: int) -> bool:
    if inode_size <= K.GOOD_OLD_INODE_SIZE:
        return False
    return bool(_U16.unpack_from(raw, 128)[0] >= _EXTRA_END["checksum_hi"])


def compute_checksum(raw: bytes | bytearray | memoryview, seed: int, ino: int, inode_size: int) -> int:
    """The checksum a packed inode should carry (32 or 16 bits)."""
    return inode_csum(seed, ino, raw[:inode_size], has_csum_hi(raw, inode_size))


def stored_checksum(raw: bytes | bytearray | memoryview, inode_size: int) -> int:
    lo = _U16.unpack_from(raw, 0x7C)[0]
    if has_csum_hi(raw, inode_size):
        return lo | (_U16.unpack_from(raw, 0x82)[0] << 16)
    return int(lo)


def set_checksum(raw: bytearray, seed: int, ino: int, inode_size: int) -> None:
    """Fill in the checksum fields of a packed inode in place."""
    csum = compute_checksum(raw, seed, ino, inode_size)
    _U16.pack_into(raw, 0x7C, csum & 0xFFFF)
    if has_csum_hi(raw, inode_size):
        _U16.pack_into(raw, 0x82, csum >> 16)


def verify_checksum(raw: bytes | bytearray | memoryview, seed: int, ino: int, inode_size: int) -> tuple[bool, int, int]:
    """(ok, stored, computed) for a packed inode."""
    if inode_size >= 0x84 and len(raw) >= inode_size and _U16.unpack_from(raw, 128)[0] >= _EXTRA_END["checksum_hi"]:
        # The usual large inode, flattened (this runs once per inode read): both halves stored,
        # both zeroed for the sum.
        lo, hi = _CSUM_HALVES.unpack_from(raw, 0x7C)
        stored = lo | hi << 16
        buf = bytearray(raw[:inode_size])
        buf[0x7C:0x7E] = buf[0x82:0x84] = b"\0\0"
        computed = inode_crc(seed, ino, _U32.unpack_from(raw, 0x64)[0], buf)
        return stored == computed, stored, computed
    stored = stored_checksum(raw, inode_size)
    computed = compute_checksum(raw, seed, ino, inode_size)
    return stored == computed, stored, computed
