"""mkfs: plan an empty ext4 filesystem with mke2fs's geometry and write only the metadata it needs.

The plan mirrors mke2fs 1.47 step by step (ext2fs_initialize, the flex_bg
table allocator, root and lost+found, the resize inode, the journal) so that
``dumpe2fs`` of both agree.  Memory stays bounded at any size: table
placement is computed one flex group at a time and descriptors are streamed
to disk block by block; only a handful of groups (0, the journal's, the last)
ever get an explicit bitmap.  The file is first cut to zero length and
resized, so everything not written reads as zeros and stays a hole.
"""

from __future__ import annotations

import os
import struct
import sys
import time as _time
import uuid as _uuid
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import _codecs as C
from . import constants as K
from .bitmap import Bitmap, RangeSet
from .blockdev import Device, FileDevice
from .csum import (
    bitmap_csum,
    crc32c_raw,
    dir_block_csum,
    extent_block_csum,
    fs_seed,
    inode_seed,
    jbd2_superblock_csum,
)
from .errors import Ext4Error, InvalidOptions
from .geometry import Geometry
from .inode import Inode, set_checksum
from .superblock import Superblock

DEFAULT_FEATURES = (
    "has_journal", "ext_attr", "resize_inode", "dir_index", "filetype", "extent", "64bit",
    "flex_bg", "sparse_super", "large_file", "huge_file", "dir_nlink", "extra_isize",
    "metadata_csum",
)
# Features mkfs can create (others are refused with InvalidOptions).
SUPPORTED_FEATURES = frozenset(DEFAULT_FEATURES) | {
    "uninit_bg", "meta_bg", "large_dir", "metadata_csum_seed", "sparse_super2",
}
MAX_32 = (1 << 32) - 1
_U32 = struct.Struct("<I")


# ================================================================ options
def parse_size(text: str | int) -> int:
    """Bytes from ``"64M"``, ``"1G"``, ``"512K"``, ``"2T"`` or a plain number of bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
    mult = 1
    if s and s[-1].upper() in units:
        mult = units[s[-1].upper()]
        s = s[:-1]
    elif s.lower().endswith(("kib", "mib", "gib", "tib")):
        mult = units[s[-4].upper()]
        s = s[:-3]
    try:
        value = float(s) if "." in s else int(s, 0)
    except ValueError:
        raise InvalidOptions(f"invalid size {text!r} (use a number with an optional K, M, G or T suffix)") from None
    if value < 0:
        raise InvalidOptions(f"invalid size {text!r}")
    return int(value * mult)


def resolve_features(spec: Iterable[str] | str | None) -> set[str]:
    """The feature set from mke2fs-style edits (``"^has_journal,uninit_bg"``) of the ext4 defaults."""
    features = set(DEFAULT_FEATURES)
    if spec is None:
        return features
    items: list[str] = []
    for part in [spec] if isinstance(spec, str) else spec:
        items.extend(p.strip() for p in part.split(",") if p.strip())
    for item in items:
        off = item.startswith(("^", "-"))
        name = item.lstrip("^-+")
        name = K.FEATURE_ALIASES.get(name, name)
        if name == "none":
            features.clear()
            continue
        if name not in K.COMPAT and name not in K.INCOMPAT and name not in K.RO_COMPAT:
            raise InvalidOptions(f"unknown filesystem feature {name!r}")
        if off:
            features.discard(name)
        else:
            if name not in SUPPORTED_FEATURES:
                raise InvalidOptions(f"pyext4 mkfs cannot create the {name!r} feature")
            features.add(name)
    return features


def _check_uuid(value: str | bytes | _uuid.UUID | None, what: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, _uuid.UUID):
        return value.bytes
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 16:
            raise InvalidOptions(f"{what} must be 16 bytes")
        return bytes(value)
    text = str(value)
    if text.lower() in ("null", "clear"):
        return bytes(16)
    try:
        return _uuid.UUID(text).bytes
    except ValueError:
        raise InvalidOptions(f"invalid {what} {text!r}") from None


@dataclass
class MkfsOptions:
    """Validated mkfs parameters (sizes in bytes, times in seconds)."""

    size: int
    block_size: int = 4096
    inode_size: int = 256
    inode_ratio: int = 16384
    inodes: int | None = None
    features: set[str] = field(default_factory=lambda: set(DEFAULT_FEATURES))
    label: str = ""
    uuid: bytes = bytes(16)
    hash_seed: bytes = bytes(16)
    root_owner: tuple[int, int] = (0, 0)
    journal_blocks: int | None = None
    now: int = 0
    reserved_ratio: float = 5.0
    flex_bg_size: int = 16
    hash_alg: int = K.HASH_HALF_MD4
    itable_zeroed: bool = True


# ================================================================== plan
@dataclass
class FlexShape:
    """Table placement of one flex group, relative to its first group and first block."""

    tables: list[tuple[int, int, int]]
    used: RangeSet  # backups + tables
    table_blocks_in: dict[int, int]  # relative group -> table blocks located in it
    touched: set[int]  # relative groups whose BLOCK_UNINIT the allocation clears


class FlexAlloc:
    """A FlexShape placed at its flex group."""

    __slots__ = ("first_group", "base", "shape")

    def __init__(self, first_group: int, base: int, shape: FlexShape) -> None:
        self.first_group = first_group
        self.base = base
        self.shape = shape

    def tables_of(self, group: int) -> tuple[int, int, int]:
        bb, ib, it = self.shape.tables[group - self.first_group]
        b = self.base
        return bb + b, ib + b, it + b

    def used_ranges_in(self, start: int, end: int) -> list[tuple[int, int]]:
        b = self.base
        return [(s + b, e + b) for s, e in self.shape.used.ranges_in(start - b, end - b)]

    def table_blocks_in(self, group: int) -> int:
        return self.shape.table_blocks_in.get(group - self.first_group, 0)

    def touched(self, group: int) -> bool:
        return (group - self.first_group) in self.shape.touched


@dataclass
class Plan:
    """Everything mkfs decided; the writer only encodes it."""

    opts: MkfsOptions
    geo: Geometry
    sb: Superblock
    features: set[str]
    csum: bool  # group descriptors carry checksums (uninit flags in use)
    metadata_csum: bool
    seed: int
    extra: RangeSet  # blocks allocated after the tables (dirs, resize, journal)
    extra_by_group: dict[int, int]
    uninit_cleared: set[int]  # groups that lost BLOCK_UNINIT through extra allocations
    root_block: int
    lpf_blocks: list[int]
    lpf_ino: int
    resize_dind: int
    journal_extents: list[tuple[int, int, int]]  # (logical, physical, length)
    journal_index_block: int
    journal_blocks: int
    inode_usage: dict[int, tuple[int, int, int]]  # group -> (inodes used, dirs, itable_unused)
    flex_cache: dict[int, FlexAlloc] = field(default_factory=dict)
    shape_cache: dict[tuple[Any, ...], FlexShape] = field(default_factory=dict)

    # ------------------------------------------------------------ queries
    @property
    def groups_per_flex(self) -> int:
        return self.geo.groups_per_flex if self.geo.log_groups_per_flex else 1

    def flex(self, group: int) -> FlexAlloc:
        index = group // self.groups_per_flex
        alloc = self.flex_cache.get(index)
        if alloc is None:
            if len(self.flex_cache) > 64:
                self.flex_cache.clear()
            alloc = place_flex_group(self.geo, index, self.groups_per_flex, self.shape_cache)
            self.flex_cache[index] = alloc
        return alloc

    def tables(self, group: int) -> tuple[int, int, int]:
        return self.flex(group).tables_of(group)


def _backup_used(geo: Geometry, group: int) -> list[tuple[int, int]]:
    """Blocks reserve_super_and_bgd marks in ``group``, as (start, count) runs."""
    loc = geo.super_and_desc(group)
    runs = []
    if loc.super_block or group == 0:
        runs.append((loc.super_block, 1))
    if loc.old_desc_block:
        count = loc.old_desc_blocks
        if loc.old_desc_block + count >= geo.blocks_count:
            count = geo.blocks_count - loc.old_desc_block
        runs.append((loc.old_desc_block, count))
    if loc.new_desc_block:
        runs.append((loc.new_desc_block, 1))
    return runs


def _get_free_blocks(geo: Geometry, used: RangeSet, start: int, finish: int, num: int) -> int:
    """ext2fs_get_free_blocks2: first b in [start, finish) with num free blocks, or -1."""
    if not start:
        start = geo.first_data_block
    if finish <= start:
        finish = geo.blocks_count
    limit = min(finish, geo.blocks_count - num + 1)
    if start >= limit:
        return -1
    return used.find_free_run(start, limit, num)


def _flex_signature(geo: Geometry, flex_index: int, flex_size: int) -> tuple[Any, ...] | None:
    """What the placement of one flex group depends on, relative to its first block."""
    first = flex_index * flex_size
    last = min(first + flex_size - 1, geo.group_count - 1)
    if last >= geo.group_count - 2:
        return None  # the end of the filesystem: compute it directly
    base = geo.group_first_block(first)
    runs = []
    for g in range(first, last + 2):
        if geo.has_super(g) or geo.meta_bg:
            runs.append((g - first, tuple((s - base, n) for s, n in _backup_used(geo, g))))
    return (last - first, tuple(runs))


def place_flex_group(
    geo: Geometry, flex_index: int, flex_size: int, cache: dict[tuple[Any, ...], FlexShape]
) -> FlexAlloc:
    """The placement of one flex group, reusing the shape of an identical earlier one."""
    first = flex_index * flex_size
    base = geo.group_first_block(first)
    key = _flex_signature(geo, flex_index, flex_size)
    shape = cache.get(key) if key is not None else None
    if shape is None:
        shape, relocatable = allocate_flex_group(geo, flex_index, flex_size)
        if key is not None and relocatable:
            if len(cache) > 256:
                cache.clear()
            cache[key] = shape
    return FlexAlloc(first, base, shape)


def allocate_flex_group(geo: Geometry, flex_index: int, flex_size: int) -> tuple[FlexShape, bool]:
    """Place the bitmaps and inode tables of one flex group as ext2fs_allocate_group_table does.

    Returns the shape relative to the group's first block, and whether it may be
    reused at another offset (false when a search fell back to the whole disk).
    """
    first = flex_index * flex_size
    last = min(first + flex_size - 1, geo.group_count - 1)
    used = RangeSet()
    # Backups of this range and the next group (searches may peek just past the range).
    for g in range(first, min(last + 2, geo.group_count)):
        for start, count in _backup_used(geo, g):
            used.add(start, count)
    ipb = geo.inode_table_blocks
    tables: list[tuple[int, int, int]] = []
    table_blocks_in: dict[int, int] = {}
    touched: set[int] = set()
    flexbg = flex_size > 1
    relocatable = [True]

    def account(block: int, count: int) -> None:
        while count:
            g = geo.group_of_block(block)
            n = min(count, geo.group_last_block(g) - block + 1)
            table_blocks_in[g] = table_blocks_in.get(g, 0) + n
            if flexbg:
                touched.add(g)
            block += n
            count -= n

    def flexbg_offset(group: int, start_blk: int, rem_grp: int, elem_size: int) -> int:
        size = rem_grp * elem_size
        if size > geo.blocks_per_group // 4:
            size = geo.blocks_per_group // 4
        if start_blk and start_blk < geo.blocks_count:
            b = _get_free_blocks(geo, used, start_blk, start_blk + size, elem_size)
            if b >= 0:
                return b
        start_blk = geo.group_first_block(flex_size * (group // flex_size))
        last_grp = min(group | (flex_size - 1), geo.group_count - 1)
        last_blk = geo.group_last_block(last_grp)
        for s, n in ((start_blk, size), (start_blk, elem_size)):
            b = _get_free_blocks(geo, used, s, last_blk, n)
            if b >= 0:
                return b
        relocatable[0] = False
        b = _get_free_blocks(geo, used, 0, last_blk, elem_size)
        return b if b >= 0 else 0

    for group in range(first, last + 1):
        group_blk = geo.group_first_block(group)
        last_blk = geo.group_last_block(group)
        rem_grps = last - group + 1
        table_offset = flex_size
        start_blk = group_blk
        if flexbg:
            prev = 0
            if group % flex_size:
                prev = tables[-1][0] + 1
            elif last == geo.group_count - 1:
                table_offset = last & (flex_size - 1)
                table_offset = flex_size if table_offset == 0 else table_offset + 1
            start_blk = flexbg_offset(group, prev, rem_grps, 1)
            last_blk = geo.group_last_block(last)
        bb = _get_free_blocks(geo, used, start_blk, last_blk, 1)
        if bb < 0:
            bb = _get_free_blocks(geo, used, group_blk, last_blk, 1)
        if bb < 0:
            raise InvalidOptions("no room for the group tables (too many inodes for this size?)")
        used.add(bb, 1)
        account(bb, 1)
        if flexbg:
            prev = tables[-1][1] + 1 if group % flex_size else bb + table_offset
            start_blk = flexbg_offset(group, prev, rem_grps, 1)
        ib = _get_free_blocks(geo, used, start_blk, last_blk, 1)
        if ib < 0:
            ib = _get_free_blocks(geo, used, group_blk, last_blk, 1)
        if ib < 0:
            raise InvalidOptions("no room for the group tables (too many inodes for this size?)")
        used.add(ib, 1)
        account(ib, 1)
        table_start = group_blk
        if flexbg:
            prev = tables[-1][2] + ipb if group % flex_size else ib + table_offset
            table_start = flexbg_offset(group, prev, rem_grps, ipb)
        it = _get_free_blocks(geo, used, table_start, last_blk, ipb)
        if it < 0:
            raise InvalidOptions("no room for the inode tables (too many inodes for this size?)")
        used.add(it, ipb)
        account(it, ipb)
        tables.append((bb, ib, it))
    range_start = geo.group_first_block(first)
    range_end = geo.group_last_block(last) + 1
    for bb, ib, it in tables:
        if not (range_start <= bb < range_end and range_start <= ib < range_end and range_start <= it and it + ipb <= range_end):
            raise InvalidOptions("group tables do not fit in their flex group; use a larger size or fewer inodes")
    base = range_start
    rel_used = RangeSet()
    for s, e in used.ranges_in(range_start, range_end + geo.blocks_per_group):
        rel_used.add(s - base, e - s)
    shape = FlexShape(
        tables=[(bb - base, ib - base, it - base) for bb, ib, it in tables],
        used=rel_used,
        table_blocks_in={g - first: n for g, n in table_blocks_in.items()},
        touched={g - first for g in touched},
    )
    return shape, relocatable[0]


def _journal_default_blocks(blocks: int) -> int:
    """ext2fs_default_journal_size: journal blocks for a filesystem of ``blocks`` blocks (-1: none)."""
    if blocks < 2048:
        return -1
    for limit, size in (
        (32768, 1024), (256 * 1024, 4096), (512 * 1024, 8192), (4096 * 1024, 16384),
        (8192 * 1024, 32768), (16384 * 1024, 65536), (32768 * 1024, 131072),
    ):
        if blocks < limit:
            return size
    return 262144


MAX_BLOCKS_PER_GROUP = (1 << 16) - 8  # e2fsprogs' EXT2_MAX_BLOCKS_PER_GROUP (no bigalloc)
MAX_INODES_PER_GROUP = 1 << 16  # less one block of inodes: EXT2_MAX_INODES_PER_GROUP


def compute_geometry(opts: MkfsOptions, features: set[str]) -> tuple[Geometry, dict[str, Any]]:
    """Port of mke2fs's PRS sizing and ext2fs_initialize: groups, inodes, reserved GDT, meta_bg."""
    bs = opts.block_size
    blocks = opts.size // bs
    if "64bit" in features and blocks > MAX_32:
        features.discard("resize_inode")
    if blocks > MAX_32 and "64bit" not in features:
        raise InvalidOptions(
            f"a {opts.size} byte filesystem needs {blocks} blocks of {bs} bytes, "
            "more than 2^32: enable the 64bit feature or use larger blocks"
        )
    if blocks > (1 << (bs.bit_length() - 1 + 3 + 32)) - 1:
        raise InvalidOptions("filesystem too large for this block size")
    first_data_block = 1 if bs == 1024 else 0
    bpg = min(bs * 8, MAX_BLOCKS_PER_GROUP)  # 8 KiB blocks and up: the group size is capped (bitmap bits)
    desc_size = 64 if "64bit" in features else 32
    inode_size = opts.inode_size
    first_ino = K.GOOD_OLD_FIRST_INO

    # Inode count from the ratio (mke2fs PRS)
    if opts.inodes is None:
        n = blocks * bs // opts.inode_ratio
        if n > MAX_32:
            if "64bit" in features:
                n = MAX_32
            else:
                raise InvalidOptions(f"too many inodes ({n}), raise the inode ratio")
        inodes_wanted = n
    else:
        if opts.inodes > MAX_32:
            raise InvalidOptions("too many inodes, specify fewer than 2^32")
        inodes_wanted = opts.inodes
    if inodes_wanted * inode_size >= blocks * bs:
        raise InvalidOptions(
            f"inode_size ({inode_size}) * inodes_count ({inodes_wanted}) too big for a filesystem "
            f"with {blocks} blocks; raise the inode ratio or lower the inode count"
        )
    r_blocks = int(opts.reserved_ratio * blocks / 100.0)
    param_blocks = blocks
    meta_bg = "meta_bg" in features
    rsv_gdt_param = None

    while True:  # "retry" in ext2fs_initialize
        groups = -(-(blocks - first_data_block) // bpg)
        if groups == 0:
            raise InvalidOptions("filesystem too small")
        desc_per_block = bs // desc_size
        desc_blocks = -(-groups // desc_per_block)
        inodes_count = inodes_wanted
        if inodes_count < first_ino + 1:
            inodes_count = first_ino + 1
        ipg = -(-inodes_count // groups)
        if ipg > bs * 8:
            if bpg >= 256:
                bpg -= 8
                blocks = param_blocks
                continue
            raise InvalidOptions("too many inodes for this filesystem size")
        if ipg > bs * 8:
            ipg = bs * 8
        if ipg > MAX_INODES_PER_GROUP - bs // inode_size:
            ipg = MAX_INODES_PER_GROUP - bs // inode_size
        while True:  # ipg_retry
            itb = -(-(ipg * inode_size) // bs)
            real_ipg = (itb * bs) // inode_size
            if real_ipg < 8:
                real_ipg = 8
            real_ipg &= ~7
            itb = -(-(real_ipg * inode_size) // bs)
            if real_ipg * groups > MAX_32:
                ipg -= 1
                continue
            break
        ipg = real_ipg
        # reserved GDT blocks
        if "resize_inode" in features and not meta_bg:
            max_blocks = MAX_32
            if blocks < max_blocks // 1024:
                max_blocks = blocks * 1024
            rsv_groups = -(-(max_blocks - first_data_block) // bpg)
            rsv_gdb = -(-rsv_groups // desc_per_block) - desc_blocks
            if rsv_gdb < 0 or rsv_gdb > bs // 4:
                rsv_gdb = bs // 4
        else:
            rsv_gdb = 0
        if rsv_gdt_param is None and rsv_gdb + desc_blocks > bpg * 3 // 4:
            meta_bg = True
            features.add("meta_bg")
            features.discard("resize_inode")
            rsv_gdb = 0
        overhead = 3 + itb + rsv_gdb + (1 if meta_bg else desc_blocks)
        if overhead > bpg:
            raise InvalidOptions("too many inodes for this filesystem size")
        # Is the last group big enough?
        geo_probe = Geometry(
            block_size=bs, blocks_count=blocks, first_data_block=first_data_block,
            blocks_per_group=bpg, inodes_per_group=ipg, inode_size=inode_size,
            desc_size=desc_size, reserved_gdt_blocks=rsv_gdb,
            sparse_super="sparse_super" in features, meta_bg=meta_bg,
        )
        overhead = 2 + itb
        if geo_probe.has_super(groups - 1):
            overhead += 1 + desc_blocks + rsv_gdb
        rem = (blocks - first_data_block) % bpg
        if groups == 1 and rem and rem < overhead:
            raise InvalidOptions(f"filesystem too small: {opts.size} bytes cannot hold its own metadata")
        if rem and rem < overhead + 50:
            blocks -= rem
            ratio = 100.0 * int(opts.reserved_ratio * param_blocks / 100.0) / param_blocks
            r_blocks = int(ratio * blocks / 100.0)
            continue
        break

    log_flex = 0
    if "flex_bg" in features:
        size = opts.flex_bg_size
        log_flex = size.bit_length() - 1
    geo = Geometry(
        block_size=bs, blocks_count=blocks, first_data_block=first_data_block,
        blocks_per_group=bpg, inodes_per_group=ipg, inode_size=inode_size, desc_size=desc_size,
        reserved_gdt_blocks=rsv_gdb, sparse_super="sparse_super" in features, meta_bg=meta_bg,
        first_meta_bg=0, log_groups_per_flex=log_flex, flex_bg="flex_bg" in features,
    )
    return geo, {"r_blocks": r_blocks}


class _Space:
    """Used-block oracle over the whole filesystem: backups + flex tables + later allocations."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.geo = plan.geo

    def used_in_group(self, group: int) -> RangeSet:
        geo = self.geo
        rs = RangeSet()
        start = geo.group_first_block(group)
        end = geo.group_last_block(group) + 1
        flex = self.plan.flex(group)
        for s, e in flex.used_ranges_in(start, end):
            rs.add(s, e - s)
        for s, e in self.plan.extra.ranges_in(start, end):
            rs.add(s, e - s)
        return rs

    def first_free(self, goal: int) -> int:
        geo = self.geo
        if goal < geo.first_data_block or goal >= geo.blocks_count:
            goal = geo.first_data_block
        block = goal
        for _ in range(2):
            group = geo.group_of_block(block)
            while group < geo.group_count:
                used = self.used_in_group(group)
                b = used.first_free(block)
                if b <= geo.group_last_block(group):
                    return b
                group += 1
                if group < geo.group_count:
                    block = geo.group_first_block(group)
            block = geo.first_data_block
        raise InvalidOptions("filesystem full while creating it")

    def free_run(self, start: int, maxlen: int) -> tuple[int, int]:
        """new_range without MIN_LENGTH: first free block >= start and how far it runs (<= maxlen)."""
        b = self.first_free(start)
        length = 0
        cur = b
        while length < maxlen and cur < self.geo.blocks_count:
            group = self.geo.group_of_block(cur)
            used = self.used_in_group(group)
            nxt = used.next_used(cur)
            group_end = self.geo.group_last_block(group) + 1
            stop = group_end if nxt is None or nxt[0] >= group_end else nxt[0]
            if stop <= cur:
                break
            take = min(stop - cur, maxlen - length)
            length += take
            cur += take
            if cur < group_end:
                break
        return b, length

    def allocate(self, block: int, count: int) -> None:
        self.plan.extra.add(block, count)
        while count:
            g = self.geo.group_of_block(block)
            n = min(count, self.geo.group_last_block(g) - block + 1)
            self.plan.extra_by_group[g] = self.plan.extra_by_group.get(g, 0) + n
            self.plan.uninit_cleared.add(g)
            block += n
            count -= n

    def group_free(self, group: int) -> int:
        geo = self.geo
        flex = self.plan.flex(group)
        free = geo.group_blocks(group) - geo.super_and_desc(group).used
        free -= flex.table_blocks_in(group) if self.plan.groups_per_flex > 1 else 2 + geo.inode_table_blocks
        return free - self.plan.extra_by_group.get(group, 0)


def make_plan(opts: MkfsOptions) -> Plan:
    """Decide every location and count; raises InvalidOptions for impossible requests."""
    features = set(opts.features)
    bs = opts.block_size
    if bs not in (1024, 2048, 4096, 8192, 16384, 32768, 65536):
        raise InvalidOptions(f"invalid block size {bs}: must be a power of two from 1024 to 65536")
    isz = opts.inode_size
    if isz < K.GOOD_OLD_INODE_SIZE or isz > bs or isz & (isz - 1):
        raise InvalidOptions(f"invalid inode size {isz} (min {K.GOOD_OLD_INODE_SIZE}/max {bs}, a power of two)")
    if not (1024 <= opts.inode_ratio <= 65536 * 1024):
        raise InvalidOptions(f"invalid inode ratio {opts.inode_ratio} (min 1024/max 67108864)")
    if opts.inode_ratio < bs:
        opts.inode_ratio = bs
    if not 0 <= opts.reserved_ratio <= 50:
        raise InvalidOptions(f"invalid reserved blocks percent {opts.reserved_ratio}")
    if "flex_bg" in features:
        fb = opts.flex_bg_size
        if fb < 1 or fb & (fb - 1) or fb > 1 << 31:
            raise InvalidOptions(f"flex_bg size must be a power of two, not {fb}")
    if "has_journal" in features and "extent" not in features:
        raise InvalidOptions("pyext4 mkfs creates journals as extent files: keep the extent feature or add ^has_journal")
    if "metadata_csum" in features and "uninit_bg" in features:
        features.discard("uninit_bg")  # metadata_csum supersedes it, as mke2fs does
    if "meta_bg" in features and "resize_inode" in features:
        raise InvalidOptions("the resize_inode and meta_bg features are not compatible")
    if "resize_inode" in features and "sparse_super" not in features:
        raise InvalidOptions("reserved online resize blocks (resize_inode) need sparse_super")
    if "metadata_csum_seed" in features and "metadata_csum" not in features:
        raise InvalidOptions("the metadata_csum_seed feature requires metadata_csum")
    if "sparse_super2" in features:
        raise InvalidOptions("pyext4 mkfs cannot create sparse_super2 filesystems")
    if len(opts.label.encode()) > 16:
        raise InvalidOptions(f"volume label {opts.label!r} is longer than 16 bytes")
    uid, gid = opts.root_owner
    if not (0 <= uid <= MAX_32 and 0 <= gid <= MAX_32):
        raise InvalidOptions("root owner must be two numbers from 0 to 4294967295")
    if opts.size < 64 * bs:
        raise InvalidOptions(f"filesystem too small: {opts.size} bytes (need at least {64 * bs})")

    geo, extra_params = compute_geometry(opts, features)
    csum = "metadata_csum" in features or "uninit_bg" in features
    metadata_csum = "metadata_csum" in features
    uuid = opts.uuid
    seed = fs_seed(uuid)

    # Journal size
    journal_blocks = 0
    if "has_journal" in features:
        if opts.journal_blocks is not None:
            journal_blocks = opts.journal_blocks
            if journal_blocks < K.JBD2_MIN_JOURNAL_BLOCKS or journal_blocks > 10240000:
                raise InvalidOptions(
                    f"the requested journal size is {journal_blocks} blocks; it must be between 1024 and 10240000 blocks"
                )
        else:
            journal_blocks = _journal_default_blocks(geo.blocks_count)
            if journal_blocks < 0:
                features.discard("has_journal")
                journal_blocks = 0

    plan = Plan(
        opts=opts, geo=geo, sb=Superblock.blank(), features=features, csum=csum,
        metadata_csum=metadata_csum, seed=seed, extra=RangeSet(), extra_by_group={},
        uninit_cleared=set(), root_block=0, lpf_blocks=[], lpf_ino=K.GOOD_OLD_FIRST_INO,
        resize_dind=0, journal_extents=[], journal_index_block=0, journal_blocks=journal_blocks,
        inode_usage={},
    )
    space = _Space(plan)

    if journal_blocks:
        if opts.journal_blocks is not None and journal_blocks > _total_free_blocks(plan, space) // 2:
            raise InvalidOptions("journal size too big for this filesystem")

    # Root directory: one block at the first free block of its flex group.
    goal = geo.group_first_block(0)
    plan.root_block = space.first_free(goal)
    space.allocate(plan.root_block, 1)
    # lost+found: mke2fs grows it until 16 KiB (at least 2 blocks, at most 12).
    lpf_count = 1
    size = bs
    for _ in range(1, K.NDIR_BLOCKS):
        if size >= 16 * 1024 and size >= 2 * bs:
            break
        lpf_count += 1
        size += bs
    lpf_count = min(lpf_count, K.NDIR_BLOCKS)
    block = space.first_free(goal)
    for _ in range(lpf_count):
        block = space.first_free(block)
        plan.lpf_blocks.append(block)
        space.allocate(block, 1)
        block += 1
    # Resize inode's double-indirect block
    if "resize_inode" in features:
        sb_blk = geo.first_data_block
        rgoal = sb_blk + geo.desc_blocks + geo.reserved_gdt_blocks + 2 + geo.inode_table_blocks
        plan.resize_dind = space.first_free(rgoal)
        space.allocate(plan.resize_dind, 1)
    # Journal, from the midpoint group
    if journal_blocks:
        jgoal = _midpoint_journal_block(plan, space)
        remaining = journal_blocks
        logical = 0
        pblk = jgoal
        while remaining:
            b, n = space.free_run(pblk, min(remaining, K.EXT_INIT_MAX_LEN))
            if n == 0:
                raise InvalidOptions("no room for the journal")
            space.allocate(b, n)
            if plan.journal_extents and plan.journal_extents[-1][1] + plan.journal_extents[-1][2] == b and (
                plan.journal_extents[-1][2] + n <= K.EXT_INIT_MAX_LEN
            ):
                lg, pb, ln = plan.journal_extents[-1]
                plan.journal_extents[-1] = (lg, pb, ln + n)
            else:
                plan.journal_extents.append((logical, b, n))
            if len(plan.journal_extents) == 5 and not plan.journal_index_block:
                ib = space.first_free(plan.journal_extents[0][1] - 1)
                plan.journal_index_block = ib
                space.allocate(ib, 1)
            logical += n
            remaining -= n
            pblk = b + n
            if pblk >= geo.blocks_count:
                pblk = geo.first_data_block
        if len(plan.journal_extents) > 4 and len(plan.journal_extents) > (bs - 12) // 12:
            raise InvalidOptions("journal too fragmented for a single extent leaf")

    # Inode usage: group 0 holds inodes 1..first_ino (the reserved ones, root, lost+found).
    used_inodes = K.GOOD_OLD_FIRST_INO
    if used_inodes > geo.inodes_per_group:
        raise InvalidOptions("too few inodes per group for the reserved inodes")
    plan.inode_usage[0] = (used_inodes, 2, geo.inodes_per_group - used_inodes)
    _fill_superblock(plan, extra_params["r_blocks"], space)
    return plan


def _midpoint_journal_block(plan: Plan, space: _Space) -> int:
    """get_midpoint_journal_block from mkjournal.c."""
    geo = plan.geo
    group = geo.group_of_block((geo.blocks_count - geo.first_data_block) // 2)
    log_flex = 1 << geo.log_groups_per_flex if geo.flex_bg else 1
    if geo.flex_bg and geo.log_groups_per_flex and group > log_flex:
        group &= ~(log_flex - 1)
        while group < geo.group_count and space.group_free(group) == 0:
            group += 1
        if group == geo.group_count:
            group = 0
        start = group
    else:
        start = group - 1 if group > 0 else group
    end = group + 1 if group + 1 < geo.group_count else group
    group = start
    for i in range(start + 1, end + 1):
        if space.group_free(i) > space.group_free(group):
            group = i
    return geo.group_first_block(group)


def _fill_superblock(plan: Plan, r_blocks: int, space: _Space) -> None:
    opts, geo, sb = plan.opts, plan.geo, plan.sb
    compat = incompat = ro = 0
    for name in plan.features:
        if name in K.COMPAT:
            compat |= K.COMPAT[name]
        elif name in K.INCOMPAT:
            incompat |= K.INCOMPAT[name]
        else:
            ro |= K.RO_COMPAT[name]
    sb["s_feature_compat"] = compat
    sb["s_feature_incompat"] = incompat
    sb["s_feature_ro_compat"] = ro
    sb["s_inodes_count"] = geo.inodes_count
    sb.blocks_count = geo.blocks_count
    sb.r_blocks_count = r_blocks
    sb["s_first_data_block"] = geo.first_data_block
    sb["s_log_block_size"] = geo.block_size.bit_length() - 11
    sb["s_log_cluster_size"] = sb["s_log_block_size"]
    sb["s_blocks_per_group"] = geo.blocks_per_group
    sb["s_clusters_per_group"] = geo.blocks_per_group
    sb["s_inodes_per_group"] = geo.inodes_per_group
    sb["s_max_mnt_count"] = 0xFFFF
    sb["s_magic"] = K.EXT4_SUPER_MAGIC
    sb["s_state"] = K.STATE_VALID
    sb["s_errors"] = K.ERRORS_CONTINUE
    sb["s_creator_os"] = K.CREATOR_LINUX
    sb["s_rev_level"] = K.DYNAMIC_REV
    sb["s_first_ino"] = K.GOOD_OLD_FIRST_INO
    sb["s_inode_size"] = geo.inode_size
    if geo.inode_size >= 160:
        sb["s_min_extra_isize"] = K.EXTRA_ISIZE_DEFAULT
        sb["s_want_extra_isize"] = K.EXTRA_ISIZE_DEFAULT
    sb["s_uuid"] = opts.uuid
    sb["s_volume_name"] = opts.label.encode()[:16].ljust(16, b"\0")
    sb["s_reserved_gdt_blocks"] = geo.reserved_gdt_blocks
    sb["s_hash_seed"] = opts.hash_seed
    sb["s_def_hash_version"] = opts.hash_alg
    sb["s_desc_size"] = geo.desc_size if "64bit" in plan.features else 0
    sb["s_default_mount_opts"] = K.DEFM_XATTR_USER | K.DEFM_ACL
    sb["s_first_meta_bg"] = geo.first_meta_bg
    sb["s_flags"] = K.FLAGS_SIGNED_HASH
    sb["s_log_groups_per_flex"] = geo.log_groups_per_flex if "flex_bg" in plan.features else 0
    sb.mkfs_time = opts.now
    sb.lastcheck = opts.now
    sb.wtime = opts.now
    if plan.metadata_csum:
        sb["s_checksum_type"] = K.CRC32C_CHKSUM
    if "metadata_csum_seed" in plan.features:
        sb["s_checksum_seed"] = plan.seed
    if plan.features & {"flex_bg", "huge_file", "uninit_bg", "dir_nlink", "metadata_csum", "extra_isize"}:
        sb["s_kbytes_written"] = 1
    # Free counts
    free_inodes = geo.inodes_count - K.GOOD_OLD_FIRST_INO
    sb["s_free_inodes_count"] = free_inodes
    sb.free_blocks_count = _total_free_blocks(plan, space)
    # Overhead: every block in use after the tables plus the journal (mke2fs's s_overhead_clusters).
    overhead = geo.blocks_count - geo.first_data_block - _total_free_blocks(plan, space, tables_only=True)
    overhead += plan.journal_blocks + geo.first_data_block
    sb["s_overhead_clusters"] = overhead
    if plan.journal_blocks:
        sb["s_journal_inum"] = K.JOURNAL_INO
        sb["s_jnl_backup_type"] = 1
    sb["s_lpf_ino"] = 0


def _total_free_blocks(plan: Plan, space: _Space, *, tables_only: bool = False) -> int:
    """Free blocks: everything but backups, every group's tables and (unless tables_only) the rest."""
    geo = plan.geo
    total = geo.blocks_count - geo.first_data_block
    total -= geo.group_count * (2 + geo.inode_table_blocks)
    if geo.meta_bg:
        total -= sum(geo.super_and_desc(g).used for g in range(geo.group_count))
    else:
        total -= sum(geo.super_and_desc(g).used for g in geo.backup_groups)
    if not tables_only:
        total -= len(plan.extra)
    return total


# ================================================================ writing
class _Writer:
    """Collects block writes, coalesces neighbours, and issues large pwrites."""

    def __init__(self, dev: Device, block_size: int) -> None:
        self.dev = dev
        self.bs = block_size
        self._pending: list[tuple[int, bytes | bytearray]] = []
        self._pending_bytes = 0

    def block(self, block: int, data: bytes | bytearray, *, owned: bool = False) -> None:
        """Queue ``data`` for ``block`` onward; ``owned``: the caller hands ``data`` over (not copied)."""
        self._pending.append((block * self.bs, data if owned else bytes(data)))
        self._pending_bytes += len(data)
        if self._pending_bytes > 8 << 20:
            self.flush()

    def at(self, offset: int, data: bytes | bytearray) -> None:
        self._pending.append((offset, bytes(data)))
        self._pending_bytes += len(data)

    def flush(self) -> None:
        if not self._pending:
            return
        self._pending.sort(key=lambda item: item[0])
        run_start, parts = self._pending[0][0], [self._pending[0][1]]
        run_end = run_start + len(parts[0])
        pwrite = self.dev.pwrite
        for offset, data in self._pending[1:]:
            if offset == run_end:
                parts.append(data)
                run_end += len(data)
            else:
                pwrite(run_start, parts[0] if len(parts) == 1 else b"".join(parts))
                run_start, parts, run_end = offset, [data], offset + len(data)
        pwrite(run_start, parts[0] if len(parts) == 1 else b"".join(parts))
        self._pending.clear()
        self._pending_bytes = 0


def _dir_block(plan: Plan, ino: int, entries: list[tuple[int, bytes]], parent_first: bool = True) -> bytes:
    """A directory block holding ``entries`` ((ino, name)); the last entry takes the rest."""
    bs = plan.geo.block_size
    tail = 12 if plan.metadata_csum else 0
    filetype = "filetype" in plan.features
    buf = bytearray(bs)
    offset = 0
    for i, (child, name) in enumerate(entries):
        rec_len = (8 + len(name) + 3) & ~3
        if i == len(entries) - 1:
            rec_len = bs - tail - offset
        ft = K.FT_DIR if filetype and child else 0
        C.DIR_ENTRY_2.pack_into(buf, offset, child, rec_len if rec_len < 65536 else 65535, len(name), ft)
        buf[offset + 8 : offset + 8 + len(name)] = name
        offset += rec_len
    if not entries:
        C.DIR_ENTRY_2.pack_into(buf, 0, 0, (bs - tail) if bs - tail < 65536 else 65535, 0, 0)
    if tail:
        C.DIR_ENTRY_TAIL.pack_into(buf, bs - 12, 0, 12, 0, K.FT_DIR_CSUM, 0)
        csum = dir_block_csum(inode_seed(plan.seed, ino, 0), buf)
        _U32.pack_into(buf, bs - 4, csum)
    return bytes(buf)


def _extent_root(extents: list[tuple[int, int, int]], index_block: int, depth_leaf_entries: int) -> bytes:
    """i_block (60 bytes) for a tree of depth 0 (<= 4 extents) or 1 (one leaf at index_block)."""
    buf = bytearray(60)
    if index_block:
        C.EXTENT_HEADER.pack_into(buf, 0, K.EXT4_EXT_MAGIC, 1, 4, 1, 0)
        C.EXTENT_IDX.pack_into(buf, 12, 0, index_block & 0xFFFFFFFF, index_block >> 32, 0)
    else:
        C.EXTENT_HEADER.pack_into(buf, 0, K.EXT4_EXT_MAGIC, len(extents), 4, 0, 0)
        for i, (lg, pb, ln) in enumerate(extents):
            C.EXTENT.pack_into(buf, 12 + 12 * i, lg, ln, pb >> 32, pb & 0xFFFFFFFF)
    return bytes(buf)


def _new_inode(plan: Plan, mode: int, *, links: int, size: int, blocks_512: int, flags: int = 0) -> Inode:
    ino = Inode()
    ino.mode = mode
    ino.links_count = links
    ino.size = size
    ino.blocks = blocks_512
    ino.flags = flags
    t = plan.opts.now * 1_000_000_000
    ino.atime = ino.ctime = ino.mtime = t
    if plan.geo.inode_size > K.GOOD_OLD_INODE_SIZE:
        ino.extra_isize = K.EXTRA_ISIZE_DEFAULT
        ino.crtime = t
    return ino


def _pack_inode(plan: Plan, number: int, inode: Inode) -> bytes:
    raw = inode.pack(plan.geo.inode_size)
    if plan.metadata_csum:
        set_checksum(raw, plan.seed, number, plan.geo.inode_size)
    return bytes(raw)


def _inode_table_blocks(plan: Plan) -> dict[int, bytes]:
    """Blocks of group 0's inode table that hold the reserved inodes, root and lost+found."""
    geo = plan.geo
    isz = geo.inode_size
    bs = geo.block_size
    sectors = bs // 512
    inodes: dict[int, bytes] = {}
    extent_fl = K.EXTENTS_FL if "extent" in plan.features else 0
    now_only = _new_inode(plan, 0, links=0, size=0, blocks_512=0)
    if plan.metadata_csum:
        zero = Inode()
        for number in range(1, K.GOOD_OLD_FIRST_INO):
            inodes[number] = _pack_inode(plan, number, zero)
    # Bad block inode: times only, no extra fields (ext2fs_update_bb_inode writes 128 bytes).
    bad = Inode()
    bad.atime = bad.mtime = bad.ctime = now_only.atime
    inodes[K.BAD_INO] = _pack_inode(plan, K.BAD_INO, bad)

    def block_field(blocks: list[int]) -> bytes:
        if extent_fl:
            runs: list[tuple[int, int, int]] = []
            for i, b in enumerate(blocks):
                if runs and runs[-1][1] + runs[-1][2] == b:
                    runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
                else:
                    runs.append((i, b, 1))
            if len(runs) > 4:
                raise Ext4Error("directory too fragmented at mkfs")
            return _extent_root(runs, 0, 0)
        field_ = bytearray(60)
        for i, b in enumerate(blocks):
            _U32.pack_into(field_, 4 * i, b)
        return bytes(field_)

    uid, gid = plan.opts.root_owner
    root = _new_inode(plan, K.S_IFDIR | 0o755, links=3, size=bs, blocks_512=sectors, flags=extent_fl)
    root.uid, root.gid = uid, gid
    root.block = block_field([plan.root_block])
    inodes[K.ROOT_INO] = _pack_inode(plan, K.ROOT_INO, root)

    lpf = _new_inode(
        plan, K.S_IFDIR | 0o700, links=2, size=bs * len(plan.lpf_blocks),
        blocks_512=sectors * len(plan.lpf_blocks), flags=extent_fl,
    )
    lpf.block = block_field(plan.lpf_blocks)
    inodes[plan.lpf_ino] = _pack_inode(plan, plan.lpf_ino, lpf)

    if plan.resize_dind:
        apb = bs // 4
        nbackups = len([g for g in geo.backup_groups if g]) if geo.reserved_gdt_blocks else 0
        count = 1 + geo.reserved_gdt_blocks * (1 + nbackups)
        resize = _new_inode(
            plan, K.S_IFREG | 0o600, links=1, size=(apb * apb + apb + K.NDIR_BLOCKS) * bs,
            blocks_512=count * sectors,
        )
        field_ = bytearray(60)
        _U32.pack_into(field_, 4 * K.DIND_BLOCK, plan.resize_dind)
        resize.block = bytes(field_)
        inodes[K.RESIZE_INO] = _pack_inode(plan, K.RESIZE_INO, resize)

    if plan.journal_blocks:
        jblocks = plan.journal_blocks + (1 if plan.journal_index_block else 0)
        journal = _new_inode(
            plan, K.S_IFREG | 0o600, links=1, size=plan.journal_blocks * bs,
            blocks_512=jblocks * sectors, flags=K.EXTENTS_FL,
        )
        journal.block = _extent_root(plan.journal_extents, plan.journal_index_block, 0)
        inodes[K.JOURNAL_INO] = _pack_inode(plan, K.JOURNAL_INO, journal)
        plan.sb_journal_iblock = journal.block  # type: ignore[attr-defined]

    # Lay the inodes into table blocks of group 0.
    it = plan.tables(0)[2]
    per_block = bs // isz
    out: dict[int, bytearray] = {}
    for number, raw in inodes.items():
        index = number - 1
        blk = it + index // per_block
        buf = out.setdefault(blk, bytearray(bs))
        off = (index % per_block) * isz
        buf[off : off + isz] = raw
    return {b: bytes(v) for b, v in out.items()}


def _journal_superblock(plan: Plan) -> bytes:
    bs = plan.geo.block_size
    raw = bytearray(bs)
    incompat = 0
    checksum_type = 0
    if plan.metadata_csum:
        incompat |= K.JBD2_FEATURE_INCOMPAT_CSUM_V3
        checksum_type = K.JBD2_CRC32C_CHKSUM
    if "64bit" in plan.features:
        incompat |= K.JBD2_FEATURE_INCOMPAT_64BIT
    fields = [0] * len(C.JOURNAL_SUPERBLOCK_FIELDS)
    names = {n: i for i, n in enumerate(C.JOURNAL_SUPERBLOCK_FIELDS)}

    def put(name: str, value: Any) -> None:
        fields[names[name]] = value

    for name, size in (("s_uuid", 16), ("s_padding2", 3), ("s_padding", 160), ("s_users", 768)):
        put(name, bytes(size))
    put("s_header.h_magic", K.JBD2_MAGIC)
    put("s_header.h_blocktype", K.JBD2_SUPERBLOCK_V2)
    put("s_blocksize", bs)
    put("s_maxlen", plan.journal_blocks)
    put("s_first", 1)
    put("s_sequence", 1)
    put("s_nr_users", 1)
    put("s_uuid", plan.opts.uuid)
    put("s_feature_incompat", incompat)
    put("s_checksum_type", checksum_type)
    C.JOURNAL_SUPERBLOCK.pack_into(raw, 0, *fields)
    if plan.metadata_csum:
        struct.pack_into(">I", raw, 0xFC, jbd2_superblock_csum(raw))
    return bytes(raw)


def _journal_leaf(plan: Plan) -> bytes:
    bs = plan.geo.block_size
    buf = bytearray(bs)
    eh_max = (bs - 12) // 12
    C.EXTENT_HEADER.pack_into(buf, 0, K.EXT4_EXT_MAGIC, len(plan.journal_extents), eh_max, 0, 0)
    for i, (lg, pb, ln) in enumerate(plan.journal_extents):
        C.EXTENT.pack_into(buf, 12 + 12 * i, lg, ln, pb >> 32, pb & 0xFFFFFFFF)
    if plan.metadata_csum:
        csum = extent_block_csum(inode_seed(plan.seed, K.JOURNAL_INO, 0), buf, eh_max)
        _U32.pack_into(buf, 12 + 12 * eh_max, csum)
    return bytes(buf)


def _list_backups(geo: Geometry) -> list[int]:
    """Groups (other than 0) holding superblock backups, in increasing order."""
    return [g for g in geo.backup_groups if g]


def _u32_run(first: int, count: int) -> array[int]:
    """first, first + 1, ... as little-endian u32 values (for memoryview slice assignment)."""
    values = array("I", range(first, first + count))
    if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
        values.byteswap()
    return values


def _resize_blocks(plan: Plan) -> tuple[int, bytes, int, bytearray]:
    """The resize inode's double-indirect block, and the primary reserved GDT blocks (contiguous, each
    listing its backups' block numbers) as (dind block, its bytes, first reserved block, their bytes).

    Filled column by column: entry j of reserved block r is (first + r) + backup_j * blocks_per_group,
    an arithmetic run over r, assigned through a strided u32 view (no per-block Python work).
    """
    geo = plan.geo
    bs = geo.block_size
    apb = bs // 4
    count = geo.reserved_gdt_blocks
    first = geo.first_data_block + 1 + geo.desc_blocks
    dind = bytearray(bs)
    dview = memoryview(dind).cast("I")
    start = geo.desc_blocks % apb  # the dind slot of reserved block r is (desc_blocks + r) % apb
    head = min(count, apb - start)
    dview[start : start + head] = _u32_run(first, head)
    if count > head:
        dview[0 : count - head] = _u32_run(first + head, count - head)
    region = bytearray(count * bs)
    rview = memoryview(region).cast("I")
    for j, group in enumerate(_list_backups(geo)[:apb]):
        rview[j::apb] = _u32_run(first + group * geo.blocks_per_group, count)
    dview.release()
    rview.release()
    return plan.resize_dind, bytes(dind), first, region


class _GroupCounts:
    """Per-group flags and counts, with everything constant hoisted out of the loop."""

    def __init__(self, plan: Plan) -> None:
        geo = plan.geo
        self.plan = plan
        self.geo = geo
        self.ipg = geo.inodes_per_group
        self.last = geo.group_count - 1
        base = 0
        if plan.csum:
            base = K.BG_INODE_UNINIT | K.BG_BLOCK_UNINIT
            if plan.opts.itable_zeroed:
                base |= K.BG_INODE_ZEROED
        self.base_flags = base
        self.flex = plan.groups_per_flex > 1
        self.own_tables = 2 + geo.inode_table_blocks
        self.bpg = geo.blocks_per_group
        if geo.meta_bg:
            self.meta_used = None
        else:
            self.meta_used = {g: geo.super_and_desc(g).used for g in geo.backup_groups}
        self.unused_default = self.ipg if plan.csum else 0

    def __call__(self, group: int, alloc: FlexAlloc) -> tuple[int, int, int, int, int]:
        """(flags, free blocks, free inodes, used dirs, itable unused)."""
        plan = self.plan
        flags = self.base_flags
        if group == self.last:
            flags &= ~K.BG_BLOCK_UNINIT
            blocks = self.geo.group_blocks(group)
        else:
            blocks = self.bpg
        if self.flex:
            rel = group - alloc.first_group
            shape = alloc.shape
            table_here = shape.table_blocks_in.get(rel, 0)
            if rel in shape.touched:
                flags &= ~K.BG_BLOCK_UNINIT
        else:
            table_here = self.own_tables
        if group in plan.uninit_cleared:
            flags &= ~K.BG_BLOCK_UNINIT
        meta = self.meta_used.get(group, 0) if self.meta_used is not None else self.geo.super_and_desc(group).used
        free_blocks = blocks - meta - table_here - plan.extra_by_group.get(group, 0)
        free_inodes = self.ipg
        dirs = 0
        unused = self.unused_default
        usage = plan.inode_usage.get(group)
        if usage is not None:
            used, dirs, unused_ = usage
            free_inodes = self.ipg - used
            if plan.csum:
                unused = unused_
            flags &= ~K.BG_INODE_UNINIT
        return flags, free_blocks, free_inodes, dirs, unused


def _block_bitmap(plan: Plan, group: int) -> Bitmap:
    geo = plan.geo
    start = geo.group_first_block(group)
    end = geo.group_last_block(group) + 1
    bm = Bitmap(geo.blocks_per_group)
    for s, e in plan.flex(group).used_ranges_in(start, end):
        bm.set_range(s - start, e - s)
    for s, e in plan.extra.ranges_in(start, end):
        bm.set_range(s - start, e - s)
    for s, count in _backup_used(geo, group):
        if start <= s < end:
            bm.set_range(s - start, min(count, end - s))
    n = end - start
    if n < geo.blocks_per_group:
        bm.set_range(n, geo.blocks_per_group - n)
    return bm


def _inode_bitmap(plan: Plan, group: int) -> Bitmap:
    bm = Bitmap(plan.geo.inodes_per_group)
    usage = plan.inode_usage.get(group)
    if usage:
        bm.set_range(0, usage[0])
    return bm


def write_plan(plan: Plan, dev: Device) -> int:
    """Encode the plan onto ``dev`` (which must read as zeros); returns bytes written."""
    geo = plan.geo
    bs = geo.block_size
    w = _Writer(dev, bs)
    sb = plan.sb
    desc_size = geo.desc_size
    dpb = geo.desc_per_block
    csum_seed = plan.seed
    metadata_csum = plan.metadata_csum
    gdt_csum = plan.csum and not metadata_csum
    from .groupdesc import DescChecksummer

    checksummer = DescChecksummer(
        metadata_csum=metadata_csum, gdt_csum=gdt_csum, seed=csum_seed, uuid=plan.opts.uuid, desc_size=desc_size
    )
    pack_desc = C.GROUP_DESC_64.pack_into if desc_size >= 64 else C.GROUP_DESC_32.pack_into
    bb_bytes = geo.blocks_per_group // 8
    ib_bytes = geo.inodes_per_group // 8

    # Inode tables, directories, resize inode, journal.
    for blk, data in _inode_table_blocks(plan).items():
        w.block(blk, data)
    w.block(plan.root_block, _dir_block(plan, K.ROOT_INO, [(K.ROOT_INO, b"."), (K.ROOT_INO, b".."), (plan.lpf_ino, b"lost+found")]))
    for i, blk in enumerate(plan.lpf_blocks):
        if i == 0:
            w.block(blk, _dir_block(plan, plan.lpf_ino, [(plan.lpf_ino, b"."), (K.ROOT_INO, b"..")]))
        else:
            w.block(blk, _dir_block(plan, plan.lpf_ino, []))
    if plan.resize_dind:
        dind_block, dind, first_reserved, reserved = _resize_blocks(plan)
        w.block(dind_block, dind)
        w.block(first_reserved, reserved, owned=True)
    if plan.journal_blocks:
        w.block(plan.journal_extents[0][1], _journal_superblock(plan))
        if plan.journal_index_block:
            w.block(plan.journal_index_block, _journal_leaf(plan))
        jib = plan.sb_journal_iblock  # type: ignore[attr-defined]
        for i in range(15):
            sb[f"s_jnl_blocks[{i}]"] = _U32.unpack_from(jib, 4 * i)[0]
        size = plan.journal_blocks * bs
        sb["s_jnl_blocks[15]"] = size >> 32
        sb["s_jnl_blocks[16]"] = size & 0xFFFFFFFF
    w.flush()

    # Group descriptors (streamed one descriptor block at a time), bitmaps.
    desc_block = bytearray(bs)
    meta_bg = geo.meta_bg
    backups = geo.backup_groups

    def emit_desc_block(index: int, data: bytes) -> None:
        if meta_bg:
            first = index * dpb
            for g in (first, first + 1, first + dpb - 1):
                if g < geo.group_count:
                    loc = geo.super_and_desc(g)
                    if loc.new_desc_block:
                        w.block(loc.new_desc_block, data)
        else:
            for g in backups:
                w.block(geo.group_first_block(g) + (1 if not (g == 0 and bs == 1024 and geo.first_data_block == 0) else 1) + index, data)

    counts = _GroupCounts(plan)
    from .csum import _crc32c as crc_c

    desc_view = memoryview(desc_block)

    seed_x = csum_seed ^ 0xFFFFFFFF
    u32 = _U32.pack
    pack_u16 = struct.Struct("<H").pack_into
    alloc = plan.flex(0)
    flex_size = plan.groups_per_flex
    # Groups that need the general path; every other group's descriptor is a template
    # with only its table locations patched in.
    special = set(plan.inode_usage) | plan.uninit_cleared | set(plan.extra_by_group) | {geo.group_count - 1}
    if not plan.csum:
        special = set(range(geo.group_count))  # no uninit flags: every group has real bitmaps
    elif geo.meta_bg:
        special.update(g for g in range(geo.group_count) if geo.super_and_desc(g).used)
    else:
        special.update(geo.backup_groups)
    plain_flags = counts.base_flags
    plain_free_blocks = geo.blocks_per_group - (0 if flex_size > 1 else counts.own_tables)
    plain_free_inodes = geo.inodes_per_group
    plain_unused = counts.unused_default
    template = bytearray(desc_size)
    if desc_size >= 64:
        pack_desc(template, 0, 0, 0, 0, plain_free_blocks & 0xFFFF, plain_free_inodes & 0xFFFF, 0, plain_flags, 0,
                  0, 0, plain_unused & 0xFFFF, 0, 0, 0, 0, plain_free_blocks >> 16, plain_free_inodes >> 16, 0,
                  plain_unused >> 16, 0, 0, 0, 0)
    else:
        pack_desc(template, 0, 0, 0, 0, plain_free_blocks, plain_free_inodes, 0, plain_flags, 0, 0, 0,
                  plain_unused, 0)
    template_b = bytes(template)
    lo3 = struct.Struct("<III").pack_into
    hi3 = struct.Struct("<III").pack_into
    base = 0
    shape_tables: list[tuple[int, int, int]] = []
    shape_special: set[int] | dict[int, int] = set()
    first_group = 0
    for group in range(geo.group_count):
        if group % flex_size == 0:
            alloc = plan.flex(group)
            base = alloc.base
            shape_tables = alloc.shape.tables
            shape_special = alloc.shape.table_blocks_in
            first_group = alloc.first_group
        off = (group % dpb) * desc_size
        if group not in special and (group - first_group) not in shape_special:
            bb, ib, it = shape_tables[group - first_group]
            bb += base
            ib += base
            it += base
            desc_block[off : off + desc_size] = template_b
            lo3(desc_block, off, bb & 0xFFFFFFFF, ib & 0xFFFFFFFF, it & 0xFFFFFFFF)
            if desc_size >= 64:
                hi3(desc_block, off + 0x20, bb >> 32, ib >> 32, it >> 32)
        else:
            bb, ib, it = alloc.tables_of(group)
            flags, free_blocks, free_inodes, dirs, unused = counts(group, alloc)
            bb_csum = ib_csum = 0
            if not (plan.csum and flags & K.BG_BLOCK_UNINIT):
                bm = _block_bitmap(plan, group)
                raw = bm.to_bytes(bs)
                if metadata_csum:
                    bb_csum = bitmap_csum(csum_seed, raw[:bb_bytes])
                w.block(bb, raw)
            if not (plan.csum and flags & K.BG_INODE_UNINIT):
                bm = _inode_bitmap(plan, group)
                raw = bm.to_bytes(bs)
                if metadata_csum:
                    ib_csum = bitmap_csum(csum_seed, raw[:ib_bytes])
                w.block(ib, raw)
            if desc_size >= 64:
                pack_desc(
                    desc_block, off, bb & 0xFFFFFFFF, ib & 0xFFFFFFFF, it & 0xFFFFFFFF,
                    free_blocks & 0xFFFF, free_inodes & 0xFFFF, dirs & 0xFFFF, flags, 0,
                    bb_csum & 0xFFFF, ib_csum & 0xFFFF, unused & 0xFFFF, 0,
                    bb >> 32, ib >> 32, it >> 32, free_blocks >> 16, free_inodes >> 16, dirs >> 16,
                    unused >> 16, 0, bb_csum >> 16, ib_csum >> 16, 0,
                )
            else:
                pack_desc(
                    desc_block, off, bb, ib, it, free_blocks, free_inodes, dirs, flags, 0,
                    bb_csum & 0xFFFF, ib_csum & 0xFFFF, unused, 0,
                )
        if metadata_csum:
            # The checksum field is still zero, so one pass over the descriptor is enough.
            pack_u16(desc_block, off + 0x1E,
                     (crc_c(desc_view[off : off + desc_size], crc_c(u32(group), seed_x)) ^ 0xFFFF) & 0xFFFF)
        elif checksummer.enabled:
            pack_u16(desc_block, off + 0x1E, checksummer.compute(group, desc_view[off : off + desc_size]))
        if group % dpb == dpb - 1 or group == geo.group_count - 1:
            emit_desc_block(group // dpb, bytes(desc_block))
            desc_view.release()
            desc_block = bytearray(bs)
            desc_view = memoryview(desc_block)
    w.flush()

    # Superblock backups (state without VALID, as e2fsprogs writes them), then the primary.
    if sb["s_kbytes_written"]:
        sb["s_kbytes_written"] = 1 + (getattr(dev, "bytes_written", 0) + K.SUPERBLOCK_SIZE * len(backups)) // 1024
    backup = sb.copy()
    backup["s_state"] = sb["s_state"] & ~K.STATE_VALID
    for g in backups:
        if g == 0:
            continue
        backup["s_block_group_nr"] = min(g, 0xFFFF)
        raw = backup.pack()
        w.at(geo.group_first_block(g) * bs, raw)
    w.flush()
    sb["s_block_group_nr"] = 0
    dev.pwrite(K.SUPERBLOCK_OFFSET, sb.pack())
    return int(getattr(dev, "bytes_written", 0))


# ============================================================== front door
def mkfs(
    target: str | os.PathLike[str] | Device,
    size: int | str | None = None,
    *,
    block_size: int = 4096,
    inode_size: int = 256,
    inode_ratio: int = 16384,
    inodes: int | None = None,
    features: Iterable[str] | str | None = None,
    label: str = "",
    uuid: str | bytes | _uuid.UUID | None = None,
    hash_seed: str | bytes | _uuid.UUID | None = None,
    root_owner: tuple[int, int] = (0, 0),
    journal: bool = True,
    journal_blocks: int | None = None,
    now: int | float | None = None,
    reserved_ratio: float = 5.0,
    flex_bg_size: int = 16,
    sync: bool = False,
    writeback: bool = False,
) -> Plan:
    """Create an empty ext4 filesystem on ``target`` (a path or a Device).

    ``size`` in bytes (or ``"8G"``); ``None`` keeps an existing file's size.
    ``uuid``, ``hash_seed`` and ``now`` default to random values and the
    current time; pass them for a reproducible image.  Raises InvalidOptions
    for impossible requests before anything is written.  ``sync`` fsyncs the
    image; ``writeback`` only starts writing the bulk of the metadata (the
    superblock, descriptors and reserved GDT blocks of group 0, megabytes on a
    large image) back to the disk, for a caller that goes on to change the image
    and fsyncs at the end: that fsync then mostly finds it done.
    """
    feats = resolve_features(features)
    if not journal:
        feats.discard("has_journal")
    path: str | None = None
    dev: Device | None = None
    if isinstance(target, (str, os.PathLike)):
        path = os.fspath(target)
    else:
        dev = target
    if size is None:
        if dev is not None:
            size_bytes = dev.size
        else:
            assert path is not None
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise InvalidOptions(f"{path}: does not exist and no size was given") from None
            import stat as _stat

            if _stat.S_ISBLK(st.st_mode):
                with FileDevice.open(path) as probe:
                    size_bytes = probe.size
            else:
                size_bytes = st.st_size
    else:
        size_bytes = parse_size(size)
    if size_bytes <= 0:
        raise InvalidOptions("size must be positive (give a SIZE for a new or empty file)")
    uuid_b = _check_uuid(uuid, "UUID")
    seed_b = _check_uuid(hash_seed, "hash seed")
    opts = MkfsOptions(
        size=size_bytes,
        block_size=int(block_size),
        inode_size=int(inode_size),
        inode_ratio=int(inode_ratio),
        inodes=inodes,
        features=feats,
        label=label,
        uuid=uuid_b if uuid_b is not None else _uuid.uuid4().bytes,
        hash_seed=seed_b if seed_b is not None else _uuid.uuid4().bytes,
        root_owner=(int(root_owner[0]), int(root_owner[1])),
        journal_blocks=journal_blocks,
        now=int(now if now is not None else _time.time()),
        reserved_ratio=float(reserved_ratio),
        flex_bg_size=int(flex_bg_size),
    )
    plan = make_plan(opts)
    fs_bytes = plan.geo.blocks_count * plan.geo.block_size
    if dev is None:
        assert path is not None
        created = not os.path.lexists(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        file_dev = FileDevice(fd, writable=True, path=path)
        try:
            _prepare(file_dev, size_bytes, fs_bytes)
            write_plan(plan, file_dev)
            if sync:
                file_dev.sync()
            elif writeback:  # group 0's superblock, descriptors and reserved GDT blocks
                geo = plan.geo
                file_dev.start_writeback(0, (geo.first_data_block + geo.super_and_desc(0).used) * geo.block_size)
        except BaseException as exc:
            if created:  # e.g. larger than the host filesystem allows: leave nothing behind
                try:
                    os.unlink(path)
                except OSError:
                    pass
            if isinstance(exc, OSError) and exc.filename is None:  # ftruncate/pwrite name no file
                raise OSError(exc.errno, exc.strerror, path) from exc
            raise
        finally:
            file_dev.close()
    else:
        if dev.size < fs_bytes:
            raise InvalidOptions(f"device holds {dev.size} bytes, less than the {fs_bytes} the filesystem needs")
        dev.zero_range(0, fs_bytes)
        write_plan(plan, dev)
        if sync:
            dev.sync()
    return plan


def _prepare(dev: FileDevice, size_bytes: int, fs_bytes: int) -> None:
    """Make the target read as zeros: a file is sized and its old contents punched out (holes).

    An existing file is not truncated to zero first: on an ext4 host that makes
    close() flush the file (auto_da_alloc), which costs more than punching.
    """
    if dev.is_regular:
        old = dev.size
        dev.truncate(size_bytes)
        if old:
            dev.zero_range(0, min(old, size_bytes))
    else:
        if dev.size < fs_bytes:
            raise InvalidOptions(f"device holds {dev.size} bytes, less than the {fs_bytes} the filesystem needs")
        dev.zero_range(0, fs_bytes)


__all__ = ["mkfs", "make_plan", "write_plan", "MkfsOptions", "Plan", "parse_size", "resolve_features", "crc32c_raw"]
