"""Checksums: raw CRC32C and CRC16, and one compute function per checksummed object.

ext4's CRC32C is the *raw* form (no final inversion, caller-chosen seed):
``raw(seed, data) = crc32c(data, value=seed ^ 0xFFFFFFFF) ^ 0xFFFFFFFF`` with
the ``crc32c`` package.  Each ``*_csum`` function takes the bytes exactly as
they are on disk, ignoring whatever the checksum field holds, and returns the
value to store; verification is ``compute == stored`` in the object's module.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import struct
from collections.abc import Callable
from functools import cache
from typing import Any

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ZERO4 = b"\0\0\0\0"
_ZERO2 = b"\0\0"


def _load_crc32c() -> Callable[..., int]:
    """The ``crc32c`` package's C function, loaded without its slow ``__init__``.

    ``import crc32c`` pulls in importlib.metadata for its version string, which
    costs ~15 ms of start-up; the extension module alone loads in ~1 ms.
    """
    try:
        spec = importlib.util.find_spec("crc32c")
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                for name in os.listdir(location):
                    if name.startswith("_crc32c") and name.endswith((".so", ".pyd")):
                        path = os.path.join(location, name)
                        loader = importlib.machinery.ExtensionFileLoader("crc32c._crc32c", path)
                        ext_spec = importlib.util.spec_from_file_location(
                            "crc32c._crc32c", path, loader=loader
                        )
                        if ext_spec is None:
                            continue
                        module: Any = importlib.util.module_from_spec(ext_spec)
                        loader.exec_module(module)
                        return module.crc32c  # type: ignore[no-any-return]
    except (ImportError, OSError):  # pragma: no cover - fall back to the package
        pass
    import crc32c  # pragma: no cover

    return crc32c.crc32c  # pragma: no cover


_crc32c = _load_crc32c()


def crc32c_raw(seed: int, data: bytes | bytearray | memoryview) -> int:
    """ext4's raw CRC32C of ``data`` continuing from ``seed``."""
    return _crc32c(data, seed ^ 0xFFFFFFFF) ^ 0xFFFFFFFF  # type: ignore[no-any-return]


@cache  # built on first use: only uninit_bg descriptors need it, and building it costs start-up time
def _crc16_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


def crc16(crc: int, data: bytes | bytearray | memoryview) -> int:
    """CRC-16 (poly 0x8005, reflected) as e2fsprogs' ext2fs_crc16 computes it."""
    table = _crc16_table()
    for byte in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc & 0xFFFF


# ----------------------------------------------------------------- seeds
def fs_seed(uuid: bytes) -> int:
    """The metadata_csum seed derived from the filesystem UUID."""
    return crc32c_raw(0xFFFFFFFF, uuid)


_U32X2 = struct.Struct("<II")


def inode_seed(seed: int, ino: int, generation: int) -> int:
    """Per-inode seed used by inodes, extent blocks and directory blocks."""
    return crc32c_raw(seed, _U32X2.pack(ino, generation))


# --------------------------------------------------------------- objects
def superblock_csum(raw: bytes | bytearray | memoryview) -> int:
    """Checksum of a 1024-byte superblock (everything before s_checksum)."""
    return crc32c_raw(0xFFFFFFFF, raw[:1020])


def group_desc_csum_crc32c(seed: int, group: int, desc: bytes | bytearray | memoryview) -> int:
    """metadata_csum group descriptor checksum (low 16 bits are stored)."""
    crc = crc32c_raw(seed, _U32.pack(group))
    crc = crc32c_raw(crc, desc[:0x1E])
    crc = crc32c_raw(crc, _ZERO2)
    if len(desc) > 0x20:
        crc = crc32c_raw(crc, desc[0x20:])
    return crc & 0xFFFF


def group_desc_csum_crc16(uuid: bytes, group: int, desc: bytes | bytearray | memoryview) -> int:
    """gdt_csum (uninit_bg) group descriptor checksum."""
    crc = crc16(0xFFFF, uuid)
    crc = crc16(crc, _U32.pack(group))
    crc = crc16(crc, desc[:0x1E])
    if len(desc) > 0x20:
        crc = crc16(crc, desc[0x20:])
    return crc


class Crc16GroupDesc:
    """Faster repeated gdt_csum checksums: the UUID prefix is computed once."""

    def __init__(self, uuid: bytes) -> None:
        self._prefix = crc16(0xFFFF, uuid)

    def __call__(self, group: int, desc: bytes | bytearray | memoryview) -> int:
        crc = crc16(self._prefix, _U32.pack(group))
        crc = crc16(crc, desc[:0x1E])
        if len(desc) > 0x20:
            crc = crc16(crc, desc[0x20:])
        return crc


def bitmap_csum(seed: int, bitmap: bytes | bytearray | memoryview) -> int:
    """Block or inode bitmap checksum; pass exactly the bytes that count."""
    return crc32c_raw(seed, bitmap)


def inode_csum(seed: int, ino: int, raw: bytes | bytearray | memoryview, has_hi: bool) -> int:
    """Checksum of a whole on-disk inode (``inode_size`` bytes).

    ``has_hi``: the inode is large enough to hold i_checksum_hi
    (inode size > 128 and i_extra_isize >= 4); then 32 bits are stored,
    otherwise only the low 16.
    """
    generation = _U32.unpack_from(raw, 0x64)[0]
    buf = bytearray(raw)
    buf[0x7C:0x7E] = _ZERO2
    if has_hi and len(buf) >= 0x84:
        buf[0x82:0x84] = _ZERO2
    crc = crc32c_raw(crc32c_raw(seed, _U32X2.pack(ino, generation)), buf)
    return crc if has_hi else crc & 0xFFFF


def inode_crc(seed: int, ino: int, generation: int, zeroed: bytes | bytearray | memoryview) -> int:
    """The 32-bit inode checksum of ``zeroed`` (the inode with both checksum fields already zeroed)."""
    crc = _crc32c(_U32X2.pack(ino, generation), seed ^ 0xFFFFFFFF)
    return _crc32c(zeroed, crc) ^ 0xFFFFFFFF  # type: ignore[no-any-return]


def extent_block_csum(iseed: int, block: bytes | bytearray | memoryview, eh_max: int) -> int:
    """Checksum of an extent tree block, stored in the tail after eh_max entries."""
    return crc32c_raw(iseed, block[: 12 + 12 * eh_max])


def dir_block_csum(iseed: int, block: bytes | bytearray | memoryview) -> int:
    """Checksum of a linear directory leaf block (everything before its 12-byte tail)."""
    return crc32c_raw(iseed, block[: len(block) - 12])


def dx_node_csum(
    iseed: int, block: bytes | bytearray | memoryview, count_offset: int, count: int, tail_offset: int
) -> int:
    """Checksum of an htree root or interior node."""
    crc = crc32c_raw(iseed, block[: count_offset + 8 * count])
    crc = crc32c_raw(crc, block[tail_offset : tail_offset + 4])
    return crc32c_raw(crc, _ZERO4)


def xattr_block_csum(seed: int, block_nr: int, block: bytes | bytearray | memoryview) -> int:
    """Checksum of an extended attribute block at ``block_nr``."""
    crc = crc32c_raw(seed, _U64.pack(block_nr))
    crc = crc32c_raw(crc, block[:0x10])
    crc = crc32c_raw(crc, _ZERO4)
    return crc32c_raw(crc, block[0x14:])


def jbd2_superblock_csum(raw: bytes | bytearray | memoryview) -> int:
    """Checksum of a jbd2 superblock (1024 bytes, s_checksum at 0xFC zeroed)."""
    crc = crc32c_raw(0xFFFFFFFF, raw[:0xFC])
    crc = crc32c_raw(crc, _ZERO4)
    return crc32c_raw(crc, raw[0x100:0x400])
