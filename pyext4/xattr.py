"""Extended attributes: names, in-inode and block parsing/building, hashes, placement, POSIX ACLs."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence

from . import _codecs as C
from . import constants as K
from .csum import crc32c_raw, xattr_block_csum
from .errors import ChecksumError, CorruptError, InvalidOptions, NoSpace
from .record import FrozenRecord, fill

__all__ = [
    "ACL_GROUP", "ACL_GROUP_OBJ", "ACL_MASK", "ACL_OTHER", "ACL_USER", "ACL_USER_OBJ",
    "INLINE_DATA_KEY", "XATTR_NAME_MAX", "XATTR_SIZE_MAX",
    "StoragePlan", "XattrBlock", "XattrEntry", "XattrNoSpace",
    "acl_disk_to_xattr", "acl_xattr_to_disk", "block_hash", "build_block", "build_ibody",
    "decode_name", "ea_inode_entry", "ea_inode_value_hash", "encode_name", "entry_hash",
    "entry_len", "inline_data_value", "parse_block", "parse_ibody", "plan_storage",
    "set_block_csum", "verify_block_csum", "verify_entry_hash",
]

_U32 = struct.Struct("<I")
_M32 = 0xFFFFFFFF
_ENTRY = C.XATTR_ENTRY
_HEADER = C.XATTR_HEADER
_ENTRY_SIZE = _ENTRY.size  # 16
_HEADER_SIZE = _HEADER.size  # 32
_MAGIC_BYTES = _U32.pack(K.XATTR_MAGIC)
_ZERO4 = b"\0\0\0\0"
_CSUM_OFFSET = 0x10

XATTR_NAME_MAX = 255  # the VFS limit on a full name ("user.foo")
XATTR_SIZE_MAX = 65536  # the VFS limit on one value
_DISK_VALUE_MAX = 1 << 24  # the kernel's EXT4_XATTR_SIZE_MAX: larger on-disk sizes are corrupt

# Name indices and their prefixes (e2fsprogs' table; 10 is the Hurd's "gnu." namespace).
_PREFIXES: dict[int, bytes] = {i: p.encode() for i, p in K.XATTR_INDEX_PREFIXES.items()}
_PREFIXES.setdefault(10, b"gnu.")
# Indices whose prefix is a whole name: the on-disk name is empty.
_WHOLE_NAMES = frozenset(i for i, p in _PREFIXES.items() if not p.endswith(b"."))
# Matching order for encode_name: whole names first, then the longest prefixes.
_ENCODE_ORDER = sorted(
    ((i, p) for i, p in _PREFIXES.items() if i not in _WHOLE_NAMES), key=lambda ip: -len(ip[1])
)
_INDEX_SYSTEM = 7
INLINE_DATA_KEY = (_INDEX_SYSTEM, K.INLINE_DATA_XATTR_NAME.encode())  # system.data

# POSIX ACL tags (ext4_acl.h / posix_acl_xattr.h).
ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_GROUP = 0x08
ACL_MASK = 0x10
ACL_OTHER = 0x20
_ACL_SHORT_TAGS = frozenset((ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER))
_ACL_LONG_TAGS = frozenset((ACL_USER, ACL_GROUP))
_ACL_DISK_VERSION = 1
_ACL_XATTR_VERSION = 2
_ACL_UNDEFINED_ID = 0xFFFFFFFF
_ACL_PERM_MASK = 0x7
_ACL_SHORT = struct.Struct("<HH")
_ACL_LONG = struct.Struct("<HHI")


class XattrNoSpace(NoSpace):
    """Extended attributes that cannot be stored in the inode body, one xattr block (or an EA inode)."""


# ------------------------------------------------------------------ sizes
def entry_len(name_len: int) -> int:
    """Bytes one entry takes in the entry table (16-byte header + name, padded to 4)."""
    return (_ENTRY_SIZE + name_len + K.XATTR_ROUND) & ~K.XATTR_ROUND


def _padded(size: int) -> int:
    return (size + K.XATTR_ROUND) & ~K.XATTR_ROUND


# ------------------------------------------------------------------ names
def decode_name(name_index: int, name: bytes) -> bytes | None:
    """The full name (``b"user.foo"``) of an on-disk (index, name), or None for an index the kernel hides.

    Index 0 means the name is stored whole.  Indices without a known prefix (5 Lustre,
    9 encryption context, ...) are not visible through listxattr and give None.
    """
    if name_index == 0:
        return bytes(name)
    prefix = _PREFIXES.get(name_index)
    if prefix is None:
        return None
    return prefix + bytes(name)


def encode_name(full_name: str | bytes) -> tuple[int, bytes]:
    """(name index, on-disk name) for a full attribute name.

    ``"user.foo"`` -> ``(1, b"foo")``, ``"system.posix_acl_access"`` -> ``(2, b"")``,
    ``"system.data"`` -> ``(7, b"data")``; a name with no known prefix is stored whole
    with index 0.  ``str`` names are encoded as UTF-8 with surrogateescape (like
    ``os.fsencode``).  Raises InvalidOptions for an empty name, a name longer than 255
    bytes or holding NUL, or a bare prefix such as ``"user."``.
    """
    raw = full_name.encode("utf-8", "surrogateescape") if isinstance(full_name, str) else bytes(full_name)
    if not raw:
        raise InvalidOptions("empty extended attribute name")
    if len(raw) > XATTR_NAME_MAX:
        raise InvalidOptions(f"extended attribute name longer than {XATTR_NAME_MAX} bytes: {raw[:40]!r}...")
    if b"\0" in raw:
        raise InvalidOptions(f"extended attribute name contains NUL: {raw!r}")
    for index in _WHOLE_NAMES:
        if raw == _PREFIXES[index]:
            return index, b""
    for index, prefix in _ENCODE_ORDER:
        if raw.startswith(prefix):
            suffix = raw[len(prefix):]
            if not suffix:
                raise InvalidOptions(f"extended attribute name is only a prefix: {raw!r}")
            return index, suffix
    return 0, raw


# ----------------------------------------------------------------- entries
class XattrEntry(FrozenRecord):
    """One extended attribute as stored: (name_index, name) plus either a value or an EA inode.

    ``value`` holds the value when it lives beside the entry; when ``value_inum`` is set the
    value lives in that EA inode (``value`` is empty and ``value_size`` gives its length).
    ``e_hash`` is the on-disk entry hash (not part of equality).
    """

    __slots__ = ("name_index", "name", "value", "value_inum", "value_size", "e_hash")
    _compare = ("name_index", "name", "value", "value_inum", "value_size")  # not e_hash

    name_index: int
    name: bytes
    value: bytes
    value_inum: int
    value_size: int
    e_hash: int

    def __init__(
        self,
        name_index: int,
        name: bytes,
        value: bytes = b"",
        value_inum: int = 0,
        value_size: int = -1,
        e_hash: int = 0,
    ) -> None:
        if value_inum:
            if value:
                raise InvalidOptions("an xattr entry with an EA inode carries no inline value")
            if value_size < 0:
                raise InvalidOptions("an xattr entry with an EA inode needs value_size")
        elif value_size < 0:
            value_size = len(value)
        elif value_size != len(value):
            raise InvalidOptions(f"value_size {value_size} != len(value) {len(value)}")
        fill(self, "name_index", name_index)
        fill(self, "name", name)
        fill(self, "value", value)
        fill(self, "value_inum", value_inum)
        fill(self, "value_size", value_size)
        fill(self, "e_hash", e_hash)

    @classmethod
    def from_name(cls, full_name: str | bytes, value: bytes) -> XattrEntry:
        """An entry for ``full_name`` (see encode_name; raises InvalidOptions) holding ``value``."""
        index, name = encode_name(full_name)
        return cls(index, name, bytes(value))

    @property
    def key(self) -> tuple[int, bytes]:
        """(name_index, name): what identifies the attribute on disk."""
        return self.name_index, self.name

    @property
    def full_name_bytes(self) -> bytes | None:
        """``b"user.foo"``; None for an index the kernel does not expose."""
        return decode_name(self.name_index, self.name)

    @property
    def full_name(self) -> str | None:
        """``"user.foo"`` (UTF-8, surrogateescape); None for an index the kernel does not expose."""
        raw = decode_name(self.name_index, self.name)
        return None if raw is None else raw.decode("utf-8", "surrogateescape")

    @property
    def in_ea_inode(self) -> bool:
        return self.value_inum != 0


def ea_inode_entry(name_index: int, name: bytes, value_inum: int, value_size: int, value_hash: int) -> XattrEntry:
    """An entry whose value lives in EA inode ``value_inum``; ``value_hash`` is that inode's stored hash.

    The entry hash is computed the kernel's way (name hash rotated with the value hash).
    Raises InvalidOptions for an inode number of 0.
    """
    if value_inum <= 0:
        raise InvalidOptions("EA inode number must be positive")
    e_hash = entry_hash(name, ea_inode_hash=value_hash)
    return XattrEntry(name_index, bytes(name), b"", value_inum, value_size, e_hash)


def inline_data_value(entries: Iterable[XattrEntry], *, where: str | None = None) -> bytes | None:
    """The ``system.data`` value (inline data past the 60 bytes of i_block), or None if absent.

    Raises CorruptError when system.data claims to live in an EA inode.
    """
    for entry in entries:
        if entry.key == INLINE_DATA_KEY:
            if entry.value_inum:
                raise CorruptError("system.data (inline data) stored in an EA inode", where=where)
            return entry.value
    return None


# ------------------------------------------------------------------ hashes
def _rot(h: int, shift: int) -> int:
    return ((h << shift) & _M32) | (h >> (32 - shift))


def _name_hash(name: bytes, signed: bool) -> int:
    h = 0
    for byte in name:
        if signed and byte & 0x80:
            byte |= 0xFFFFFF00  # a negative signed char, sign-extended
        h = _rot(h, 5) ^ byte
    return h


def _words_hash(h: int, padded: bytes | memoryview) -> int:
    for (word,) in _U32.iter_unpack(padded):
        h = _rot(h, 16) ^ word
    return h


def entry_hash(name: bytes, value: bytes = b"", *, ea_inode_hash: int | None = None, signed: bool = False) -> int:
    """The entry hash e2fsprogs and the kernel store in ``e_hash``.

    The name bytes are hashed (as unsigned chars, or as signed chars with ``signed=True``: the
    variant kernels before 6.2 computed on x86 for bytes >= 0x80, still accepted by the kernel and
    e2fsck), then each little-endian word of the zero-padded value; for an EA-inode entry the
    value is replaced by the EA inode's stored hash (``ea_inode_hash``).
    """
    h = _name_hash(name, signed)
    if ea_inode_hash is not None:
        return _rot(h, 16) ^ (ea_inode_hash & _M32)
    if value:
        pad = _padded(len(value)) - len(value)
        h = _words_hash(h, bytes(value) + bytes(pad) if pad else value)
    return h


def verify_entry_hash(entry: XattrEntry, *, ea_inode_hash: int | None = None, allow_zero: bool = False) -> bool:
    """Whether ``entry.e_hash`` is what e2fsck accepts: the unsigned or the signed-char hash.

    ``allow_zero`` accepts 0 (in-inode entries are written with hash 0).  An EA-inode entry
    needs ``ea_inode_hash`` (the EA inode's stored value hash); without it this returns False.
    """
    if allow_zero and entry.e_hash == 0:
        return True
    if entry.value_inum:
        if ea_inode_hash is None:
            return False
        hashes = (entry_hash(entry.name, ea_inode_hash=ea_inode_hash),
                  entry_hash(entry.name, ea_inode_hash=ea_inode_hash, signed=True))
    else:
        hashes = (entry_hash(entry.name, entry.value), entry_hash(entry.name, entry.value, signed=True))
    return entry.e_hash in hashes


def block_hash(entry_hashes: Iterable[int]) -> int:
    """The xattr block's ``h_hash`` from its entries' hashes in table order (0 if any is 0)."""
    h = 0
    for e_hash in entry_hashes:
        if e_hash == 0:
            return 0
        h = _rot(h, 16) ^ e_hash
    return h


def ea_inode_value_hash(seed: int, value: bytes) -> int:
    """The hash an EA inode stores (in i_atime) for its value: raw CRC32C from the fs checksum seed."""
    return crc32c_raw(seed, value)


# --------------------------------------------------------------- checksums
def verify_block_csum(seed: int, block_nr: int, raw: bytes | bytearray | memoryview, *, where: str | None = None) -> None:
    """Check an xattr block's ``h_checksum``; raises ChecksumError on mismatch (CorruptError if too short)."""
    if len(raw) < _HEADER_SIZE:
        raise CorruptError("xattr block shorter than its header", where=where)
    stored = _U32.unpack_from(raw, _CSUM_OFFSET)[0]
    computed = xattr_block_csum(seed, block_nr, raw)
    if stored != computed:
        raise ChecksumError("xattr block", expected=stored, actual=computed, where=where)


def set_block_csum(seed: int, block_nr: int, buf: bytearray) -> int:
    """Compute and store the ``h_checksum`` of the xattr block in ``buf`` (to live at ``block_nr``)."""
    value = xattr_block_csum(seed, block_nr, buf)
    _U32.pack_into(buf, _CSUM_OFFSET, value)
    return value


# ----------------------------------------------------------------- parsing
def _parse_entries(
    buf: bytes, first: int, end: int, value_base: int, *, where: str | None, verify_hashes: bool,
    allow_zero_hash: bool,
) -> list[XattrEntry]:
    """Entries from ``buf[first:end]``; ``e_value_offs`` counts from ``value_base``."""
    raw_entries: list[tuple[int, int, int, int, int, int, bytes]] = []
    offset = first
    while True:
        if offset + 4 > end:
            raise CorruptError(f"xattr entries run past the end (no end marker by offset {offset})", where=where)
        if buf[offset:offset + 4] == _ZERO4:
            break
        if offset + _ENTRY_SIZE > end:
            raise CorruptError(f"xattr entry at offset {offset} runs past the end", where=where)
        name_len, index, value_offs, value_inum, value_size, e_hash = _ENTRY.unpack_from(buf, offset)
        following = offset + entry_len(name_len)
        if following + 4 > end:
            raise CorruptError(
                f"xattr entry at offset {offset} (name length {name_len}) runs past the end", where=where
            )
        name = buf[offset + _ENTRY_SIZE:offset + _ENTRY_SIZE + name_len]
        if b"\0" in name:
            raise CorruptError(f"xattr entry at offset {offset} has a NUL in its name", where=where)
        if name_len == 0 and index not in _WHOLE_NAMES:
            raise CorruptError(f"xattr entry at offset {offset} has an empty name (index {index})", where=where)
        raw_entries.append((offset, index, value_offs, value_inum, value_size, e_hash, name))
        offset = following
    entries_end = offset + 4

    entries: list[XattrEntry] = []
    spans: list[tuple[int, int, int]] = []
    for offset, index, value_offs, value_inum, value_size, e_hash, name in raw_entries:
        if value_inum:
            if value_offs != 0:
                raise CorruptError(
                    f"xattr entry at offset {offset} has an EA inode and a value offset {value_offs}",
                    where=where,
                )
            if value_size > _DISK_VALUE_MAX:
                raise CorruptError(
                    f"xattr entry at offset {offset} has an EA inode value of {value_size} bytes", where=where
                )
            entries.append(XattrEntry(index, name, b"", value_inum, value_size, e_hash))
            continue
        value = b""
        padded = b""
        if value_size:
            if value_size > end - value_base:
                raise CorruptError(
                    f"xattr entry at offset {offset}: value size {value_size} exceeds the space", where=where
                )
            start = value_base + value_offs
            stop = start + _padded(value_size)
            if start < entries_end:
                raise CorruptError(
                    f"xattr entry at offset {offset}: value at {start} overlaps the entry table", where=where
                )
            if stop > end:
                raise CorruptError(
                    f"xattr entry at offset {offset}: value {start}+{value_size} runs past the end", where=where
                )
            padded = buf[start:stop]
            value = padded[:value_size]
            spans.append((start, stop, offset))
        if verify_hashes and not (allow_zero_hash and e_hash == 0):
            hashes = (_words_hash(_name_hash(name, False), padded), _words_hash(_name_hash(name, True), padded))
            if e_hash not in hashes:
                raise CorruptError(
                    f"xattr entry at offset {offset}: hash {e_hash:#010x} does not match "
                    f"(computed {hashes[0]:#010x})", where=where,
                )
        entries.append(XattrEntry(index, name, value, 0, value_size, e_hash))
    spans.sort()
    for (_, prev_stop, prev_entry), (start, _, entry_offset) in zip(spans, spans[1:], strict=False):
        if start < prev_stop:
            raise CorruptError(
                f"xattr values of the entries at offsets {prev_entry} and {entry_offset} overlap", where=where
            )
    return entries


def parse_ibody(
    tail: bytes | bytearray | memoryview, *, where: str | None = None, verify_hashes: bool = False
) -> list[XattrEntry]:
    """In-inode attributes from ``tail``, the inode bytes after 128 + i_extra_isize.

    No space or no 0xEA020000 magic means no attributes.  ``verify_hashes`` checks non-zero
    hashes of inline values (as e2fsck does).  EA-inode entries come back with ``value_inum``
    and ``value_size`` set; the caller reads and checks that inode.  Raises CorruptError.
    """
    buf = bytes(tail)
    if len(buf) < 4 or buf[:4] != _MAGIC_BYTES:
        return []
    if len(buf) < 8:
        raise CorruptError("in-inode xattr space too small for its header and end marker", where=where)
    return _parse_entries(buf, 4, len(buf), 4, where=where, verify_hashes=verify_hashes, allow_zero_hash=True)


class XattrBlock(FrozenRecord):
    """A parsed xattr block: header fields and entries in table order."""

    __slots__ = ("refcount", "hash", "checksum", "entries")

    refcount: int
    hash: int
    checksum: int
    entries: tuple[XattrEntry, ...]

    def __init__(self, refcount: int, hash: int, checksum: int, entries: tuple[XattrEntry, ...]) -> None:
        fill(self, "refcount", refcount)
        fill(self, "hash", hash)
        fill(self, "checksum", checksum)
        fill(self, "entries", entries)


def parse_block(
    raw: bytes | bytearray | memoryview,
    *,
    block_nr: int,
    where: str | None = None,
    verify_csum: Callable[[int, bytes], int] | None = None,
    verify_hashes: bool = False,
) -> XattrBlock:
    """Parse one xattr block (``len(raw)`` is the block size) read from ``block_nr``.

    ``verify_csum(block_nr, raw)`` returns the checksum the block should hold (for example
    ``functools.partial(csum.xattr_block_csum, seed)``); None skips the check.
    ``verify_hashes`` checks every inline value's entry hash as e2fsck does.  Raises
    CorruptError (bad magic, h_blocks != 1, bad entries) or ChecksumError.
    """
    buf = bytes(raw)
    if len(buf) < _HEADER_SIZE + 4:
        raise CorruptError(f"xattr block of {len(buf)} bytes is too small", where=where)
    magic, refcount, blocks, h_hash, h_checksum, _ = _HEADER.unpack_from(buf, 0)
    if magic != K.XATTR_MAGIC:
        raise CorruptError(f"xattr block has bad magic {magic:#010x}", where=where)
    if blocks != 1:
        raise CorruptError(f"xattr block claims {blocks} blocks (must be 1)", where=where)
    if verify_csum is not None:
        computed = verify_csum(block_nr, buf)
        if computed != h_checksum:
            raise ChecksumError("xattr block", expected=h_checksum, actual=computed, where=where)
    entries = _parse_entries(
        buf, _HEADER_SIZE, len(buf), 0, where=where, verify_hashes=verify_hashes, allow_zero_hash=False
    )
    return XattrBlock(refcount, h_hash, h_checksum, tuple(entries))


# ---------------------------------------------------------------- building
def _check_entries(entries: Sequence[XattrEntry]) -> None:
    seen: set[tuple[int, bytes]] = set()
    for entry in entries:
        if not 0 <= entry.name_index <= 0xFF:
            raise InvalidOptions(f"xattr name index {entry.name_index} out of range")
        if len(entry.name) > XATTR_NAME_MAX:
            raise InvalidOptions(f"xattr name longer than {XATTR_NAME_MAX} bytes: {entry.name[:40]!r}...")
        if b"\0" in entry.name:
            raise InvalidOptions(f"xattr name contains NUL: {entry.name!r}")
        if not entry.name and entry.name_index not in _WHOLE_NAMES:
            raise InvalidOptions(f"empty xattr name with index {entry.name_index}")
        if entry.value_inum and not 0 < entry.value_inum <= _M32:
            raise InvalidOptions(f"EA inode number {entry.value_inum} out of range")
        if entry.value_size > _DISK_VALUE_MAX:
            raise InvalidOptions(f"xattr value of {entry.value_size} bytes is too large")
        if entry.key in seen:
            raise InvalidOptions(f"duplicate xattr {entry.full_name_bytes or entry.name!r}")
        seen.add(entry.key)


def _space_needed(entries: Iterable[XattrEntry]) -> int:
    """Entry table + values (end marker not included)."""
    return sum(entry_len(len(e.name)) + (0 if e.value_inum else _padded(len(e.value))) for e in entries)


def _block_sort_key(entry: XattrEntry) -> tuple[int, int, bytes]:
    return entry.name_index, len(entry.name), entry.name


def _write_entries(
    buf: bytearray, entries: Sequence[XattrEntry], first: int, value_base: int, *, hashed: bool
) -> list[int]:
    """Write the table at ``first`` and values down from the end of ``buf``; returns the entry hashes."""
    offset = first
    value_end = len(buf)
    hashes = []
    for entry in entries:
        value_offs = 0
        if entry.value_inum:
            e_hash = entry.e_hash
        else:
            if entry.value:
                value_end -= _padded(len(entry.value))
                buf[value_end:value_end + len(entry.value)] = entry.value
                value_offs = value_end - value_base
            e_hash = entry_hash(entry.name, entry.value) if hashed else 0
        _ENTRY.pack_into(
            buf, offset, len(entry.name), entry.name_index, value_offs, entry.value_inum, entry.value_size, e_hash
        )
        buf[offset + _ENTRY_SIZE:offset + _ENTRY_SIZE + len(entry.name)] = entry.name
        hashes.append(e_hash)
        offset += entry_len(len(entry.name))
    return hashes


def build_ibody(entries: Sequence[XattrEntry], space: int) -> bytes | None:
    """The ``space`` bytes after 128 + i_extra_isize holding ``entries`` (in the given order); None if they do not fit.

    Values are packed from the end downwards, 4-byte aligned, offsets relative to the first
    entry; inline values get hash 0 (as the kernel and e2fsprogs write them), EA-inode entries
    keep their ``e_hash``.  No entries give all zeroes (no magic).  Raises InvalidOptions for
    invalid or duplicate entries.
    """
    if space < 0:
        raise InvalidOptions(f"negative in-inode xattr space {space}")
    if not entries:
        return bytes(space)
    _check_entries(entries)
    if space < 8 or _space_needed(entries) + 4 > space - 4:
        return None
    buf = bytearray(space)
    buf[:4] = _MAGIC_BYTES
    _write_entries(buf, entries, 4, 4, hashed=False)
    return bytes(buf)


def _check_block_size(block_size: int) -> None:
    if block_size < 1024 or block_size > 65536 or block_size & (block_size - 1):
        raise InvalidOptions(f"invalid block size {block_size}")


def build_block(entries: Sequence[XattrEntry], block_size: int, *, refcount: int = 1) -> bytearray:
    """An xattr block holding ``entries``, with entry hashes and ``h_hash`` set and ``h_checksum`` 0.

    Entries are sorted by (name index, name length, name) as the kernel keeps them; values are
    packed from the end of the block downwards, 4-byte aligned; an empty value has offset 0.
    Call set_block_csum once the block number is known.  Raises XattrNoSpace when they do not
    fit, InvalidOptions for invalid or duplicate entries or an index-0 name (e2fsck rejects
    those in blocks).
    """
    _check_block_size(block_size)
    _check_entries(entries)
    if not entries:
        raise InvalidOptions("an xattr block needs at least one entry")
    if not 0 < refcount <= _M32:
        raise InvalidOptions(f"xattr block refcount {refcount} out of range")
    for entry in entries:
        if entry.name_index == 0:
            raise InvalidOptions(f"xattr {entry.name!r} has no known prefix; it can only live in the inode")
    ordered = sorted(entries, key=_block_sort_key)
    needed = _HEADER_SIZE + _space_needed(ordered) + 4
    if needed > block_size:
        raise XattrNoSpace(f"xattrs need {needed} bytes, more than a {block_size}-byte block")
    buf = bytearray(block_size)
    hashes = _write_entries(buf, ordered, _HEADER_SIZE, 0, hashed=True)
    _HEADER.pack_into(buf, 0, K.XATTR_MAGIC, refcount, 1, block_hash(hashes), 0, bytes(12))
    return buf


# --------------------------------------------------------------- placement
class StoragePlan(FrozenRecord):
    """Where each attribute goes: ``ibody`` (input order), ``block`` (block order) and the keys of
    values that must move to an EA inode (replace those entries with ea_inode_entry before building)."""

    __slots__ = ("ibody", "block", "ea_inode")

    ibody: tuple[XattrEntry, ...]
    block: tuple[XattrEntry, ...]
    ea_inode: frozenset[tuple[int, bytes]]

    def __init__(
        self, ibody: tuple[XattrEntry, ...], block: tuple[XattrEntry, ...], ea_inode: frozenset[tuple[int, bytes]]
    ) -> None:
        fill(self, "ibody", ibody)
        fill(self, "block", block)
        fill(self, "ea_inode", ea_inode)

    def needs_ea_inode(self, entry: XattrEntry) -> bool:
        return entry.key in self.ea_inode


def plan_storage(
    entries: Sequence[XattrEntry], ibody_space: int, block_size: int, *, ea_inode: bool = False
) -> StoragePlan:
    """Decide, as the kernel's setxattr does one attribute at a time, what goes in the inode and what in the block.

    ``ibody_space`` is inode size - 128 - i_extra_isize.  Each attribute goes in the inode if it
    fits there, else in the xattr block; with ``ea_inode`` (the feature) a value larger than
    block size - 56 bytes, or one that fits neither place, moves to an EA inode and only its entry
    is stored.  ``system.data`` (inline data) is placed first and only in the inode; so are
    index-0 names.  Raises XattrNoSpace when something does not fit, InvalidOptions for invalid
    or duplicate entries or a value over 64 KiB.
    """
    _check_block_size(block_size)
    _check_entries(entries)
    large = block_size - entry_len(3) - _HEADER_SIZE - 4  # EXT4_XATTR_MIN_LARGE_EA_SIZE
    reserve = min(block_size // 8, 1024)  # EXT4_XATTR_BLOCK_RESERVE (ea_inode only)
    ibody_free = ibody_space - 8 if ibody_space >= 8 else -1
    block_free = block_size - _HEADER_SIZE - 4
    block_values = 0
    order = sorted(range(len(entries)), key=lambda i: entries[i].key != INLINE_DATA_KEY)
    in_ibody: set[int] = set()
    in_block: list[XattrEntry] = []
    moved: set[tuple[int, bytes]] = set()
    for i in order:
        entry = entries[i]
        label = (entry.full_name_bytes or entry.name).decode("utf-8", "backslashreplace")
        if entry.value_size > XATTR_SIZE_MAX:
            raise InvalidOptions(f"xattr {label}: value of {entry.value_size} bytes exceeds {XATTR_SIZE_MAX}")
        ibody_only = entry.key == INLINE_DATA_KEY or entry.name_index == 0
        if entry.key == INLINE_DATA_KEY and entry.value_inum:
            raise InvalidOptions("system.data (inline data) cannot live in an EA inode")
        external = bool(entry.value_inum) or (ea_inode and _padded(entry.value_size) > large)
        while True:
            value_room = 0 if external else _padded(entry.value_size)
            needed = entry_len(len(entry.name)) + value_room
            if needed <= ibody_free:
                ibody_free -= needed
                in_ibody.add(i)
                break
            if ibody_only:
                raise XattrNoSpace(
                    f"xattr {label} ({entry.value_size} bytes) must live in the inode body and does not fit"
                )
            fits = needed <= block_free and not (
                ea_inode and value_room and block_size - block_values - value_room < reserve
            )
            if fits:
                block_free -= needed
                block_values += value_room
                in_block.append(entry)
                break
            if ea_inode and entry.value_size and not external:
                external = True
                continue
            hint = "" if ea_inode else "; the ea_inode feature would store it in its own inode"
            raise XattrNoSpace(
                f"xattr {label} ({entry.value_size} bytes) fits neither in the inode nor in the "
                f"{block_size}-byte xattr block{hint}"
            )
        if external and not entry.value_inum:
            moved.add(entry.key)
    return StoragePlan(
        ibody=tuple(entries[i] for i in range(len(entries)) if i in in_ibody),
        block=tuple(sorted(in_block, key=_block_sort_key)),
        ea_inode=frozenset(moved),
    )


# -------------------------------------------------------------- POSIX ACLs
def acl_xattr_to_disk(data: bytes | bytearray | memoryview) -> bytes:
    """Convert a POSIX ACL from the VFS xattr format (version 2, 8-byte entries) to ext4's on-disk format.

    Named user/group entries keep their id; the others are stored short (tag + perm).
    Raises InvalidOptions for a bad version, size, tag or permission.
    """
    raw = bytes(data)
    if len(raw) < 4 or (len(raw) - 4) % _ACL_LONG.size:
        raise InvalidOptions(f"POSIX ACL xattr of {len(raw)} bytes has a bad size")
    version = _U32.unpack_from(raw, 0)[0]
    if version != _ACL_XATTR_VERSION:
        raise InvalidOptions(f"POSIX ACL xattr version {version} (expected {_ACL_XATTR_VERSION})")
    out = bytearray(_U32.pack(_ACL_DISK_VERSION))
    for tag, perm, ident in _ACL_LONG.iter_unpack(raw[4:]):
        if perm & ~_ACL_PERM_MASK:
            raise InvalidOptions(f"POSIX ACL entry with bad permissions {perm:#x}")
        if tag in _ACL_SHORT_TAGS:
            out += _ACL_SHORT.pack(tag, perm)
        elif tag in _ACL_LONG_TAGS:
            out += _ACL_LONG.pack(tag, perm, ident)
        else:
            raise InvalidOptions(f"POSIX ACL entry with unknown tag {tag:#x}")
    return bytes(out)


def acl_disk_to_xattr(data: bytes | bytearray | memoryview, *, where: str | None = None) -> bytes:
    """Convert a POSIX ACL from ext4's on-disk format (version 1, short/long entries) to the VFS xattr format.

    Entries without an id get ACL_UNDEFINED_ID (0xFFFFFFFF), as the kernel's getxattr returns
    them.  Raises CorruptError for a bad version, a truncated entry, tag or permission.
    """
    raw = bytes(data)
    if len(raw) < 4:
        raise CorruptError(f"POSIX ACL of {len(raw)} bytes is too short", where=where)
    version = _U32.unpack_from(raw, 0)[0]
    if version != _ACL_DISK_VERSION:
        raise CorruptError(f"POSIX ACL version {version} (expected {_ACL_DISK_VERSION})", where=where)
    out = bytearray(_U32.pack(_ACL_XATTR_VERSION))
    offset = 4
    while offset < len(raw):
        if offset + _ACL_SHORT.size > len(raw):
            raise CorruptError(f"POSIX ACL entry at offset {offset} is truncated", where=where)
        tag, perm = _ACL_SHORT.unpack_from(raw, offset)
        if perm & ~_ACL_PERM_MASK:
            raise CorruptError(f"POSIX ACL entry at offset {offset} has bad permissions {perm:#x}", where=where)
        if tag in _ACL_SHORT_TAGS:
            ident = _ACL_UNDEFINED_ID
            offset += _ACL_SHORT.size
        elif tag in _ACL_LONG_TAGS:
            if offset + _ACL_LONG.size > len(raw):
                raise CorruptError(f"POSIX ACL entry at offset {offset} is truncated", where=where)
            ident = _ACL_LONG.unpack_from(raw, offset)[2]
            offset += _ACL_LONG.size
        else:
            raise CorruptError(f"POSIX ACL entry at offset {offset} has unknown tag {tag:#x}", where=where)
        out += _ACL_LONG.pack(tag, perm, ident)
    return bytes(out)
