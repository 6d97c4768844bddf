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
from collections.abc import Iterable, Sequence
from typing import Any

from . import _codecs as C
from . import constants as K
from .bitmap import Bitmap, RangeSet
from .blockdev import Device, FileDevice
from .csum import (
    _crc32c,
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
_U16 = struct.Struct("<H")
_Buffer = bytes | bytearray | memoryview


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


# Plain classes rather than dataclasses in this module: it is on the mkfs command's start-up
# path, and creating each dataclass costs a fraction of a millisecond.
class MkfsOptions:
    """Validated mkfs parameters (sizes in bytes, times in seconds)."""

    def __init__(
        self,
        size: int,
        block_size: int = 4096,
        inode_size: int = 256,
        inode_ratio: int = 16384,
        inodes: int | None = None,
        features: set[str] | None = None,
        label: str = "",
        uuid: bytes = bytes(16),
        hash_seed: bytes = bytes(16),
        root_owner: tuple[int, int] = (0, 0),
        journal_blocks: int | None = None,
        now: int = 0,
        reserved_ratio: float = 5.0,
        flex_bg_size: int = 16,
        hash_alg: int = K.HASH_HALF_MD4,
        itable_zeroed: bool = True,
    ) -> None:
        self.size = size
        self.block_size = block_size
        self.inode_size = inode_size
        self.inode_ratio = inode_ratio
        self.inodes = inodes
        self.features = set(DEFAULT_FEATURES) if features is None else features
        self.label = label
        self.uuid = uuid
        self.hash_seed = hash_seed
        self.root_owner = root_owner
        self.journal_blocks = journal_blocks
        self.now = now
        self.reserved_ratio = reserved_ratio
        self.flex_bg_size = flex_bg_size
        self.hash_alg = hash_alg
        self.itable_zeroed = itable_zeroed

    def __repr__(self) -> str:
        return "MkfsOptions(" + ", ".join(f"{k}={v!r}" for k, v in vars(self).items()) + ")"


# ================================================================== plan
class FlexShape:
    """Table placement of one flex group, relative to its first group and first block."""

    __slots__ = ("tables", "used", "table_blocks_in", "touched", "block_bitmaps", "inode_bitmaps", "inode_tables")

    def __init__(
        self, tables: list[tuple[int, int, int]], used: RangeSet, table_blocks_in: dict[int, int], touched: set[int]
    ) -> None:
        self.tables = tables
        self.used = used  # backups + tables
        self.table_blocks_in = table_blocks_in  # relative group -> table blocks located in it
        self.touched = touched  # relative groups whose BLOCK_UNINIT the allocation clears
        # The same locations column by column, for filling a descriptor block field by field.
        self.block_bitmaps = [bb for bb, _, _ in tables]
        self.inode_bitmaps = [ib for _, ib, _ in tables]
        self.inode_tables = [it for _, _, it in tables]


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


class Plan:
    """Everything mkfs decided; the writer only encodes it."""

    def __init__(
        self,
        opts: MkfsOptions,
        geo: Geometry,
        sb: Superblock,
        features: set[str],
        csum: bool,
        metadata_csum: bool,
        seed: int,
        journal_blocks: int,
    ) -> None:
        self.opts = opts
        self.geo = geo
        self.sb = sb
        self.features = features
        self.csum = csum  # group descriptors carry checksums (uninit flags in use)
        self.metadata_csum = metadata_csum
        self.seed = seed
        self.extra = RangeSet()  # blocks allocated after the tables (dirs, resize, journal)
        self.extra_by_group: dict[int, int] = {}
        self.uninit_cleared: set[int] = set()  # groups that lost BLOCK_UNINIT through extra allocations
        self.root_block = 0
        self.lpf_blocks: list[int] = []
        self.lpf_ino = K.GOOD_OLD_FIRST_INO
        self.resize_dind = 0
        self.journal_extents: list[tuple[int, int, int]] = []  # (logical, physical, length)
        self.journal_index_block = 0
        self.journal_blocks = journal_blocks
        self.journal_iblock = bytes(60)  # the journal inode's i_block (copied into s_jnl_blocks)
        self.inode_usage: dict[int, tuple[int, int, int]] = {}  # group -> (inodes used, dirs, itable_unused)
        self.flex_cache: dict[int, FlexAlloc] = {}
        self.shape_cache: dict[tuple[Any, ...], FlexShape] = {}
        self.groups_per_flex = geo.groups_per_flex if geo.log_groups_per_flex else 1

    # ------------------------------------------------------------ queries
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
    limit = geo.blocks_count - num + 1
    if finish < limit:
        limit = finish
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
    groups = range(first, last + 2) if geo.meta_bg else geo.backup_groups_in(first, last + 2)
    runs = [(g - first, tuple((s - base, n) for s, n in _backup_used(geo, g))) for g in groups]
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

    fdb = geo.first_data_block
    bpg = geo.blocks_per_group
    last_group = geo.group_count - 1

    def account(block: int, count: int) -> None:
        while count:
            g = (block - fdb) // bpg
            group_end = geo.blocks_count if g == last_group else fdb + (g + 1) * bpg
            n = min(count, group_end - block)
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
        metadata_csum=metadata_csum, seed=seed, journal_blocks=journal_blocks,
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
    """Collects block writes, coalesces neighbours, and issues large writes.

    A queued write is a sequence of buffers; a run of neighbours goes to the device as one
    pwritev where it has one (no copy into a joined buffer), else as one joined pwrite.
    """

    def __init__(self, dev: Device, block_size: int) -> None:
        self.dev = dev
        self.bs = block_size
        self._pending: list[tuple[int, int, Sequence[_Buffer]]] = []  # (offset, length, buffers)
        self._pending_bytes = 0
        self._pwritev = getattr(dev, "pwritev", None)

    def block(self, block: int, data: bytes | bytearray, *, owned: bool = False) -> None:
        """Queue ``data`` for ``block`` onward; ``owned``: the caller hands ``data`` over (not copied)."""
        self._queue(block * self.bs, len(data), (data if owned else bytes(data),))

    def blocks(self, block: int, buffers: list[_Buffer]) -> None:
        """Queue ``buffers``, back to back, for ``block`` onward (handed over, not copied)."""
        self._queue(block * self.bs, sum(map(len, buffers)), buffers)

    def at(self, offset: int, data: bytes | bytearray) -> None:
        self._pending.append((offset, len(data), (bytes(data),)))
        self._pending_bytes += len(data)

    def _queue(self, offset: int, length: int, buffers: Sequence[_Buffer]) -> None:
        self._pending.append((offset, length, buffers))
        self._pending_bytes += length
        if self._pending_bytes > 8 << 20:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        self._pending.sort(key=lambda item: item[0])
        run_start, run_end = -1, -1
        parts: list[_Buffer] = []
        for offset, length, buffers in self._pending:
            if offset != run_end:
                self._write(run_start, parts)
                run_start, run_end, parts = offset, offset, []
            parts.extend(buffers)
            run_end += length
        self._write(run_start, parts)
        self._pending.clear()
        self._pending_bytes = 0

    def _write(self, offset: int, parts: list[_Buffer]) -> None:
        if not parts:
            return
        if len(parts) == 1:
            self.dev.pwrite(offset, parts[0])
        elif self._pwritev is not None:
            self._pwritev(offset, parts)
        else:
            self.dev.pwrite(offset, b"".join(parts))


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
        plan.journal_iblock = journal.block

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


def _u32_array(values: Iterable[int]) -> array[int]:
    """``values`` as little-endian u32 items (for memoryview slice assignment)."""
    out = array("I", values)
    if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
        out.byteswap()
    return out


def _resize_blocks(plan: Plan) -> tuple[int, bytes, int, list[_Buffer]]:
    """The resize inode's double-indirect block, and the primary reserved GDT blocks (contiguous, each
    listing its backups' block numbers) as (dind block, its bytes, first reserved block, their buffers).

    Each reserved block is its list of backups, then zeros: the lists are built in one buffer,
    column by column (entry j of reserved block r is (first + r) + backup_j * blocks_per_group,
    an arithmetic run over r, assigned through a strided u32 view), and every block's zeros are
    one shared buffer, so megabytes of reserved blocks never exist in memory.
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
    dview[start : start + head] = _u32_array(range(first, first + head))
    if count > head:
        dview[0 : count - head] = _u32_array(range(first + head, first + count))
    dview.release()
    backups = _list_backups(geo)[:apb]
    width = 4 * len(backups)  # bytes of each block's list
    lists = bytearray(count * width)
    if backups:
        lview = memoryview(lists).cast("I")
        for j, group in enumerate(backups):
            base = first + group * geo.blocks_per_group
            lview[j :: len(backups)] = _u32_array(range(base, base + count))
        lview.release()
    zeros = bytes(bs - width)
    heads = struct.unpack(f"{width}s" * count, lists)  # each block's list, as its own bytes
    region: list[_Buffer] = [zeros] * (2 * count)
    region[0::2] = heads
    region = [part for part in region if part]  # (no backups, or lists that fill whole blocks)
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

    def backup_blocks(self, group: int) -> int:
        """Blocks the superblock and descriptor copies take at the start of ``group``."""
        return self.meta_used.get(group, 0) if self.meta_used is not None else self.geo.super_and_desc(group).used

    def plain_descriptor(self, desc_size: int) -> bytes:
        """The descriptor of a group with nothing of its own (table locations left zero)."""
        free_blocks = self.bpg - (0 if self.flex else self.own_tables)
        return _pack_descriptor(desc_size, self.base_flags, free_blocks, self.ipg, 0, self.unused_default, 0, 0)

    def __call__(self, group: int, alloc: FlexAlloc) -> tuple[int, int, int, int, int, int]:
        """(flags, free blocks, free inodes, used dirs, itable unused, backup blocks)."""
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
        meta = self.backup_blocks(group)
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
        return flags, free_blocks, free_inodes, dirs, unused, meta


def _pack_descriptor(
    desc_size: int, flags: int, free_blocks: int, free_inodes: int, dirs: int, unused: int, bb_csum: int, ib_csum: int
) -> bytes:
    """A group descriptor with its table locations and checksum left zero."""
    raw = bytearray(desc_size)
    if desc_size >= 64:
        C.GROUP_DESC_64.pack_into(
            raw, 0, 0, 0, 0, free_blocks & 0xFFFF, free_inodes & 0xFFFF, dirs & 0xFFFF, flags, 0,
            bb_csum & 0xFFFF, ib_csum & 0xFFFF, unused & 0xFFFF, 0,
            0, 0, 0, free_blocks >> 16, free_inodes >> 16, dirs >> 16, unused >> 16, 0, bb_csum >> 16, ib_csum >> 16, 0,
        )
    else:
        C.GROUP_DESC_32.pack_into(
            raw, 0, 0, 0, 0, free_blocks, free_inodes, dirs, flags, 0, bb_csum & 0xFFFF, ib_csum & 0xFFFF, unused, 0
        )
    return bytes(raw)


def _block_bitmap(plan: Plan, group: int, alloc: FlexAlloc) -> Bitmap:
    geo = plan.geo
    start = geo.group_first_block(group)
    end = geo.group_last_block(group) + 1
    bm = Bitmap(geo.blocks_per_group)
    for s, e in alloc.used_ranges_in(start, end):
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


class _SpecialGroups:
    """Descriptors and bitmaps of the groups that are not plain, each distinct one encoded once.

    Table locations aside, a group's descriptor and bitmaps follow from its flex group's
    shape, its place in that flex group, and what else it holds: backups, blocks allocated
    after the tables, used inodes, the short end of the filesystem.  A group holding none of
    those is the same as the group at the same place of any flex group of the same shape (the
    first group of each flex group, which holds all its tables, is the common case), so those
    are cached by (shape, place).
    """

    _LIMIT = 1024  # cached groups (shapes repeat, so this is rarely reached)

    def __init__(self, plan: Plan, counts: _GroupCounts) -> None:
        geo = plan.geo
        self.plan = plan
        self.counts = counts
        self.desc_size = geo.desc_size
        self.block_size = geo.block_size
        self.last = geo.group_count - 1
        self.seed = plan.seed if plan.metadata_csum else None
        self.block_bytes = geo.blocks_per_group // 8
        self.inode_bytes = geo.inodes_per_group // 8
        self.block_uninit = K.BG_BLOCK_UNINIT if plan.csum else 0
        self.inode_uninit = K.BG_INODE_UNINIT if plan.csum else 0
        self._cache: dict[tuple[int, int], tuple[FlexShape, bytes, bytes | None, bytes | None]] = {}

    def encode(self, group: int, alloc: FlexAlloc) -> tuple[bytes, bytes | None, bytes | None]:
        """(descriptor with zero table locations and checksum, block bitmap, inode bitmap);
        a bitmap is None when the group leaves it uninitialised."""
        plan = self.plan
        if (
            group == self.last
            or group in plan.extra_by_group
            or group in plan.uninit_cleared
            or group in plan.inode_usage
            or self.counts.backup_blocks(group)
        ):
            return self._encode(group, alloc)
        return self.cached(group, alloc)

    def cached(self, group: int, alloc: FlexAlloc) -> tuple[bytes, bytes | None, bytes | None]:
        """encode() for a group known to hold nothing but (possibly) tables."""
        # The shape is kept in the value so that its id is not reused while the entry lives.
        key = (id(alloc.shape), group - alloc.first_group)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= self._LIMIT:
                self._cache.clear()
            hit = self._cache[key] = (alloc.shape, *self._encode(group, alloc))
        return hit[1], hit[2], hit[3]

    def _bitmap(self, bm: Bitmap, nbytes: int) -> tuple[bytes, int]:
        raw = bm.to_bytes(self.block_size)
        return raw, (bitmap_csum(self.seed, raw[:nbytes]) if self.seed is not None else 0)

    def _encode(self, group: int, alloc: FlexAlloc) -> tuple[bytes, bytes | None, bytes | None]:
        flags, free_blocks, free_inodes, dirs, unused, _ = self.counts(group, alloc)
        block_bitmap = inode_bitmap = None
        bb_csum = ib_csum = 0
        if not flags & self.block_uninit:
            block_bitmap, bb_csum = self._bitmap(_block_bitmap(self.plan, group, alloc), self.block_bytes)
        if not flags & self.inode_uninit:
            inode_bitmap, ib_csum = self._bitmap(_inode_bitmap(self.plan, group), self.inode_bytes)
        desc = _pack_descriptor(self.desc_size, flags, free_blocks, free_inodes, dirs, unused, bb_csum, ib_csum)
        return desc, block_bitmap, inode_bitmap


def _special_groups(plan: Plan) -> list[int] | None:
    """Groups whose descriptor is not the plain template (besides those holding flex tables),
    sorted; None when that is every group (no uninit flags: every group has real bitmaps)."""
    geo = plan.geo
    if not plan.csum:
        return None
    special = set(plan.inode_usage) | plan.uninit_cleared | set(plan.extra_by_group) | {geo.group_count - 1}
    if geo.meta_bg:
        special.update(g for g in range(geo.group_count) if geo.super_and_desc(g).used)
    else:
        special.update(geo.backup_groups)
    return sorted(special)


_INVERT = bytes(range(255, -1, -1))  # bytes.translate table: complement every byte
_DESC_CHUNK = 1 << 20  # bytes of descriptor blocks collected before they are copied to every backup


class _DescriptorTable:
    """Writes every group's descriptor (the table streamed block by block to all its copies) and bitmaps.

    Most groups own nothing: both bitmaps uninitialised, no backups, no tables, so their
    descriptor is a template that differs only in the table locations.  A descriptor block is
    therefore built as copies of the template, the other groups' descriptors are put over
    it, the table locations of all are written column by column (strided u32 views), and
    every checksum is computed in one pass: no Python statement runs per plain group.

    Most blocks go further: when every flex group a block overlaps has the common shape
    (no backups, not the end of the filesystem) and no group in it is special, the block is
    the same as every other such block at the same offset in its flex groups, except that all
    table locations are moved by the same number of blocks.  Such a block is built once as
    a pattern and then only shifted.
    """

    def __init__(self, plan: Plan, w: _Writer) -> None:
        geo = plan.geo
        self.plan = plan
        self.geo = geo
        self.w = w
        self.dpb = dpb = geo.desc_per_block
        self.desc_size = geo.desc_size
        self.flex_size = flex_size = plan.groups_per_flex
        counts = _GroupCounts(plan)
        self.specials = _SpecialGroups(plan, counts)
        self.checksums = _DescChecksums(plan)
        self.template = counts.plain_descriptor(geo.desc_size)
        self.full_block = self.template * dpb + bytes(geo.block_size - dpb * geo.desc_size)
        self.words = geo.desc_size // 4  # u32 stride between descriptors
        self.split = geo.desc_size >= 64 and geo.blocks_count > MAX_32  # locations need their high halves
        self.special = _special_groups(plan)
        self.next_special = 0  # index into self.special of the first group not yet written
        self.patterns: dict[int, _BlockPattern] = {}  # by offset of the block in its flex group
        # Blocks of whole flex groups (or within one) can share patterns; split locations cannot.
        self.patterned = (
            flex_size > 1 and not geo.meta_bg and not self.split and self.special is not None
            and (dpb % flex_size == 0 or flex_size % dpb == 0)
        )
        # Where each descriptor block goes: after every backup superblock, or (meta_bg) in its meta group.
        self.desc_starts = [geo.group_first_block(g) + 1 for g in geo.backup_groups]
        self.chunk: list[bytes] = []
        self.chunk_index = 0

    def write(self) -> None:
        """Queue every descriptor block and bitmap on the writer, and flush it."""
        ngroups = self.geo.group_count
        dpb = self.dpb
        for index in range(self.geo.desc_blocks):
            g0 = index * dpb
            g1 = min(g0 + dpb, ngroups)
            key = self._pattern_key(g0, g1)
            pattern = self.patterns.get(key[1]) if key is not None else None
            if pattern is not None and key is not None and pattern.shape is key[0]:
                block = pattern.apply(g0, self.w)
            else:
                block = self._build(g0, g1, key)
            self.checksums.fill(block, g0, g1 - g0)
            self._emit(index, bytes(block))
        self.w.flush()

    def _pattern_key(self, g0: int, g1: int) -> tuple[FlexShape, int] | None:
        """(shape, offset in the flex group) when the block [g0, g1) can follow a pattern, else None."""
        if not self.patterned or g1 - g0 != self.dpb:
            return None
        special = self.special
        assert special is not None
        if self.next_special < len(special) and special[self.next_special] < g1:
            return None
        fs = self.flex_size
        offset = g0 % fs
        first = g0 - offset  # the flex groups the block overlaps cover [first, end)
        end = -(-g1 // fs) * fs
        # The common shape: that of flex groups with no backups in them or the group after, away
        # from the end (see _flex_signature); cached only when it may be placed anywhere.
        shape = self.plan.shape_cache.get((fs - 1, ()))
        if shape is None or end > self.geo.group_count - 2 or self.geo.backup_groups_in(first, end + 1):
            return None
        return (shape, offset)

    def _build(self, g0: int, g1: int, key: tuple[FlexShape, int] | None) -> bytearray:
        """The block of descriptors of groups [g0, g1) without checksums, group by group."""
        plan = self.plan
        fs = self.flex_size
        n = g1 - g0
        ds = self.desc_size
        if n == self.dpb:
            block = bytearray(self.full_block)
        else:  # the last block: its unused descriptors stay zero
            block = bytearray(self.template * n + bytes(self.geo.block_size - n * ds))
        # Table locations of every group here, from the shapes of the flex groups they are in.
        bbs: list[int] = []
        ibs: list[int] = []
        its: list[int] = []
        allocs: dict[int, FlexAlloc] = {}
        holders: list[int] = []  # groups holding tables of their flex group
        for first in range(g0 - g0 % fs, g1, fs):
            alloc = allocs[first] = plan.flex(first)
            shape = alloc.shape
            base = alloc.base
            lo = max(g0 - first, 0)
            hi = min(g1 - first, fs)
            bbs += [b + base for b in shape.block_bitmaps[lo:hi]]
            ibs += [b + base for b in shape.inode_bitmaps[lo:hi]]
            its += [b + base for b in shape.inode_tables[lo:hi]]
            if fs > 1:  # (without flex_bg each group holds its own tables, as the template says)
                holders += [first + rel for rel in shape.table_blocks_in if lo <= rel < hi]
        special = self.special
        if special is None:
            here = list(range(g0, g1))
            holders = []
        else:
            here = []
            while self.next_special < len(special) and special[self.next_special] < g1:
                here.append(special[self.next_special])
                self.next_special += 1
            holders = [g for g in holders if g not in here]
        bitmaps: list[tuple[int, bytes | None, bytes | None]] = []  # (index, block bitmap, inode bitmap)
        for group in here:
            desc, block_bitmap, inode_bitmap = self.specials.encode(group, allocs[group - group % fs])
            bitmaps.append((group - g0, block_bitmap, inode_bitmap))
            block[(group - g0) * ds : (group - g0 + 1) * ds] = desc
        for group in holders:  # nothing but tables: the same in every flex group of one shape
            desc, block_bitmap, inode_bitmap = self.specials.cached(group, allocs[group - group % fs])
            bitmaps.append((group - g0, block_bitmap, inode_bitmap))
            block[(group - g0) * ds : (group - g0 + 1) * ds] = desc
        for i, block_bitmap, inode_bitmap in bitmaps:
            if block_bitmap is not None:
                self.w.block(bbs[i], block_bitmap, owned=True)
            if inode_bitmap is not None:
                self.w.block(ibs[i], inode_bitmap, owned=True)
        if key is not None:
            shift = self.geo.group_first_block(g0 - g0 % fs)
            self.patterns[key[1]] = _BlockPattern(
                key[0], bytes(block), shift, bbs, ibs, its, bitmaps, self.words,
                self.geo.first_data_block, self.geo.blocks_per_group, fs,
            )

        words = self.words
        stop = n * words
        with memoryview(block) as raw:
            view = raw.cast("I")
            if self.split:
                for column, values in enumerate((bbs, ibs, its)):
                    view[column:stop:words] = _u32_array([v & MAX_32 for v in values])
                    view[8 + column : stop : words] = _u32_array([v >> 32 for v in values])
            else:
                view[0:stop:words] = _u32_array(bbs)
                view[1:stop:words] = _u32_array(ibs)
                view[2:stop:words] = _u32_array(its)
            view.release()
        return block

    def _emit(self, index: int, data: bytes) -> None:
        geo = self.geo
        if geo.meta_bg:
            first = index * self.dpb
            for g in (first, first + 1, first + self.dpb - 1):
                if g < geo.group_count:
                    loc = geo.super_and_desc(g)
                    if loc.new_desc_block:
                        self.w.block(loc.new_desc_block, data)
            return
        if not self.chunk:
            self.chunk_index = index
        self.chunk.append(data)
        if (len(self.chunk) + 1) * geo.block_size > _DESC_CHUNK or index == geo.desc_blocks - 1:
            joined = b"".join(self.chunk)
            for start in self.desc_starts:
                self.w.block(start + self.chunk_index, joined, owned=True)
            self.chunk.clear()


class _BlockPattern:
    """A descriptor block of groups in flex groups of one shape, to be shifted to other such blocks.

    Table locations are kept as one integer per column, a u32 lane per descriptor (relative to the
    first block of the first flex group), so shifting every location is one big-integer addition.
    """

    __slots__ = ("shape", "template", "columns", "bitmaps", "words", "count", "lanes", "fdb", "bpg", "flex_size")

    def __init__(
        self, shape: FlexShape, template: bytes, shift: int, bbs: list[int], ibs: list[int], its: list[int],
        bitmaps: list[tuple[int, bytes | None, bytes | None]], words: int, fdb: int, bpg: int, flex_size: int,
    ) -> None:
        self.shape = shape  # the pattern holds only for blocks of this shape
        self.template = template  # the descriptors, table locations and checksums left zero
        self.columns = [
            int.from_bytes(_u32_array([v - shift for v in values]).tobytes(), "little") for values in (bbs, ibs, its)
        ]
        self.bitmaps = [
            (bbs[i] - shift, block_bitmap, ibs[i] - shift, inode_bitmap) for i, block_bitmap, inode_bitmap in bitmaps
        ]
        self.words = words
        self.count = len(bbs)
        self.lanes = int.from_bytes(b"\1\0\0\0" * self.count, "little")  # 1 in every u32
        self.fdb = fdb
        self.bpg = bpg
        self.flex_size = flex_size

    def apply(self, g0: int, w: _Writer) -> bytearray:
        """The block for groups from ``g0`` (checksums left zero); queues its bitmaps on ``w``."""
        shift = self.fdb + (g0 - g0 % self.flex_size) * self.bpg
        block = bytearray(self.template)
        add = shift * self.lanes  # no lane overflows: every sum is a block number below 2^32
        words = self.words
        stop = self.count * words
        with memoryview(block) as raw:
            view = raw.cast("I")
            for column, relative in enumerate(self.columns):
                view[column:stop:words] = memoryview((relative + add).to_bytes(4 * self.count, "little")).cast("I")
            view.release()
        for bb, block_bitmap, ib, inode_bitmap in self.bitmaps:
            if block_bitmap is not None:
                w.block(bb + shift, block_bitmap, owned=True)
            if inode_bitmap is not None:
                w.block(ib + shift, inode_bitmap, owned=True)
        return block


class _DescChecksums:
    """Fills the checksum fields of a block of descriptors (whose checksum fields are zero).

    A metadata_csum descriptor checksum is crc32c over the group number, then the descriptor.
    The first part is linear (over XOR) in the group number, and the groups of one descriptor
    block are ``first ^ j`` for ``j < desc_per_block`` (``first`` is a multiple of that power of
    two), so crc(first ^ j) = crc(first) ^ crc(j) ^ crc(0): one call per block and a column
    computed once give every group's starting value, and a single call per descriptor is left.
    """

    def __init__(self, plan: Plan) -> None:
        geo = plan.geo
        self.desc_size = geo.desc_size
        self.dpb = geo.desc_per_block
        self.metadata_csum = plan.metadata_csum
        self.seed_x = plan.seed ^ 0xFFFFFFFF  # crc32c() takes and returns the complement of ext4's raw CRC
        self.split = struct.Struct(f"{self.desc_size}s" * self.dpb)  # a block into its descriptors, in one call
        self.gdt_csum = None
        if plan.csum and not plan.metadata_csum:
            from .groupdesc import DescChecksummer

            self.gdt_csum = DescChecksummer(
                metadata_csum=False, gdt_csum=True, seed=plan.seed, uuid=plan.opts.uuid, desc_size=self.desc_size
            )
        zero = _crc32c(_U32.pack(0), self.seed_x)
        offsets = array("I", [_crc32c(_U32.pack(j), self.seed_x) ^ zero for j in range(self.dpb)])
        self.offsets = int.from_bytes(offsets.tobytes(), sys.byteorder)
        self.lanes = int.from_bytes(array("I", [1] * self.dpb).tobytes(), sys.byteorder)  # 1 in every u32

    def fill(self, block: bytearray, first: int, n: int) -> None:
        """Checksum descriptors ``[0, n)`` of ``block``, those of groups ``first, first + 1, ...``."""
        ds = self.desc_size
        if self.metadata_csum:
            head = _crc32c(_U32.pack(first), self.seed_x)
            starts = array("I")
            starts.frombytes((self.offsets ^ head * self.lanes).to_bytes(4 * self.dpb, sys.byteorder))
            descriptors = self.split.unpack(block) if n == self.dpb else struct.unpack_from(f"{ds}s" * n, block)
            crcs = array("I", map(_crc32c, descriptors, starts))
            if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
                crcs.byteswap()
            # The low half of the raw CRC, i.e. of the complement of crc32c(), is stored.
            stored = memoryview(crcs.tobytes().translate(_INVERT)).cast("H")[0::2]
            with memoryview(block) as whole:
                whole.cast("H")[0x1E // 2 : n * ds // 2 : ds // 2] = stored
        elif self.gdt_csum is not None:
            whole = memoryview(block)
            for i in range(n):
                off = i * ds
                _U16.pack_into(block, off + 0x1E, self.gdt_csum.compute(first + i, whole[off : off + ds]))
            whole.release()


def write_plan(plan: Plan, dev: Device) -> int:
    """Encode the plan onto ``dev`` (which must read as zeros); returns bytes written."""
    geo = plan.geo
    bs = geo.block_size
    w = _Writer(dev, bs)
    sb = plan.sb

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
        w.blocks(first_reserved, reserved)
    if plan.journal_blocks:
        w.block(plan.journal_extents[0][1], _journal_superblock(plan))
        if plan.journal_index_block:
            w.block(plan.journal_index_block, _journal_leaf(plan))
        jib = plan.journal_iblock
        for i in range(15):
            sb[f"s_jnl_blocks[{i}]"] = _U32.unpack_from(jib, 4 * i)[0]
        size = plan.journal_blocks * bs
        sb["s_jnl_blocks[15]"] = size >> 32
        sb["s_jnl_blocks[16]"] = size & 0xFFFFFFFF
    w.flush()

    # Group descriptors (streamed one descriptor block at a time), bitmaps.
    _DescriptorTable(plan, w).write()
    backups = geo.backup_groups

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
