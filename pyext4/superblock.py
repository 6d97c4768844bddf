"""The superblock: parsed and validated once, hi/lo halves joined, features by name."""

from __future__ import annotations

import uuid as _uuid
from typing import Any

from . import _codecs as C
from . import constants as K
from .csum import fs_seed, superblock_csum
from .errors import ChecksumError, CorruptError, UnsupportedFeature
from .geometry import Geometry

_NAMES = C.SUPERBLOCK_FIELDS
_INDEX = {name: i for i, name in enumerate(_NAMES)}


def feature_names(compat: int, incompat: int, ro_compat: int) -> list[str]:
    """Feature names in dumpe2fs order (compat, incompat, ro_compat; unknown bits as FEATURE_X)."""
    names = []
    for table, value, prefix in (
        (K.COMPAT, compat, "C"),
        (K.INCOMPAT, incompat, "I"),
        (K.RO_COMPAT, ro_compat, "R"),
    ):
        known = 0
        for name, bit in table.items():
            if value & bit:
                names.append(name)
                known |= bit
        rest = value & ~known
        bit = 0
        while rest:
            if rest & 1:
                names.append(f"FEATURE_{prefix}{bit}")
            rest >>= 1
            bit += 1
    return names


def _split(value: int) -> tuple[int, int]:
    return value & 0xFFFFFFFF, value >> 32


class Superblock:
    """A superblock's fields by kernel name, with joined values as properties.

    Raw fields are reached with ``sb["s_field"]``; multi-part values
    (block counts, times) only through the properties, so callers never join
    halves themselves.
    """

    __slots__ = ("_v",)

    def __init__(self, values: list[Any]) -> None:
        self._v = values

    # ------------------------------------------------------------- parsing
    @classmethod
    def blank(cls) -> Superblock:
        sb = cls([0] * len(_NAMES))
        for name, size in (
            ("s_uuid", 16), ("s_volume_name", 16), ("s_last_mounted", 64),
            ("s_journal_uuid", 16), ("s_hash_seed", 16), ("s_first_error_func", 32),
            ("s_last_error_func", 32), ("s_mount_opts", 64), ("s_encrypt_algos", 4),
            ("s_encrypt_pw_salt", 16), ("s_reserved", 376),
        ):
            sb[name] = bytes(size)
        return sb

    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview, *, verify: bool = True) -> Superblock:
        """Decode 1024 bytes; raises CorruptError / ChecksumError when they cannot be a superblock."""
        if len(raw) < K.SUPERBLOCK_SIZE:
            raise CorruptError("image too small to hold a superblock", where="superblock")
        sb = cls(list(C.SUPERBLOCK.unpack_from(raw, 0)))
        if sb["s_magic"] != K.EXT4_SUPER_MAGIC:
            raise CorruptError(
                f"bad magic {sb['s_magic']:#06x} (not an ext2/3/4 filesystem)", where="superblock"
            )
        if verify and sb.has_ro_compat("metadata_csum"):
            stored = sb["s_checksum"]
            actual = superblock_csum(raw)
            if stored != actual:
                raise ChecksumError("superblock", expected=stored, actual=actual, where="superblock")
        return sb

    def pack(self) -> bytes:
        """The 1024-byte on-disk form, with s_checksum computed when metadata_csum is on."""
        raw = bytearray(C.SUPERBLOCK.pack(*self._v))
        if self.has_ro_compat("metadata_csum"):
            csum = superblock_csum(raw)
            self["s_checksum"] = csum
            raw[0x3FC:0x400] = csum.to_bytes(4, "little")
        return bytes(raw)

    def copy(self) -> Superblock:
        return Superblock(list(self._v))

    def __getitem__(self, name: str) -> Any:
        return self._v[_INDEX[name]]

    def __setitem__(self, name: str, value: Any) -> None:
        self._v[_INDEX[name]] = value

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(_NAMES, self._v))

    # ------------------------------------------------------------ features
    def has_compat(self, name: str) -> bool:
        return bool(self["s_feature_compat"] & K.COMPAT[name])

    def has_incompat(self, name: str) -> bool:
        return bool(self["s_feature_incompat"] & K.INCOMPAT[name])

    def has_ro_compat(self, name: str) -> bool:
        return bool(self["s_feature_ro_compat"] & K.RO_COMPAT[name])

    def has_feature(self, name: str) -> bool:
        name = K.FEATURE_ALIASES.get(name, name)
        if name in K.COMPAT:
            return self.has_compat(name)
        if name in K.INCOMPAT:
            return self.has_incompat(name)
        if name in K.RO_COMPAT:
            return self.has_ro_compat(name)
        raise KeyError(name)

    def set_feature(self, name: str, on: bool = True) -> None:
        name = K.FEATURE_ALIASES.get(name, name)
        for table, field in (
            (K.COMPAT, "s_feature_compat"),
            (K.INCOMPAT, "s_feature_incompat"),
            (K.RO_COMPAT, "s_feature_ro_compat"),
        ):
            if name in table:
                if on:
                    self[field] |= table[name]
                else:
                    self[field] &= ~table[name]
                return
        raise KeyError(name)

    @property
    def features(self) -> list[str]:
        return feature_names(
            self["s_feature_compat"], self["s_feature_incompat"], self["s_feature_ro_compat"]
        )

    def check_readable(self) -> None:
        """Raise UnsupportedFeature when an incompat feature blocks reading."""
        unknown = self["s_feature_incompat"] & ~K.READ_INCOMPAT
        if unknown:
            names = tuple(feature_names(0, unknown, 0))
            raise UnsupportedFeature(
                f"unsupported incompatible feature(s): {', '.join(names)}", features=names
            )

    def check_writable(self) -> None:
        """Raise UnsupportedFeature when a feature blocks writing."""
        self.check_readable()
        bad_in = self["s_feature_incompat"] & ~K.WRITE_INCOMPAT & ~K.INCOMPAT["needs_recovery"]
        bad_ro = self["s_feature_ro_compat"] & ~K.WRITE_RO_COMPAT
        if bad_in or bad_ro:
            names = tuple(feature_names(0, bad_in, bad_ro))
            raise UnsupportedFeature(
                f"cannot write to a filesystem with feature(s): {', '.join(names)}", features=names
            )

    # ----------------------------------------------------- joined values
    @property
    def block_size(self) -> int:
        return 1 << (10 + self["s_log_block_size"])

    @property
    def blocks_count(self) -> int:
        hi = self["s_blocks_count_hi"] if self.is_64bit else 0
        return self["s_blocks_count_lo"] | (hi << 32)

    @blocks_count.setter
    def blocks_count(self, value: int) -> None:
        self["s_blocks_count_lo"], self["s_blocks_count_hi"] = _split(value)

    @property
    def r_blocks_count(self) -> int:
        hi = self["s_r_blocks_count_hi"] if self.is_64bit else 0
        return self["s_r_blocks_count_lo"] | (hi << 32)

    @r_blocks_count.setter
    def r_blocks_count(self, value: int) -> None:
        self["s_r_blocks_count_lo"], self["s_r_blocks_count_hi"] = _split(value)

    @property
    def free_blocks_count(self) -> int:
        hi = self["s_free_blocks_count_hi"] if self.is_64bit else 0
        return self["s_free_blocks_count_lo"] | (hi << 32)

    @free_blocks_count.setter
    def free_blocks_count(self, value: int) -> None:
        self["s_free_blocks_count_lo"], self["s_free_blocks_count_hi"] = _split(value)

    @property
    def is_64bit(self) -> bool:
        return self.has_incompat("64bit")

    @property
    def desc_size(self) -> int:
        if self.is_64bit:
            return self["s_desc_size"] or 64
        return 32

    @property
    def inode_size(self) -> int:
        return self["s_inode_size"] if self["s_rev_level"] >= K.DYNAMIC_REV else K.GOOD_OLD_INODE_SIZE

    @property
    def first_ino(self) -> int:
        return self["s_first_ino"] if self["s_rev_level"] >= K.DYNAMIC_REV else K.GOOD_OLD_FIRST_INO

    @property
    def uuid(self) -> bytes:
        return bytes(self["s_uuid"])

    @property
    def label(self) -> str:
        return bytes(self["s_volume_name"]).split(b"\0", 1)[0].decode("utf-8", "replace")

    @property
    def hash_seed(self) -> tuple[int, int, int, int]:
        raw = bytes(self["s_hash_seed"])
        return tuple(int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4))  # type: ignore[return-value]

    @property
    def csum_seed(self) -> int:
        """The seed every metadata_csum checksum starts from."""
        if self.has_incompat("metadata_csum_seed"):
            return int(self["s_checksum_seed"])
        return fs_seed(self.uuid)

    @property
    def metadata_csum(self) -> bool:
        return self.has_ro_compat("metadata_csum")

    @property
    def gdt_csum(self) -> bool:
        """Group descriptors carry crc16 checksums (uninit_bg without metadata_csum)."""
        return self.has_ro_compat("uninit_bg") and not self.metadata_csum

    @property
    def group_desc_csum(self) -> bool:
        """Group descriptors carry a checksum of either kind (the uninit flags are valid)."""
        return self.has_ro_compat("uninit_bg") or self.metadata_csum

    def _time(self, lo: str, hi: str) -> int:
        return int(self[lo]) | (int(self[hi]) << 32)

    def _set_time(self, lo: str, hi: str, value: int) -> None:
        self[lo] = value & 0xFFFFFFFF
        self[hi] = (value >> 32) & 0xFF

    @property
    def mkfs_time(self) -> int:
        return self._time("s_mkfs_time", "s_mkfs_time_hi")

    @mkfs_time.setter
    def mkfs_time(self, value: int) -> None:
        self._set_time("s_mkfs_time", "s_mkfs_time_hi", value)

    @property
    def wtime(self) -> int:
        return self._time("s_wtime", "s_wtime_hi")

    @wtime.setter
    def wtime(self, value: int) -> None:
        self._set_time("s_wtime", "s_wtime_hi", value)

    @property
    def mtime(self) -> int:
        return self._time("s_mtime", "s_mtime_hi")

    @mtime.setter
    def mtime(self, value: int) -> None:
        self._set_time("s_mtime", "s_mtime_hi", value)

    @property
    def lastcheck(self) -> int:
        return self._time("s_lastcheck", "s_lastcheck_hi")

    @lastcheck.setter
    def lastcheck(self, value: int) -> None:
        self._set_time("s_lastcheck", "s_lastcheck_hi", value)

    @property
    def uuid_str(self) -> str:
        return str(_uuid.UUID(bytes=self.uuid))

    @property
    def group_count(self) -> int:
        bpg = self["s_blocks_per_group"]
        if bpg == 0:
            raise CorruptError("s_blocks_per_group is 0", where="superblock")
        return -(-(self.blocks_count - self["s_first_data_block"]) // bpg)

    def geometry(self) -> Geometry:
        """The group arithmetic this superblock describes (call validate() first)."""
        return Geometry(
            block_size=self.block_size,
            blocks_count=self.blocks_count,
            first_data_block=self["s_first_data_block"],
            blocks_per_group=self["s_blocks_per_group"],
            inodes_per_group=self["s_inodes_per_group"],
            inode_size=self.inode_size,
            desc_size=self.desc_size,
            reserved_gdt_blocks=self["s_reserved_gdt_blocks"],
            sparse_super=self.has_ro_compat("sparse_super"),
            sparse_super2=self.has_compat("sparse_super2"),
            backup_bgs=(self["s_backup_bgs[0]"], self["s_backup_bgs[1]"]),
            meta_bg=self.has_incompat("meta_bg"),
            first_meta_bg=self["s_first_meta_bg"],
            log_groups_per_flex=self["s_log_groups_per_flex"] if self.has_incompat("flex_bg") else 0,
            flex_bg=self.has_incompat("flex_bg"),
        )

    # ------------------------------------------------------------ validate
    def validate(self, device_bytes: int | None = None) -> None:
        """Check the numbers everything else is computed from; raise CorruptError."""
        where = "superblock"
        if not (0 <= self["s_log_block_size"] <= K.MAX_BLOCK_LOG - 10):
            raise CorruptError(f"bad block size log {self['s_log_block_size']}", where=where)
        bs = self.block_size
        if self["s_rev_level"] > K.DYNAMIC_REV:
            raise UnsupportedFeature(f"filesystem revision {self['s_rev_level']} is too new")
        if self.has_ro_compat("bigalloc"):
            # Checked first: with bigalloc, blocks per group is clusters per group times the
            # cluster ratio and may exceed 8 * block size, which would read as corruption below.
            raise UnsupportedFeature("bigalloc filesystems are not supported", features=("bigalloc",))
        bpg = self["s_blocks_per_group"]
        if bpg < 8 or bpg > 8 * bs or bpg % 8:
            raise CorruptError(f"bad blocks per group {bpg}", where=where)
        ipg = self["s_inodes_per_group"]
        if ipg < 1 or ipg > 8 * bs:
            raise CorruptError(f"bad inodes per group {ipg}", where=where)
        isz = self.inode_size
        if isz < K.GOOD_OLD_INODE_SIZE or isz > bs or isz & (isz - 1):
            raise CorruptError(f"bad inode size {isz}", where=where)
        if self.first_ino < K.ROOT_INO + 1 or self.first_ino > self["s_inodes_count"]:
            raise CorruptError(f"bad first inode {self.first_ino}", where=where)
        if self.blocks_count <= self["s_first_data_block"]:
            raise CorruptError(f"bad block count {self.blocks_count}", where=where)
        expected_first = 1 if bs == 1024 else 0
        if self["s_first_data_block"] != expected_first:
            raise CorruptError(f"bad first data block {self['s_first_data_block']}", where=where)
        groups = self.group_count
        if groups * ipg != self["s_inodes_count"]:
            raise CorruptError(
                f"inode count {self['s_inodes_count']} is not {groups} groups x {ipg}", where=where
            )
        if self.is_64bit:
            ds = self["s_desc_size"]
            if ds < 32 or ds > 1024 or ds & (ds - 1):
                raise CorruptError(f"bad group descriptor size {ds}", where=where)
        if isz > K.GOOD_OLD_INODE_SIZE and self["s_rev_level"] >= K.DYNAMIC_REV:
            if self["s_min_extra_isize"] > isz - K.GOOD_OLD_INODE_SIZE:
                raise CorruptError("bad s_min_extra_isize", where=where)
        if device_bytes is not None:
            needed = (self["s_first_data_block"] + 1) * bs
            if device_bytes < needed:
                raise CorruptError("image is smaller than its first group", where=where)
