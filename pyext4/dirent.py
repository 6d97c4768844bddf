"""Directory entries: linear leaf blocks, checksum tails, htree index blocks and name hashes."""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence

from . import _codecs as C
from . import csum as _csum
from .constants import (
    FT_DIR,
    FT_DIR_CSUM,
    HASH_HALF_MD4,
    HASH_HALF_MD4_UNSIGNED,
    HASH_LEGACY,
    HASH_LEGACY_UNSIGNED,
    HASH_SIPHASH,
    HASH_TEA,
    HASH_TEA_UNSIGNED,
    NAME_LEN,
)
from .errors import (
    ChecksumError,
    CorruptError,
    FileExists,
    InvalidOptions,
    InvalidPath,
    LoopError,
    NameTooLong,
    NoSpace,
    UnsupportedFeature,
)
from .record import Record

__all__ = [
    "DIRENT_HEADER_SIZE", "DIR_TAIL_SIZE", "DX_TAIL_SIZE", "MIN_REC_LEN", "DX_ROOT_COUNT_OFFSET",
    "DX_NODE_COUNT_OFFSET", "HTREE_EOF_32BIT", "DEFAULT_HASH_SEED",
    "rec_len_for", "rec_len_from_disk", "rec_len_to_disk",
    "DirEntry", "parse_block", "parse_inline", "has_leaf_tail", "has_tail", "init_leaf_tail",
    "leaf_csum_ok", "set_leaf_csum", "verify_leaf_csum",
    "dx_count_offset", "is_dx_block", "dx_root_dot_entries", "dx_csum_ok", "set_dx_csum", "verify_dx_csum",
    "dir_block_csum_ok", "set_dir_block_csum",
    "seed_from_bytes", "name_hash", "name_hashes", "effective_hash_version",
    "dx_root_limit", "dx_node_limit", "max_htree_levels",
    "DxRoot", "DxNode", "parse_dx_root", "parse_dx_node",
    "DxFrame", "DxPath", "dx_lookup_path", "dx_next_leaf", "dx_candidate_leaves",
    "dx_find_entry",
    "build_linear_blocks", "build_leaf_block", "insert_into_block", "remove_from_block",
    "build_dx_root", "build_dx_node", "build_htree", "split_leaf",
    "dx_insert_entry", "dx_split_node", "dx_grow_root",
]

DIRENT_HEADER_SIZE = 8  # inode, rec_len, name_len, file_type
DIR_TAIL_SIZE = 12  # struct ext4_dir_entry_tail
DX_TAIL_SIZE = 8  # struct dx_tail
MIN_REC_LEN = 12  # rec_len of a one-byte name
DX_ROOT_COUNT_OFFSET = 32  # "." (12) + ".." head and name (12) + dx_root_info (8)
DX_NODE_COUNT_OFFSET = 8  # the fake dirent head
HTREE_EOF_32BIT = 0x7FFFFFFF
DEFAULT_HASH_SEED = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)

_MAX_REC_LEN_DISK = 0xFFFF  # the on-disk value meaning "whole 64 KiB block"
_M32 = 0xFFFFFFFF
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_HEAD2 = C.DIR_ENTRY_2
_HEAD1 = C.DIR_ENTRY
_TAIL = C.DIR_ENTRY_TAIL
_INFO = C.DX_ROOT_INFO
_COUNTLIMIT = C.DX_COUNTLIMIT
_DX_ENTRY = C.DX_ENTRY
_TAIL_HEAD = _TAIL.pack(0, DIR_TAIL_SIZE, 0, FT_DIR_CSUM, 0)

Buffer = bytes | bytearray | memoryview
ReadBlock = Callable[[int], Buffer]
EntrySpec = tuple[int, bytes, int]  # (ino, name, file_type)


# ------------------------------------------------------------------ rec_len
def rec_len_for(name_len: int) -> int:
    """The smallest rec_len holding a name of ``name_len`` bytes (8 + name, rounded up to 4)."""
    return (DIRENT_HEADER_SIZE + name_len + 3) & ~3


def rec_len_from_disk(value: int, block_size: int) -> int:
    """Decode an on-disk rec_len; blocks of 64 KiB and more fold the high bits into the low two."""
    if block_size < 65536:
        return value
    if value == _MAX_REC_LEN_DISK or value == 0:
        return block_size
    return (value & 65532) | ((value & 3) << 16)


def rec_len_to_disk(length: int, block_size: int) -> int:
    """Encode a rec_len for disk.

    Raises InvalidOptions when ``length`` is negative, not a multiple of 4,
    larger than the block, or the block is larger than 256 KiB.
    """
    if length < 0 or length > block_size or block_size > (1 << 18) or length & 3:
        raise InvalidOptions(f"rec_len {length} cannot be stored in a {block_size}-byte block")
    if length < 65536:
        return length
    if length == block_size:
        return _MAX_REC_LEN_DISK if block_size == 65536 else 0
    return (length & 65532) | ((length >> 16) & 3)


# ----------------------------------------------------------------- entries
class DirEntry(Record):
    """One directory entry as found in a block (``ino`` 0 means an empty slot)."""

    __slots__ = ("ino", "name", "file_type", "offset", "rec_len")

    def __init__(self, ino: int, name: bytes, file_type: int, offset: int, rec_len: int) -> None:
        self.ino = ino
        self.name = name
        self.file_type = file_type
        self.offset = offset
        self.rec_len = rec_len


def has_leaf_tail(raw: Buffer) -> bool:
    """Whether the block ends with a checksum tail (inode 0, rec_len 12, name_len 0, type 0xDE)."""
    size = len(raw)
    if size < DIR_TAIL_SIZE:
        return False
    zero1, rec_len, zero2, ft, _ = _TAIL.unpack_from(raw, size - DIR_TAIL_SIZE)
    # 12 encodes as 12 for every block size, so the raw value can be compared.
    return zero1 == 0 and rec_len == DIR_TAIL_SIZE and zero2 == 0 and ft == FT_DIR_CSUM


def has_tail(raw: Buffer, block_size: int | None = None) -> bool:
    """Same as has_leaf_tail (``block_size`` is accepted for symmetry and not needed)."""
    return has_leaf_tail(raw)


def init_leaf_tail(buf: bytearray) -> None:
    """Write an empty checksum tail (checksum 0) into the last 12 bytes of ``buf``."""
    buf[len(buf) - DIR_TAIL_SIZE :] = _TAIL_HEAD


def parse_block(
    raw: Buffer,
    *,
    block_size: int,
    filetype: bool,
    has_tail: bool,
    where: str = "directory block",
    include_empty: bool = False,
    max_ino: int | None = None,
    lenient_tail: bool = False,
) -> list[DirEntry]:
    """The entries of one linear directory block (or leaf), in order.

    ``raw`` is normally a whole block; an inline-data region may be passed as
    well (``has_tail=False``).  ``block_size`` only decides the rec_len
    encoding.  Without ``filetype`` the entries are ``ext4_dir_entry`` (16-bit
    name_len, file_type 0).  With ``has_tail`` (metadata_csum) the last 12
    bytes must be a checksum tail, which is not returned.  Live entries
    (inode != 0) are returned; ``include_empty`` adds the empty ones too, as
    the writer needs them to find free space.  ``max_ino`` (s_inodes_count),
    when given, bounds the inode numbers.  ``lenient_tail`` skips a checksum
    tail if one is there without requiring it (without it, and without
    ``has_tail``, a tail parses as an empty 12-byte entry).

    Raises CorruptError naming the offset of the first bad entry.
    """
    data = raw if isinstance(raw, bytes) else bytes(raw)
    size = len(data)
    end = size
    if lenient_tail and not has_tail:
        has_tail = has_leaf_tail(data)
    if has_tail:
        if not has_leaf_tail(data):
            raise CorruptError("no checksum tail at the end of the block", where=where)
        end = size - DIR_TAIL_SIZE
    big = block_size >= 65536
    unpack = _HEAD2.unpack_from if filetype else _HEAD1.unpack_from
    entries: list[DirEntry] = []
    append = entries.append
    offset = 0
    while offset < end:
        if end - offset < MIN_REC_LEN:
            raise CorruptError(
                f"{end - offset} bytes left at offset {offset}, too few for an entry", where=where
            )
        if filetype:
            ino, rec_len, name_len, ft = unpack(data, offset)
        else:
            ino, rec_len, name_len = unpack(data, offset)
            ft = 0
        if big:
            rec_len = rec_len_from_disk(rec_len, block_size)
        if rec_len < MIN_REC_LEN or rec_len & 3:
            raise CorruptError(f"entry at offset {offset}: bad rec_len {rec_len}", where=where)
        if offset + rec_len > end:
            raise CorruptError(
                f"entry at offset {offset}: rec_len {rec_len} runs past the end ({end})", where=where
            )
        if name_len > NAME_LEN or DIRENT_HEADER_SIZE + name_len > rec_len:
            raise CorruptError(
                f"entry at offset {offset}: name_len {name_len} does not fit rec_len {rec_len}",
                where=where,
            )
        if ino:
            if name_len == 0:
                raise CorruptError(f"entry at offset {offset}: empty name", where=where)
            if max_ino is not None and ino > max_ino:
                raise CorruptError(f"entry at offset {offset}: inode {ino} out of range", where=where)
            append(DirEntry(ino, data[offset + 8 : offset + 8 + name_len], ft, offset, rec_len))
        elif include_empty:
            append(DirEntry(0, data[offset + 8 : offset + 8 + name_len], ft, offset, rec_len))
        offset += rec_len
    return entries


_INLINE_IBLOCK = 60  # i_block holds the parent inode (4 bytes) then 56 bytes of entries


def parse_inline(
    data: Buffer,
    *,
    filetype: bool,
    where: str = "inline directory",
    include_empty: bool = False,
    max_ino: int | None = None,
) -> list[DirEntry]:
    """Entries of an inline-data directory: i_block (60 bytes) followed by the system.data value.

    The first four bytes are the parent's inode number, returned as a ".."
    entry at offset 0 with rec_len 4; then the entries of the rest of
    i_block and, separately, those of the xattr value, each region tiled
    exactly by its entries.  Offsets are relative to ``data``.

    Raises CorruptError.
    """
    raw = bytes(data)
    if len(raw) < 4:
        raise CorruptError("inline directory shorter than its parent field", where=where)
    parent = _U32.unpack_from(raw, 0)[0]
    if parent == 0 or (max_ino is not None and parent > max_ino):
        raise CorruptError(f"inline directory parent inode {parent} out of range", where=where)
    out = [DirEntry(parent, b"..", FT_DIR if filetype else 0, 0, 4)]
    first_end = min(len(raw), _INLINE_IBLOCK)
    for start, end in ((4, first_end), (first_end, len(raw))):
        if end <= start:
            continue
        for entry in parse_block(raw[start:end], block_size=4096, filetype=filetype, has_tail=False,
                                 where=f"{where} (offset {start})", include_empty=include_empty,
                                 max_ino=max_ino):
            entry.offset += start
            out.append(entry)
    return out


# --------------------------------------------------------------- checksums
def leaf_csum_ok(raw: Buffer, iseed: int) -> bool:
    """Whether a leaf block has a checksum tail holding the right checksum."""
    if not has_leaf_tail(raw):
        return False
    stored = _U32.unpack_from(raw, len(raw) - 4)[0]
    return bool(stored == _csum.dir_block_csum(iseed, raw))


def set_leaf_csum(buf: bytearray, iseed: int) -> None:
    """Store the checksum of a leaf block in its tail.

    Raises CorruptError when the block has no checksum tail.
    """
    if not has_leaf_tail(buf):
        raise CorruptError("no checksum tail to store the checksum in")
    _U32.pack_into(buf, len(buf) - 4, _csum.dir_block_csum(iseed, buf))


def verify_leaf_csum(raw: Buffer, iseed: int, *, where: str = "directory block") -> None:
    """Check a leaf block's checksum.

    Raises CorruptError when the tail is missing, ChecksumError on a mismatch.
    """
    if not has_leaf_tail(raw):
        raise CorruptError("no checksum tail at the end of the block", where=where)
    stored = _U32.unpack_from(raw, len(raw) - 4)[0]
    actual = _csum.dir_block_csum(iseed, raw)
    if stored != actual:
        raise ChecksumError("directory block", expected=stored, actual=actual, where=where)


def dx_count_offset(raw: Buffer, block_size: int | None = None) -> int | None:
    """Offset of the count/limit header of an htree root (32) or node (8), or None.

    Recognises the block as the kernel does: a first entry spanning the whole
    block is a node; a 12-byte "." followed by a ".." spanning the rest and
    an 8-byte root info is a root.
    """
    size = len(raw)
    bs = size if block_size is None else block_size
    if size < DX_ROOT_COUNT_OFFSET + 4:
        return None
    first = rec_len_from_disk(_U16.unpack_from(raw, 4)[0], bs)
    if first == size:
        return DX_NODE_COUNT_OFFSET
    if first == 12:
        if _U16.unpack_from(raw, 16)[0] != size - 12:
            return None
        reserved, _, info_length, _, _ = _INFO.unpack_from(raw, 24)
        if reserved or info_length != _INFO.size:
            return None
        return DX_ROOT_COUNT_OFFSET
    return None


def is_dx_block(raw: Buffer, block_size: int | None, is_root: bool) -> bool:
    """Whether a block of an indexed directory is its htree root (``is_root``) or an interior node.

    A node is recognised by an unused first entry (inode 0, no name)
    spanning the whole block, so that a leaf whose single entry spans the
    block is not mistaken for one.
    """
    count_offset = dx_count_offset(raw, block_size)
    if is_root:
        return count_offset == DX_ROOT_COUNT_OFFSET
    return count_offset == DX_NODE_COUNT_OFFSET and _U32.unpack_from(raw, 0)[0] == 0 and raw[6] == 0


def dx_root_dot_entries(
    raw: Buffer, *, filetype: bool, block_size: int | None = None, where: str = "htree root"
) -> list[DirEntry]:
    """The live "." and ".." entries at the head of an htree root block.

    Raises CorruptError when the block does not start with "." (rec_len 12)
    and ".." spanning the rest of the block.
    """
    data = bytes(raw[:24])
    size = len(raw)
    bs = size if block_size is None else block_size
    if len(data) < 24:
        raise CorruptError("block too short for an htree root", where=where)
    unpack = _HEAD2.unpack_from if filetype else _HEAD1.unpack_from
    out = []
    for offset, name, expected in ((0, b".", 12), (12, b"..", size - 12)):
        head = unpack(data, offset)
        ino, rec_len, name_len = head[0], rec_len_from_disk(head[1], bs), head[2]
        if rec_len != expected or name_len != len(name) or data[offset + 8 : offset + 8 + len(name)] != name:
            raise CorruptError(f"htree root has no {name.decode()!r} entry at offset {offset}", where=where)
        if ino:
            out.append(DirEntry(ino, name, head[3] if filetype else 0, offset, rec_len))
    return out


def _dx_tail_offset(raw: Buffer, block_size: int | None) -> tuple[int, int, int] | None:
    """(count_offset, count, tail_offset) of a dx block with room for a dx_tail, else None."""
    count_offset = dx_count_offset(raw, block_size)
    if count_offset is None:
        return None
    limit, count = _COUNTLIMIT.unpack_from(raw, count_offset)
    tail_offset = count_offset + 8 * limit
    if tail_offset > len(raw) - DX_TAIL_SIZE or count > limit:
        return None
    return count_offset, count, tail_offset


def dx_csum_ok(
    raw: Buffer, iseed: int, *, block_size: int | None = None, is_root: bool | None = None
) -> bool:
    """Whether an htree root or node has room for a dx_tail holding the right checksum.

    With ``is_root`` the block must also be of that kind (root or node).
    """
    found = _dx_tail_offset(raw, block_size)
    if found is None:
        return False
    count_offset, count, tail_offset = found
    if is_root is not None and (count_offset == DX_ROOT_COUNT_OFFSET) != is_root:
        return False
    stored = _U32.unpack_from(raw, tail_offset + 4)[0]
    return bool(stored == _csum.dx_node_csum(iseed, raw, count_offset, count, tail_offset))


def set_dx_csum(buf: bytearray, iseed: int, *, block_size: int | None = None) -> None:
    """Store the checksum of an htree root or node in its dx_tail.

    Raises CorruptError when the block is not a dx block or has no room for the tail.
    """
    found = _dx_tail_offset(buf, block_size)
    if found is None:
        raise CorruptError("not an htree block with room for a dx_tail")
    count_offset, count, tail_offset = found
    _U32.pack_into(
        buf, tail_offset + 4, _csum.dx_node_csum(iseed, buf, count_offset, count, tail_offset)
    )


def verify_dx_csum(
    raw: Buffer, iseed: int, *, block_size: int | None = None, where: str = "htree block"
) -> None:
    """Check an htree root or node checksum.

    Raises CorruptError when there is no dx_tail, ChecksumError on a mismatch.
    """
    found = _dx_tail_offset(raw, block_size)
    if found is None:
        raise CorruptError("no room for the htree checksum (dx_tail)", where=where)
    count_offset, count, tail_offset = found
    stored = _U32.unpack_from(raw, tail_offset + 4)[0]
    actual = _csum.dx_node_csum(iseed, raw, count_offset, count, tail_offset)
    if stored != actual:
        raise ChecksumError("htree block", expected=stored, actual=actual, where=where)


def dir_block_csum_ok(raw: Buffer, iseed: int, *, block_size: int | None = None) -> bool:
    """Checksum check for any directory block: leaf (by its tail) or htree root/node."""
    if has_leaf_tail(raw):
        return leaf_csum_ok(raw, iseed)
    return dx_csum_ok(raw, iseed, block_size=block_size)


def set_dir_block_csum(buf: bytearray, iseed: int, *, block_size: int | None = None) -> None:
    """Store the checksum of any directory block: a leaf with a tail, or an htree root/node.

    Raises CorruptError when the block has neither a leaf tail nor a dx_tail.
    """
    if has_leaf_tail(buf):
        set_leaf_csum(buf, iseed)
    else:
        set_dx_csum(buf, iseed, block_size=block_size)


# ------------------------------------------------------------------ hashes
_BE_WORDS = tuple(struct.Struct(f">{n}I") for n in range(9))
_TEA_SUMS = tuple((0x9E3779B9 * (i + 1)) & _M32 for i in range(16))
_LEGACY_MUL = 7152373
_LEGACY_UNSIGNED = tuple((c * _LEGACY_MUL) & _M32 for c in range(256))
_LEGACY_SIGNED = tuple(((c - 256 if c >= 128 else c) * _LEGACY_MUL) & _M32 for c in range(256))
_MD4_K2 = 0x5A827999  # 013240474631
_MD4_K3 = 0x6ED9EBA1  # 015666365641
_HASH_VERSIONS = (
    HASH_LEGACY, HASH_HALF_MD4, HASH_TEA, HASH_LEGACY_UNSIGNED, HASH_HALF_MD4_UNSIGNED, HASH_TEA_UNSIGNED,
)


def seed_from_bytes(raw: Buffer) -> tuple[int, int, int, int]:
    """The superblock's 16-byte s_hash_seed as four 32-bit words."""
    a, b, c, d = struct.unpack("<4I", bytes(raw[:16]))
    return a, b, c, d


def effective_hash_version(stored: int, unsigned: bool) -> int:
    """The hash actually used for a dx_root hash_version, given the superblock's unsigned flag."""
    if stored <= HASH_TEA and unsigned:
        return stored + 3
    return stored


def _seed_words(seed: Sequence[int] | None) -> tuple[int, int, int, int]:
    if seed is None:
        return DEFAULT_HASH_SEED
    try:
        s0, s1, s2, s3 = seed
    except (TypeError, ValueError):
        raise InvalidOptions("the hash seed is four 32-bit words") from None
    if (s0 | s1 | s2 | s3) >> 32 or min(s0, s1, s2, s3) < 0:
        raise InvalidOptions("the hash seed is four 32-bit words")
    if not (s0 or s1 or s2 or s3):
        return DEFAULT_HASH_SEED
    return s0, s1, s2, s3


def _check_version(version: int) -> None:
    if version == HASH_SIPHASH:
        raise UnsupportedFeature("siphash directory hashes (casefold + encrypt) are not supported",
                                 features=("casefold", "encrypt"))
    if version not in _HASH_VERSIONS:
        raise InvalidOptions(f"unknown directory hash version {version}")


def _hash_words(name: bytes, start: int, remaining: int, num: int, signed: bool) -> list[int]:
    """str2hashbuf: up to ``num`` big-endian words of the name, padded with the length byte."""
    pad = remaining | (remaining << 8)
    pad = (pad | (pad << 16)) & _M32
    n = remaining if remaining < num * 4 else num * 4
    full, rest = n >> 2, n & 3
    words = list(_BE_WORDS[full].unpack_from(name, start))
    if signed:
        # A signed char c >= 128 contributes c - 256: subtract 256 at its place.
        words = [(w - ((w & 0x80808080) << 1)) & _M32 for w in words]
    if rest:
        tail = int.from_bytes(name[start + 4 * full : start + n], "big")
        val = (pad << (8 * rest)) + tail
        if signed:
            val -= (tail & (0x808080 >> (8 * (3 - rest)))) << 1
        words.append(val & _M32)
    if len(words) < num:
        words.extend([pad] * (num - len(words)))
    return words


def _half_md4(
    a0: int, b0: int, c0: int, d0: int, x: Sequence[int]
) -> tuple[int, int, int, int]:
    """The cut-down MD4 transform of the htree hash (three rounds of eight steps)."""
    m = _M32
    a, b, c, d = a0, b0, c0, d0
    x0, x1, x2, x3, x4, x5, x6, x7 = x
    # Round 1: F(x, y, z) = z ^ (x & (y ^ z))
    t = (a + (d ^ (b & (c ^ d))) + x0) & m
    a = ((t << 3) & m) | (t >> 29)
    t = (d + (c ^ (a & (b ^ c))) + x1) & m
    d = ((t << 7) & m) | (t >> 25)
    t = (c + (b ^ (d & (a ^ b))) + x2) & m
    c = ((t << 11) & m) | (t >> 21)
    t = (b + (a ^ (c & (d ^ a))) + x3) & m
    b = ((t << 19) & m) | (t >> 13)
    t = (a + (d ^ (b & (c ^ d))) + x4) & m
    a = ((t << 3) & m) | (t >> 29)
    t = (d + (c ^ (a & (b ^ c))) + x5) & m
    d = ((t << 7) & m) | (t >> 25)
    t = (c + (b ^ (d & (a ^ b))) + x6) & m
    c = ((t << 11) & m) | (t >> 21)
    t = (b + (a ^ (c & (d ^ a))) + x7) & m
    b = ((t << 19) & m) | (t >> 13)
    # Round 2: G(x, y, z) = (x & y) | ((x ^ y) & z)
    k = _MD4_K2
    t = (a + ((b & c) | ((b ^ c) & d)) + x1 + k) & m
    a = ((t << 3) & m) | (t >> 29)
    t = (d + ((a & b) | ((a ^ b) & c)) + x3 + k) & m
    d = ((t << 5) & m) | (t >> 27)
    t = (c + ((d & a) | ((d ^ a) & b)) + x5 + k) & m
    c = ((t << 9) & m) | (t >> 23)
    t = (b + ((c & d) | ((c ^ d) & a)) + x7 + k) & m
    b = ((t << 13) & m) | (t >> 19)
    t = (a + ((b & c) | ((b ^ c) & d)) + x0 + k) & m
    a = ((t << 3) & m) | (t >> 29)
    t = (d + ((a & b) | ((a ^ b) & c)) + x2 + k) & m
    d = ((t << 5) & m) | (t >> 27)
    t = (c + ((d & a) | ((d ^ a) & b)) + x4 + k) & m
    c = ((t << 9) & m) | (t >> 23)
    t = (b + ((c & d) | ((c ^ d) & a)) + x6 + k) & m
    b = ((t << 13) & m) | (t >> 19)
    # Round 3: H(x, y, z) = x ^ y ^ z
    k = _MD4_K3
    t = (a + (b ^ c ^ d) + x3 + k) & m
    a = ((t << 3) & m) | (t >> 29)
    t = (d + (a ^ b ^ c) + x7 + k) & m
    d = ((t << 9) & m) | (t >> 23)
    t = (c + (d ^ a ^ b) + x2 + k) & m
    c = ((t << 11) & m) | (t >> 21)
    t = (b + (c ^ d ^ a) + x6 + k) & m
    b = ((t << 15) & m) | (t >> 17)
    t = (a + (b ^ c ^ d) + x1 + k) & m
    a = ((t << 3) & m) | (t >> 29)
    t = (d + (a ^ b ^ c) + x5 + k) & m
    d = ((t << 9) & m) | (t >> 23)
    t = (c + (d ^ a ^ b) + x0 + k) & m
    c = ((t << 11) & m) | (t >> 21)
    t = (b + (c ^ d ^ a) + x4 + k) & m
    b = ((t << 15) & m) | (t >> 17)
    return (a0 + a) & m, (b0 + b) & m, (c0 + c) & m, (d0 + d) & m


def _tea(b0_in: int, b1_in: int, x: Sequence[int]) -> tuple[int, int]:
    """TEA in a Davies-Meyer construction, 16 rounds, as the htree hash uses it (unrolled)."""
    m = _M32
    a, b, c, d = x
    b0, b1 = b0_in, b1_in
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0x9e3779b9) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0x9e3779b9) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0x3c6ef372) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0x3c6ef372) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0xdaa66d2b) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0xdaa66d2b) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0x78dde6e4) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0x78dde6e4) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0x1715609d) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0x1715609d) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0xb54cda56) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0xb54cda56) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0x5384540f) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0x5384540f) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0xf1bbcdc8) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0xf1bbcdc8) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0x8ff34781) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0x8ff34781) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0x2e2ac13a) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0x2e2ac13a) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0xcc623af3) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0xcc623af3) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0x6a99b4ac) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0x6a99b4ac) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0x08d12e65) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0x08d12e65) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0xa708a81e) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0xa708a81e) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0x454021d7) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0x454021d7) ^ ((b0 >> 5) + d))) & m
    b0 = (b0 + (((b1 << 4) + a) ^ (b1 + 0xe3779b90) ^ ((b1 >> 5) + b))) & m
    b1 = (b1 + (((b0 << 4) + c) ^ (b0 + 0xe3779b90) ^ ((b0 >> 5) + d))) & m
    return (b0_in + b0) & m, (b1_in + b1) & m


def _finish(major: int) -> int:
    major &= 0xFFFFFFFE
    if major == HTREE_EOF_32BIT << 1:  # reserved as the end-of-directory cookie
        major = (HTREE_EOF_32BIT - 1) << 1
    return major


def name_hash(name: bytes, version: int, seed: Sequence[int] | None = None) -> tuple[int, int]:
    """(major, minor) htree hash of ``name`` as the kernel computes it.

    ``version`` is HASH_LEGACY .. HASH_TEA_UNSIGNED (0..5), i.e. already
    adjusted for the superblock's unsigned flag; ``seed`` is s_hash_seed as
    four words (None or all zero: the default seed).  The major hash has its
    low bit clear and never equals the end-of-directory cookie 0xFFFFFFFE.

    Raises InvalidOptions for an unknown version, UnsupportedFeature for siphash.
    """
    s0, s1, s2, s3 = _seed_words(seed)
    if version == HASH_HALF_MD4 or version == HASH_HALF_MD4_UNSIGNED:
        signed = version == HASH_HALF_MD4 and not name.isascii()
        remaining = len(name)
        start = 0
        while remaining > 0:
            s0, s1, s2, s3 = _half_md4(s0, s1, s2, s3, _hash_words(name, start, remaining, 8, signed))
            remaining -= 32
            start += 32
        return _finish(s1), s2
    if version == HASH_TEA or version == HASH_TEA_UNSIGNED:
        signed = version == HASH_TEA and not name.isascii()
        remaining = len(name)
        start = 0
        while remaining > 0:
            s0, s1 = _tea(s0, s1, _hash_words(name, start, remaining, 4, signed))
            remaining -= 16
            start += 16
        return _finish(s0), s1
    if version == HASH_LEGACY or version == HASH_LEGACY_UNSIGNED:
        table = _LEGACY_SIGNED if version == HASH_LEGACY else _LEGACY_UNSIGNED
        h0, h1 = 0x12A3FE2D, 0x37ABE8F9
        for mul in map(table.__getitem__, name):
            h = (h1 + (h0 ^ mul)) & _M32
            if h & 0x80000000:
                h -= 0x7FFFFFFF
            h1 = h0
            h0 = h
        return _finish(h0 << 1), 0
    _check_version(version)
    raise AssertionError("unreachable")  # pragma: no cover


# Batch hashing: many names at once with SWAR arithmetic on big integers.
# Each name gets a 64-bit lane holding a 32-bit value and 32 guard bits, so
# one big-int operation advances every name's hash by one step.
_LANE = 8
_BATCH_MIN = 12  # below this, lanes cost more than they save


def _lanes_of_words(blob: bytes, word: int, stride: int, count: int) -> int:
    """Big int whose lane i is big-endian word ``word`` of record i of ``blob``."""
    lanes = bytearray(_LANE * count)
    base = 4 * word
    lanes[0::_LANE] = blob[base + 3 :: stride]
    lanes[1::_LANE] = blob[base + 2 :: stride]
    lanes[2::_LANE] = blob[base + 1 :: stride]
    lanes[3::_LANE] = blob[base::stride]
    return int.from_bytes(lanes, "little")


def _lane_values(value: int, count: int) -> tuple[int, ...]:
    raw = value.to_bytes(_LANE * count, "little")
    return struct.unpack(f"<{2 * count}I", raw)[0::2]


_PAD_BYTES = tuple(bytes((n,)) * 32 for n in range(256))


def _chunks(names: Sequence[bytes], start: int, width: int) -> bytes:
    """The str2hashbuf input of every name for the chunk at ``start``, ``width`` bytes each."""
    parts: list[bytes] = []
    append = parts.append
    for name in names:
        remaining = len(name) - start
        pad = _PAD_BYTES[remaining if remaining < 256 else 0]
        if remaining <= 0:  # pragma: no cover - callers group names by chunk count
            append(pad[:width])
            continue
        seg = name[start : start + width]
        n = len(seg)
        rest = n & 3
        if rest:
            full = n - rest
            append(seg[:full] + pad[: 4 - rest] + seg[full:] + pad[: width - full - 4])
        else:
            append(seg + pad[: width - n])
    return b"".join(parts)


def _batch_half_md4(names: Sequence[bytes], nchunks: int, seed: tuple[int, int, int, int]) -> list[int]:
    count = len(names)
    ones = int.from_bytes((b"\x01" + b"\0" * (_LANE - 1)) * count, "little")
    m = ones * _M32
    k2 = ones * _MD4_K2
    k3 = ones * _MD4_K3
    s0, s1, s2, s3 = (ones * s for s in seed)
    for chunk in range(nchunks):
        blob = _chunks(names, 32 * chunk, 32)
        x0, x1, x2, x3, x4, x5, x6, x7 = (_lanes_of_words(blob, j, 32, count) for j in range(8))
        a, b, c, d = s0, s1, s2, s3
        t = (a + (d ^ (b & (c ^ d))) + x0) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + (c ^ (a & (b ^ c))) + x1) & m
        d = ((t << 7) | (t >> 25)) & m
        t = (c + (b ^ (d & (a ^ b))) + x2) & m
        c = ((t << 11) | (t >> 21)) & m
        t = (b + (a ^ (c & (d ^ a))) + x3) & m
        b = ((t << 19) | (t >> 13)) & m
        t = (a + (d ^ (b & (c ^ d))) + x4) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + (c ^ (a & (b ^ c))) + x5) & m
        d = ((t << 7) | (t >> 25)) & m
        t = (c + (b ^ (d & (a ^ b))) + x6) & m
        c = ((t << 11) | (t >> 21)) & m
        t = (b + (a ^ (c & (d ^ a))) + x7) & m
        b = ((t << 19) | (t >> 13)) & m
        t = (a + ((b & c) | ((b ^ c) & d)) + x1 + k2) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + ((a & b) | ((a ^ b) & c)) + x3 + k2) & m
        d = ((t << 5) | (t >> 27)) & m
        t = (c + ((d & a) | ((d ^ a) & b)) + x5 + k2) & m
        c = ((t << 9) | (t >> 23)) & m
        t = (b + ((c & d) | ((c ^ d) & a)) + x7 + k2) & m
        b = ((t << 13) | (t >> 19)) & m
        t = (a + ((b & c) | ((b ^ c) & d)) + x0 + k2) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + ((a & b) | ((a ^ b) & c)) + x2 + k2) & m
        d = ((t << 5) | (t >> 27)) & m
        t = (c + ((d & a) | ((d ^ a) & b)) + x4 + k2) & m
        c = ((t << 9) | (t >> 23)) & m
        t = (b + ((c & d) | ((c ^ d) & a)) + x6 + k2) & m
        b = ((t << 13) | (t >> 19)) & m
        t = (a + (b ^ c ^ d) + x3 + k3) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + (a ^ b ^ c) + x7 + k3) & m
        d = ((t << 9) | (t >> 23)) & m
        t = (c + (d ^ a ^ b) + x2 + k3) & m
        c = ((t << 11) | (t >> 21)) & m
        t = (b + (c ^ d ^ a) + x6 + k3) & m
        b = ((t << 15) | (t >> 17)) & m
        t = (a + (b ^ c ^ d) + x1 + k3) & m
        a = ((t << 3) | (t >> 29)) & m
        t = (d + (a ^ b ^ c) + x5 + k3) & m
        d = ((t << 9) | (t >> 23)) & m
        t = (c + (d ^ a ^ b) + x0 + k3) & m
        c = ((t << 11) | (t >> 21)) & m
        t = (b + (c ^ d ^ a) + x4 + k3) & m
        b = ((t << 15) | (t >> 17)) & m
        s0, s1, s2, s3 = (s0 + a) & m, (s1 + b) & m, (s2 + c) & m, (s3 + d) & m
    return [*_lane_values(s1, count), *_lane_values(s2, count)]


def _batch_tea(names: Sequence[bytes], nchunks: int, seed: tuple[int, int, int, int]) -> list[int]:
    count = len(names)
    ones = int.from_bytes((b"\x01" + b"\0" * (_LANE - 1)) * count, "little")
    m = ones * _M32
    sums = [ones * s for s in _TEA_SUMS]
    s0, s1 = ones * seed[0], ones * seed[1]
    for chunk in range(nchunks):
        blob = _chunks(names, 16 * chunk, 16)
        a, b, c, d = (_lanes_of_words(blob, j, 16, count) for j in range(4))
        b0, b1 = s0, s1
        for s in sums:
            b0 = (b0 + (((b1 << 4) + a) ^ (b1 + s) ^ (((b1 >> 5) & m) + b))) & m
            b1 = (b1 + (((b0 << 4) + c) ^ (b0 + s) ^ (((b0 >> 5) & m) + d))) & m
        s0, s1 = (s0 + b0) & m, (s1 + b1) & m
    return [*_lane_values(s0, count), *_lane_values(s1, count)]


def _batch_legacy(names: Sequence[bytes], length: int) -> list[int]:
    count = len(names)
    ones = int.from_bytes((b"\x01" + b"\0" * (_LANE - 1)) * count, "little")
    m = ones * _M32
    blob = b"".join(names)
    h0, h1 = ones * 0x12A3FE2D, ones * 0x37ABE8F9
    lanes = bytearray(_LANE * count)
    for pos in range(length):
        lanes[0::_LANE] = blob[pos::length]
        mul = int.from_bytes(lanes, "little") * _LEGACY_MUL  # unsigned bytes only
        h = (h1 + (h0 ^ mul)) & m
        h -= ((h >> 31) & ones) * 0x7FFFFFFF
        h1 = h0
        h0 = h
    return [*_lane_values((h0 << 1) & m, count), *([0] * count)]


def name_hashes(
    names: Sequence[bytes], version: int, seed: Sequence[int] | None = None
) -> list[tuple[int, int]]:
    """name_hash of many names at once (same results, much faster for large batches).

    Raises InvalidOptions for an unknown version, UnsupportedFeature for siphash.
    """
    _check_version(version)
    seed_words = _seed_words(seed)
    total = len(names)
    if total < _BATCH_MIN:
        return [name_hash(name, version, seed_words) for name in names]
    out: list[tuple[int, int]] = [(0, 0)] * total
    signed = version < 3
    legacy = version in (HASH_LEGACY, HASH_LEGACY_UNSIGNED)
    width = 32 if version in (HASH_HALF_MD4, HASH_HALF_MD4_UNSIGNED) else 16
    groups: dict[int, list[int]] = {}
    for i, name in enumerate(names):
        size = len(name)
        if size == 0 or size > NAME_LEN or (signed and not name.isascii()):
            out[i] = name_hash(name, version, seed_words)
            continue
        key = size if legacy else (size + width - 1) // width
        group = groups.get(key)
        if group is None:
            groups[key] = [i]
        else:
            group.append(i)
    for key, members in groups.items():
        if len(members) < _BATCH_MIN:
            for i in members:
                out[i] = name_hash(names[i], version, seed_words)
            continue
        batch = [names[i] for i in members]
        if legacy:
            values = _batch_legacy(batch, key)
        elif width == 32:
            values = _batch_half_md4(batch, key, seed_words)
        else:
            values = _batch_tea(batch, key, seed_words)
        n = len(members)
        for j, i in enumerate(members):
            out[i] = (_finish(values[j]), values[n + j])
    return out


# -------------------------------------------------------------- htree index
def dx_root_limit(block_size: int, csum: bool) -> int:
    """How many dx_entries (count/limit header included) fit in an htree root."""
    return (block_size - DX_ROOT_COUNT_OFFSET - (DX_TAIL_SIZE if csum else 0)) // 8


def dx_node_limit(block_size: int, csum: bool) -> int:
    """How many dx_entries (count/limit header included) fit in an htree interior node."""
    return (block_size - DX_NODE_COUNT_OFFSET - (DX_TAIL_SIZE if csum else 0)) // 8


def max_htree_levels(large_dir: bool) -> int:
    """The largest allowed indirect_levels (1 normally, 2 with large_dir)."""
    return 2 if large_dir else 1


class DxRoot(Record):
    """A parsed htree root.  ``hashes[0]`` is 0: the first entry has no hash on disk."""

    __slots__ = ("dot_ino", "dotdot_ino", "hash_version", "levels", "unused_flags", "limit", "hashes", "blocks",
                 "count_offset")

    def __init__(
        self,
        dot_ino: int,
        dotdot_ino: int,
        hash_version: int,
        levels: int,
        unused_flags: int,
        limit: int,
        hashes: list[int],
        blocks: list[int],
        count_offset: int = DX_ROOT_COUNT_OFFSET,
    ) -> None:
        self.dot_ino = dot_ino
        self.dotdot_ino = dotdot_ino
        self.hash_version = hash_version  # as stored (0..2, 6); see effective_hash_version
        self.levels = levels  # indirect_levels: 0 means the entries point at leaves
        self.unused_flags = unused_flags
        self.limit = limit
        self.hashes = hashes
        self.blocks = blocks
        self.count_offset = count_offset

    @property
    def count(self) -> int:
        return len(self.blocks)

    @property
    def entries(self) -> list[tuple[int, int]]:
        """[(hash, block)], the first hash being 0."""
        return list(zip(self.hashes, self.blocks, strict=True))


class DxNode(Record):
    """A parsed htree interior node.  ``hashes[0]`` is 0 (its hash lives in the parent)."""

    __slots__ = ("limit", "hashes", "blocks", "count_offset")

    def __init__(
        self, limit: int, hashes: list[int], blocks: list[int], count_offset: int = DX_NODE_COUNT_OFFSET
    ) -> None:
        self.limit = limit
        self.hashes = hashes
        self.blocks = blocks
        self.count_offset = count_offset

    @property
    def count(self) -> int:
        return len(self.blocks)

    @property
    def entries(self) -> list[tuple[int, int]]:
        """[(hash, block)], the first hash being 0."""
        return list(zip(self.hashes, self.blocks, strict=True))



def _parse_dx_entries(
    raw: bytes, count_offset: int, expected_limit: int, dir_blocks: int | None, where: str
) -> tuple[int, list[int], list[int]]:
    limit, count = _COUNTLIMIT.unpack_from(raw, count_offset)
    if limit != expected_limit:
        raise CorruptError(f"htree limit {limit}, expected {expected_limit}", where=where)
    if count == 0 or count > limit:
        raise CorruptError(f"htree count {count} outside 1..{limit}", where=where)
    words = struct.unpack_from(f"<{2 * count}I", raw, count_offset)
    hashes = list(words[0::2])
    hashes[0] = 0
    blocks = list(words[1::2])
    if count > 2 and hashes != sorted(hashes):
        raise CorruptError("htree hashes out of order", where=where)
    if dir_blocks is not None:
        for block in blocks:
            if block == 0 or block >= dir_blocks:
                raise CorruptError(
                    f"htree entry points at block {block}, outside 1..{dir_blocks - 1}", where=where
                )
    return limit, hashes, blocks


def parse_dx_root(
    raw: Buffer,
    *,
    block_size: int,
    csum: bool,
    large_dir: bool,
    dir_blocks: int | None = None,
    where: str = "htree root",
) -> DxRoot:
    """Parse and validate block 0 of an indexed directory.

    Checks "." and "..", dx_root_info (reserved_zero 0, info_length 8, a known
    hash version, indirect_levels within the limit, no unknown flags), the
    limit (exactly what fits, minus the dx_tail under metadata_csum), the
    count and the hash order; with ``dir_blocks``, every block number.

    Raises CorruptError.
    """
    raw = bytes(raw)
    if len(raw) != block_size:
        raise CorruptError(f"htree root is {len(raw)} bytes, expected {block_size}", where=where)
    dot_ino, dot_len, dot_name_len, _ = _HEAD2.unpack_from(raw, 0)
    if dot_len != 12 or dot_name_len != 1 or raw[8:9] != b".":
        raise CorruptError("htree root does not start with '.'", where=where)
    dotdot_ino, dotdot_len, dotdot_name_len, _ = _HEAD2.unpack_from(raw, 12)
    if rec_len_from_disk(dotdot_len, block_size) != block_size - 12 or dotdot_name_len != 2 \
            or raw[20:22] != b"..":
        raise CorruptError("htree root has no '..' spanning the block", where=where)
    reserved, hash_version, info_length, levels, flags = _INFO.unpack_from(raw, 24)
    if reserved:
        raise CorruptError("htree root reserved_zero is not zero", where=where)
    if info_length != _INFO.size:
        raise CorruptError(f"htree root info_length {info_length}, expected 8", where=where)
    if hash_version not in (HASH_LEGACY, HASH_HALF_MD4, HASH_TEA, HASH_SIPHASH):
        raise CorruptError(f"unknown htree hash version {hash_version}", where=where)
    if levels > max_htree_levels(large_dir):
        raise CorruptError(
            f"htree depth {levels} beyond {max_htree_levels(large_dir)}"
            + ("" if large_dir else " (large_dir is off)"),
            where=where,
        )
    if flags & 1:
        raise CorruptError(f"unimplemented htree flags {flags:#x}", where=where)
    limit, hashes, blocks = _parse_dx_entries(
        raw, DX_ROOT_COUNT_OFFSET, dx_root_limit(block_size, csum), dir_blocks, where
    )
    return DxRoot(dot_ino, dotdot_ino, hash_version, levels, flags, limit, hashes, blocks)


def parse_dx_node(
    raw: Buffer,
    *,
    block_size: int,
    csum: bool,
    dir_blocks: int | None = None,
    where: str = "htree node",
) -> DxNode:
    """Parse and validate an htree interior node (fake empty entry spanning the block).

    Raises CorruptError.
    """
    raw = bytes(raw)
    if len(raw) != block_size:
        raise CorruptError(f"htree node is {len(raw)} bytes, expected {block_size}", where=where)
    if rec_len_from_disk(_U16.unpack_from(raw, 4)[0], block_size) != block_size:
        raise CorruptError("leaf block found where an htree node was expected", where=where)
    limit, hashes, blocks = _parse_dx_entries(
        raw, DX_NODE_COUNT_OFFSET, dx_node_limit(block_size, csum), dir_blocks, where
    )
    return DxNode(limit, hashes, blocks)


class DxFrame(Record):
    """One index block on a lookup path and the entry followed in it."""

    __slots__ = ("block", "node", "index")

    def __init__(self, block: int, node: DxRoot | DxNode, index: int) -> None:
        self.block = block  # logical directory block (0 = root)
        self.node = node
        self.index = index



class DxPath(Record):
    """Index frames from the root down, and the leaf block they lead to."""

    __slots__ = ("frames", "leaf")

    def __init__(self, frames: list[DxFrame], leaf: int) -> None:
        self.frames = frames
        self.leaf = leaf



def _descend(
    frames: list[DxFrame],
    child: int,
    depth_left: int,
    hash_value: int | None,
    read_block: ReadBlock,
    block_size: int,
    dir_blocks: int | None,
    csum: bool,
    where: str,
) -> DxPath:
    """Follow ``child`` down ``depth_left`` node levels (by hash, or leftmost when None)."""
    while True:
        if child == 0 or any(f.block == child for f in frames):
            raise LoopError(f"htree block {frames[-1].block} points back to block {child}", where=where)
        if dir_blocks is not None and child >= dir_blocks:  # pragma: no cover - parse checks it
            raise CorruptError(f"htree points at block {child}, past the end", where=where)
        if depth_left == 0:
            return DxPath(frames, child)
        node = parse_dx_node(
            read_block(child), block_size=block_size, csum=csum, dir_blocks=dir_blocks,
            where=f"{where}: htree node {child}",
        )
        index = 0 if hash_value is None else bisect_right(node.hashes, hash_value, 1) - 1
        frames.append(DxFrame(child, node, index))
        child = node.blocks[index]
        depth_left -= 1


def dx_lookup_path(
    hash_value: int,
    read_block: ReadBlock,
    *,
    block_size: int,
    dir_blocks: int | None,
    csum: bool,
    large_dir: bool,
    root: DxRoot | None = None,
    where: str = "directory",
) -> DxPath:
    """Walk root -> nodes -> leaf for a major hash, as the kernel's dx_probe does.

    ``read_block(n)`` returns logical block ``n`` of the directory, which has
    ``dir_blocks`` blocks (None: ``read_block`` checks the range itself).
    In every index block the entry followed is the last whose hash is <=
    ``hash_value`` (the first entry counts as -inf).  ``root`` may be passed
    when already parsed.

    Raises CorruptError, LoopError (a block pointing at itself or an ancestor).
    """
    if root is None:
        root = parse_dx_root(
            read_block(0), block_size=block_size, csum=csum, large_dir=large_dir,
            dir_blocks=dir_blocks, where=f"{where}: htree root",
        )
    elif dir_blocks is not None:
        for block in root.blocks:
            if block == 0 or block >= dir_blocks:
                raise CorruptError(f"htree root points at block {block}", where=where)
    index = bisect_right(root.hashes, hash_value, 1) - 1
    frames = [DxFrame(0, root, index)]
    return _descend(frames, root.blocks[index], root.levels, hash_value, read_block, block_size,
                    dir_blocks, csum, where)


def dx_next_leaf(
    path: DxPath,
    hash_value: int,
    read_block: ReadBlock,
    *,
    block_size: int,
    dir_blocks: int | None,
    csum: bool,
    where: str = "directory",
) -> DxPath | None:
    """The path to the next leaf worth searching for ``hash_value``, or None.

    As the kernel's ext4_htree_next_block: move to the next index entry
    (climbing as needed); continue only if its hash, continuation bit
    cleared, equals ``hash_value`` (or ``hash_value`` is odd, which asks for
    any continuation, as readdir does).

    Raises CorruptError, LoopError.
    """
    frames = path.frames
    level = len(frames) - 1
    while level >= 0 and frames[level].index + 1 >= frames[level].node.count:
        level -= 1
    if level < 0:
        return None
    frame = frames[level]
    next_hash = frame.node.hashes[frame.index + 1]
    if not hash_value & 1 and (next_hash & ~1) != hash_value:
        return None
    new_frames = frames[:level] + [DxFrame(frame.block, frame.node, frame.index + 1)]
    child = frame.node.blocks[frame.index + 1]
    return _descend(new_frames, child, len(frames) - 1 - level, None, read_block, block_size,
                    dir_blocks, csum, where)


def dx_candidate_leaves(
    read_block: ReadBlock,
    root: DxRoot,
    hash_value: int,
    *,
    block_size: int,
    csum: bool,
    dir_blocks: int | None = None,
    where: str = "directory",
) -> Iterator[int]:
    """The leaf blocks to search, in order, for a name whose major hash is ``hash_value``.

    The first is where dx_lookup_path leads; the next ones follow while the
    index says the hash continues there (dx_next_leaf).

    Raises CorruptError, LoopError.
    """
    path: DxPath | None = dx_lookup_path(
        hash_value, read_block, block_size=block_size, dir_blocks=dir_blocks, csum=csum,
        large_dir=True, root=root, where=where,
    )
    while path is not None:
        yield path.leaf
        path = dx_next_leaf(path, hash_value, read_block, block_size=block_size, dir_blocks=dir_blocks,
                            csum=csum, where=where)


def dx_find_entry(
    name: bytes,
    read_block: ReadBlock,
    *,
    block_size: int,
    dir_blocks: int | None,
    seed: Sequence[int] | None,
    unsigned_hash: bool,
    filetype: bool,
    csum: bool,
    large_dir: bool,
    max_ino: int | None = None,
    root: DxRoot | None = None,
    where: str = "directory",
) -> tuple[int, DirEntry] | None:
    """Look ``name`` up through the htree: (leaf block, entry) or None.

    ``unsigned_hash`` is the superblock's EXT2_FLAGS_UNSIGNED_HASH; ``root``
    may be passed when already parsed.

    Raises CorruptError, LoopError, UnsupportedFeature (siphash).
    """
    if root is None:
        root = parse_dx_root(
            read_block(0), block_size=block_size, csum=csum, large_dir=large_dir,
            dir_blocks=dir_blocks, where=f"{where}: htree root",
        )
    version = effective_hash_version(root.hash_version, unsigned_hash)
    major = name_hash(name, version, seed)[0]
    for leaf in dx_candidate_leaves(read_block, root, major, block_size=block_size, csum=csum,
                                    dir_blocks=dir_blocks, where=where):
        for entry in parse_block(read_block(leaf), block_size=block_size, filetype=filetype,
                                 has_tail=csum, max_ino=max_ino, where=f"{where}: block {leaf}"):
            if entry.name == name:
                return leaf, entry
    return None


# ---------------------------------------------------------------- builders
def _check_name(name: bytes) -> None:
    if len(name) > NAME_LEN:
        raise NameTooLong(name.decode("utf-8", "surrogateescape"))
    if not name or b"/" in name or b"\0" in name:
        raise InvalidPath(name.decode("utf-8", "surrogateescape"), "invalid name for a directory entry")


def _check_ino(ino: int) -> None:
    if not 0 < ino <= _M32:
        raise InvalidOptions(f"inode number {ino} cannot go in a directory entry")


def _put_entry(
    buf: bytearray, offset: int, ino: int, name: bytes, file_type: int, rec_len: int,
    block_size: int, filetype: bool,
) -> None:
    _HEAD2.pack_into(buf, offset, ino, rec_len_to_disk(rec_len, block_size), len(name),
                     file_type if filetype else 0)
    buf[offset + 8 : offset + 8 + len(name)] = name


def _set_rec_len(buf: bytearray, offset: int, rec_len: int, block_size: int) -> None:
    _U16.pack_into(buf, offset + 4, rec_len_to_disk(rec_len, block_size))


def _new_block(block_size: int, csum: bool) -> tuple[bytearray, int]:
    buf = bytearray(block_size)
    if csum:
        init_leaf_tail(buf)
        return buf, block_size - DIR_TAIL_SIZE
    return buf, block_size


def build_leaf_block(
    entries: Iterable[EntrySpec], *, block_size: int, filetype: bool, csum: bool
) -> bytearray:
    """One leaf block holding ``entries`` in order, the last absorbing the slack.

    No entries gives an empty block (one unused entry spanning it).  With
    ``csum`` the tail is written with checksum 0: call set_leaf_csum.

    Raises NoSpace if the entries do not fit, NameTooLong/InvalidPath/InvalidOptions on bad input.
    """
    buf, usable = _new_block(block_size, csum)
    offset = 0
    last = -1
    for ino, name, file_type in entries:
        _check_ino(ino)
        _check_name(name)
        need = rec_len_for(len(name))
        if offset + need > usable:
            raise NoSpace("the entries do not fit in one directory block")
        _put_entry(buf, offset, ino, name, file_type, need, block_size, filetype)
        last = offset
        offset += need
    if last < 0:
        _HEAD2.pack_into(buf, 0, 0, rec_len_to_disk(usable, block_size), 0, 0)
    else:
        _set_rec_len(buf, last, usable - last, block_size)
    return buf


def build_linear_blocks(
    entries: Iterable[EntrySpec], *, block_size: int, filetype: bool, csum: bool
) -> list[bytearray]:
    """Pack (ino, name, file_type) entries, in order, into as few leaf blocks as they need.

    Each block's last entry absorbs the block's slack; with ``csum`` each
    block ends with a checksum tail (checksum 0: call set_leaf_csum with the
    directory's inode seed).  "." and ".." are not added: pass them first.

    Raises NameTooLong/InvalidPath/InvalidOptions on bad input.
    """
    usable = block_size - (DIR_TAIL_SIZE if csum else 0)
    blocks: list[bytearray] = []
    buf = bytearray()
    offset = 0
    last = -1
    seen: set[bytes] = set()
    for ino, name, file_type in entries:
        _check_ino(ino)
        _check_name(name)
        if name in seen:
            raise FileExists(name.decode("utf-8", "surrogateescape"))
        seen.add(name)
        need = rec_len_for(len(name))
        if last < 0 or offset + need > usable:
            if last >= 0:
                _set_rec_len(buf, last, usable - last, block_size)
            buf, _ = _new_block(block_size, csum)
            blocks.append(buf)
            offset = 0
        _put_entry(buf, offset, ino, name, file_type, need, block_size, filetype)
        last = offset
        offset += need
    if last >= 0:
        _set_rec_len(buf, last, usable - last, block_size)
    return blocks


def insert_into_block(
    buf: bytearray,
    ino: int,
    name: bytes,
    file_type: int,
    *,
    block_size: int,
    filetype: bool,
    has_tail: bool,
    where: str = "directory block",
) -> bool:
    """Add an entry to a leaf block in place, as the kernel does; False if there is no room.

    Takes the first entry with room: an unused entry at least as long as
    needed, or a live entry whose rec_len exceeds its own need by enough (it
    is cut down to its need and the new entry takes the rest).  The checksum
    is not updated: call set_leaf_csum afterwards.

    Raises FileExists if the block already holds ``name``, CorruptError on a
    bad block, NameTooLong/InvalidPath/InvalidOptions on bad input.
    """
    _check_ino(ino)
    _check_name(name)
    need = rec_len_for(len(name))
    entries = parse_block(buf, block_size=block_size, filetype=filetype, has_tail=has_tail,
                          include_empty=True, where=where)
    slot: DirEntry | None = None
    for entry in entries:
        if entry.ino:
            if entry.name == name:
                raise FileExists(name.decode("utf-8", "surrogateescape"))
            if slot is None and entry.rec_len - rec_len_for(len(entry.name)) >= need:
                slot = entry
        elif slot is None and entry.rec_len >= need:
            slot = entry
    if slot is None:
        return False
    offset, rec_len = slot.offset, slot.rec_len
    if slot.ino:
        keep = rec_len_for(len(slot.name))
        _set_rec_len(buf, offset, keep, block_size)
        offset += keep
        rec_len -= keep
    buf[offset : offset + rec_len] = bytes(rec_len)
    _put_entry(buf, offset, ino, name, file_type, rec_len, block_size, filetype)
    return True


def remove_from_block(
    buf: bytearray,
    name: bytes,
    *,
    block_size: int,
    filetype: bool,
    has_tail: bool,
    where: str = "directory block",
) -> int | None:
    """Remove ``name`` from a leaf block in place; its inode number, or None if absent.

    As the kernel: the previous entry's rec_len swallows the removed one
    (which is zeroed); the first entry of a block is only marked unused
    (inode 0, name cleared, rec_len kept).  The checksum is not updated.

    Raises CorruptError on a bad block.
    """
    entries = parse_block(buf, block_size=block_size, filetype=filetype, has_tail=has_tail,
                          include_empty=True, where=where)
    prev: DirEntry | None = None
    for entry in entries:
        if entry.ino and entry.name == name:
            start, length = entry.offset, entry.rec_len
            if prev is not None:
                _set_rec_len(buf, prev.offset, prev.rec_len + length, block_size)
                buf[start : start + length] = bytes(length)
            else:
                _U32.pack_into(buf, start, 0)
                buf[start + 6 : start + length] = bytes(length - 6)
            return entry.ino
        prev = entry
    return None


def _pack_dx_entries(
    buf: bytearray, count_offset: int, limit: int, entries: Sequence[tuple[int, int]]
) -> None:
    count = len(entries)
    if not 1 <= count <= limit:
        raise InvalidOptions(f"{count} index entries do not fit the limit {limit}")
    _COUNTLIMIT.pack_into(buf, count_offset, limit, count)
    _U32.pack_into(buf, count_offset + 4, entries[0][1])
    flat: list[int] = []
    for hash_value, block in entries[1:]:
        flat.append(hash_value)
        flat.append(block)
    if flat:
        struct.pack_into(f"<{len(flat)}I", buf, count_offset + 8, *flat)


def build_dx_root(
    dir_ino: int,
    parent_ino: int,
    entries: Sequence[tuple[int, int]],
    *,
    hash_version: int,
    levels: int,
    block_size: int,
    filetype: bool,
    csum: bool,
) -> bytearray:
    """An htree root block: ".", "..", dx_root_info and the [(hash, block)] index.

    ``hash_version`` is stored as is (0..2: the unsigned variants are a
    superblock flag).  The first entry's hash is not stored.  With ``csum``
    the dx_tail is reserved (checksum 0: call set_dx_csum).

    Raises InvalidOptions when the entries do not fit.
    """
    buf = bytearray(block_size)
    ft = FT_DIR if filetype else 0
    _HEAD2.pack_into(buf, 0, dir_ino, 12, 1, ft)
    buf[8:9] = b"."
    _HEAD2.pack_into(buf, 12, parent_ino, rec_len_to_disk(block_size - 12, block_size), 2, ft)
    buf[20:22] = b".."
    _INFO.pack_into(buf, 24, 0, hash_version, _INFO.size, levels, 0)
    _pack_dx_entries(buf, DX_ROOT_COUNT_OFFSET, dx_root_limit(block_size, csum), entries)
    return buf


def build_dx_node(entries: Sequence[tuple[int, int]], *, block_size: int, csum: bool) -> bytearray:
    """An htree interior node holding the [(hash, block)] index (first hash not stored).

    With ``csum`` the dx_tail is reserved (checksum 0: call set_dx_csum).

    Raises InvalidOptions when the entries do not fit.
    """
    buf = bytearray(block_size)
    _HEAD2.pack_into(buf, 0, 0, rec_len_to_disk(block_size, block_size), 0, 0)
    _pack_dx_entries(buf, DX_NODE_COUNT_OFFSET, dx_node_limit(block_size, csum), entries)
    return buf


def _even_groups(items: list[tuple[int, int]], groups: int) -> list[list[tuple[int, int]]]:
    size, extra = divmod(len(items), groups)
    out = []
    start = 0
    for g in range(groups):
        end = start + size + (1 if g < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def build_htree(
    entries: Iterable[EntrySpec],
    *,
    block_size: int,
    hash_version: int,
    seed: Sequence[int] | None,
    filetype: bool,
    csum: bool,
    dir_ino: int,
    parent_ino: int,
    large_dir: bool,
    slack_percent: int = 20,
    iseed: int | None = None,
) -> list[bytearray]:
    """All blocks of an indexed directory holding ``entries`` ("." and ".." are added).

    Block 0 is the root, then the leaves in hash order, then the interior
    nodes (one level when the root's limit is exceeded, two with large_dir).
    Leaves are filled as e2fsck -D does: entries sorted by (hash, minor
    hash, name); a leaf is closed once less than ``slack_percent`` of it is
    free; a leaf starting inside a run of equal hashes gets the continuation
    bit (hash | 1) in its index entry.  ``hash_version`` is the hash used
    (0..5); the root stores its signed form (0..2), so the superblock's
    unsigned flag must match.  With ``iseed`` and ``csum`` every block's
    checksum is set.

    Raises NoSpace when the index would need more levels than allowed,
    FileExists for a repeated name, InvalidOptions/NameTooLong/InvalidPath on
    bad input (including "." or ".." among ``entries``), UnsupportedFeature for siphash.
    """
    _check_version(hash_version)
    if not 0 <= slack_percent <= 100:
        raise InvalidOptions("slack_percent must be within 0..100")
    items = list(entries)
    for ino, name, _ in items:
        _check_ino(ino)
        _check_name(name)
        if name == b"." or name == b"..":
            raise InvalidPath(name.decode(), "'.' and '..' are added by build_htree")
    if len({name for _, name, _ in items}) != len(items):
        seen: set[bytes] = set()
        for _, name, _ in items:
            if name in seen:
                raise FileExists(name.decode("utf-8", "surrogateescape"))
            seen.add(name)
    hashes = name_hashes([name for _, name, _ in items], hash_version, seed)
    order = sorted(range(len(items)), key=lambda i: (hashes[i], items[i][1]))
    usable = block_size - (DIR_TAIL_SIZE if csum else 0)
    slack = max(usable * slack_percent // 100, MIN_REC_LEN)

    leaves: list[bytearray] = []
    index: list[tuple[int, int]] = []  # (start hash, leaf block)
    buf = bytearray()
    offset = 0
    last = -1
    prev_hash = -1
    for i in order:
        ino, name, file_type = items[i]
        major = hashes[i][0]
        need = rec_len_for(len(name))
        if last < 0 or offset + need > usable or usable - offset < slack:
            if last >= 0:
                _set_rec_len(buf, last, usable - last, block_size)
            buf, _ = _new_block(block_size, csum)
            leaves.append(buf)
            index.append((major | 1 if major == prev_hash else major, len(leaves)))
            offset = 0
        _put_entry(buf, offset, ino, name, file_type, need, block_size, filetype)
        last = offset
        offset += need
        prev_hash = major
    if last >= 0:
        _set_rec_len(buf, last, usable - last, block_size)
    else:
        leaves.append(build_leaf_block([], block_size=block_size, filetype=filetype, csum=csum))
        index.append((0, 1))

    root_limit = dx_root_limit(block_size, csum)
    node_limit = dx_node_limit(block_size, csum)
    count = len(leaves)
    if count <= root_limit:
        levels = 0
    elif count <= root_limit * node_limit:
        levels = 1
    elif large_dir and count <= root_limit * node_limit * node_limit:
        levels = 2
    else:
        raise NoSpace("too many entries for the directory index"
                      + ("" if large_dir else " (large_dir is off)"))
    nodes: list[bytearray] = []
    next_block = 1 + count
    for _ in range(levels):
        groups = _even_groups(index, -(-len(index) // node_limit))
        index = []
        for group in groups:
            nodes.append(build_dx_node(group, block_size=block_size, csum=csum))
            index.append((group[0][0], next_block))
            next_block += 1
    root = build_dx_root(dir_ino, parent_ino, index, hash_version=hash_version % 3, levels=levels,
                         block_size=block_size, filetype=filetype, csum=csum)
    blocks = [root, *leaves, *nodes]
    if csum and iseed is not None:
        set_dx_csum(root, iseed)
        for leaf in leaves:
            set_leaf_csum(leaf, iseed)
        for node in nodes:
            set_dx_csum(node, iseed)
    return blocks


def split_leaf(
    entries: Sequence[DirEntry], *, hash_version: int, seed: Sequence[int] | None, block_size: int
) -> tuple[list[DirEntry], list[DirEntry], int]:
    """Split a full leaf's live entries as the kernel's do_split does.

    Entries are ordered by hash; from the top, entries move to the new block
    while they (by their current rec_len) fill at most half a block; if that
    would move everything or nothing, the split is by count.  Returns (kept
    entries in their original order, moved entries in hash order, the hash
    to index the new block under: the first moved hash, plus the
    continuation bit when the last kept entry has the same hash).  Insert
    the new name into the moved half when its hash >= split hash & ~1.

    Raises InvalidOptions with fewer than two live entries.
    """
    live = [e for e in entries if e.ino]
    if len(live) < 2:
        raise InvalidOptions("a leaf needs two live entries to be split")
    majors = [h for h, _ in name_hashes([e.name for e in live], hash_version, seed)]
    order = sorted(range(len(live)), key=lambda i: majors[i])
    count = len(order)
    size = 0
    move = 0
    stop = -1
    for pos in range(count - 1, -1, -1):
        rec_len = live[order[pos]].rec_len
        if size + rec_len // 2 > block_size // 2:
            stop = pos
            break
        size += rec_len
        move += 1
    split = count - move if stop > 0 else count // 2
    split_hash = majors[order[split]]
    continued = split_hash == majors[order[split - 1]]
    moved = set(order[split:])
    kept = [e for i, e in enumerate(live) if i not in moved]
    upper = [live[i] for i in order[split:]]
    return kept, upper, split_hash | (1 if continued else 0)


def _dx_header(buf: Buffer, block_size: int | None) -> tuple[int, int, int]:
    count_offset = dx_count_offset(buf, block_size)
    if count_offset is None:
        raise CorruptError("not an htree root or node")
    limit, count = _COUNTLIMIT.unpack_from(buf, count_offset)
    if count > limit or count_offset + 8 * limit > len(buf):
        raise CorruptError(f"htree count {count} / limit {limit} do not fit the block")
    return count_offset, limit, count


def dx_insert_entry(
    buf: bytearray, index: int, hash_value: int, block: int, *, block_size: int | None = None
) -> bool:
    """Insert (hash, block) right after entry ``index`` of a root or node; False if it is full.

    The kernel's dx_insert_block.  The checksum is not updated.

    Raises CorruptError if ``buf`` is not a dx block, InvalidOptions for a bad index.
    """
    count_offset, limit, count = _dx_header(buf, block_size)
    if not 0 <= index < count:
        raise InvalidOptions(f"index {index} outside 0..{count - 1}")
    if count >= limit:
        return False
    at = count_offset + 8 * (index + 1)
    end = count_offset + 8 * count
    buf[at + 8 : end + 8] = buf[at:end]
    _DX_ENTRY.pack_into(buf, at, hash_value, block)
    _COUNTLIMIT.pack_into(buf, count_offset, limit, count + 1)
    return True


def dx_split_node(
    buf: bytearray, *, block_size: int, csum: bool
) -> tuple[bytearray, int]:
    """Split a full interior node in two, as ext4_dx_add_entry does.

    ``buf`` keeps the lower half of its entries; returns the new node with the
    upper half and the hash to insert for it in the parent.  Checksums are
    not updated.

    Raises CorruptError if ``buf`` is not an interior node, InvalidOptions with fewer than two entries.
    """
    count_offset, limit, count = _dx_header(buf, block_size)
    if count_offset != DX_NODE_COUNT_OFFSET:
        raise CorruptError("not an htree interior node")
    if count < 2:
        raise InvalidOptions("an htree node needs two entries to be split")
    keep = count // 2
    words = struct.unpack_from(f"<{2 * count}I", buf, count_offset)
    upper = [(words[2 * i], words[2 * i + 1]) for i in range(keep, count)]
    new = build_dx_node(upper, block_size=block_size, csum=csum)
    start = count_offset + 8 * keep
    buf[start : count_offset + 8 * count] = bytes(8 * (count - keep))
    _COUNTLIMIT.pack_into(buf, count_offset, limit, keep)
    return new, upper[0][0]


def dx_grow_root(
    buf: bytearray, new_block: int, *, block_size: int, csum: bool, large_dir: bool
) -> bytearray:
    """Add a level under a full root, as ext4_dx_add_entry does.

    All root entries move into a new node (returned, to be stored at
    ``new_block``); the root keeps one entry pointing at it and its
    indirect_levels grows by one.  Checksums are not updated.

    Raises NoSpace when the tree is already as deep as allowed, CorruptError if ``buf`` is not a root.
    """
    count_offset, limit, count = _dx_header(buf, block_size)
    if count_offset != DX_ROOT_COUNT_OFFSET:
        raise CorruptError("not an htree root")
    levels = buf[30]
    if levels >= max_htree_levels(large_dir):
        raise NoSpace("directory index full" + ("" if large_dir else " (large_dir is off)"))
    words = struct.unpack_from(f"<{2 * count}I", buf, count_offset)
    entries = [(words[2 * i], words[2 * i + 1]) for i in range(count)]
    node = build_dx_node(entries, block_size=block_size, csum=csum)
    buf[count_offset : count_offset + 8 * count] = bytes(8 * count)
    _COUNTLIMIT.pack_into(buf, count_offset, limit, 1)
    _U32.pack_into(buf, count_offset + 4, new_block)
    buf[30] = levels + 1
    return node
