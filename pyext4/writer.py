"""Changing an image in place: files, directories, links, nodes, xattrs; everything checksummed.

Every public operation runs as a unit: blocks and inodes are allocated first
(ENOSPC leaves nothing changed), file data goes straight to newly allocated
blocks (data for blocks freed earlier in the session waits for flush, since
the image still gives them to their old owner), and all metadata changes stay
in memory, with an undo log, until :meth:`flush`.  flush() writes new
structures before the old ones that will point at them (see flush), then
bitmaps and group descriptors, then the superblock, then fsyncs.  The set of
dirty metadata blocks is explicit (``dirty_metadata()``) so that it can later
go through the jbd2 journal.  Damage found on anything being changed
(checksums, bitmap counts, double frees, an inode in use that the bitmap calls
free) is refused unless ``force=True``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat as _stat
import time as _time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from . import _codecs as C
from . import alloc as A
from . import constants as K
from . import dirent as D
from . import extents as E
from . import xattr as X
from .bitmap import Bitmap
from .blockdev import Device, FileDevice
from .blockmap import build as blockmap_build
from .blockmap import capacity as blockmap_capacity
from .blockmap import meta_blocks as blockmap_meta
from .blockmap import meta_needed as blockmap_meta_needed
from .blockmap import walk as blockmap_walk
from .csum import bitmap_csum, inode_seed
from .errors import (
    ChecksumError,
    CorruptError,
    DirectoryNotEmpty,
    Ext4Error,
    FileExists,
    FileNotFound,
    ImageBusy,
    InvalidOptions,
    InvalidPath,
    IsADirectory,
    NameTooLong,
    NeedsRecovery,
    NoSpace,
    NotADirectory,
    TooManyLinks,
)
from .groupdesc import GroupDesc
from .inode import Inode, set_checksum
from .reader import Ext4Warning, Filesystem, decode_name, encode_name, register_writable_opener, split_path

_NS = 1_000_000_000
_DATA_CHUNK = 8 << 20
_SMALL_FILE = 64 << 10
_WRITEBACK_MIN = 4 << 20
_EXT_HEADER_EMPTY = None  # built lazily per block size


def _now_ns(now: float | int | None) -> int:
    if now is None:
        return _time.time_ns()
    return int(now * _NS) if isinstance(now, float) else int(now) * _NS


# =============================================================== safety
def mounted_reason(path: str, st: os.stat_result) -> str | None:
    """Why ``path`` looks mounted (a mount source, or a loop device backed by it), or None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    for line in lines:
        parts = line.split(" - ", 1)
        left = parts[0].split()
        if len(left) < 5:
            continue
        majmin = left[2]
        mount_point = left[4]
        source = parts[1].split()[1] if len(parts) > 1 and len(parts[1].split()) > 1 else ""
        if _stat.S_ISBLK(st.st_mode):
            try:
                major, minor = (int(x) for x in majmin.split(":"))
            except ValueError:
                continue
            if os.makedev(major, minor) == st.st_rdev:
                return f"{path} is mounted on {mount_point}"
            continue
        if source == real:
            return f"{path} is mounted on {mount_point}"
        backing = f"/sys/dev/block/{majmin}/loop/backing_file"
        try:
            with open(backing, encoding="utf-8", errors="replace") as f:
                backing_path = f.read().strip()
        except OSError:
            continue
        try:
            bst = os.stat(backing_path)
        except OSError:
            if os.path.realpath(backing_path) == real:
                return f"{path} is mounted on {mount_point} (through a loop device)"
            continue
        if (bst.st_dev, bst.st_ino) == (st.st_dev, st.st_ino):
            return f"{path} is mounted on {mount_point} (through a loop device)"
    return None


class _Undo:
    """An operation's undo log: closures run in reverse on failure."""

    __slots__ = ("actions", "saved_descs", "saved_inodes", "saved_blocks", "sb_saved")

    def __init__(self) -> None:
        self.actions: list[Callable[[], None]] = []
        self.saved_descs: set[int] = set()
        self.saved_inodes: set[int] = set()
        self.saved_blocks: set[int] = set()
        self.sb_saved = False


# ============================================================= filesystem
class WritableFilesystem(Filesystem):
    """A Filesystem opened for writing (``Filesystem.open(path, writable=True)``)."""

    def __init__(self, dev: Device, *, path: str | None = None, verify: str = "strict", superblock: int | None = None,
                 force: bool = False, now: float | int | None = None, owns_device: bool = True) -> None:
        # Damage on anything being changed is refused unless forced: checksum problems raise
        # ("strict"), or with force=True only warn; verify="off" skips checking altogether.
        self.force = force
        if verify != "off":
            verify = "warn" if force else "strict"
        super().__init__(dev, writable=True, verify=verify, allow_needs_recovery=False, superblock=superblock,
                         path=path, owns_device=owns_device)
        if superblock is not None:
            raise InvalidOptions("writing through a backup superblock is not supported; run e2fsck first")
        self._now_override = now
        self._bb: dict[int, Bitmap] = {}
        self._ib: dict[int, Bitmap] = {}
        self._dirty_bb: set[int] = set()
        self._dirty_ib: set[int] = set()
        self._dirty_desc: set[int] = set()
        self._dirty_inodes: dict[int, Inode] = {}
        self._dirty_blocks: dict[int, bytes] = {}
        self._sb_dirty = False
        self._undo: _Undo | None = None
        self._data_written = 0
        # Blocks freed since the last flush (per group, as bit masks) and data held back for them.
        self._recycled: dict[int, int] = {}
        self._deferred: dict[int, bytes] = {}
        # Blocks and inodes allocated since the last flush, and staged htree index blocks (flush order).
        self._fresh: dict[int, int] = {}
        self._fresh_inodes: set[int] = set()
        self._block_priority: dict[int, int] = {}
        # Name maps of directories this session keeps changing (kept up to date, not re-read).
        self._names: dict[int, dict[bytes, tuple[int, int]]] = {}
        self._alloc_cursor: dict[int, int] = {}
        self._insert_hints: dict[int, tuple[bytes, int]] = {}
        self._hint_offset = -1
        self._dir_changes: dict[int, int] = {}
        if self.sb["s_state"] & K.STATE_ERROR and not force:
            raise CorruptError(
                "the filesystem is marked as having errors; run e2fsck first (or force the write)", where="superblock"
            )
        self._ipg = self.geo.inodes_per_group
        self._want_extra = self._extra_isize_for_new_inodes()

    def _extra_isize_for_new_inodes(self) -> int:
        """i_extra_isize for inodes this session creates: s_want_extra_isize when e2fsck would accept it
        (a multiple of 4 between 4 and inode_size - 128), else the kernel's default of 32 (or what fits)."""
        room = self.geo.inode_size - K.GOOD_OLD_INODE_SIZE
        if room <= 0:
            return 0
        want = self.sb["s_want_extra_isize"]
        if 4 <= want <= room and not want & 3:
            return int(want)
        return min(32, room & ~3)

    def __enter__(self) -> WritableFilesystem:
        return self

    def _checksum_problem(self, error: ChecksumError) -> None:
        if getattr(self, "force", False):
            warnings.warn(f"{error} (writing anyway: force=True)", Ext4Warning, stacklevel=4)
            return
        raise error

    @classmethod
    def open_writable(
        cls, path: str | os.PathLike[str], *, verify: str = "strict", superblock: int | None = None,
        force: bool = False, now: float | int | None = None,
    ) -> WritableFilesystem:
        """Open ``path`` for writing: exclusive lock, refuses a mounted image or one needing recovery."""
        spath = os.fspath(path)
        dev = FileDevice.open(spath, writable=True)
        try:
            st = os.fstat(dev.fd)
            reason = mounted_reason(spath, st)
            if reason and not force:
                raise ImageBusy(f"{reason}; unmount it first")
            try:
                fcntl.flock(dev.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise ImageBusy(f"{spath} is open for writing by another process") from None
                raise
            return cls(dev, path=spath, verify=verify, superblock=superblock, force=force, now=now)
        except BaseException:
            dev.close()
            raise

    # ------------------------------------------------------------ clock
    def _now(self) -> int:
        return _now_ns(self._now_override)

    # ------------------------------------------------------- undo / ops
    @contextmanager
    def _op(self) -> Iterator[None]:
        """Run one public operation: on any exception, in-memory changes are rolled back."""
        if self._undo is not None:
            yield
            return
        if self._closed:
            raise Ext4Error("the filesystem is closed")
        self._undo = _Undo()
        try:
            yield
        except BaseException:
            undo = self._undo
            self._undo = None
            for action in reversed(undo.actions):
                action()
            self._drop_caches()
            raise
        self._undo = None

    def _drop_caches(self) -> None:
        self._names.clear()
        self._dir_cache.clear()
        self._map_cache.clear()
        self._inode_cache.clear()

    def _record(self, action: Callable[[], None]) -> None:
        if self._undo is not None:
            self._undo.actions.append(action)

    def _touch_desc(self, group: int) -> GroupDesc:
        desc = self.group_desc(group)
        if self._undo is not None and group not in self._undo.saved_descs:
            self._undo.saved_descs.add(group)
            saved = desc.copy()
            was_dirty = group in self._dirty_desc

            def restore() -> None:
                for name in GroupDesc.__slots__:
                    setattr(desc, name, getattr(saved, name))
                if not was_dirty:
                    self._dirty_desc.discard(group)

            self._record(restore)
        self._dirty_desc.add(group)
        return desc

    def _touch_sb(self) -> None:
        if self._undo is not None and not self._undo.sb_saved:
            self._undo.sb_saved = True
            saved = list(self.sb._v)
            was_dirty = self._sb_dirty

            def restore() -> None:
                self.sb._v[:] = saved
                self._sb_dirty = was_dirty

            self._record(restore)
        self._sb_dirty = True

    # ---------------------------------------------------------- reading
    def read_block(self, block: int) -> bytes:
        data = self._dirty_blocks.get(block)
        if data is not None:
            return data
        return super().read_block(block)

    def read_blocks(self, block: int, count: int) -> bytes:
        if any(b in self._dirty_blocks for b in range(block, block + count)) if self._dirty_blocks else False:
            return b"".join(self.read_block(b) for b in range(block, block + count))
        return super().read_blocks(block, count)

    def inode(self, ino: int) -> Inode:
        dirty = self._dirty_inodes.get(ino)
        if dirty is not None:
            return dirty
        return super().inode(ino)

    def inode_raw(self, ino: int) -> bytes:
        dirty = self._dirty_inodes.get(ino)
        if dirty is not None:
            return bytes(self._pack_inode(ino, dirty))
        return super().inode_raw(ino)

    # --------------------------------------------------------- metadata
    def _put_block(self, block: int, data: bytes | bytearray, *, priority: int = 2) -> None:
        """Stage a metadata block for flush().

        ``priority`` orders the rewriting of existing blocks: 0 mapping blocks
        (extent tree, indirect), 1 htree index blocks, 2 the rest (leaves).
        """
        if priority < 2:
            self._block_priority[block] = min(priority, self._block_priority.get(block, 2))
        if self._undo is not None and block not in self._undo.saved_blocks:
            self._undo.saved_blocks.add(block)
            old = self._dirty_blocks.get(block)

            def restore() -> None:
                if old is None:
                    self._dirty_blocks.pop(block, None)
                else:
                    self._dirty_blocks[block] = old

            self._record(restore)
        self._dirty_blocks[block] = bytes(data)

    def _put_inode(self, ino: int, inode: Inode) -> None:
        """Stage an inode for flush() (the object is kept; later edits need another _put_inode)."""
        if self._undo is not None and ino not in self._undo.saved_inodes:
            self._undo.saved_inodes.add(ino)
            old = self._dirty_inodes.get(ino)

            def restore() -> None:
                if old is None:
                    self._dirty_inodes.pop(ino, None)
                else:
                    self._dirty_inodes[ino] = old

            self._record(restore)
        self._dirty_inodes[ino] = inode
        self._inode_cache.pop(ino, None)

    def _edit_inode(self, ino: int) -> Inode:
        """A private copy of inode ``ino`` staged for writing (the same one for the rest of the operation)."""
        undo = self._undo
        if undo is not None and ino in undo.saved_inodes:
            staged = self._dirty_inodes.get(ino)
            if staged is not None:
                return staged
        current = self.inode(ino)
        copy = current.copy()
        self._put_inode(ino, copy)
        return copy

    def _pack_inode(self, ino: int, inode: Inode) -> bytearray:
        raw = inode.pack(self.geo.inode_size)
        if self.metadata_csum:
            set_checksum(raw, self.seed, ino, self.geo.inode_size)
        return raw

    def dirty_metadata(self) -> dict[str, Any]:
        """What flush() would write (for a journal, or inspection)."""
        return {
            "blocks": sorted(self._dirty_blocks),
            "inodes": sorted(self._dirty_inodes),
            "block_bitmaps": sorted(self._dirty_bb),
            "inode_bitmaps": sorted(self._dirty_ib),
            "group_descriptors": sorted(self._dirty_desc),
            "superblock": self._sb_dirty,
            "deferred_data": sorted(self._deferred),
        }

    # ---------------------------------------------------------- bitmaps
    def _uninit_block_bitmap(self, group: int, desc: GroupDesc) -> Bitmap:
        """The bitmap the kernel computes for a BLOCK_UNINIT group."""
        geo = self.geo
        bm = Bitmap(geo.group_blocks(group))
        loc = geo.super_and_desc(group)
        start = geo.group_first_block(group)
        if loc.super_block or group == 0:
            bm.set_range(0, max(0, loc.super_block - start) + 1 if loc.super_block >= start else 1)
        if loc.old_desc_block:
            bm.set_range(loc.old_desc_block - start, loc.old_desc_blocks)
        if loc.new_desc_block:
            bm.set(loc.new_desc_block - start)
        end = start + geo.group_blocks(group)
        for block, count in ((desc.block_bitmap, 1), (desc.inode_bitmap, 1), (desc.inode_table, geo.inode_table_blocks)):
            for b in range(block, block + count):
                if start <= b < end:
                    bm.set(b - start)
        return bm

    def _block_bitmap(self, group: int) -> Bitmap:
        bm = self._bb.get(group)
        if bm is not None:
            return bm
        desc = self.group_desc(group)
        geo = self.geo
        if self.sb.group_desc_csum and desc.flags & K.BG_BLOCK_UNINIT:
            bm = self._uninit_block_bitmap(group, desc)
        else:
            raw = super().read_block(desc.block_bitmap)
            if self.metadata_csum and self._checking:
                nbytes = geo.blocks_per_group // 8
                actual = bitmap_csum(self.seed, raw[:nbytes])
                stored = desc.block_bitmap_csum
                if self.geo.desc_size < 64:
                    actual &= 0xFFFF
                if actual != stored:
                    self._checksum_problem(
                        ChecksumError("block bitmap", expected=stored, actual=actual, where=f"group {group}")
                    )
            bm = Bitmap(geo.group_blocks(group), raw)
        free = bm.size - bm.count()
        if free != desc.free_blocks and not self.force:
            raise CorruptError(
                f"block bitmap shows {free} free blocks, descriptor says {desc.free_blocks}; "
                "run e2fsck first (or force the write)",
                where=f"group {group}",
            )
        self._bb[group] = bm
        return bm

    def _inode_bitmap(self, group: int) -> Bitmap:
        bm = self._ib.get(group)
        if bm is not None:
            return bm
        desc = self.group_desc(group)
        if self.sb.group_desc_csum and desc.flags & K.BG_INODE_UNINIT:
            bm = Bitmap(self._ipg)
        else:
            raw = super().read_block(desc.inode_bitmap)
            if self.metadata_csum and self._checking:
                nbytes = self._ipg // 8
                actual = bitmap_csum(self.seed, raw[:nbytes])
                if self.geo.desc_size < 64:
                    actual &= 0xFFFF
                if actual != desc.inode_bitmap_csum:
                    self._checksum_problem(
                        ChecksumError("inode bitmap", expected=desc.inode_bitmap_csum, actual=actual,
                                      where=f"group {group}")
                    )
            bm = Bitmap(self._ipg, raw)
        free = self._ipg - bm.count()
        if free != desc.free_inodes and not self.force:
            raise CorruptError(
                f"inode bitmap shows {free} free inodes, descriptor says {desc.free_inodes}; "
                "run e2fsck first (or force the write)",
                where=f"group {group}",
            )
        self._ib[group] = bm
        return bm

    def _mark_bb(self, group: int, start: int, count: int, used: bool) -> None:
        bm = self._block_bitmap(group)
        before = bm.bits
        was_dirty = group in self._dirty_bb
        if used:
            bm.set_range(start, count)
        else:
            bm.clear_range(start, count)
        self._dirty_bb.add(group)

        def restore() -> None:
            bm.bits = before
            if not was_dirty:
                self._dirty_bb.discard(group)

        self._record(restore)

    def _mark_ib(self, group: int, index: int, used: bool) -> None:
        bm = self._inode_bitmap(group)
        before = bm.bits
        was_dirty = group in self._dirty_ib
        if used:
            bm.set(index)
        else:
            bm.clear(index)
        self._dirty_ib.add(group)

        def restore() -> None:
            bm.bits = before
            if not was_dirty:
                self._dirty_ib.discard(group)

        self._record(restore)

    # -------------------------------------------------------- allocation
    def _free_blocks_total(self) -> int:
        return self.sb.free_blocks_count

    def allocate_blocks(self, count: int, goal: int) -> list[tuple[int, int]]:
        """``count`` blocks in as few runs as possible near ``goal``: [(start, length)]; NoSpace if short.

        Blocks freed since the last flush are taken only when nothing else is
        left: until flush() the image still shows their old owner, so data
        for them is held back (see _write_data) rather than written over it.
        """
        if count <= 0:
            return []
        if count > self.sb.free_blocks_count:
            raise NoSpace(f"no space left: {count} blocks needed, {self.sb.free_blocks_count} free")
        geo = self.geo
        if goal < geo.first_data_block or goal >= geo.blocks_count:
            goal = geo.first_data_block
        picks = self._quick_pick(count, goal)
        if picks is None and self._recycled:
            picks = self._plan_runs(count, goal, avoid_recycled=True)
        if picks is None:
            picks = self._plan_runs(count, goal, avoid_recycled=False)
        if picks is None:
            raise NoSpace(f"no space left: could not find {count} free blocks")
        runs: list[tuple[int, int]] = []
        for group, start, n in picks:
            self._take_blocks(group, start, n)
            self._fresh[group] = self._fresh.get(group, 0) | (((1 << n) - 1) << start)
            runs.append((geo.group_first_block(group) + start, n))
        runs.sort()
        merged: list[tuple[int, int]] = []
        for s, n in runs:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((s, n))
        group = geo.group_of_block(goal)
        if geo.flex_bg and geo.log_groups_per_flex:
            group = A.flex_start(group, geo.log_groups_per_flex)
        start = geo.group_first_block(group)
        end = merged[-1][0] + merged[-1][1]
        if end > self._alloc_cursor.get(start, start) and geo.group_of_block(end - 1) >> geo.log_groups_per_flex \
                == group >> geo.log_groups_per_flex:
            self._alloc_cursor[start] = end
        return merged

    def _quick_pick(self, count: int, goal: int) -> list[tuple[int, int, int]] | None:
        """The common case: ``count`` free blocks in one run at or after the goal, in the goal's group."""
        geo = self.geo
        group = geo.group_of_block(goal)
        if self.group_desc(group).free_blocks < count:
            return None
        bm = self._block_bitmap(group)
        first = geo.group_first_block(group)
        index = bm.find_zero_run(count, goal - first)
        if index < 0:
            return None
        if self._recycled.get(group, 0) >> index & ((1 << count) - 1):
            return None
        return [(group, index, count)]

    def _plan_runs(self, count: int, goal: int, *, avoid_recycled: bool) -> list[tuple[int, int, int]] | None:
        """(group, start in group, length) picks covering ``count`` blocks, or None when there is not room."""
        geo = self.geo
        goal_group = geo.group_of_block(goal)
        picks: list[tuple[int, int, int]] = []
        taken: dict[int, int] = {}
        remaining = count
        # First pass: one group with a run long enough for everything (one extent);
        # second pass: whatever there is, group by group from the goal.
        for whole in (True, False):
            for group in A.groups_from(goal_group, geo.group_count):
                if remaining <= 0:
                    break
                desc = self.group_desc(group)
                if desc.free_blocks == 0 or (whole and desc.free_blocks < remaining):
                    continue
                bm = self._block_bitmap(group)
                bits = bm.bits | taken.get(group, 0)
                if avoid_recycled:
                    bits |= self._recycled.get(group, 0)
                view = Bitmap(bm.size)
                view.bits = bits
                offset_goal = goal - geo.group_first_block(group) if group == goal_group else 0
                while remaining > 0:
                    free_runs = view.zero_runs(0, view.size)
                    if not free_runs:
                        break
                    if whole:
                        pick = A.choose_run([r for r in free_runs if r[1] >= remaining], offset_goal, remaining)
                    else:
                        pick = A.choose_run(free_runs, offset_goal, remaining)
                    if pick is None:
                        break
                    s, n = pick
                    view.set_range(s, n)
                    taken[group] = taken.get(group, 0) | (((1 << n) - 1) << s)
                    picks.append((group, s, n))
                    remaining -= n
                    offset_goal = s + n
                if whole and remaining <= 0:
                    break
            if remaining <= 0:
                break
        return picks if remaining <= 0 else None

    def _take_blocks(self, group: int, start: int, count: int) -> None:
        self._mark_bb(group, start, count, True)
        desc = self._touch_desc(group)
        desc.free_blocks -= count
        desc.flags &= ~K.BG_BLOCK_UNINIT
        self._touch_sb()
        self.sb.free_blocks_count = self.sb.free_blocks_count - count

    def free_blocks(self, block: int, count: int) -> None:
        """Return ``[block, block+count)`` to the free pool (bitmaps and counters)."""
        geo = self.geo
        while count > 0:
            if block < geo.first_data_block or block >= geo.blocks_count:
                raise CorruptError(f"freeing block {block} outside the filesystem")
            group = geo.group_of_block(block)
            start = geo.group_first_block(group)
            n = min(count, start + geo.group_blocks(group) - block)
            bm = self._block_bitmap(group)
            used = bm.count_range(block - start, n)
            if used != n and not self.force:
                raise CorruptError(f"blocks {block}..{block + n - 1} are already free (double free)",
                                   where=f"group {group}")
            self._mark_bb(group, block - start, n, False)
            self._forget_dirty(block, n)
            self._recycled[group] = self._recycled.get(group, 0) | (((1 << n) - 1) << (block - start))
            desc = self._touch_desc(group)
            desc.free_blocks += used
            self._touch_sb()
            self.sb.free_blocks_count = self.sb.free_blocks_count + used
            block += n
            count -= n

    def _forget_dirty(self, block: int, count: int) -> None:
        """Drop staged metadata for freed blocks: a later owner (file data written directly) must win."""
        dirty = self._dirty_blocks
        if not dirty:
            return
        if count < len(dirty):
            hits = [b for b in range(block, block + count) if b in dirty]
        else:
            hits = [b for b in dirty if block <= b < block + count]
        for b in hits:
            self._record(_restorer(dirty, b))
            del dirty[b]

    # ------------------------------------------------------------ file data
    def _recycled_in(self, block: int, count: int) -> bool:
        """Whether any of ``[block, block+count)`` was freed since the last flush."""
        if not self._recycled:
            return False
        geo = self.geo
        while count > 0:
            group = geo.group_of_block(block)
            first = geo.group_first_block(group)
            n = min(count, first + geo.group_blocks(group) - block)
            mask = self._recycled.get(group)
            if mask and (mask >> (block - first)) & ((1 << n) - 1):
                return True
            block += n
            count -= n
        return False

    def _data_pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write file data at a byte offset of the device.

        Goes straight to the device, except over blocks freed since the last
        flush: the image still gives those to their old owner, so their new
        contents wait in memory until flush() (and vanish if the operation fails).
        """
        bs = self.block_size
        length = len(data)
        if length == 0:
            return
        first = offset // bs
        count = (offset + length - 1) // bs - first + 1
        self._data_written += length
        if not self._recycled_in(first, count):
            self.dev.pwrite(offset, data)
            return
        view = memoryview(data)
        deferred = self._deferred
        for k in range(count):
            block = first + k
            lo = max(offset, block * bs)
            hi = min(offset + length, (block + 1) * bs)
            if lo == block * bs and hi == (block + 1) * bs:
                piece = bytes(view[lo - offset : hi - offset])
            else:
                base = bytearray(deferred.get(block) or self.dev.pread(block * bs, bs))
                base[lo - block * bs : hi - block * bs] = view[lo - offset : hi - offset]
                piece = bytes(base)
            self._record(_restorer(deferred, block))
            deferred[block] = piece

    def _data_pread(self, offset: int, length: int) -> bytes:
        """Read file data at a byte offset, seeing data held back by _data_pwrite."""
        raw = self.dev.pread(offset, length)
        if not self._deferred or length == 0:
            return raw
        bs = self.block_size
        out = bytearray(raw)
        first = offset // bs
        last = (offset + length - 1) // bs
        blocks = (range(first, last + 1) if last - first < len(self._deferred)
                  else sorted(b for b in self._deferred if first <= b <= last))
        for block in blocks:
            piece = self._deferred.get(block)
            if piece is None:
                continue
            lo = max(offset, block * bs)
            hi = min(offset + length, (block + 1) * bs)
            out[lo - offset : hi - offset] = piece[lo - block * bs : hi - block * bs]
        return bytes(out)

    def read_range(self, ino: int, inode: Inode, offset: int, length: int) -> bytes:
        if not self._deferred:
            return super().read_range(ino, inode, offset, length)
        data = bytearray(super().read_range(ino, inode, offset, length))
        if not data or inode.has_inline_data():
            return bytes(data)
        bs = self.block_size
        end = offset + len(data)
        for ext in self.extents_of(ino, inode):
            if ext.unwritten:
                continue
            lo = max(offset, ext.logical * bs)
            hi = min(end, (ext.logical + ext.length) * bs)
            if lo >= hi:
                continue
            phys = (ext.physical - ext.logical) * bs
            data[lo - offset : hi - offset] = self._data_pread(phys + lo, hi - lo)
        return bytes(data)

    def allocate_inode(self, parent_ino: int, *, is_dir: bool, name: bytes = b"") -> int:
        """A free inode number near its parent (Orlov-like spread for directories)."""
        if self.sb["s_free_inodes_count"] == 0:
            raise NoSpace("no free inodes left")
        geo = self.geo
        parent_group = geo.group_of_ino(parent_ino)
        hint = sum(name) if name else 0
        top_level = parent_ino == K.ROOT_INO and geo.group_count > 1
        group_desc: Callable[[int], GroupDesc] = self.group_desc
        if is_dir and top_level:  # the spread reads every group's counts three times: look them up once
            descs = [group_desc(g) for g in range(geo.group_count)]
            group_desc = lambda g: descs[g]  # noqa: E731
        order = A.inode_groups(
            is_dir=is_dir, parent_group=parent_group, group_count=geo.group_count,
            log_groups_per_flex=geo.log_groups_per_flex if geo.flex_bg else 0,
            free_inodes=lambda g: group_desc(g).free_inodes,
            free_blocks=lambda g: group_desc(g).free_blocks,
            used_dirs=lambda g: group_desc(g).used_dirs,
            top_level=top_level,
            spread_hint=hint,
        )
        first_ino = self.sb.first_ino
        for group in order:
            desc = self.group_desc(group)
            if desc.free_inodes == 0:
                continue
            bm = self._inode_bitmap(group)
            lowest = max(0, first_ino - 1 - group * self._ipg)
            index = bm.find_zero(lowest)
            if index < 0:
                continue
            self._check_inode_free(group, desc, index)
            self._mark_ib(group, index, True)
            desc = self._touch_desc(group)
            desc.free_inodes -= 1
            if is_dir:
                desc.used_dirs += 1
            if self.sb.group_desc_csum:
                desc.flags &= ~K.BG_INODE_UNINIT
                first_unused = self._ipg - desc.itable_unused
                if index >= first_unused:
                    desc.itable_unused = self._ipg - index - 1
            self._touch_sb()
            self.sb["s_free_inodes_count"] -= 1
            ino = group * self._ipg + index + 1
            self._fresh_inodes.add(ino)
            self._names.pop(ino, None)
            self._dir_changes.pop(ino, None)
            self._inode_cache.pop(ino, None)
            self._map_cache.pop(ino, None)
            self._dir_cache.pop(ino, None)
            return ino
        raise NoSpace("no free inodes left")

    def _check_inode_free(self, group: int, desc: GroupDesc, index: int) -> None:
        """Refuse to hand out an inode the bitmap calls free while the table shows it in use."""
        if self.force:
            return
        if self.sb.group_desc_csum and (desc.flags & K.BG_INODE_UNINIT or index >= self._ipg - desc.itable_unused):
            return  # the table there was never initialised
        ino = group * self._ipg + index + 1
        inode = self._dirty_inodes.get(ino)
        if inode is not None:
            in_use = bool(inode.links_count and inode.mode and not inode.dtime)
        else:
            raw = Filesystem.inode_raw(self, ino)  # i_mode at 0, i_dtime at 20, i_links_count at 26
            in_use = bool(raw[26:28] != b"\0\0" and raw[0:2] != b"\0\0" and raw[20:24] == b"\0\0\0\0")
        if in_use:
            raise CorruptError(
                f"the inode bitmap says inode {ino} is free but it is in use; run e2fsck first (or force the write)",
                where=f"group {group}",
            )

    def _free_inode(self, ino: int, *, is_dir: bool) -> None:
        group, index = divmod(ino - 1, self._ipg)
        bm = self._inode_bitmap(group)
        if not bm.test(index) and not self.force:
            raise CorruptError(f"inode {ino} is already free", where=f"group {group}")
        self._mark_ib(group, index, False)
        desc = self._touch_desc(group)
        desc.free_inodes += 1
        if is_dir and desc.used_dirs:
            desc.used_dirs -= 1
        self._touch_sb()
        self.sb["s_free_inodes_count"] += 1

    # ----------------------------------------------------- inode helpers
    def _new_inode(self, mode: int, uid: int, gid: int, now: int) -> Inode:
        _check_owner(uid, gid)
        inode = Inode()
        inode.mode = mode
        inode.uid = uid
        inode.gid = gid
        inode.atime = inode.ctime = inode.mtime = now
        if self.geo.inode_size > K.GOOD_OLD_INODE_SIZE:
            inode.extra_isize = self._want_extra
            inode.crtime = now
        inode.links_count = 1
        return inode

    def _goal_for(self, ino: int, inode: Inode | None = None) -> int:
        """Where a file's next blocks should go: after its last block, else its group's area."""
        if inode is not None and not inode.has_inline_data():
            try:
                exts = self.extents_of(ino, inode)
            except Ext4Error:
                exts = []
            if exts:
                last = exts[-1]
                return last.physical + last.length
        geo = self.geo
        group = geo.group_of_ino(ino)
        if geo.flex_bg and geo.log_groups_per_flex:
            group = A.flex_start(group, geo.log_groups_per_flex)
        start = geo.group_first_block(group)
        # New files follow the ones made before them (as the kernel's allocation streams do).
        return self._alloc_cursor.get(start, start)

    def _max_size(self, inode: Inode) -> int:
        """The largest size this inode's mapping can describe (extent trees reach 2^32 - 1 blocks)."""
        bs = self.block_size
        if inode.has_extents() or (self.extents_feature and not inode.has_inline_data()):
            return ((1 << 32) - 1) * bs
        return int(blockmap_capacity(bs)) * bs

    def _set_size(self, inode: Inode, size: int) -> None:
        """Set i_size, refusing what the mapping cannot hold and noting large_file as the kernel does."""
        if size > self._max_size(inode):
            raise InvalidOptions(f"a file of {size} bytes is larger than this filesystem allows (EFBIG)")
        if size >= 1 << 31 and inode.is_reg() and not self.sb.has_ro_compat("large_file"):
            self._touch_sb()
            self.sb.set_feature("large_file")
        inode.size = size

    def _sectors(self, blocks: int) -> int:
        return blocks * (self.block_size // 512)

    def _mapping_blocks(self, ino: int, inode: Inode) -> tuple[list[E.Extent], list[int]]:
        """(data extents, metadata blocks) of a file's current mapping."""
        geo = self.geo
        if inode.has_inline_data() or (inode.is_symlink() and self._is_fast_symlink(inode)):
            return [], []
        if inode.is_device() or inode.file_type in (K.S_IFIFO, K.S_IFSOCK):
            return [], []
        if inode.has_extents():
            extents, tree = E.scan(
                inode.block, self.read_block, block_size=self.block_size, blocks_count=geo.blocks_count,
                first_data_block=geo.first_data_block, ino=ino, verify=self._extent_verifier(ino, inode),
            )
            return extents, tree
        # The whole map, not just up to i_size as extents_of reads it: blocks past the end (allowed
        # for verity files) are still the file's, to be freed with it.
        exts = [
            E.Extent(logical, physical, length)
            for logical, physical, length in blockmap_walk(
                inode.block, self.read_block, block_size=self.block_size, blocks_count=geo.blocks_count,
                first_data_block=geo.first_data_block, where=f"inode {ino}",
            )
        ]
        meta = blockmap_meta(
            inode.block, self.read_block, block_size=self.block_size, blocks_count=geo.blocks_count,
            first_data_block=geo.first_data_block, where=f"inode {ino}",
        )
        return exts, meta

    def _set_mapping(self, ino: int, inode: Inode, extents: list[E.Extent], old_meta: list[int]) -> None:
        """Store ``extents`` as the file's mapping (extent tree or block map), reusing old tree blocks.

        Allocates or frees tree/indirect blocks as needed and updates i_blocks
        for data + mapping blocks (+ the xattr block).
        """
        bs = self.block_size
        use_extents = inode.has_extents() or (
            self.extents_feature and not inode.has_inline_data() and not inode.flags & K.INLINE_DATA_FL
            and (inode.is_reg() or inode.is_dir() or inode.is_symlink())
        )
        extents = E.merge(extents) if extents else []
        data_blocks = sum(e.length for e in extents)
        if use_extents:
            inode.flags |= K.EXTENTS_FL
            _depth, needed = E.tree_shape(len(extents), bs)
        else:
            runs = [(e.logical, e.physical, e.length) for e in extents]
            needed = blockmap_meta_needed(runs, bs)
        meta = list(old_meta[:needed])
        if len(old_meta) > needed:
            for b in old_meta[needed:]:
                self.free_blocks(b, 1)
        if len(meta) < needed:
            goal = extents[0].physical - 1 if extents else self._goal_for(ino)
            for s, n in self.allocate_blocks(needed - len(meta), max(goal, self.geo.first_data_block)):
                meta.extend(range(s, s + n))
        if use_extents:
            root, blocks = E.build(
                extents, block_size=bs, tree_blocks=meta, ino=ino, generation=inode.generation,
                csum_seed=self.seed if self.metadata_csum else None,
            )
            inode.block = bytes(root)
        else:
            root, blocks = blockmap_build(
                [(e.logical, e.physical, e.length) for e in extents], block_size=bs, meta_blocks=meta
            )
            inode.block = bytes(root)
        for block, data in blocks:
            self._put_block(block, data, priority=0)
        xattr_blocks = 1 if inode.file_acl else 0
        inode.set_blocks_512(self._sectors(data_blocks + needed + xattr_blocks), self.huge_file, bs)
        self._map_cache.pop(ino, None)

    # --------------------------------------------------------- dir blocks
    def _dir_iseed(self, ino: int, inode: Inode) -> int:
        return inode_seed(self.seed, ino, inode.generation) if self.metadata_csum else 0

    def _dir_logical_to_physical(self, ino: int, inode: Inode) -> dict[int, int]:
        mapping: dict[int, int] = {}
        for ext in self.extents_of(ino, inode):
            for k in range(ext.length):
                mapping[ext.logical + k] = ext.physical + k
        return mapping

    def _write_dir_block(self, ino: int, inode: Inode, physical: int, buf: bytearray) -> None:
        if self.metadata_csum:
            D.set_dir_block_csum(buf, self._dir_iseed(ino, inode), block_size=self.block_size)
        self._put_block(physical, buf)

    def _append_dir_block(self, ino: int, inode: Inode, buf: bytearray) -> int:
        """Add a block at the end of a directory; returns its logical number."""
        bs = self.block_size
        size = inode.dir_size(self.large_dir)
        logical = size // bs
        extents, meta = self._mapping_blocks(ino, inode)
        goal = self._goal_for(ino, inode)
        [(block, _)] = self.allocate_blocks(1, goal)
        extents.append(E.Extent(logical, block, 1))
        self._set_mapping(ino, inode, extents, meta)
        inode.size = size + bs
        self._put_inode(ino, inode)
        self._write_dir_block(ino, inode, block, buf)
        self._dir_cache.pop(ino, None)
        return logical

    # ------------------------------------------------------ dir entries
    def _ft(self, mode: int) -> int:
        return K.MODE_TO_FT.get(mode & K.S_IFMT, 0) if self.filetype else 0

    def lookup(self, dir_ino: int, name: bytes) -> tuple[int, int] | None:
        names = self._names.get(dir_ino)
        if names is not None and name != b"." and name != b"..":
            return names.get(name)
        return super().lookup(dir_ino, name)

    def _names_of(self, dir_ino: int) -> dict[bytes, tuple[int, int]] | None:
        """The name map of a directory changed more than once this session (built on its second change)."""
        names = self._names.get(dir_ino)
        if names is None:
            changes = self._dir_changes.get(dir_ino, 0) + 1
            if len(self._dir_changes) > 4096:
                self._dir_changes.clear()
            self._dir_changes[dir_ino] = changes
            if changes >= 2:
                if len(self._names) >= 64:
                    self._names.pop(next(iter(self._names)))
                names = {n: (i, ft) for n, i, ft in self.dir_entries(dir_ino)}
                self._names[dir_ino] = names
        return names

    def _add_entry(self, dir_ino: int, name: bytes, child: int, child_mode: int) -> None:
        """Link ``name`` -> ``child`` into directory ``dir_ino`` (linear, htree or inline)."""
        names = self._names_of(dir_ino)
        self._add_entry_raw(dir_ino, name, child, child_mode, check_duplicate=names is None)
        if names is not None:
            names[name] = (child, self._ft(child_mode))

    def _add_entry_raw(self, dir_ino: int, name: bytes, child: int, child_mode: int, *,
                       check_duplicate: bool = True) -> None:
        if len(name) > K.NAME_LEN:
            raise NameTooLong(decode_name(name))
        if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise InvalidPath(decode_name(name), "invalid file name")
        inode = self.inode(dir_ino)
        if inode.has_inline_data():
            inode = self._convert_inline_dir(dir_ino, inode)
        ft = self._ft(child_mode)
        bs = self.block_size
        indexed = bool(inode.flags & K.INDEX_FL) and self.dir_index
        if indexed:
            try:
                if self._htree_add(dir_ino, inode, name, child, ft, check_duplicate=check_duplicate):
                    self._dir_cache.pop(dir_ino, None)
                    return
            except CorruptError:
                if self.verify == "strict" and not self.force:
                    raise
                # Fall back to treating it as linear, as the kernel does with a bad index.
                inode = self._edit_inode(dir_ino)
                inode.flags &= ~K.INDEX_FL
        mapping = self._dir_logical_to_physical(dir_ino, inode)
        nblocks = -(-inode.dir_size(self.large_dir) // bs)
        for logical in range(nblocks):
            physical = mapping.get(logical)
            if physical is None:
                continue
            raw = self.read_block(physical)
            buf = bytearray(raw)
            has_tail = self.metadata_csum and D.has_tail(buf, bs)
            if D.is_dx_block(buf, bs, logical == 0) and logical != 0:
                continue
            if self._insert_into_block(buf, child, name, ft, has_tail=has_tail, check_duplicate=check_duplicate,
                                       where=f"directory inode {dir_ino} block {logical}",
                                       hint=(physical, raw), first=_after_dot(buf, bs) if logical == 0 else 0):
                self._write_dir_block(dir_ino, inode, physical, buf)
                self._keep_hint(physical)
                self._touch_dir_times(dir_ino)
                self._dir_cache.pop(dir_ino, None)
                return
        if self.dir_index and nblocks == 1 and not inode.flags & K.INDEX_FL:
            if 0 not in mapping:
                raise CorruptError("the directory's first block is not mapped", where=f"directory inode {dir_ino}")
            self._make_indexed(dir_ino, inode, mapping[0], name, child, ft)
        else:
            buf = D.build_leaf_block([(child, name, ft)], block_size=bs, filetype=self.filetype,
                                     csum=self.metadata_csum)
            inode = self._edit_inode(dir_ino)
            self._append_dir_block(dir_ino, inode, buf)
        self._touch_dir_times(dir_ino)
        self._dir_cache.pop(dir_ino, None)

    def _insert_into_block(self, buf: bytearray, child: int, name: bytes, ft: int, *, has_tail: bool,
                           check_duplicate: bool, where: str, hint: tuple[int, bytes] | None = None,
                           first: int = 0) -> bool:
        """Add an entry to a leaf block in place (first fit, as the kernel does); False when full.

        When the caller already knows the name is absent (``check_duplicate``
        False) this walks only the rec_len chain instead of parsing every
        entry, starting where the last insertion into the same, unchanged
        block ended (``hint``: its block number and the bytes read): the hot
        path of bulk writes into one directory.  Nothing goes before ``first``
        (in a directory's first block: the end of '.', which '..' must follow).
        """
        self._hint_offset = -1
        if check_duplicate:
            if not first:
                return D.insert_into_block(buf, child, name, ft, block_size=self.block_size,
                                           filetype=self.filetype, has_tail=has_tail, where=where)
            for entry in D.parse_block(buf, block_size=self.block_size, filetype=self.filetype, has_tail=has_tail,
                                       where=where):
                if entry.name == name:
                    raise FileExists(decode_name(name))
        start = first
        if hint is not None and not check_duplicate:
            known = self._insert_hints.get(hint[0])
            if known is not None and known[0] is hint[1] and known[1] > first:
                start = known[1]
        if self._insert_from(buf, start, child, name, ft, has_tail=has_tail, where=where):
            return True
        return start > first and self._insert_from(buf, first, child, name, ft, has_tail=has_tail, where=where,
                                                   stop=start)

    def _keep_hint(self, block: int) -> None:
        """Remember where the entry just inserted into ``block`` sits (valid while the block is unchanged)."""
        if self._hint_offset >= 0:
            if len(self._insert_hints) > 1024:
                self._insert_hints.clear()
            self._insert_hints[block] = (self._dirty_blocks[block], self._hint_offset)

    def _insert_from(self, buf: bytearray, offset: int, child: int, name: bytes, ft: int, *, has_tail: bool,
                     where: str, stop: int | None = None) -> bool:
        bs = self.block_size
        end = bs - 12 if has_tail else bs
        if stop is not None:
            end = min(end, stop)
        need = D.rec_len_for(len(name))
        big = bs >= 65536
        filetype = self.filetype
        unpack = C.DIR_ENTRY_2.unpack_from if filetype else C.DIR_ENTRY.unpack_from
        while offset < end:
            if end - offset < 12:
                raise CorruptError(f"{end - offset} bytes left at offset {offset}, too few for an entry", where=where)
            ino, rec_len, name_len, *_ = unpack(buf, offset)
            if big:
                rec_len = D.rec_len_from_disk(rec_len, bs)
            if rec_len < 12 or rec_len & 3 or offset + rec_len > end or 8 + name_len > rec_len:
                raise CorruptError(f"entry at offset {offset}: bad rec_len {rec_len} or name_len {name_len}",
                                   where=where)
            if ino:
                used = D.rec_len_for(name_len)
                if rec_len - used >= need:
                    C.DIR_ENTRY.pack_into(buf, offset, ino, D.rec_len_to_disk(used, bs),
                                          name_len if not filetype else name_len | buf[offset + 7] << 8)
                    self._put_entry(buf, offset + used, rec_len - used, child, name, ft)
                    self._hint_offset = offset + used
                    return True
            elif rec_len >= need:
                self._put_entry(buf, offset, rec_len, child, name, ft)
                self._hint_offset = offset
                return True
            offset += rec_len
        return False

    def _put_entry(self, buf: bytearray, offset: int, rec_len: int, child: int, name: bytes, ft: int) -> None:
        buf[offset : offset + rec_len] = bytes(rec_len)
        if self.filetype:
            C.DIR_ENTRY_2.pack_into(buf, offset, child, D.rec_len_to_disk(rec_len, self.block_size), len(name), ft)
        else:
            C.DIR_ENTRY.pack_into(buf, offset, child, D.rec_len_to_disk(rec_len, self.block_size), len(name))
        buf[offset + 8 : offset + 8 + len(name)] = name

    def _touch_dir_times(self, dir_ino: int) -> None:
        inode = self._edit_inode(dir_ino)
        now = self._now()
        inode.mtime = inode.ctime = now

    def _hash_params(self, root_version: int) -> tuple[int, tuple[int, int, int, int]]:
        version = D.effective_hash_version(root_version, self._hash_unsigned)
        return version, self._hash_seed

    def _make_indexed(self, dir_ino: int, inode: Inode, block0: int, name: bytes, child: int, ft: int) -> None:
        """Turn a full one-block directory into an htree (the kernel's make_indexed_dir)."""
        bs = self.block_size
        raw = self.read_block(block0)
        entries = D.parse_block(raw, block_size=bs, filetype=self.filetype,
                                has_tail=self.metadata_csum and D.has_tail(raw, bs),
                                where=f"directory inode {dir_ino}")
        parent = dir_ino
        items: list[tuple[int, bytes, int]] = []
        for e in entries:
            if e.name == b".":
                continue
            if e.name == b"..":
                parent = e.ino
                continue
            items.append((e.ino, e.name, e.file_type))
        items.append((child, name, ft))
        hash_version = self.sb["s_def_hash_version"]
        if hash_version > 2:
            hash_version = K.HASH_HALF_MD4
        version, seed = self._hash_params(hash_version)
        blocks = D.build_htree(
            items, block_size=bs, hash_version=version, seed=seed, filetype=self.filetype,
            csum=self.metadata_csum, dir_ino=dir_ino, parent_ino=parent, large_dir=self.large_dir,
            slack_percent=0,
        )
        inode = self._edit_inode(dir_ino)
        extents, meta = self._mapping_blocks(dir_ino, inode)
        need = len(blocks) - 1
        goal = extents[-1].physical + extents[-1].length if extents else self._goal_for(dir_ino)
        new_runs = self.allocate_blocks(need, goal)
        physical = [block0]
        for s, n in new_runs:
            physical.extend(range(s, s + n))
        extents = [E.Extent(0, block0, 1)] + [E.Extent(i + 1, b, 1) for i, b in enumerate(physical[1:])]
        self._set_mapping(dir_ino, inode, extents, meta)
        inode.flags |= K.INDEX_FL
        inode.size = len(blocks) * bs
        self._put_inode(dir_ino, inode)
        iseed = self._dir_iseed(dir_ino, inode)
        for buf, block in zip(blocks, physical):
            if self.metadata_csum:
                D.set_dir_block_csum(buf, iseed, block_size=bs)
            self._put_block(block, buf)
        self._dir_cache.pop(dir_ino, None)

    def _htree_add(self, dir_ino: int, inode: Inode, name: bytes, child: int, ft: int, *,
                   check_duplicate: bool = True) -> bool:
        """Insert into an indexed directory; splits leaves and nodes as needed."""
        bs = self.block_size
        where = f"directory inode {dir_ino}"
        mapping = self._dir_logical_to_physical(dir_ino, inode)
        nblocks = -(-inode.dir_size(self.large_dir) // bs)

        def read_logical(logical: int) -> bytes:
            physical = mapping.get(logical)
            if physical is None or logical >= nblocks:
                raise CorruptError(f"htree points at missing block {logical}", where=where)
            return self.read_block(physical)

        root = D.parse_dx_root(read_logical(0), block_size=bs, csum=self.metadata_csum,
                               large_dir=self.large_dir, dir_blocks=nblocks, where=where)
        version, seed = self._hash_params(root.hash_version)
        major = D.name_hash(name, version, seed)[0]
        # Refuse duplicates: the name may live in a continuation leaf.
        candidates: Iterable[int] = []
        if check_duplicate:
            candidates = D.dx_candidate_leaves(read_logical, root, major, block_size=bs, csum=self.metadata_csum,
                                               dir_blocks=nblocks, where=where)
        for leaf in candidates:
            raw = read_logical(leaf)
            for e in D.parse_block(raw, block_size=bs, filetype=self.filetype,
                                   has_tail=self.metadata_csum and D.has_tail(raw, bs), where=where):
                if e.name == name:
                    raise FileExists(decode_name(name))
        path = D.dx_lookup_path(major, read_logical, block_size=bs, dir_blocks=nblocks, csum=self.metadata_csum,
                                large_dir=self.large_dir, root=root, where=where)
        leaf = path.leaf
        raw = read_logical(leaf)
        buf = bytearray(raw)
        has_tail = self.metadata_csum and D.has_tail(buf, bs)
        if self._insert_into_block(buf, child, name, ft, has_tail=has_tail, check_duplicate=check_duplicate,
                                   where=where, hint=(mapping[leaf], raw)):
            self._write_dir_block(dir_ino, inode, mapping[leaf], buf)
            self._keep_hint(mapping[leaf])
            self._touch_dir_times(dir_ino)
            return True
        # Split the leaf.
        entries = D.parse_block(buf, block_size=bs, filetype=self.filetype, has_tail=has_tail, where=where)
        kept, moved, split_hash = D.split_leaf(entries, hash_version=version, seed=seed, block_size=bs)
        kept_specs = [(e.ino, e.name, e.file_type) for e in kept]
        moved_specs = [(e.ino, e.name, e.file_type) for e in moved]
        if major >= split_hash & ~1:
            moved_specs.append((child, name, ft))
        else:
            kept_specs.append((child, name, ft))
        new_leaf_buf = D.build_leaf_block(moved_specs, block_size=bs, filetype=self.filetype,
                                          csum=self.metadata_csum)
        old_leaf_buf = D.build_leaf_block(kept_specs, block_size=bs, filetype=self.filetype,
                                          csum=self.metadata_csum)
        # Hook the new leaf into the index, splitting full nodes and growing the root as the kernel does.
        inode = self._edit_inode(dir_ino)
        index_blocks: dict[int, bytearray] = {f.block: bytearray(read_logical(f.block)) for f in path.frames}
        frames: list[list[int]] = [[f.block, f.index] for f in path.frames]
        new_logical_blocks: list[tuple[int, bytearray]] = []
        next_logical = nblocks

        def take_logical(buf2: bytearray) -> int:
            nonlocal next_logical
            lg = next_logical
            next_logical += 1
            new_logical_blocks.append((lg, buf2))
            return lg

        def insert_at(level: int, hash_value: int, block: int) -> None:
            node_block, position = frames[level]
            node_buf = index_blocks[node_block]
            if D.dx_insert_entry(node_buf, position, hash_value, block, block_size=bs):
                return
            if level == 0:
                new_node = D.dx_grow_root(node_buf, next_logical, block_size=bs, csum=self.metadata_csum,
                                          large_dir=self.large_dir)
                node_logical = take_logical(new_node)
                index_blocks[node_logical] = new_node
                frames[0] = [0, 0]
                frames.insert(1, [node_logical, position])
                insert_at(1, hash_value, block)
                return
            count = D.parse_dx_node(node_buf, block_size=bs, csum=self.metadata_csum, where=where).count
            keep = count // 2
            upper, upper_hash = D.dx_split_node(node_buf, block_size=bs, csum=self.metadata_csum)
            upper_logical = take_logical(upper)
            index_blocks[upper_logical] = upper
            if position >= keep:
                target, target_pos = upper, position - keep
            else:
                target, target_pos = node_buf, position
            if not D.dx_insert_entry(target, target_pos, hash_value, block, block_size=bs):
                raise CorruptError("htree node split left no room", where=where)
            insert_at(level - 1, upper_hash, upper_logical)

        new_leaf_logical = take_logical(new_leaf_buf)
        insert_at(len(frames) - 1, split_hash, new_leaf_logical)
        # Allocate the new blocks at the end of the directory.
        extents, meta = self._mapping_blocks(dir_ino, inode)
        goal = self._goal_for(dir_ino, inode)
        runs = self.allocate_blocks(len(new_logical_blocks), goal)
        physical_new: list[int] = []
        for s, n in runs:
            physical_new.extend(range(s, s + n))
        for (lg, _buf), phys in zip(new_logical_blocks, physical_new):
            extents.append(E.Extent(lg, phys, 1))
            mapping[lg] = phys
        self._set_mapping(dir_ino, inode, extents, meta)
        inode.size = next_logical * bs
        inode.mtime = inode.ctime = self._now()
        self._put_inode(dir_ino, inode)
        iseed = self._dir_iseed(dir_ino, inode)
        # Write everything.
        for lg, buf2 in [(leaf, old_leaf_buf)] + [(lg, b) for lg, b in new_logical_blocks if b is new_leaf_buf]:
            if self.metadata_csum:
                D.set_leaf_csum(buf2, iseed)
            self._put_block(mapping[lg], buf2)
        for lg, buf2 in index_blocks.items():
            if self.metadata_csum:
                D.set_dx_csum(buf2, iseed, block_size=bs)
            self._put_block(mapping[lg], buf2, priority=1)
        return True

    def _remove_entry(self, dir_ino: int, name: bytes) -> int:
        """Remove ``name`` from a directory; returns the inode it named."""
        names = self._names_of(dir_ino)
        removed = self._remove_entry_raw(dir_ino, name)
        if names is not None:
            names.pop(name, None)
        return removed

    def _remove_entry_raw(self, dir_ino: int, name: bytes) -> int:
        inode = self.inode(dir_ino)
        if inode.has_inline_data():
            inode = self._convert_inline_dir(dir_ino, inode)
        bs = self.block_size
        mapping = self._dir_logical_to_physical(dir_ino, inode)
        nblocks = -(-inode.dir_size(self.large_dir) // bs)
        candidates: Iterable[int] = range(nblocks)
        if inode.flags & K.INDEX_FL and self.dir_index:
            try:
                def read_logical(logical: int) -> bytes:
                    physical = mapping.get(logical)
                    if physical is None:
                        raise CorruptError(f"htree points at missing block {logical}")
                    return self.read_block(physical)

                root = D.parse_dx_root(read_logical(0), block_size=bs, csum=self.metadata_csum,
                                       large_dir=self.large_dir, dir_blocks=nblocks)
                version, seed = self._hash_params(root.hash_version)
                major = D.name_hash(name, version, seed)[0]
                candidates = list(D.dx_candidate_leaves(read_logical, root, major, block_size=bs,
                                                        csum=self.metadata_csum, dir_blocks=nblocks))
            except CorruptError:
                if self.verify == "strict" and not self.force:
                    raise
                candidates = range(nblocks)
        for logical in candidates:
            physical = mapping.get(logical)
            if physical is None:
                continue
            buf = bytearray(self.read_block(physical))
            if D.is_dx_block(buf, bs, logical == 0):
                continue
            has_tail = self.metadata_csum and D.has_tail(buf, bs)
            removed = D.remove_from_block(buf, name, block_size=bs, filetype=self.filetype, has_tail=has_tail,
                                          where=f"directory inode {dir_ino} block {logical}")
            if removed is not None:
                self._write_dir_block(dir_ino, inode, physical, buf)
                self._touch_dir_times(dir_ino)
                self._dir_cache.pop(dir_ino, None)
                return removed
        raise FileNotFound(decode_name(name))

    def _set_dotdot(self, dir_ino: int, new_parent: int) -> None:
        inode = self.inode(dir_ino)
        if inode.has_inline_data():
            inode = self._edit_inode(dir_ino)
            block = bytearray(inode.block)
            block[0:4] = new_parent.to_bytes(4, "little")
            inode.block = bytes(block)
            self._put_inode(dir_ino, inode)
            return
        mapping = self._dir_logical_to_physical(dir_ino, inode)
        physical = mapping.get(0)
        if physical is None:
            raise CorruptError("directory has no first block", where=f"directory inode {dir_ino}")
        buf = bytearray(self.read_block(physical))
        rec_dot = int.from_bytes(buf[4:6], "little")
        if buf[8:9] != b"." or rec_dot != 12 or buf[12 + 8 : 12 + 10] != b"..":
            raise CorruptError("directory does not start with '.' and '..'", where=f"directory inode {dir_ino}")
        buf[12:16] = new_parent.to_bytes(4, "little")
        if self.metadata_csum:
            D.set_dir_block_csum(buf, self._dir_iseed(dir_ino, inode), block_size=self.block_size)
        self._put_block(physical, buf)
        self._dir_cache.pop(dir_ino, None)

    def _convert_inline_dir(self, dir_ino: int, inode: Inode) -> Inode:
        """Move an inline directory into a block (the kernel does this when it outgrows the inode)."""
        data = self.inline_bytes(dir_ino, inode)
        entries = D.parse_inline(data, filetype=self.filetype, where=f"directory inode {dir_ino}")
        parent = int.from_bytes(inode.block[:4], "little")
        items = [(dir_ino, b".", K.FT_DIR if self.filetype else 0), (parent, b"..", K.FT_DIR if self.filetype else 0)]
        items += [(e.ino, e.name, e.file_type) for e in entries if e.name not in (b".", b"..")]
        blocks = D.build_linear_blocks(items, block_size=self.block_size, filetype=self.filetype,
                                       csum=self.metadata_csum)
        inode = self._edit_inode(dir_ino)
        self._drop_inline_data(dir_ino, inode)
        inode.size = 0
        inode.block = bytes(60)
        if self.extents_feature:
            inode.flags |= K.EXTENTS_FL
            inode.block = _empty_extent_root()
        for buf in blocks:
            self._append_dir_block(dir_ino, inode, buf)
        self._dir_cache.pop(dir_ino, None)
        return inode

    # -------------------------------------------------------- inline data
    def _drop_inline_data(self, ino: int, inode: Inode) -> None:
        """Clear INLINE_DATA_FL and remove the system.data xattr."""
        if not inode.has_inline_data():
            return
        entries = [e for e in self._ibody_xattrs(ino, inode) if e.key != X.INLINE_DATA_KEY]
        inode.flags &= ~K.INLINE_DATA_FL
        self._store_ibody(inode, entries)

    def _ibody_space(self, inode: Inode) -> int:
        return self.geo.inode_size - K.GOOD_OLD_INODE_SIZE - inode.extra_isize

    def _store_ibody(self, inode: Inode, entries: list[X.XattrEntry]) -> None:
        space = self._ibody_space(inode)
        if not entries:
            inode.tail = bytes(space) if space > 0 else b""
            return
        body = X.build_ibody(entries, space)
        if body is None:
            raise X.XattrNoSpace("extended attributes do not fit in the inode")
        inode.tail = body

    # ----------------------------------------------------------- freeing
    def _release_data(self, ino: int, inode: Inode) -> None:
        """Free a file's data and mapping blocks; the inode keeps an empty mapping."""
        if inode.has_inline_data():
            self._drop_inline_data(ino, inode)
            inode.block = bytes(60)
        else:
            extents, meta = self._mapping_blocks(ino, inode)
            for ext in extents:
                self.free_blocks(ext.physical, ext.length)
            for b in meta:
                self.free_blocks(b, 1)
            if inode.is_symlink() and self._is_fast_symlink(inode):
                pass
            elif inode.has_extents():
                inode.block = _empty_extent_root()
            elif not inode.is_device():
                inode.block = bytes(60)
        inode.size = 0
        xattr_blocks = 1 if inode.file_acl else 0
        inode.set_blocks_512(self._sectors(xattr_blocks), self.huge_file, self.block_size)
        self._map_cache.pop(ino, None)

    def _release_xattr_block(self, ino: int, inode: Inode) -> None:
        block = inode.file_acl
        if not block:
            return
        raw = self.read_block(block)
        parsed = X.parse_block(raw, block_nr=block, where=f"inode {ino} xattr block {block}")
        if parsed.refcount > 1:
            buf = bytearray(raw)
            buf[4:8] = (parsed.refcount - 1).to_bytes(4, "little")
            if self.metadata_csum:
                X.set_block_csum(self.seed, block, buf)
            self._put_block(block, buf)
        else:
            self.free_blocks(block, 1)
        inode.file_acl = 0
        inode.set_blocks_512(max(0, inode.blocks_in_512(self.huge_file, self.block_size) - self._sectors(1)),
                             self.huge_file, self.block_size)

    def _delete_inode(self, ino: int, inode: Inode) -> None:
        """Free everything an unlinked inode holds and the inode itself (as the kernel leaves it)."""
        was_dir = inode.is_dir()
        for entry in self.xattr_entries(ino, inode):
            if entry.value_inum:
                self._drop_ea_inode(entry.value_inum)
        self._release_data(ino, inode)
        self._release_xattr_block(ino, inode)
        inode.set_blocks_512(0, self.huge_file, self.block_size)
        inode.links_count = 0
        inode.dtime = (self._now() // _NS) & 0xFFFFFFFF
        self._put_inode(ino, inode)
        self._free_inode(ino, is_dir=was_dir)
        self._dir_cache.pop(ino, None)
        self._names.pop(ino, None)

    def _drop_ea_inode(self, ea_ino: int) -> None:
        """Drop one reference to an xattr value inode (shared between inodes; the count is not i_links_count).

        The kernel keeps the reference count in i_ctime's seconds (high 32 bits)
        and i_version (low 32 bits); the inode goes when it reaches zero.
        """
        ea = self._edit_inode(ea_ino)
        if not ea.flags & K.EA_INODE_FL:
            raise CorruptError(f"xattr value inode {ea_ino} is not an EA inode", where=f"inode {ea_ino}")
        ref = ((ea.ctime // _NS) & 0xFFFFFFFF) << 32 | (ea.version & 0xFFFFFFFF)
        if ref <= 1:
            ea.links_count = 0
            self._delete_inode(ea_ino, ea)
            return
        ref -= 1
        ea.ctime = (ref >> 32) * _NS
        ea.version = (ea.version & ~0xFFFFFFFF) | (ref & 0xFFFFFFFF)

    # ------------------------------------------------------------ paths
    def _parent_and_name(self, path: str | bytes | os.PathLike[str]) -> tuple[int, bytes, str]:
        shown = decode_name(encode_name(os.fspath(path)))
        parts = split_path(path)
        if not parts:
            raise InvalidPath(shown or "/", "the root directory cannot be used here")
        name = parts[-1]
        if name == b"..":
            raise InvalidPath(shown, "'..' cannot be the last component")
        if len(name) > K.NAME_LEN:
            raise NameTooLong(shown)
        parent = self._walk_parts(K.ROOT_INO, parts[:-1], True, shown, [0])
        if not self.inode(parent).is_dir():
            raise NotADirectory(shown)
        return parent, name, shown

    def _lookup_child(self, parent: int, name: bytes) -> int | None:
        found = self.lookup(parent, name)
        return None if found is None else found[0]

    # ======================================================== public API
    def write_file(
        self,
        path: str | bytes | os.PathLike[str],
        data: bytes | bytearray | memoryview | BinaryIO | str | os.PathLike[str],
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: float | int | None = None,
        replace: bool = True,
    ) -> int:
        """Create or replace a regular file; ``data`` is bytes, a binary stream, or a host path.

        An existing regular file is rewritten in place (same inode); anything
        else at ``path`` (a symlink, a device...) is replaced by a new file; a
        directory raises IsADirectory.  Returns the inode number.  Raises
        FileExists (replace=False), NoSpace, NotADirectory, NameTooLong.
        """
        _check_owner(uid, gid)
        with self._op():
            parent, name, shown = self._parent_and_name(path)
            existing = self._lookup_child(parent, name)
            now = self._now()
            if existing is not None:
                if not replace:
                    raise FileExists(shown)
                old = self.inode(existing)
                if old.is_dir():
                    raise IsADirectory(shown)
                if not old.is_reg():
                    self._unlink_entry(parent, name, existing)
                    existing = None
            if existing is None:
                ino = self.allocate_inode(parent, is_dir=False, name=name)
                inode = self._new_inode(K.S_IFREG | (mode & 0o7777), uid, gid, now)
                if self.extents_feature:
                    inode.flags |= K.EXTENTS_FL
                    inode.block = _empty_extent_root()
                self._put_inode(ino, inode)
                self._fill_file(ino, inode, data)
                if mtime is not None:
                    inode.mtime = _now_ns(mtime)
                self._put_inode(ino, inode)
                self._add_entry(parent, name, ino, inode.mode)
            else:
                ino = existing
                inode = self._edit_inode(ino)
                self._release_data(ino, inode)
                inode.mode = K.S_IFREG | (mode & 0o7777)
                inode.uid, inode.gid = uid, gid
                if self.extents_feature and not inode.has_extents():
                    if not inode.has_inline_data():
                        inode.flags |= K.EXTENTS_FL
                        inode.block = _empty_extent_root()
                self._fill_file(ino, inode, data)
                inode.ctime = now
                inode.mtime = _now_ns(mtime) if mtime is not None else now
                self._put_inode(ino, inode)
            return ino

    def _fill_file(self, ino: int, inode: Inode, data: Any) -> None:
        """Write ``data`` as the whole content of an empty inode."""
        if isinstance(data, (str, os.PathLike)):
            self._fill_from_host(ino, inode, os.fspath(data))
            return
        if isinstance(data, (bytes, bytearray, memoryview)):
            payload = bytes(data)
            if self._try_inline(ino, inode, payload):
                return
            self._fill_from_chunks(ino, inode, iter([payload]), len(payload))
            return
        if hasattr(data, "read"):
            stream: BinaryIO = data

            def chunks() -> Iterator[bytes]:
                while True:
                    chunk = stream.read(_DATA_CHUNK)
                    if not chunk:
                        return
                    yield bytes(chunk)

            self._fill_from_chunks(ino, inode, chunks(), None)
            return
        raise InvalidOptions(f"cannot write data of type {type(data).__name__}")

    def _try_inline(self, ino: int, inode: Inode, payload: bytes) -> bool:
        if not self.inline_data or len(payload) > 60 or self.geo.inode_size <= K.GOOD_OLD_INODE_SIZE:
            return False
        if not payload:
            return False
        entries = [e for e in self._ibody_xattrs(ino, inode) if e.key != X.INLINE_DATA_KEY]
        entries.insert(0, X.XattrEntry(X.INLINE_DATA_KEY[0], X.INLINE_DATA_KEY[1], b""))
        body = X.build_ibody(entries, self._ibody_space(inode))
        if body is None:
            return False
        inode.flags &= ~K.EXTENTS_FL
        inode.flags |= K.INLINE_DATA_FL
        inode.block = payload.ljust(60, b"\0")
        inode.tail = body
        inode.size = len(payload)
        inode.set_blocks_512(self._sectors(1 if inode.file_acl else 0), self.huge_file, self.block_size)
        self._map_cache.pop(ino, None)
        return True

    def _fill_from_chunks(self, ino: int, inode: Inode, chunks: Iterable[bytes], size_hint: int | None) -> None:
        bs = self.block_size
        extents: list[E.Extent] = []
        logical = 0
        size = 0
        goal = self._goal_for(ino)
        pending = bytearray()
        for chunk in chunks:
            pending += chunk
            size += len(chunk)
            whole = len(pending) // bs * bs
            if whole >= _DATA_CHUNK or (size_hint is not None and size == size_hint):
                take = whole if not (size_hint is not None and size == size_hint) else len(pending)
                goal, logical = self._write_blocks(extents, pending[:take], logical, goal)
                del pending[:take]
        if pending:
            goal, logical = self._write_blocks(extents, bytes(pending), logical, goal)
        self._set_mapping(ino, inode, extents, [])
        self._set_size(inode, size)
        self._put_inode(ino, inode)

    def _write_blocks(self, extents: list[E.Extent], data: bytes | bytearray, logical: int,
                      goal: int) -> tuple[int, int]:
        """Allocate blocks for ``data`` (zero-padded to whole blocks) and write it."""
        bs = self.block_size
        nblocks = -(-len(data) // bs)
        if nblocks == 0:
            return goal, logical
        runs = self.allocate_blocks(nblocks, goal)
        offset = 0
        for start, count in runs:
            piece = bytes(data[offset : offset + count * bs])
            if len(piece) < count * bs:
                piece += bytes(count * bs - len(piece))
            self._data_pwrite(start * bs, piece)
            extents.append(E.Extent(logical, start, count))
            logical += count
            offset += count * bs
            goal = start + count
        return goal, logical

    def _fill_from_host(self, ino: int, inode: Inode, host_path: str) -> None:
        """Copy a host file's data, keeping its holes (SEEK_DATA/SEEK_HOLE) and using copy_file_range."""
        bs = self.block_size
        fd = os.open(host_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            size = os.fstat(fd).st_size
            if size <= _SMALL_FILE:
                # Small files are read whole (holes in them are not worth two lseeks per file).
                payload = os.pread(fd, size + 1, 0)
                if len(payload) <= size:
                    if self._try_inline(ino, inode, payload):
                        return
                    self._fill_from_chunks(ino, inode, iter([payload]), len(payload))
                    return
            extents: list[E.Extent] = []
            goal = self._goal_for(ino)
            for start, end in _data_ranges(fd, size):
                first = start // bs
                last = -(-end // bs)
                count = last - first
                runs = self.allocate_blocks(count, goal)
                lg = first
                for rstart, rcount in runs:
                    src = lg * bs
                    length = min(rcount * bs, size - src)
                    if self._recycled_in(rstart, rcount):
                        chunk = os.pread(fd, length, src)
                        self._data_pwrite(rstart * bs, chunk.ljust(rcount * bs, b"\0"))
                    else:
                        self._copy_in(fd, src, rstart * bs, length)
                        if length < rcount * bs:
                            self.dev.pwrite(rstart * bs + length, bytes(rcount * bs - length))
                        self._data_written += rcount * bs
                        self._start_writeback(rstart * bs, rcount * bs)
                    extents.append(E.Extent(lg, rstart, rcount))
                    lg += rcount
                    goal = rstart + rcount
            self._set_mapping(ino, inode, extents, [])
            self._set_size(inode, size)
            self._put_inode(ino, inode)
        finally:
            os.close(fd)

    def _start_writeback(self, offset: int, length: int) -> None:
        """Start writing big runs of file data to the disk now, so that the final fsync has less to wait for."""
        fd = getattr(self.dev, "fd", -1)
        if length >= _WRITEBACK_MIN and fd >= 0 and hasattr(os, "posix_fadvise"):
            try:
                # For dirty pages this only queues their writeback (nothing is dropped before it is written).
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass

    def _copy_in(self, src_fd: int, src_offset: int, dst_offset: int, length: int) -> None:
        dst_fd = getattr(self.dev, "fd", -1)
        done = 0
        if dst_fd >= 0 and hasattr(os, "copy_file_range"):
            try:
                while done < length:
                    n = os.copy_file_range(src_fd, dst_fd, length - done, src_offset + done, dst_offset + done)
                    if n <= 0:
                        break
                    done += n
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
        while done < length:
            n = min(length - done, _DATA_CHUNK)
            chunk = os.pread(src_fd, n, src_offset + done)
            if not chunk:
                chunk = bytes(n)
            self.dev.pwrite(dst_offset + done, chunk)
            done += len(chunk)

    def mkdir(self, path: str | bytes | os.PathLike[str], mode: int = 0o755, uid: int = 0, gid: int = 0, *,
              parents: bool = False, exist_ok: bool = False) -> int:
        """Create a directory; returns its inode number."""
        with self._op():
            if parents:
                parts = split_path(path)
                current = K.ROOT_INO
                shown = decode_name(encode_name(os.fspath(path)))
                for i, part in enumerate(parts):
                    if part == b"..":
                        current = self._walk_parts(current, [b".."], True, shown, [0])
                        continue
                    child = self._lookup_child(current, part)
                    last = i == len(parts) - 1
                    if child is not None:
                        resolved = self._walk_parts(current, [part], True, shown, [0])
                        if not self.inode(resolved).is_dir():
                            raise FileExists(shown) if last else NotADirectory(shown)
                        if last and not exist_ok:
                            raise FileExists(shown)
                        current = resolved
                        continue
                    current = self._make_dir(current, part, mode, uid, gid)
                return current
            parent, name, shown = self._parent_and_name(path)
            existing = self._lookup_child(parent, name)
            if existing is not None:
                if exist_ok and self.inode(existing).is_dir():
                    return existing
                raise FileExists(shown)
            return self._make_dir(parent, name, mode, uid, gid)

    def _make_dir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> int:
        parent_inode = self.inode(parent)
        if parent_inode.links_count >= K.LINK_MAX and not self.sb.has_ro_compat("dir_nlink"):
            raise TooManyLinks(decode_name(name))
        now = self._now()
        ino = self.allocate_inode(parent, is_dir=True, name=name)
        inode = self._new_inode(K.S_IFDIR | (mode & 0o7777), uid, gid, now)
        inode.links_count = 2
        if self.extents_feature:
            inode.flags |= K.EXTENTS_FL
            inode.block = _empty_extent_root()
        self._put_inode(ino, inode)
        ft = K.FT_DIR if self.filetype else 0
        buf = D.build_leaf_block([(ino, b".", ft), (parent, b"..", ft)], block_size=self.block_size,
                                 filetype=self.filetype, csum=self.metadata_csum)
        self._append_dir_block(ino, inode, buf)
        self._add_entry(parent, name, ino, inode.mode)
        p = self._edit_inode(parent)
        if p.links_count >= K.LINK_MAX - 1 or p.links_count == 1:
            p.links_count = 1  # dir_nlink: too many to count
            if not self.sb.has_ro_compat("dir_nlink"):
                self._touch_sb()
                self.sb.set_feature("dir_nlink")
        else:
            p.links_count += 1
        return ino

    def symlink(self, target: str | bytes, path: str | bytes | os.PathLike[str], *, uid: int = 0, gid: int = 0,
                mode: int = 0o777, mtime: float | int | None = None) -> int:
        """Create a symbolic link ``path`` -> ``target`` (fast when under 60 bytes)."""
        raw_target = encode_name(target)
        if not raw_target or b"\0" in raw_target:
            raise InvalidPath(decode_name(raw_target), "invalid symlink target")
        if len(raw_target) > K.MAX_SYMLINK_LEN or len(raw_target) >= self.block_size:
            raise NameTooLong(decode_name(raw_target), "symlink target too long for one block")
        with self._op():
            parent, name, shown = self._parent_and_name(path)
            if self._lookup_child(parent, name) is not None:
                raise FileExists(shown)
            now = self._now()
            ino = self.allocate_inode(parent, is_dir=False, name=name)
            inode = self._new_inode(K.S_IFLNK | (mode & 0o7777), uid, gid, now)
            if len(raw_target) < 60:
                inode.block = raw_target.ljust(60, b"\0")
                inode.size = len(raw_target)
                self._put_inode(ino, inode)
            else:
                if self.extents_feature:
                    inode.flags |= K.EXTENTS_FL
                    inode.block = _empty_extent_root()
                self._put_inode(ino, inode)
                self._fill_from_chunks(ino, inode, iter([raw_target]), len(raw_target))
            if mtime is not None:
                inode.mtime = _now_ns(mtime)
            self._put_inode(ino, inode)
            self._add_entry(parent, name, ino, inode.mode)
            return ino

    def link(self, existing: str | bytes | os.PathLike[str], new: str | bytes | os.PathLike[str]) -> None:
        """A hard link ``new`` to the file ``existing`` (not to directories)."""
        with self._op():
            ino = self.resolve(existing, follow=False)
            inode = self.inode(ino)
            if inode.is_dir():
                raise IsADirectory(decode_name(encode_name(os.fspath(existing))), "hard links to directories are not allowed")
            parent, name, shown = self._parent_and_name(new)
            if self._lookup_child(parent, name) is not None:
                raise FileExists(shown)
            if inode.links_count >= K.LINK_MAX:
                raise TooManyLinks(shown)
            self._add_entry(parent, name, ino, inode.mode)
            inode = self._edit_inode(ino)
            inode.links_count += 1
            inode.ctime = self._now()

    def mknod(self, path: str | bytes | os.PathLike[str], mode: int, rdev: int | tuple[int, int] = 0, *,
              uid: int = 0, gid: int = 0, mtime: float | int | None = None) -> int:
        """A character or block device, fifo or socket; ``mode`` includes the type bits (S_IFCHR...)."""
        kind = mode & K.S_IFMT
        if kind not in (K.S_IFCHR, K.S_IFBLK, K.S_IFIFO, K.S_IFSOCK):
            raise InvalidOptions("mknod makes character or block devices, fifos and sockets")
        if isinstance(rdev, tuple):
            major, minor = rdev
        else:
            major, minor = os.major(rdev), os.minor(rdev)
        with self._op():
            parent, name, shown = self._parent_and_name(path)
            if self._lookup_child(parent, name) is not None:
                raise FileExists(shown)
            now = self._now()
            ino = self.allocate_inode(parent, is_dir=False, name=name)
            inode = self._new_inode(mode & (K.S_IFMT | 0o7777), uid, gid, now)
            if kind in (K.S_IFCHR, K.S_IFBLK):
                inode.set_rdev(major, minor)
            if mtime is not None:
                inode.mtime = _now_ns(mtime)
            self._put_inode(ino, inode)
            self._add_entry(parent, name, ino, inode.mode)
            return ino

    def _unlink_entry(self, parent: int, name: bytes, ino: int) -> None:
        self._remove_entry(parent, name)
        inode = self._edit_inode(ino)
        inode.links_count = max(0, inode.links_count - 1)
        inode.ctime = self._now()
        if inode.links_count == 0:
            self._delete_inode(ino, inode)

    def unlink(self, path: str | bytes | os.PathLike[str]) -> None:
        """Remove a non-directory name; the inode is freed with its last link."""
        with self._op():
            parent, name, shown = self._parent_and_name(path)
            ino = self._lookup_child(parent, name)
            if ino is None:
                raise FileNotFound(shown)
            if self.inode(ino).is_dir():
                raise IsADirectory(shown)
            self._unlink_entry(parent, name, ino)

    def rmdir(self, path: str | bytes | os.PathLike[str]) -> None:
        """Remove an empty directory."""
        with self._op():
            parent, name, shown = self._parent_and_name(path)
            ino = self._lookup_child(parent, name)
            if ino is None:
                raise FileNotFound(shown)
            inode = self.inode(ino)
            if not inode.is_dir():
                raise NotADirectory(shown)
            if self.dir_entries(ino, inode):
                raise DirectoryNotEmpty(shown)
            self._rmdir_entry(parent, name, ino)

    def _rmdir_entry(self, parent: int, name: bytes, ino: int) -> None:
        self._remove_entry(parent, name)
        inode = self._edit_inode(ino)
        inode.links_count = 0
        self._delete_inode(ino, inode)
        p = self._edit_inode(parent)
        if p.links_count > 2:
            p.links_count -= 1
        elif p.links_count == 1 and self.sb.has_ro_compat("dir_nlink"):
            pass
        p.ctime = p.mtime = self._now()

    def remove_tree(self, path: str | bytes | os.PathLike[str]) -> None:
        """Remove a directory and everything under it (or a single file)."""
        with self._op():
            parent, name, shown = self._parent_and_name(path)
            ino = self._lookup_child(parent, name)
            if ino is None:
                raise FileNotFound(shown)
            self._remove_recursive(parent, name, ino, set())

    def _remove_recursive(self, parent: int, name: bytes, ino: int, seen: set[int]) -> None:
        inode = self.inode(ino)
        if not inode.is_dir():
            self._unlink_entry(parent, name, ino)
            return
        if ino in seen:
            raise CorruptError("directory cycle", where=f"directory inode {ino}")
        seen.add(ino)
        for child_name, child, _ft in list(self.dir_entries(ino, inode)):
            self._remove_recursive(ino, child_name, child, seen)
        self._rmdir_entry(parent, name, ino)

    def rename(self, src: str | bytes | os.PathLike[str], dst: str | bytes | os.PathLike[str]) -> None:
        """Move ``src`` to ``dst``, replacing a file or an empty directory there (as rename(2))."""
        with self._op():
            sparent, sname, sshown = self._parent_and_name(src)
            dparent, dname, dshown = self._parent_and_name(dst)
            ino = self._lookup_child(sparent, sname)
            if ino is None:
                raise FileNotFound(sshown)
            inode = self.inode(ino)
            if sparent == dparent and sname == dname:
                return
            if inode.is_dir():
                # Refuse moving a directory into itself.
                probe = dparent
                for _ in range(4096):
                    if probe == ino:
                        raise InvalidPath(dshown, "cannot move a directory into itself")
                    if probe == K.ROOT_INO:
                        break
                    probe = self._parent_of(probe, self.inode(probe))
            target = self._lookup_child(dparent, dname)
            if target is not None:
                if target == ino:
                    return  # two names of one inode: rename(2) does nothing
                tinode = self.inode(target)
                if tinode.is_dir():
                    if not inode.is_dir():
                        raise IsADirectory(dshown)
                    if self.dir_entries(target, tinode):
                        raise DirectoryNotEmpty(dshown)
                    self._rmdir_entry(dparent, dname, target)
                else:
                    if inode.is_dir():
                        raise NotADirectory(dshown)
                    self._unlink_entry(dparent, dname, target)
            self._add_entry(dparent, dname, ino, inode.mode)
            self._remove_entry(sparent, sname)
            if inode.is_dir() and sparent != dparent:
                self._set_dotdot(ino, dparent)
                sp = self._edit_inode(sparent)
                if sp.links_count > 2:
                    sp.links_count -= 1
                dp = self._edit_inode(dparent)
                if dp.links_count != 1:
                    dp.links_count = 1 if dp.links_count >= K.LINK_MAX - 1 else dp.links_count + 1
            moved = self._edit_inode(ino)
            moved.ctime = self._now()

    def chmod(self, path: str | bytes | os.PathLike[str], mode: int, *, follow_symlinks: bool = True) -> None:
        with self._op():
            ino = self.resolve(path, follow=follow_symlinks)
            inode = self._edit_inode(ino)
            inode.mode = (inode.mode & K.S_IFMT) | (mode & 0o7777)
            inode.ctime = self._now()

    def chown(self, path: str | bytes | os.PathLike[str], uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        _check_owner(uid, gid)
        with self._op():
            ino = self.resolve(path, follow=follow_symlinks)
            inode = self._edit_inode(ino)
            inode.uid, inode.gid = uid, gid
            inode.ctime = self._now()

    def utime(self, path: str | bytes | os.PathLike[str], times: tuple[float, float] | None = None, *,
              ns: tuple[int, int] | None = None, follow_symlinks: bool = True) -> None:
        """Set atime and mtime (seconds, or ns=...), like os.utime; None means now."""
        with self._op():
            ino = self.resolve(path, follow=follow_symlinks)
            inode = self._edit_inode(ino)
            now = self._now()
            if ns is not None:
                inode.atime, inode.mtime = int(ns[0]), int(ns[1])
            elif times is not None:
                inode.atime, inode.mtime = int(times[0] * _NS), int(times[1] * _NS)
            else:
                inode.atime = inode.mtime = now
            inode.ctime = now

    def set_times(self, ino: int, *, atime: int | None = None, mtime: int | None = None, ctime: int | None = None,
                  crtime: int | None = None) -> None:
        """Set any of an inode's times (ns) directly — for tools that reproduce a tree exactly."""
        with self._op():
            inode = self._edit_inode(ino)
            if atime is not None:
                inode.atime = atime
            if mtime is not None:
                inode.mtime = mtime
            if ctime is not None:
                inode.ctime = ctime
            if crtime is not None:
                inode.crtime = crtime

    def truncate(self, path: str | bytes | os.PathLike[str], size: int) -> None:
        """Cut or extend (with a hole) a regular file to ``size`` bytes."""
        if size < 0:
            raise InvalidOptions("size must be >= 0")
        with self._op():
            ino = self.resolve(path)
            inode = self.inode(ino)
            if inode.is_dir():
                raise IsADirectory(decode_name(encode_name(os.fspath(path))))
            if not inode.is_reg():
                raise InvalidOptions("only regular files can be truncated")
            if size > self._max_size(inode):
                raise InvalidOptions(f"a file of {size} bytes is larger than this filesystem allows (EFBIG)")
            inode = self._edit_inode(ino)
            bs = self.block_size
            if inode.has_inline_data():
                data = self.inline_bytes(ino, inode)[: inode.size]
                self._release_data(ino, inode)
                if self.extents_feature:
                    inode.flags |= K.EXTENTS_FL
                    inode.block = _empty_extent_root()
                payload = data[:size].ljust(size, b"\0") if size <= len(data) + (1 << 20) else None
                if payload is not None and self._try_inline(ino, inode, payload):
                    pass
                elif payload is not None:
                    self._fill_from_chunks(ino, inode, iter([payload]), len(payload))
                else:
                    self._fill_from_chunks(ino, inode, iter([data]), len(data))
                    self._set_size(inode, size)
            else:
                extents, meta = self._mapping_blocks(ino, inode)
                keep_blocks = -(-size // bs)
                new_extents: list[E.Extent] = []
                for ext in extents:
                    if ext.logical >= keep_blocks:
                        self.free_blocks(ext.physical, ext.length)
                    elif ext.logical + ext.length > keep_blocks:
                        cut = keep_blocks - ext.logical
                        self.free_blocks(ext.physical + cut, ext.length - cut)
                        new_extents.append(E.Extent(ext.logical, ext.physical, cut, ext.unwritten))
                    else:
                        new_extents.append(ext)
                # The mapping first: it may still refuse (a tree block already free, no space).
                self._set_mapping(ino, inode, new_extents, meta)
                if size % bs and size < inode.size:
                    # zero the tail of the last kept block, as the kernel does
                    last = size // bs
                    for ext in new_extents:
                        if ext.logical <= last < ext.logical + ext.length and not ext.unwritten:
                            phys = ext.physical + last - ext.logical
                            self._data_pwrite(phys * bs + size % bs, bytes(bs - size % bs))
                self._set_size(inode, size)
            now = self._now()
            inode.mtime = inode.ctime = now
            self._put_inode(ino, inode)

    def write_at(self, path: str | bytes | os.PathLike[str], offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` into an existing regular file at ``offset`` (like pwrite), growing it if needed.

        Blocks already mapped are overwritten in place; holes (and a gap past the
        end) get new blocks only where ``data`` lands.  Returns the new size.
        Raises IsADirectory, InvalidOptions (not a regular file), NoSpace.
        """
        if offset < 0:
            raise InvalidOptions("offset must be >= 0")
        payload = bytes(data)
        with self._op():
            ino = self.resolve(path)
            inode = self.inode(ino)
            if inode.is_dir():
                raise IsADirectory(decode_name(encode_name(os.fspath(path))))
            if not inode.is_reg():
                raise InvalidOptions("only regular files can be written into")
            inode = self._edit_inode(ino)
            end = offset + len(payload)
            if not payload:
                return int(inode.size)
            if inode.has_inline_data():
                old = self.inline_bytes(ino, inode)[: inode.size]
                content = bytearray(old.ljust(max(len(old), end), b"\0"))
                if end <= 60:
                    content[offset:end] = payload
                    self._release_data(ino, inode)
                    if self._try_inline(ino, inode, bytes(content)):
                        self._finish_write(inode)
                        return int(inode.size)
                    self._convert_to_blocks(ino, inode, bytes(content))
                    self._finish_write(inode)
                    return int(inode.size)
                self._release_data(ino, inode)
                self._convert_to_blocks(ino, inode, old)
            if end > self._max_size(inode):
                raise InvalidOptions(f"a file of {end} bytes is larger than this filesystem allows (EFBIG)")
            if inode.size > self._max_size(inode):  # refused here, before any data is written
                raise CorruptError(f"i_size {inode.size} is larger than this inode can map", where=f"inode {ino}")
            self._write_range(ino, inode, offset, payload)
            self._set_size(inode, max(inode.size, end))
            self._finish_write(inode)
            return int(inode.size)

    def _finish_write(self, inode: Inode) -> None:
        now = self._now()
        inode.mtime = inode.ctime = now

    def _convert_to_blocks(self, ino: int, inode: Inode, content: bytes) -> None:
        """Give an inode that had inline data an ordinary (extent or block) mapping holding ``content``."""
        inode.flags &= ~K.INLINE_DATA_FL
        if self.extents_feature:
            inode.flags |= K.EXTENTS_FL
            inode.block = _empty_extent_root()
        else:
            inode.block = bytes(60)
        self._fill_from_chunks(ino, inode, iter([content]), len(content))

    def _write_range(self, ino: int, inode: Inode, offset: int, payload: bytes) -> None:
        """Overwrite mapped blocks in place and map new blocks for the unmapped parts of the range."""
        bs = self.block_size
        end = offset + len(payload)
        first = offset // bs
        last = (end - 1) // bs
        extents, meta = self._mapping_blocks(ino, inode)
        old_size = inode.size

        def block_bytes(logical: int, count: int, physical: int | None, zero_base: bool) -> bytes:
            """Contents for ``count`` blocks starting at ``logical``: payload over the old (or zero) data."""
            start = logical * bs
            stop = start + count * bs
            lo = max(start, offset)
            hi = min(stop, end)
            if lo == start and hi == stop:
                return payload[lo - offset : hi - offset]
            if zero_base or physical is None:
                base = bytearray(count * bs)
            else:
                base = bytearray(self._data_pread(physical * bs, count * bs))
            base[lo - start : hi - start] = payload[lo - offset : hi - offset]
            return bytes(base)

        limit = (1 << 32) if inode.has_extents() else blockmap_capacity(bs)
        if last >= limit:
            raise InvalidOptions(f"offset {end} is beyond the largest file this inode can map")
        overlapping = [e for e in extents if e.logical <= last and e.logical + e.length - 1 >= first]
        # The holes in [first, last] get new blocks: allocate them all before writing anything.
        holes: list[tuple[int, int]] = []
        pos = first
        for ext in overlapping:
            lo = max(ext.logical, first)
            if lo > pos:
                holes.append((pos, lo - pos))
            pos = max(pos, ext.logical + ext.length)
        if pos <= last:
            holes.append((pos, last - pos + 1))
        goal = self._goal_for(ino, inode)
        before = [e for e in extents if e.logical < first]
        if before:
            prev = before[-1]
            goal = prev.physical + prev.length + max(0, first - prev.logical - prev.length)
        fresh: list[E.Extent] = []
        for logical, count in holes:
            for start, n in self.allocate_blocks(count, goal):
                fresh.append(E.Extent(logical, start, n))
                logical += n
                goal = start + n
        overlap_ids = {id(e) for e in overlapping}
        new_extents: list[E.Extent] = [e for e in extents if id(e) not in overlap_ids]
        writes: list[tuple[int, int, int, bool]] = []  # (logical, count, physical, start from zeros)
        for ext in overlapping:
            e_first, e_last = ext.logical, ext.logical + ext.length - 1
            lo, hi = max(e_first, first), min(e_last, last)
            phys_lo = ext.physical + lo - e_first
            writes.append((lo, hi - lo + 1, phys_lo, ext.unwritten))
            if ext.unwritten:
                if lo > e_first:
                    new_extents.append(E.Extent(e_first, ext.physical, lo - e_first, True))
                new_extents.append(E.Extent(lo, phys_lo, hi - lo + 1, False))
                if hi < e_last:
                    new_extents.append(E.Extent(hi + 1, phys_lo + hi - lo + 1, e_last - hi, True))
            else:
                new_extents.append(ext)
        for ext in fresh:
            writes.append((ext.logical, ext.length, ext.physical, True))
            new_extents.append(ext)
        # Mapping blocks are allocated (or NoSpace raised) before any data is overwritten.
        self._set_mapping(ino, inode, new_extents, meta)
        # Bytes between the old end and the write must read as zeros: clear the old last block's tail.
        if offset > old_size and old_size % bs:
            tail_block = old_size // bs
            for ext in extents:
                if ext.logical <= tail_block < ext.logical + ext.length and not ext.unwritten:
                    phys = ext.physical + tail_block - ext.logical
                    stop = min(bs, offset - tail_block * bs)
                    cut = old_size % bs
                    if stop > cut:
                        self._data_pwrite(phys * bs + cut, bytes(stop - cut))
        for logical, count, physical, zero_base in writes:
            self._data_pwrite(physical * bs, block_bytes(logical, count, physical, zero_base))

    # ---------------------------------------------------------- xattrs
    def setxattr(self, path: str | bytes | os.PathLike[str], name: str | bytes, value: bytes, *,
                 follow_symlinks: bool = False) -> None:
        """Set an extended attribute (``user.x``, ``security.selinux``, ``system.posix_acl_access``...)."""
        full = decode_name(encode_name(name))
        if full == "system.data":
            raise InvalidOptions("system.data is reserved for inline data")
        if full in ("system.posix_acl_access", "system.posix_acl_default"):
            value = X.acl_xattr_to_disk(value)
        with self._op():
            ino = self.resolve(path, follow=follow_symlinks)
            entries = [e for e in self.xattr_entries(ino) if e.full_name != full]
            entries.append(X.XattrEntry.from_name(full, bytes(value)))
            self._store_xattrs(ino, entries)

    def removexattr(self, path: str | bytes | os.PathLike[str], name: str | bytes, *, follow_symlinks: bool = False) -> None:
        full = decode_name(encode_name(name))
        with self._op():
            ino = self.resolve(path, follow=follow_symlinks)
            entries = self.xattr_entries(ino)
            kept = [e for e in entries if e.full_name != full]
            if len(kept) == len(entries):
                raise FileNotFound(decode_name(encode_name(os.fspath(path))), f"no attribute {full}")
            self._store_xattrs(ino, kept)

    def set_xattrs(self, ino: int, values: dict[str, bytes]) -> None:
        """Replace all of an inode's extended attributes (system.data is kept)."""
        with self._op():
            entries = [e for e in self.xattr_entries(ino) if e.key == X.INLINE_DATA_KEY]
            for name, value in values.items():
                if name in ("system.posix_acl_access", "system.posix_acl_default"):
                    value = X.acl_xattr_to_disk(value)
                entries.append(X.XattrEntry.from_name(name, bytes(value)))
            self._store_xattrs(ino, entries)

    def _store_xattrs(self, ino: int, entries: list[X.XattrEntry]) -> None:
        inode = self._edit_inode(ino)
        for e in entries:
            if e.value_inum:
                raise InvalidOptions("pyext4 cannot rewrite xattrs stored in EA inodes yet")
        space = self._ibody_space(inode) if self.geo.inode_size > K.GOOD_OLD_INODE_SIZE else 0
        plan = X.plan_storage(entries, space, self.block_size, ea_inode=False)
        ibody = list(plan.ibody)
        block_entries = list(plan.block)
        if self.geo.inode_size > K.GOOD_OLD_INODE_SIZE:
            self._store_ibody(inode, ibody)
        elif ibody:
            block_entries = ibody + block_entries
        old_block = inode.file_acl
        if block_entries:
            buf = X.build_block(block_entries, self.block_size)
            if old_block:
                raw = self.read_block(old_block)
                parsed = X.parse_block(raw, block_nr=old_block, where=f"inode {ino} xattr block")
                if parsed.refcount > 1:
                    self._release_xattr_block(ino, inode)
                    old_block = 0
            if not old_block:
                [(old_block, _)] = self.allocate_blocks(1, self._goal_for(ino))
                inode.file_acl = old_block
                inode.set_blocks_512(inode.blocks_in_512(self.huge_file, self.block_size) + self._sectors(1),
                                     self.huge_file, self.block_size)
            if self.metadata_csum:
                X.set_block_csum(self.seed, old_block, buf)
            self._put_block(old_block, buf)
        elif old_block:
            self._release_xattr_block(ino, inode)
        inode.ctime = self._now()
        self._put_inode(ino, inode)

    # ------------------------------------------------------------- flush
    def flush(self) -> None:
        """Write every staged change: metadata blocks and inodes, bitmaps, descriptors, superblock; fsync."""
        if self._undo is not None:
            raise Ext4Error("flush() inside an operation")
        bs = self.block_size
        geo = self.geo
        dev = self.dev
        # Order (a crash part-way leaves every older structure readable and e2fsck -fy able to repair):
        # 0. file data held back for blocks freed earlier in this session;
        # 1. metadata blocks allocated since the last flush (nothing on disk points at them yet);
        # 2. inodes allocated since the last flush;
        # 3. existing live inodes (their new mappings point at blocks from 1);
        # 4. existing metadata blocks: mapping blocks, then htree index blocks, then the rest
        #    (directory leaves: entries stay reachable through the index);
        # 5. inodes being deleted (after the entries naming them are gone);
        # 6. bitmaps, 7. group descriptors, 8. the superblock; then fsync.
        for block in sorted(self._deferred):
            dev.pwrite(block * bs, self._deferred[block])
        fresh_blocks = [b for b in self._dirty_blocks if self._in_mask(self._fresh, b)]
        fresh_set = set(fresh_blocks)
        for block in sorted(fresh_blocks):
            dev.pwrite(block * bs, self._dirty_blocks[block])
        dead = [ino for ino, inode in self._dirty_inodes.items() if inode.links_count == 0 and inode.dtime]
        dead_set = set(dead)
        fresh_inodes = [ino for ino in self._dirty_inodes if ino in self._fresh_inodes and ino not in dead_set]
        live = [ino for ino in self._dirty_inodes if ino not in self._fresh_inodes and ino not in dead_set]
        self._write_inodes(fresh_inodes)
        self._write_inodes(live)
        existing = sorted((b for b in self._dirty_blocks if b not in fresh_set),
                          key=lambda b: (self._block_priority.get(b, 2), b))
        for block in existing:
            dev.pwrite(block * bs, self._dirty_blocks[block])
        self._write_inodes(dead)
        # 3. bitmaps (their checksums live in the descriptors)
        for group in sorted(self._dirty_bb):
            bm = self._bb[group]
            desc = self.group_desc(group)
            raw = bm.to_bytes(bs)
            if self.metadata_csum:
                crc = bitmap_csum(self.seed, raw[: geo.blocks_per_group // 8])
                desc.block_bitmap_csum = crc if geo.desc_size >= 64 else crc & 0xFFFF
            dev.pwrite(desc.block_bitmap * bs, raw)
            self._dirty_desc.add(group)
        for group in sorted(self._dirty_ib):
            bm = self._ib[group]
            desc = self.group_desc(group)
            raw = bm.to_bytes(bs)
            if self.metadata_csum:
                crc = bitmap_csum(self.seed, raw[: self._ipg // 8])
                desc.inode_bitmap_csum = crc if geo.desc_size >= 64 else crc & 0xFFFF
            dev.pwrite(desc.inode_bitmap * bs, raw)
            self._dirty_desc.add(group)
        # 4. group descriptors (primary table; backups are left as the kernel leaves them)
        by_desc_block: dict[int, list[int]] = {}
        for group in self._dirty_desc:
            by_desc_block.setdefault(group // geo.desc_per_block, []).append(group)
        for index, groups in sorted(by_desc_block.items()):
            block = geo.descriptor_block(index)
            buf = bytearray(self._desc_block_cache.get_item(index) or Filesystem.read_block(self, block))
            for group in groups:
                desc = self.group_desc(group)
                raw = self._desc_csum.pack(group, desc)
                off = (group % geo.desc_per_block) * geo.desc_size
                buf[off : off + geo.desc_size] = raw
            dev.pwrite(block * bs, buf)
            self._desc_block_cache.put(index, bytes(buf))
        # 5. superblock
        if self._sb_dirty or self._dirty_blocks or self._dirty_inodes or self._data_written:
            sb = self.sb
            sb.wtime = self._now() // _NS
            written = (getattr(dev, "bytes_written", 0) + self._data_written) // 1024
            if sb["s_kbytes_written"]:
                sb["s_kbytes_written"] += max(1, written - getattr(self, "_kb_reported", 0))
                self._kb_reported = written
            dev.pwrite(K.SUPERBLOCK_OFFSET, sb.pack())
        dev.sync()
        self._dirty_blocks.clear()
        self._deferred.clear()
        self._recycled.clear()
        self._fresh.clear()
        self._fresh_inodes.clear()
        self._block_priority.clear()
        self._dirty_inodes.clear()
        self._dirty_bb.clear()
        self._dirty_ib.clear()
        self._dirty_desc.clear()
        self._sb_dirty = False
        self._data_written = 0
        self._itable_cache.clear()

    def _write_inodes(self, inos: list[int]) -> None:
        """Write staged inodes, read-modify-write per inode table block."""
        geo = self.geo
        bs = self.block_size
        by_block: dict[int, list[int]] = {}
        for ino in inos:
            group, index = divmod(ino - 1, self._ipg)
            desc = self.group_desc(group)
            by_block.setdefault(desc.inode_table + index * geo.inode_size // bs, []).append(ino)
        for block, members in sorted(by_block.items()):
            group = geo.group_of_ino(members[0])
            desc = self.group_desc(group)
            zeroed = not self.sb.group_desc_csum or desc.flags & K.BG_INODE_ZEROED
            try:
                buf = bytearray(Filesystem.read_block(self, block))
            except Ext4Error:
                buf = bytearray(bs)
            if not zeroed and all(self._is_fresh_table_block(group, block, set(members))):
                buf = bytearray(bs)
            for ino in members:
                off = ((ino - 1) % self._ipg * geo.inode_size) % bs
                buf[off : off + geo.inode_size] = self._pack_inode(ino, self._dirty_inodes[ino])
            self.dev.pwrite(block * bs, buf)
            self._itable_cache.pop(block, None)

    def _in_mask(self, masks: dict[int, int], block: int) -> bool:
        """Whether ``block`` is set in per-group bit masks (``_fresh``, ``_recycled``)."""
        group = self.geo.group_of_block(block)
        mask = masks.get(group)
        return bool(mask and (mask >> (block - self.geo.group_first_block(group))) & 1)

    def _is_fresh_table_block(self, group: int, block: int, members: set[int]) -> Iterator[bool]:
        """Whether an inode table block (of a table never zeroed) may start from zeros.

        True when every inode in it is unused or among ``members``, the inodes
        about to be written into it: nothing else there is worth keeping.
        """
        geo = self.geo
        desc = self.group_desc(group)
        per_block = self.block_size // geo.inode_size
        first_index = (block - desc.inode_table) * per_block
        try:
            bm = self._inode_bitmap(group)
        except Ext4Error:
            # Only operations that edit existing inodes touched this group, so its bitmap was never
            # checked; flush must not fail half-way: keep the block's other inodes as they are.
            yield False
            return
        for index in range(first_index, min(first_index + per_block, self._ipg)):
            ino = group * self._ipg + index + 1
            yield not bm.test(index) or ino in members

    def close(self) -> None:
        if not self._closed:
            try:
                if self._undo is None:
                    self.flush()
            finally:
                super().close()

    def abandon(self) -> None:
        """Close without committing: nothing changed since the last flush() reaches the image's
        metadata (file data may have gone to blocks the image still counts as free).  For a caller
        that wants a whole session to be all or nothing."""
        if not self._closed:
            super().close()


register_writable_opener(WritableFilesystem.open_writable)


def _restorer(table: dict[int, bytes], key: int) -> Callable[[], None]:
    """An undo action putting ``table[key]`` back as it is now (absent included)."""
    old = table.get(key)

    def restore() -> None:
        if old is None:
            table.pop(key, None)
        else:
            table[key] = old

    return restore


def _after_dot(buf: bytes | bytearray, block_size: int) -> int:
    """Where new entries may start in a directory's first block: after '.' (its slack must stay empty,
    since '..' has to be the second entry; e2fsck leaves a '.' of rec_len 24 unsplit).  0 if no '.'."""
    if buf[6] != 1 or buf[8:9] != b".":
        return 0
    rec_len = D.rec_len_from_disk(int.from_bytes(buf[4:6], "little"), block_size)
    return rec_len if 12 <= rec_len < block_size and not rec_len & 3 else 0


def _check_owner(uid: int, gid: int) -> None:
    """uid/gid must fit 32 bits; (u32)-1 is not an owner (chown(2) reads it as "leave unchanged")."""
    if not (0 <= uid < 0xFFFFFFFF and 0 <= gid < 0xFFFFFFFF):
        raise InvalidOptions(f"owner {uid}:{gid} is out of range (0..4294967294)")


def _empty_extent_root() -> bytes:
    buf = bytearray(60)
    buf[0:12] = (K.EXT4_EXT_MAGIC).to_bytes(2, "little") + (0).to_bytes(2, "little") + (4).to_bytes(2, "little") + bytes(6)
    return bytes(buf)


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The data (non-hole) ranges of a host file, via SEEK_DATA/SEEK_HOLE."""
    if size == 0:
        return
    pos = 0
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        yield 0, size
        return
    while pos < size:
        try:
            start = os.lseek(fd, pos, seek_data)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            if exc.errno == errno.EINVAL:
                yield pos, size
                return
            raise
        end = os.lseek(fd, start, seek_hole)
        end = min(end, size)
        if end > start:
            yield start, end
        pos = end


__all__ = ["WritableFilesystem", "mounted_reason", "NeedsRecovery"]
