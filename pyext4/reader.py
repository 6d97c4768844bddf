"""Reading an ext2/ext3/ext4 image directly: paths, inodes, directories, file data, xattrs."""

from __future__ import annotations

import errno
import io
import os
import stat as _stat
import struct
import warnings
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from . import constants as K
from . import dirent as D
from . import extents as E
from . import xattr as X
from .blockdev import Device, FileDevice
from .blockmap import walk as blockmap_walk
from .csum import extent_block_csum, inode_seed, xattr_block_csum
from .errors import (
    ChecksumError,
    CorruptError,
    Ext4Error,
    FileNotFound,
    InvalidOptions,
    InvalidPath,
    IsADirectory,
    NeedsRecovery,
    NotADirectory,
    PathError,
    ReadOnlyError,
    SymlinkLoop,
    TruncatedError,
)
from .geometry import Geometry
from .groupdesc import DescChecksummer, GroupDesc
from .inode import Inode
from .inode import verify_checksum as inode_checksum_ok
from .journal import JournalSuperblock
from .journal import parse_superblock as parse_journal_superblock
from .record import FrozenRecord, fill
from .superblock import Superblock

MAX_SYMLINKS = 40
_DIR_READ_BYTES = 1 << 20  # directory blocks are read in pieces of at most this
READ_BYTES_LIMIT = 1 << 30  # read_bytes() refuses larger files by default (FileTooLarge)
_EXT_HEADER = struct.Struct("<HHHHI")
_EXTENT = struct.Struct("<IHHI")
_I_BLOCK_WORDS = struct.Struct("<15I")
_ZERO_CHUNK = bytes(1 << 20)


class FileTooLarge(PathError):
    """read_bytes() of a file larger than its ``max_size``: stream it instead (EFBIG)."""

    errno_value = errno.EFBIG


class Ext4Warning(UserWarning):
    """A problem pyext4 noticed and read past (``verify="warn"``, journal not replayed)."""


# ================================================================ values
class Stat(FrozenRecord):
    """What stat() reports for one inode; times in ns since the epoch."""

    __slots__ = (
        "st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns", "st_mtime_ns",
        "st_ctime_ns", "st_birthtime_ns", "st_rdev", "st_blocks", "st_flags", "st_generation",
    )

    st_ino: int
    st_mode: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_birthtime_ns: int
    st_rdev: int
    st_blocks: int
    st_flags: int
    st_generation: int

    def __init__(
        self,
        st_ino: int,
        st_mode: int,
        st_nlink: int,
        st_uid: int,
        st_gid: int,
        st_size: int,
        st_atime_ns: int,
        st_mtime_ns: int,
        st_ctime_ns: int,
        st_birthtime_ns: int,
        st_rdev: int,
        st_blocks: int,
        st_flags: int,
        st_generation: int,
    ) -> None:
        fill(self, "st_ino", st_ino)
        fill(self, "st_mode", st_mode)
        fill(self, "st_nlink", st_nlink)
        fill(self, "st_uid", st_uid)
        fill(self, "st_gid", st_gid)
        fill(self, "st_size", st_size)
        fill(self, "st_atime_ns", st_atime_ns)
        fill(self, "st_mtime_ns", st_mtime_ns)
        fill(self, "st_ctime_ns", st_ctime_ns)
        fill(self, "st_birthtime_ns", st_birthtime_ns)
        fill(self, "st_rdev", st_rdev)
        fill(self, "st_blocks", st_blocks)
        fill(self, "st_flags", st_flags)
        fill(self, "st_generation", st_generation)

    @property
    def rdev_major(self) -> int:
        return os.major(self.st_rdev)

    @property
    def rdev_minor(self) -> int:
        return os.minor(self.st_rdev)

    def is_dir(self) -> bool:
        return _stat.S_ISDIR(self.st_mode)

    def is_file(self) -> bool:
        return _stat.S_ISREG(self.st_mode)

    def is_symlink(self) -> bool:
        return _stat.S_ISLNK(self.st_mode)

    @property
    def mode(self) -> int:
        return self.st_mode

    @property
    def uid(self) -> int:
        return self.st_uid

    @property
    def gid(self) -> int:
        return self.st_gid

    @property
    def size(self) -> int:
        return self.st_size

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["type"] = type_name(self.st_mode)
        out["rdev_major"], out["rdev_minor"] = self.rdev_major, self.rdev_minor
        return out


def type_name(mode: int) -> str:
    return {
        K.S_IFREG: "file", K.S_IFDIR: "directory", K.S_IFLNK: "symlink", K.S_IFCHR: "char device",
        K.S_IFBLK: "block device", K.S_IFIFO: "fifo", K.S_IFSOCK: "socket",
    }.get(mode & K.S_IFMT, "unknown")


class DirEntry(FrozenRecord):
    """One name in a directory, like os.DirEntry: ``name`` and ``path`` are str (surrogateescape)."""

    __slots__ = ("name", "path", "ino", "file_type")

    name: str
    path: str
    ino: int
    file_type: int  # FT_* from the directory entry (0 when the image has no filetype feature)

    def __init__(self, name: str, path: str, ino: int, file_type: int) -> None:
        fill(self, "name", name)
        fill(self, "path", path)
        fill(self, "ino", ino)
        fill(self, "file_type", file_type)

    def is_dir(self) -> bool:
        return self.file_type == K.FT_DIR

    def is_file(self) -> bool:
        return self.file_type == K.FT_REG_FILE

    def is_symlink(self) -> bool:
        return self.file_type == K.FT_SYMLINK

    def inode(self) -> int:
        return self.ino

    def __fspath__(self) -> str:
        return self.path


def encode_name(name: str | bytes) -> bytes:
    return name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")


def decode_name(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def split_path(path: str | bytes | os.PathLike[str]) -> list[bytes]:
    """Components of an in-image path (leading '/' optional, empty parts and '.' dropped)."""
    raw = encode_name(os.fspath(path))
    if b"\0" in raw:
        raise InvalidPath(decode_name(raw), "path contains a NUL byte")
    return [p for p in raw.split(b"/") if p and p != b"."]


def join_path(parent: str, name: str) -> str:
    return parent.rstrip("/") + "/" + name if parent != "/" else "/" + name


_WRITABLE_OPENER: Any = None


def register_writable_opener(opener: Any) -> None:
    """Called by writer.py: how ``Filesystem.open(path, writable=True)`` opens for writing."""
    global _WRITABLE_OPENER
    _WRITABLE_OPENER = opener


def _extent_logical(extent: E.Extent) -> int:
    return extent.logical


def _zero_fill(view: memoryview) -> None:
    done = 0
    while done < len(view):
        n = min(len(view) - done, len(_ZERO_CHUNK))
        view[done : done + n] = _ZERO_CHUNK[:n]
        done += n


class _ClassOrInstance:
    """``Filesystem.open(image)`` opens an image; ``fs.open(path)`` opens a file inside it."""

    def __init__(self, on_class: str, on_instance: str) -> None:
        self.on_class = on_class
        self.on_instance = on_instance

    def __get__(self, obj: Any, cls: type) -> Any:
        if obj is None:
            return getattr(cls, self.on_class)
        return getattr(obj, self.on_instance)


class _LRU(OrderedDict):  # type: ignore[type-arg]
    """A small least-recently-used cache."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_item(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        if key in self:
            self.move_to_end(key)  # a new key goes to the end by itself
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)


# ============================================================ filesystem
class Filesystem:
    """An open ext2/ext3/ext4 image.  Use :meth:`open`; a context manager.

    Read methods take in-image paths (str or bytes, absolute or relative to the
    root); symlinks are followed inside the image only.  Writes need
    ``writable=True`` (see writer.py).
    """

    def __init__(
        self,
        dev: Device,
        *,
        writable: bool = False,
        verify: str = "strict",
        allow_needs_recovery: bool = False,
        superblock: int | None = None,
        path: str | None = None,
        owns_device: bool = True,
    ) -> None:
        if verify not in ("strict", "warn", "off"):
            raise InvalidOptions(f"verify must be 'strict', 'warn' or 'off', not {verify!r}")
        self.dev = dev
        self.path = path
        self.writable = writable
        self.verify = verify
        self._owns_device = owns_device
        self._closed = False
        offset = K.SUPERBLOCK_OFFSET
        if superblock is not None:
            # A backup given as a block number in 1 KiB units (as e2fsck -b takes it) or any
            # block size: try the common block sizes.
            offset = self._find_backup(superblock)
        raw = dev.pread(offset, K.SUPERBLOCK_SIZE) if dev.size >= offset + K.SUPERBLOCK_SIZE else b""
        if len(raw) < K.SUPERBLOCK_SIZE:
            raise CorruptError("image too small to hold a superblock", where="superblock")
        sb = Superblock.parse(raw, verify=False)
        self.sb = sb
        if sb.metadata_csum and verify != "off":
            from .csum import superblock_csum

            actual = superblock_csum(raw)
            if actual != sb["s_checksum"]:
                self._checksum_problem(
                    ChecksumError("superblock", expected=sb["s_checksum"], actual=actual, where="superblock")
                )
        sb.validate(dev.size)
        sb.check_readable()
        if sb.has_incompat("needs_recovery"):
            if not allow_needs_recovery:
                raise NeedsRecovery(
                    "the journal holds changes that were never replayed (needs_recovery is set); "
                    "mount it once or run e2fsck to replay it, or read it as it stands with "
                    "allow_needs_recovery=True"
                )
            warnings.warn(
                "reading an image whose journal was not replayed: recent changes may be missing",
                Ext4Warning,
                stacklevel=3,
            )
        if writable:
            sb.check_writable()
        self.geo: Geometry = sb.geometry()
        self.block_size = self.geo.block_size
        needed = self.geo.blocks_count * self.block_size
        if dev.size < needed and dev.size < (self.geo.blocks_count - 1) * self.block_size + 1:
            # A short image is readable up to where it ends; reads past it raise TruncatedError.
            import logging  # here only: importing it costs every CLI start ~2 ms

            logging.getLogger("pyext4").debug("image is %d bytes, filesystem claims %d", dev.size, needed)
        self.seed = sb.csum_seed if sb.metadata_csum else 0
        self.metadata_csum = sb.metadata_csum
        self.filetype = sb.has_incompat("filetype")
        self.large_dir = sb.has_incompat("large_dir")
        self.huge_file = sb.has_ro_compat("huge_file")
        self.extents_feature = sb.has_incompat("extent")
        self.inline_data = sb.has_incompat("inline_data")
        self.dir_index = sb.has_compat("dir_index")
        self._desc_csum = DescChecksummer(
            metadata_csum=sb.metadata_csum, gdt_csum=sb.gdt_csum, seed=self.seed, uuid=sb.uuid,
            desc_size=self.geo.desc_size,
        )
        self._desc_cache: dict[int, GroupDesc] = {}
        self._desc_block_cache = _LRU(64)
        self._itable_cache = _LRU(256)
        self._inode_cache = _LRU(4096)
        self._map_cache = _LRU(256)
        self._dir_cache = _LRU(512)
        self._hash_unsigned = bool(sb["s_flags"] & K.FLAGS_UNSIGNED_HASH)
        self._hash_seed = sb.hash_seed
        self._desc_blocks_total = self.geo.desc_blocks
        # No data block may be block 0 or overlap the superblock (bytes 1024..2047).
        self._min_data_block = max(self.geo.first_data_block, -(-2048 // self.block_size))

    # ----------------------------------------------------------- opening
    @classmethod
    def open_image(
        cls,
        path: str | os.PathLike[str],
        *,
        writable: bool = False,
        verify: str = "strict",
        allow_needs_recovery: bool = False,
        superblock: int | None = None,
        force: bool = False,
        now: float | int | None = None,
    ) -> Filesystem:
        """Open an image file or block device.

        ``verify``: "strict" raises ChecksumError on a bad checksum, "warn" warns
        (Ext4Warning) and reads on, "off" skips checksum work.  A journal that
        needs recovery is refused (NeedsRecovery) unless ``allow_needs_recovery``.
        ``writable=True`` opens for the writer (locks the image; refuses a
        mounted one); ``now`` (seconds) fixes the time written into changed
        inodes for reproducible results.  Raises Ext4Error subclasses and OSError.
        """
        if writable:
            # The writer sits above the reader; it registers itself when imported
            # (pyext4/__init__ imports it), so the reader never imports it.
            if _WRITABLE_OPENER is None:
                import importlib

                importlib.import_module("pyext4.writer")
            assert _WRITABLE_OPENER is not None
            return _WRITABLE_OPENER(
                path, verify=verify, superblock=superblock, force=force, now=now
            )
        dev = FileDevice.open(path, writable=False)
        try:
            return cls(
                dev, writable=False, verify=verify, allow_needs_recovery=allow_needs_recovery,
                superblock=superblock, path=os.fspath(path),
            )
        except BaseException:
            dev.close()
            raise

    open = _ClassOrInstance("open_image", "open_file")

    def _find_backup(self, block: int) -> int:
        for bs in (1024, 2048, 4096, 8192, 16384, 32768, 65536):
            offset = block * bs
            if offset + K.SUPERBLOCK_SIZE > self.dev.size:
                continue
            raw = self.dev.pread(offset, K.SUPERBLOCK_SIZE)
            if raw[56:58] == b"\x53\xef" and (1024 << int.from_bytes(raw[24:28], "little")) == bs:
                return offset
        raise CorruptError(f"no superblock at block {block}", where="superblock")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._owns_device:
                self.dev.close()

    def __enter__(self) -> Filesystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------- verify policy
    def _checksum_problem(self, error: ChecksumError) -> None:
        if self.verify == "strict":
            raise error
        if self.verify == "warn":
            warnings.warn(str(error), Ext4Warning, stacklevel=4)

    @property
    def _checking(self) -> bool:
        return self.verify != "off"

    # ------------------------------------------------------------- blocks
    def read_block(self, block: int) -> bytes:
        """One block; CorruptError for a number outside the filesystem."""
        if block < 0 or block >= self.geo.blocks_count:
            raise CorruptError(f"block {block} is outside the filesystem ({self.geo.blocks_count} blocks)")
        return self.dev.pread(block * self.block_size, self.block_size)

    def read_blocks(self, block: int, count: int) -> bytes:
        if count <= 0:
            return b""
        if block < 0 or block + count > self.geo.blocks_count:
            raise CorruptError(f"blocks {block}+{count} are outside the filesystem")
        return self.dev.pread(block * self.block_size, count * self.block_size)

    def _check_data_block(self, block: int, count: int, where: str) -> None:
        if block < self.geo.first_data_block or block + count > self.geo.blocks_count:
            raise CorruptError(f"blocks {block}..{block + count - 1} are outside the filesystem", where=where)

    # ---------------------------------------------------- group descriptors
    def group_desc(self, group: int) -> GroupDesc:
        """The descriptor of ``group``, checked (checksum per the verify policy, table locations)."""
        desc = self._desc_cache.get(group)
        if desc is not None:
            return desc
        geo = self.geo
        if group < 0 or group >= geo.group_count:
            raise CorruptError(f"group {group} does not exist")
        index, slot = divmod(group, geo.desc_per_block)
        raw = self._desc_block_cache.get_item(index)
        if raw is None:
            block = geo.descriptor_block(index)
            raw = self.read_block(block)
            self._desc_block_cache.put(index, raw)
        offset = slot * geo.desc_size
        desc = GroupDesc.parse(raw, offset, geo.desc_size)
        if self._desc_csum.enabled and self._checking:
            actual = self._desc_csum.compute(group, raw[offset : offset + geo.desc_size])
            if actual != desc.checksum:
                self._checksum_problem(
                    ChecksumError("group descriptor", expected=desc.checksum, actual=actual, where=f"group {group}")
                )
        where = f"group {group} descriptor"
        it_blocks = geo.inode_table_blocks
        for name, block, count in (
            ("block bitmap", desc.block_bitmap, 1),
            ("inode bitmap", desc.inode_bitmap, 1),
            ("inode table", desc.inode_table, it_blocks),
        ):
            if block < geo.first_data_block or block == 0 or block + count > geo.blocks_count:
                raise CorruptError(f"{name} at block {block} is outside the filesystem", where=where)
        if len(self._desc_cache) > 65536:
            self._desc_cache.clear()
        self._desc_cache[group] = desc
        return desc

    # -------------------------------------------------------------- inodes
    def inode_raw(self, ino: int) -> bytes:
        """The on-disk bytes of inode ``ino`` (no checks beyond the location)."""
        geo = self.geo
        if ino < 1 or ino > self.sb["s_inodes_count"]:
            raise CorruptError(f"inode number {ino} is out of range (1..{self.sb['s_inodes_count']})")
        group, index = divmod(ino - 1, geo.inodes_per_group)
        desc = self.group_desc(group)
        byte_offset = index * geo.inode_size
        block = desc.inode_table + byte_offset // self.block_size
        within = byte_offset % self.block_size
        raw = self._itable_cache.get_item(block)
        if raw is None:
            raw = self.read_block(block)
            self._itable_cache.put(block, raw)
        return raw[within : within + geo.inode_size]

    def inode(self, ino: int) -> Inode:
        """Inode ``ino``, parsed; its checksum is checked per the verify policy."""
        cached = self._inode_cache.get_item(ino)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        raw = self.inode_raw(ino)
        isz = self.geo.inode_size
        if self.metadata_csum and self._checking:
            ok, stored, actual = inode_checksum_ok(raw, self.seed, ino, isz)
            if not ok and any(raw):
                self._checksum_problem(ChecksumError("inode", expected=stored, actual=actual, where=f"inode {ino}"))
        inode = Inode.parse(raw, isz)
        if isz > K.GOOD_OLD_INODE_SIZE:
            extra = int.from_bytes(raw[128:130], "little")
            if extra and (extra & 3 or 128 + extra > isz):
                raise CorruptError(f"bad i_extra_isize {extra}", where=f"inode {ino}")
        self._inode_cache.put(ino, inode)
        return inode

    def _iseed(self, ino: int, inode: Inode) -> int:
        return inode_seed(self.seed, ino, inode.generation)

    # ------------------------------------------------------------ mapping
    def extents_of(self, ino: int, inode: Inode | None = None) -> list[E.Extent]:
        """The file's block mapping as extents (block-mapped files are converted), in logical order."""
        cached = self._map_cache.get_item(ino)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        if inode is None:
            inode = self.inode(ino)
        where = f"inode {ino}"
        geo = self.geo
        if inode.has_inline_data():
            result: list[E.Extent] = []
        elif inode.has_extents():
            quick = self._leaf_root_extents(inode.block)  # no extent blocks: nothing to verify
            if quick is not None:
                result = quick
            else:
                result = list(
                    E.walk(
                        inode.block, self.read_block, block_size=self.block_size,
                        blocks_count=geo.blocks_count, first_data_block=geo.first_data_block, ino=ino,
                        verify=self._extent_verifier(ino, inode),
                    )
                )
        else:
            if inode.is_symlink() and self._is_fast_symlink(inode):
                result = []
            elif inode.is_device() or inode.file_type in (K.S_IFIFO, K.S_IFSOCK):
                result = []
            else:
                max_logical = -(-inode.size // self.block_size) if inode.size else 0
                quick = self._direct_map_extents(inode.block, max_logical)
                if quick is not None:
                    result = quick
                else:
                    result = [
                        E.Extent(lg, pb, ln)
                        for lg, pb, ln in blockmap_walk(
                            inode.block, self.read_block, block_size=self.block_size,
                            blocks_count=geo.blocks_count, first_data_block=geo.first_data_block,
                            where=where, max_logical=max_logical,
                        )
                    ]
        self._map_cache.put(ino, result)
        return result

    def _extent_verifier(self, ino: int, inode: Inode) -> Callable[[int, bytes, int], None] | None:
        """The check of extent blocks' checksums for E.walk/E.scan (None when nothing is checked)."""
        if not (self.metadata_csum and self._checking):
            return None
        iseed = self._iseed(ino, inode)

        def verify(block: int, raw: bytes, eh_max: int) -> None:
            tail = 12 + 12 * eh_max
            if tail + 4 > len(raw):
                return
            stored = int.from_bytes(raw[tail : tail + 4], "little")
            actual = extent_block_csum(iseed, raw, eh_max)
            if stored != actual:
                self._checksum_problem(
                    ChecksumError("extent block", expected=stored, actual=actual, where=f"inode {ino} block {block}")
                )

        return verify

    # Fast paths for the common small cases (a leaf in i_block; direct block pointers only).  They
    # accept only what is plainly valid and return None otherwise, so that extents.py / blockmap.py
    # do the checking and raise the precise error.
    def _leaf_root_extents(self, block: bytes) -> list[E.Extent] | None:
        magic, entries, eh_max, depth, _gen = _EXT_HEADER.unpack_from(block, 0)
        if magic != K.EXT4_EXT_MAGIC or depth != 0 or not 0 < eh_max <= 4 or entries > eh_max:
            return None
        out: list[E.Extent] = []
        floor = 0
        lo_ok = self._min_data_block
        blocks_count = self.geo.blocks_count
        for k in range(entries):
            ee_block, ee_len, start_hi, start_lo = _EXTENT.unpack_from(block, 12 + 12 * k)
            unwritten = ee_len > K.EXT_INIT_MAX_LEN
            length = ee_len - K.EXT_INIT_MAX_LEN if unwritten else ee_len
            physical = start_hi << 32 | start_lo
            if (
                length == 0 or ee_block < floor or ee_block + length > E.MAX_LOGICAL
                or physical < lo_ok or physical + length > blocks_count
            ):
                return None
            out.append(E.Extent(ee_block, physical, length, unwritten))
            floor = ee_block + length
        return out

    def _direct_map_extents(self, block: bytes, max_logical: int) -> list[E.Extent] | None:
        pointers = _I_BLOCK_WORDS.unpack_from(block, 0)
        if pointers[12] or pointers[13] or pointers[14]:
            return None
        out: list[E.Extent] = []
        lo_ok = self._min_data_block
        blocks_count = self.geo.blocks_count
        run_logical = run_physical = run_length = 0
        for logical in range(min(12, max_logical)):
            p = pointers[logical]
            if not p:
                continue
            if p < lo_ok or p >= blocks_count:
                return None
            if run_length and run_logical + run_length == logical and run_physical + run_length == p:
                run_length += 1
                continue
            if run_length:
                out.append(E.Extent(run_logical, run_physical, run_length))
            run_logical, run_physical, run_length = logical, p, 1
        if run_length:
            out.append(E.Extent(run_logical, run_physical, run_length))
        return out

    def _is_fast_symlink(self, inode: Inode) -> bool:
        if inode.has_inline_data():
            return False
        ea_blocks = self.block_size // 512 if inode.file_acl else 0
        if inode.flags & K.EA_INODE_FL:
            return 0 < inode.size < 60
        return inode.blocks - ea_blocks == 0 and inode.size < 60

    def data_segments(self, ino: int, inode: Inode | None = None) -> Iterator[tuple[int, int, int | None]]:
        """(offset, length, physical block or None for unwritten) of the file's stored data, in order.

        Holes are skipped; everything is clipped to the file size.
        """
        if inode is None:
            inode = self.inode(ino)
        self.check_size(ino, inode)
        size = inode.size
        bs = self.block_size
        for ext in self.extents_of(ino, inode):
            start = ext.logical * bs
            if start >= size:
                break
            length = min(ext.length * bs, size - start)
            yield start, length, None if ext.unwritten else ext.physical

    def max_file_size(self, inode: Inode) -> int:
        """The largest i_size the on-disk format allows for this inode's kind of mapping.

        Extent-mapped: 2^32 logical blocks; block-mapped: what the direct and indirect pointers
        address (also capped at 2^32 blocks); inline data: one block (larger data would have
        been moved out of the inode).
        """
        bs = self.block_size
        if inode.has_inline_data():
            return bs
        if inode.has_extents():
            return E.MAX_LOGICAL * bs
        per = bs // 4
        return min(12 + per + per * per + per * per * per, 1 << 32) * bs

    def check_size(self, ino: int, inode: Inode) -> None:
        """CorruptError when i_size is beyond what any file of this filesystem can hold.

        Reading such a file would mean allocating or streaming petabytes of holes; the
        kernel likewise refuses (i_size >= 2^63) or stops at s_maxbytes.
        """
        if inode.size <= self.block_size:
            return  # one block: within every kind of mapping's limit
        limit = self.max_file_size(inode)
        if inode.size > limit:
            raise CorruptError(
                f"i_size {inode.size} is larger than any file of this filesystem can be ({limit} bytes)",
                where=f"inode {ino}",
            )

    def inline_bytes(self, ino: int, inode: Inode) -> bytes:
        """The data of an inline_data inode (i_block plus system.data)."""
        extra = b""
        entries = self._ibody_xattrs(ino, inode)
        value = X.inline_data_value(entries, where=f"inode {ino}")
        if value:
            extra = value
        return bytes(inode.block) + extra

    def read_range(self, ino: int, inode: Inode, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of the file (clipped to its size); holes read as zeros."""
        size = inode.size
        if offset >= size or length <= 0:
            return b""
        self.check_size(ino, inode)
        length = min(length, size - offset)
        if inode.has_inline_data():
            data = self.inline_bytes(ino, inode)
            return data[offset : offset + length].ljust(length, b"\0")
        if inode.is_symlink() and self._is_fast_symlink(inode):
            return bytes(inode.block[offset : offset + length])
        # The common case, a range inside one written extent of an image file: one pread, no copies.
        extents = self.extents_of(ino, inode)
        if len(extents) == 1 and isinstance(self.dev, FileDevice) and self.dev.fd >= 0:
            ext = extents[0]
            first = ext.logical * self.block_size
            if not ext.unwritten and first <= offset and offset + length <= first + ext.length * self.block_size:
                data = os.pread(self.dev.fd, length, ext.physical * self.block_size + offset - first)
                if len(data) == length:
                    return data
                # short: the image ends early; read_into says so precisely
        buf = bytearray(length)
        n = self.read_into(ino, inode, offset, memoryview(buf))
        del buf[n:]
        return bytes(buf)

    def read_into(self, ino: int, inode: Inode, offset: int, view: memoryview) -> int:
        """Fill ``view`` with the file's bytes from ``offset`` (holes and unwritten extents as zeros).

        Returns how many bytes were stored (less than ``len(view)`` only at the end of the file).
        Data goes straight from the image into ``view`` (no intermediate copies), so streaming
        through open() or ``pyext4 cat`` runs in constant memory at memory speed.  Raises
        CorruptError, TruncatedError.
        """
        size = inode.size
        if offset >= size or len(view) == 0:
            return 0
        length = min(len(view), size - offset)
        if inode.has_inline_data() or (inode.is_symlink() and self._is_fast_symlink(inode)):
            data = self.read_range(ino, inode, offset, length)
            view[: len(data)] = data
            return len(data)
        self.check_size(ino, inode)
        bs = self.block_size
        extents = self.extents_of(ino, inode)
        i = max(0, bisect_right(extents, offset // bs, key=_extent_logical) - 1)
        pos = offset
        end = offset + length
        fd = self.dev.fd if isinstance(self.dev, FileDevice) and self.dev.fd >= 0 else -1
        dev_size = self.dev.size
        while pos < end:
            lblock = pos // bs
            while i < len(extents) and extents[i].logical + extents[i].length <= lblock:
                i += 1
            if i >= len(extents) or extents[i].logical > lblock or extents[i].unwritten:
                if i < len(extents) and extents[i].logical <= lblock:  # unwritten: zeros to its end
                    stop = min(end, (extents[i].logical + extents[i].length) * bs)
                else:  # a hole up to the next extent or the end
                    stop = min(end, extents[i].logical * bs) if i < len(extents) else end
                _zero_fill(view[pos - offset : stop - offset])
                pos = stop
                continue
            ext = extents[i]
            stop = min(end, (ext.logical + ext.length) * bs)
            phys_off = (ext.physical + lblock - ext.logical) * bs + pos % bs
            want = stop - pos
            if phys_off + want > dev_size:
                raise TruncatedError(
                    f"data at byte {phys_off} (+{want}) lies past the end of the image ({dev_size} bytes)",
                    where=f"inode {ino}",
                )
            target = view[pos - offset : stop - offset]
            if fd >= 0:
                got = os.preadv(fd, [target], phys_off)
                while got < want:
                    more = os.preadv(fd, [target[got:]], phys_off + got)
                    if more <= 0:
                        raise TruncatedError(f"short read at byte {phys_off + got}", where=f"inode {ino}")
                    got += more
            else:
                target[:] = self.dev.pread(phys_off, want)
            pos = stop
        return length

    # ---------------------------------------------------------- directories
    def _dir_block_iter(self, ino: int, inode: Inode) -> Iterator[tuple[int, bytes]]:
        """(logical block, raw) of every block of a directory, in order."""
        bs = self.block_size
        size = inode.dir_size(self.large_dir)
        nblocks = -(-size // bs)
        for ext in self.extents_of(ino, inode):
            if ext.logical >= nblocks:
                break
            count = min(ext.length, nblocks - ext.logical)
            if ext.unwritten:
                continue
            # In pieces of at most 1 MiB: an extent's length is an on-disk number (with 64 KiB blocks
            # one extent of a crafted directory is 2 GiB), and a corrupt block usually ends the walk early.
            step = max(1, _DIR_READ_BYTES // bs)
            for first in range(0, count, step):
                n = min(step, count - first)
                raw = self.read_blocks(ext.physical + first, n)
                for k in range(n):
                    yield ext.logical + first + k, raw[k * bs : (k + 1) * bs]

    def dir_entries(self, ino: int, inode: Inode | None = None) -> list[tuple[bytes, int, int]]:
        """(name, ino, file_type) for every live entry of directory ``ino`` except '.' and '..'."""
        cached = self._dir_cache.get_item(ino)
        if cached is not None:
            return cached[0]  # type: ignore[no-any-return]
        if inode is None:
            inode = self.inode(ino)
        if not inode.is_dir():
            raise NotADirectory(f"inode {ino}")
        entries: list[tuple[bytes, int, int]] = []
        where = f"directory inode {ino}"
        if inode.has_inline_data():
            data = self.inline_bytes(ino, inode)
            for e in D.parse_inline(data, filetype=self.filetype, where=where):
                if e.name not in (b".", b".."):
                    entries.append((e.name, e.ino, e.file_type))
        else:
            iseed = self._iseed(ino, inode) if self.metadata_csum else 0
            indexed = bool(inode.flags & K.INDEX_FL)
            for logical, raw in self._dir_block_iter(ino, inode):
                for e in self._parse_dir_block(raw, logical, iseed, indexed, where):
                    if e.name not in (b".", b".."):
                        entries.append((e.name, e.ino, e.file_type))
        self._dir_cache.put(ino, (entries, None))
        return entries

    def _parse_dir_block(self, raw: bytes, logical: int, iseed: int, indexed: bool, where: str) -> list[D.DirEntry]:
        bs = self.block_size
        where_b = f"{where} block {logical}"
        if indexed and D.is_dx_block(raw, bs, logical == 0):
            if self.metadata_csum and self._checking:
                self._check_dx_csum(raw, iseed, where_b)
            if logical == 0:
                return D.dx_root_dot_entries(raw, filetype=self.filetype, where=where_b)
            return []
        has_tail = self.metadata_csum and D.has_tail(raw, bs)
        if has_tail and self._checking:
            if not D.leaf_csum_ok(raw, iseed):
                stored = int.from_bytes(raw[bs - 4 : bs], "little")
                from .csum import dir_block_csum

                self._checksum_problem(
                    ChecksumError("directory block", expected=stored, actual=dir_block_csum(iseed, raw), where=where_b)
                )
        return D.parse_block(raw, block_size=bs, filetype=self.filetype, has_tail=has_tail, where=where_b)

    def _check_dx_csum(self, raw: bytes, iseed: int, where: str) -> None:
        """An htree root's or node's dx_tail checksum, per the verify policy."""
        try:
            D.verify_dx_csum(raw, iseed, block_size=self.block_size, where=where)
        except ChecksumError as exc:
            self._checksum_problem(exc)
        except CorruptError as exc:  # no room for the tail: the kernel would not trust it either
            if self.verify == "strict":
                raise
            warnings.warn(str(exc), Ext4Warning, stacklevel=4)

    def _name_map(self, ino: int, inode: Inode) -> dict[bytes, tuple[int, int]]:
        cached = self._dir_cache.get_item(ino)
        if cached is not None and cached[1] is not None:
            return cached[1]  # type: ignore[no-any-return]
        entries = self.dir_entries(ino, inode)
        mapping = {name: (child, ft) for name, child, ft in entries}
        self._dir_cache.put(ino, (entries, mapping))
        return mapping

    def lookup(self, dir_ino: int, name: bytes) -> tuple[int, int] | None:
        """(ino, file_type) of ``name`` in directory ``dir_ino``, or None."""
        inode = self.inode(dir_ino)
        if not inode.is_dir():
            raise NotADirectory(f"inode {dir_ino}")
        if name == b".":
            return dir_ino, K.FT_DIR
        if name == b"..":
            return self._parent_of(dir_ino, inode), K.FT_DIR
        cached = self._dir_cache.get_item(dir_ino)
        if cached is not None:
            mapping = cached[1] if cached[1] is not None else self._name_map(dir_ino, inode)
            return mapping.get(name)
        if (
            inode.flags & K.INDEX_FL
            and self.dir_index
            and not inode.has_inline_data()
            and inode.dir_size(self.large_dir) > 4 * self.block_size
        ):
            found = self._htree_lookup(dir_ino, inode, name)
            if found is not _NOT_INDEXED:
                return found  # type: ignore[return-value]
        return self._name_map(dir_ino, inode).get(name)

    def _htree_lookup(self, dir_ino: int, inode: Inode, name: bytes) -> object:
        where = f"directory inode {dir_ino}"
        bs = self.block_size
        extents = self.extents_of(dir_ino, inode)
        nblocks = -(-inode.dir_size(self.large_dir) // bs)
        iseed = self._iseed(dir_ino, inode) if self.metadata_csum else 0
        check_csum = self.metadata_csum and self._checking

        def read_logical(logical: int) -> bytes:
            if logical < 0 or logical >= nblocks:
                raise CorruptError(f"htree points at block {logical} beyond the directory", where=where)
            for ext in extents:
                if ext.logical <= logical < ext.logical + ext.length:
                    if ext.unwritten:
                        return bytes(bs)
                    raw = self.read_block(ext.physical + logical - ext.logical)
                    if check_csum and D.is_dx_block(raw, bs, logical == 0):
                        self._check_dx_csum(raw, iseed, f"{where} block {logical}")
                    return raw
            raise CorruptError(f"htree points at unmapped block {logical}", where=where)

        try:
            root = D.parse_dx_root(read_logical(0), block_size=bs, csum=self.metadata_csum,
                                   large_dir=self.large_dir, where=where)
        except CorruptError:
            if self.verify == "strict":
                raise
            return _NOT_INDEXED
        version = root.hash_version
        if version in (K.HASH_LEGACY, K.HASH_HALF_MD4, K.HASH_TEA) and self._hash_unsigned:
            version += 3
        if version not in (0, 1, 2, 3, 4, 5):
            return _NOT_INDEXED
        major, _minor = D.name_hash(name, version, self._hash_seed)
        for logical in D.dx_candidate_leaves(read_logical, root, major, block_size=bs,
                                             csum=self.metadata_csum, where=where):
            raw = read_logical(logical)
            for e in self._parse_dir_block(raw, logical, iseed, True, where):
                if e.name == name:
                    return e.ino, e.file_type
        return None

    def _parent_of(self, dir_ino: int, inode: Inode) -> int:
        if dir_ino == K.ROOT_INO:
            return K.ROOT_INO
        if inode.has_inline_data():
            return int.from_bytes(inode.block[:4], "little")
        for _logical, raw in self._dir_block_iter(dir_ino, inode):
            entries = D.parse_block(raw, block_size=self.block_size, filetype=self.filetype,
                                    has_tail=False, where=f"directory inode {dir_ino}", include_empty=False,
                                    lenient_tail=True)
            for e in entries[:2]:
                if e.name == b"..":
                    return e.ino
            break
        raise CorruptError("directory has no '..' entry", where=f"directory inode {dir_ino}")

    # --------------------------------------------------------------- paths
    def resolve(self, path: str | bytes | os.PathLike[str], *, follow: bool = True) -> int:
        """The inode number ``path`` names; symlinks are followed inside the image (ELOOP after 40).

        ``follow=False`` leaves a final symlink unresolved (like lstat).  Raises
        FileNotFound, NotADirectory, SymlinkLoop.
        """
        shown = decode_name(encode_name(os.fspath(path)))
        parts = split_path(path)
        return self._walk_parts(K.ROOT_INO, parts, follow, shown, [0])

    def realpath(self, path: str | bytes | os.PathLike[str]) -> str:
        """The absolute path of what ``path`` names with every symlink and '..' resolved inside the
        image (like os.path.realpath(strict=True)).  Raises FileNotFound, NotADirectory, SymlinkLoop."""
        shown = decode_name(encode_name(os.fspath(path)))
        names: list[bytes] = []
        self._walk_parts(K.ROOT_INO, split_path(path), True, shown, [0], names)
        return decode_name(b"/" + b"/".join(names))

    def _walk_parts(self, start: int, parts: list[bytes], follow: bool, shown: str, budget: list[int],
                    names: list[bytes] | None = None) -> int:
        """Walk ``parts`` from directory ``start``; ``names`` (from the root only) collects the
        resolved path's components."""
        current = start
        stack: list[int] = []  # ancestors, for '..' through symlinked paths
        i = 0
        while i < len(parts):
            name = parts[i]
            inode = self.inode(current)
            if not inode.is_dir():
                raise NotADirectory(shown)
            if name == b"..":
                current = stack.pop() if stack else self._parent_of(current, inode)
                if names:
                    names.pop()
                i += 1
                continue
            if len(name) > K.NAME_LEN:
                raise FileNotFound(shown, "name too long")
            found = self.lookup(current, name)
            if found is None:
                raise FileNotFound(shown)
            child = found[0]
            last = i == len(parts) - 1
            child_inode = self.inode(child)
            if child_inode.is_symlink() and (follow or not last):
                budget[0] += 1
                if budget[0] > MAX_SYMLINKS:
                    raise SymlinkLoop(shown)
                target = self.readlink_ino(child, child_inode)
                if not target:
                    raise FileNotFound(shown, "empty symlink")
                target_parts = [p for p in target.split(b"/") if p and p != b"."]
                base = K.ROOT_INO if target.startswith(b"/") else current
                if target.startswith(b"/"):
                    stack = []
                    if names is not None:
                        names.clear()
                parts = target_parts + parts[i + 1 :]
                current = base
                i = 0
                continue
            stack.append(current)
            current = child
            if names is not None:
                names.append(name)
            i += 1
        return current

    # ----------------------------------------------------------- public API
    def stat(self, path: str | bytes | os.PathLike[str], *, follow_symlinks: bool = True) -> Stat:
        """stat() of ``path`` (lstat with follow_symlinks=False)."""
        ino = self.resolve(path, follow=follow_symlinks)
        return self.stat_ino(ino)

    def lstat(self, path: str | bytes | os.PathLike[str]) -> Stat:
        return self.stat(path, follow_symlinks=False)

    def stat_ino(self, ino: int, inode: Inode | None = None) -> Stat:
        if inode is None:
            inode = self.inode(ino)
        rdev = 0
        if inode.is_device():
            major, minor = inode.rdev()
            rdev = os.makedev(major, minor)
        size = inode.dir_size(self.large_dir) if inode.is_dir() else inode.size
        return Stat(
            st_ino=ino, st_mode=inode.mode, st_nlink=inode.links_count, st_uid=inode.uid, st_gid=inode.gid,
            st_size=size, st_atime_ns=inode.atime, st_mtime_ns=inode.mtime, st_ctime_ns=inode.ctime,
            st_birthtime_ns=inode.crtime, st_rdev=rdev,
            st_blocks=inode.blocks_in_512(self.huge_file, self.block_size), st_flags=inode.flags,
            st_generation=inode.generation,
        )

    def exists(self, path: str | bytes | os.PathLike[str]) -> bool:
        try:
            self.resolve(path, follow=False)
            return True
        except (FileNotFound, NotADirectory):
            return False

    def is_dir(self, path: str | bytes | os.PathLike[str]) -> bool:
        try:
            return self.stat(path).is_dir()
        except (FileNotFound, NotADirectory, SymlinkLoop):
            return False

    def scandir(self, path: str | bytes | os.PathLike[str] = "/") -> list[DirEntry]:
        """The entries of a directory (not '.' or '..'), in on-disk order."""
        shown = decode_name(encode_name(os.fspath(path))) or "/"
        ino = self.resolve(path)
        inode = self.inode(ino)
        if not inode.is_dir():
            raise NotADirectory(shown)
        base = "/" + "/".join(decode_name(p) for p in split_path(path))
        return [DirEntry(decode_name(n), join_path(base, decode_name(n)), child, ft)
                for n, child, ft in self.dir_entries(ino, inode)]

    def iterdir(self, path: str | bytes | os.PathLike[str] = "/") -> Iterator[DirEntry]:
        return iter(self.scandir(path))

    def listdir(self, path: str | bytes | os.PathLike[str] = "/") -> list[str]:
        return [e.name for e in self.scandir(path)]

    def walk(
        self, top: str | bytes | os.PathLike[str] = "/", *, onerror: Callable[[Ext4Error], None] | None = None,
    ) -> Iterator[tuple[str, list[str], list[str]]]:
        """Like os.walk (top-down): (dirpath, dirnames, filenames); symlinks to dirs are not followed.

        A directory reached twice (a hard-linked directory in a corrupt image) is
        reported once, so the walk always ends.  A directory that cannot be read
        raises its Ext4Error, or, with ``onerror``, is passed to it and skipped.
        """
        top_s = "/" + "/".join(decode_name(p) for p in split_path(top))
        start = self.resolve(top)
        seen = {start}
        pending: list[tuple[str, int]] = [(top_s, start)]
        while pending:
            dirpath, ino = pending.pop()
            dirs: list[str] = []
            files: list[str] = []
            subdirs: list[tuple[str, int]] = []
            try:
                for name, child, ft in self.dir_entries(ino):
                    sname = decode_name(name)
                    if ft == K.FT_DIR or (ft == K.FT_UNKNOWN and self._is_dir_ino(child, onerror)):
                        dirs.append(sname)
                        subdirs.append((sname, child))
                    else:
                        files.append(sname)
            except Ext4Error as exc:
                if onerror is None:
                    raise
                onerror(exc)
                continue
            yield dirpath, dirs, files
            keep = set(dirs)
            for sname, child in reversed(subdirs):
                if sname in keep and child not in seen:
                    seen.add(child)
                    pending.append((join_path(dirpath, sname), child))

    def walk_entries(
        self, top: str | bytes | os.PathLike[str] = "/", *, onerror: Callable[[Ext4Error], None] | None = None,
    ) -> Iterator[DirEntry]:
        """Every entry under ``top`` (pre-order), as DirEntry objects (inode numbers included).

        Ends on any image (each directory is entered once).  A directory that cannot
        be read raises its Ext4Error, or, with ``onerror``, is passed to it and skipped.
        """
        top_s = "/" + "/".join(decode_name(p) for p in split_path(top))
        start = self.resolve(top)
        seen = {start}
        pending: list[tuple[str, int]] = [(top_s, start)]
        while pending:
            dirpath, ino = pending.pop()
            subdirs = []
            try:
                listing = self.dir_entries(ino)
            except Ext4Error as exc:
                if onerror is None:
                    raise
                onerror(exc)
                continue
            for name, child, ft in listing:
                sname = decode_name(name)
                entry = DirEntry(sname, join_path(dirpath, sname), child, ft)
                yield entry
                if ft == K.FT_DIR or (ft == K.FT_UNKNOWN and self._is_dir_ino(child, onerror)):
                    if child not in seen:
                        seen.add(child)
                        subdirs.append((entry.path, child))
            pending.extend(reversed(subdirs))

    def _is_dir_ino(self, ino: int, onerror: Callable[[Ext4Error], None] | None) -> bool:
        try:
            return self.inode(ino).is_dir()
        except Ext4Error as exc:
            if onerror is None:
                raise
            onerror(exc)
            return False

    def _file_ino(self, path: str | bytes | os.PathLike[str] | DirEntry | int) -> tuple[int, Inode, str]:
        if isinstance(path, int):
            return path, self.inode(path), f"inode {path}"
        if isinstance(path, DirEntry):
            ino = path.ino
            shown = path.path
        else:
            shown = decode_name(encode_name(os.fspath(path)))
            ino = self.resolve(path)
        inode = self.inode(ino)
        if inode.is_dir():
            raise IsADirectory(shown)
        return ino, inode, shown

    def read_bytes(self, path: str | bytes | os.PathLike[str] | DirEntry | int, *,
                   max_size: int | None = READ_BYTES_LIMIT) -> bytes:
        """The whole content of a file (symlinks followed), in memory.

        A file larger than ``max_size`` (default 1 GiB; None lifts it) raises FileTooLarge
        rather than allocate its size, holes included: stream it with open() or data_segments().
        Raises CorruptError for an i_size no file of this filesystem can have.
        """
        ino, inode, shown = self._file_ino(path)
        self.check_size(ino, inode)
        if max_size is not None and inode.size > max_size:
            raise FileTooLarge(shown, f"{inode.size} bytes is more than read_bytes reads into memory "
                                      f"({max_size}); stream it with open()")
        return self.read_range(ino, inode, 0, inode.size)

    def read_text(self, path: str | bytes | os.PathLike[str], encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes(path).decode(encoding, errors)

    def open_file(self, path: str | bytes | os.PathLike[str] | DirEntry | int, mode: str = "rb") -> io.BufferedReader:
        """A seekable binary file object over the file's data (streams; holes read as zeros)."""
        if mode not in ("r", "rb"):
            raise ReadOnlyError("files are opened read-only; use write_file to change them")
        ino, inode, _ = self._file_ino(path)
        self.check_size(ino, inode)
        return io.BufferedReader(Ext4File(self, ino, inode), buffer_size=max(self.block_size, 1 << 17))

    def readlink(self, path: str | bytes | os.PathLike[str]) -> str:
        ino = self.resolve(path, follow=False)
        inode = self.inode(ino)
        if not inode.is_symlink():
            raise InvalidPath(decode_name(encode_name(os.fspath(path))), "not a symbolic link")
        return decode_name(self.readlink_ino(ino, inode))

    def readlink_ino(self, ino: int, inode: Inode) -> bytes:
        """A symlink's target, as the kernel returns it: i_size bytes, cut at the first NUL."""
        size = inode.size
        if size > K.MAX_SYMLINK_LEN + 1 or size > self.block_size:
            raise CorruptError(f"symlink of {size} bytes", where=f"inode {ino}")
        if inode.has_inline_data():
            target = self.inline_bytes(ino, inode)[:size]
        elif self._is_fast_symlink(inode):
            target = bytes(inode.block[:size])
        else:
            target = self.read_range(ino, inode, 0, size)
        return target.split(b"\0", 1)[0]

    # -------------------------------------------------------------- xattrs
    def _ibody_xattrs(self, ino: int, inode: Inode) -> list[X.XattrEntry]:
        if not inode.tail:
            return []
        return X.parse_ibody(inode.tail, where=f"inode {ino}")

    def xattr_entries(self, ino: int, inode: Inode | None = None) -> list[X.XattrEntry]:
        """Every xattr entry of an inode: in-inode first, then its xattr block."""
        if inode is None:
            inode = self.inode(ino)
        entries = list(self._ibody_xattrs(ino, inode))
        if inode.file_acl:
            block = inode.file_acl
            where = f"inode {ino} xattr block {block}"
            if block < self.geo.first_data_block or block >= self.geo.blocks_count or block == 0:
                raise CorruptError(f"xattr block {block} is outside the filesystem", where=f"inode {ino}")
            verify = None
            if self.metadata_csum and self._checking:
                seed = self.seed

                def verify(block_nr: int, raw: bytes) -> int:
                    computed = xattr_block_csum(seed, block_nr, raw)
                    stored = int.from_bytes(raw[0x10:0x14], "little")
                    if computed != stored and self.verify == "warn":
                        warnings.warn(f"{where}: xattr block checksum mismatch", Ext4Warning, stacklevel=5)
                        return stored
                    return computed

            parsed = X.parse_block(self.read_block(block), block_nr=block, where=where, verify_csum=verify)
            entries.extend(parsed.entries)
        return entries

    def xattrs_ino(self, ino: int, inode: Inode | None = None) -> dict[str, bytes]:
        if inode is None:
            inode = self.inode(ino)
        out: dict[str, bytes] = {}
        for entry in self.xattr_entries(ino, inode):
            name = entry.full_name
            if name is None or name == "system.data":
                continue
            if entry.value_inum:
                out[name] = self._ea_inode_value(ino, entry)
            elif name in ("system.posix_acl_access", "system.posix_acl_default"):
                out[name] = X.acl_disk_to_xattr(entry.value, where=f"inode {ino}")
            else:
                out[name] = entry.value
        return out

    def _ea_inode_value(self, ino: int, entry: X.XattrEntry) -> bytes:
        where = f"inode {ino} xattr {entry.full_name}"
        ea = entry.value_inum
        ea_inode = self.inode(ea)
        if not ea_inode.flags & K.EA_INODE_FL or not ea_inode.is_reg():
            raise CorruptError(f"xattr value inode {ea} is not an EA inode", where=where)
        if ea_inode.size != entry.value_size or entry.value_size > (1 << 26):
            raise CorruptError(f"xattr value inode {ea} holds {ea_inode.size} bytes, entry says {entry.value_size}",
                               where=where)
        return self.read_range(ea, ea_inode, 0, entry.value_size)

    def xattrs(self, path: str | bytes | os.PathLike[str], *, follow_symlinks: bool = False) -> dict[str, bytes]:
        """Extended attributes by full name (``user.x``, ``security.selinux``...); ACLs in Linux xattr form."""
        return self.xattrs_ino(self.resolve(path, follow=follow_symlinks))

    # ------------------------------------------------------------- summary
    def info(self) -> dict[str, Any]:
        """What ``dumpe2fs -h`` shows, as an ordered dict of label -> value."""
        return superblock_info(self)

    def journal_superblock(self) -> JournalSuperblock | None:
        """The internal journal's superblock, or None without an internal journal."""
        ino = self.sb["s_journal_inum"]
        if not self.sb.has_compat("has_journal") or not ino:
            return None
        inode = self.inode(ino)
        raw = self.read_range(ino, inode, 0, min(inode.size, 1024))
        return parse_journal_superblock(raw, where=f"journal (inode {ino})")

    def __repr__(self) -> str:
        return f"<Filesystem {self.path or self.dev!r} {self.geo.blocks_count} blocks of {self.block_size}>"


_NOT_INDEXED = object()


def _fmt_time(value: int) -> str:
    if not value:
        return "n/a"
    import time as _time

    return _time.strftime("%a %b %e %H:%M:%S %Y", _time.gmtime(value))


def superblock_info(fs: Filesystem) -> dict[str, Any]:
    """The superblock summary dumpe2fs -h prints, keyed by its labels."""
    sb, geo = fs.sb, fs.geo
    label = sb.label or "<none>"
    last_mounted = bytes(sb["s_last_mounted"]).split(b"\0", 1)[0].decode("utf-8", "replace") or "<not available>"
    flags = []
    if sb["s_flags"] & K.FLAGS_SIGNED_HASH:
        flags.append("signed_directory_hash")
    if sb["s_flags"] & K.FLAGS_UNSIGNED_HASH:
        flags.append("unsigned_directory_hash")
    if sb["s_flags"] & K.FLAGS_TEST_FILESYS:
        flags.append("test_filesystem")
    state = "clean" if sb["s_state"] & K.STATE_VALID else "not clean"
    if sb["s_state"] & K.STATE_ERROR:
        state += " with errors"
    hash_names = {0: "legacy", 1: "half_md4", 2: "tea", 3: "legacy_unsigned", 4: "half_md4_unsigned",
                  5: "tea_unsigned", 6: "siphash"}
    import uuid as _uuid

    info: dict[str, Any] = {
        "Filesystem volume name": label,
        "Last mounted on": last_mounted,
        "Filesystem UUID": sb.uuid_str,
        "Filesystem magic number": f"{sb['s_magic']:#06X}".replace("0X", "0x"),
        "Filesystem revision #": f"{sb['s_rev_level']} ({'dynamic' if sb['s_rev_level'] else 'original'})",
        "Filesystem features": sb.features,
        "Filesystem flags": flags,
        "Filesystem state": state,
        "Inode count": sb["s_inodes_count"],
        "Block count": sb.blocks_count,
        "Reserved block count": sb.r_blocks_count,
        "Overhead clusters": sb["s_overhead_clusters"],
        "Free blocks": sb.free_blocks_count,
        "Free inodes": sb["s_free_inodes_count"],
        "First block": sb["s_first_data_block"],
        "Block size": geo.block_size,
        "Group descriptor size": geo.desc_size if sb.is_64bit else 32,
        "Reserved GDT blocks": sb["s_reserved_gdt_blocks"],
        "Blocks per group": geo.blocks_per_group,
        "Inodes per group": geo.inodes_per_group,
        "Inode blocks per group": geo.inode_table_blocks,
        "Group count": geo.group_count,
        "Flex block group size": geo.groups_per_flex if sb.has_incompat("flex_bg") else None,
        "Filesystem created": _fmt_time(sb.mkfs_time),
        "Last mount time": _fmt_time(sb.mtime),
        "Last write time": _fmt_time(sb.wtime),
        "Mount count": sb["s_mnt_count"],
        "Maximum mount count": sb["s_max_mnt_count"] - 65536 if sb["s_max_mnt_count"] >= 32768 else sb["s_max_mnt_count"],
        "Last checked": _fmt_time(sb.lastcheck),
        "Lifetime writes": sb["s_kbytes_written"] * 1024,
        "First inode": sb.first_ino,
        "Inode size": geo.inode_size,
        "Required extra isize": sb["s_min_extra_isize"],
        "Desired extra isize": sb["s_want_extra_isize"],
        "Journal inode": sb["s_journal_inum"] or None,
        "Default directory hash": hash_names.get(sb["s_def_hash_version"], str(sb["s_def_hash_version"])),
        "Directory Hash Seed": str(_uuid.UUID(bytes=bytes(sb["s_hash_seed"]))),
        "Checksum type": "crc32c" if sb.metadata_csum else None,
        "Checksum": f"{sb['s_checksum']:#010x}" if sb.metadata_csum else None,
    }
    try:
        jsb = fs.journal_superblock()
    except Ext4Error:
        jsb = None
    if jsb is not None:
        info["Journal features"] = jsb.features or ["(none)"]
        info["Total journal size"] = jsb.maxlen * jsb.block_size
        info["Total journal blocks"] = jsb.maxlen
        info["Journal sequence"] = f"{jsb.sequence:#010x}"
        info["Journal start"] = jsb.start
    return {k: v for k, v in info.items() if v is not None}


class Ext4File(io.RawIOBase):
    """A raw, seekable, read-only view of one file's data."""

    def __init__(self, fs: Filesystem, ino: int, inode: Inode) -> None:
        super().__init__()
        self.fs = fs
        self.ino = ino
        self.inode = inode
        self.size = inode.size
        self._pos = 0
        self.name = f"inode {ino}"
        self._direct = type(fs).read_range is Filesystem.read_range

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.size - self._pos))
        if want <= 0:
            return 0
        if self._direct:
            n = self.fs.read_into(self.ino, self.inode, self._pos, view[:want])
        else:  # a subclass (the writer) overlays pending data in read_range
            data = self.fs.read_range(self.ino, self.inode, self._pos, want)
            n = len(data)
            view[:n] = data
        self._pos += n
        return n


def open_filesystem(path: str | os.PathLike[str], **kwargs: Any) -> Filesystem:
    """Shorthand for Filesystem.open."""
    return Filesystem.open(path, **kwargs)


__all__ = ["Filesystem", "Stat", "DirEntry", "Ext4File", "Ext4Warning", "Ext4Error", "FileTooLarge"]
