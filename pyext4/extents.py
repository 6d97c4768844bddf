"""Extent trees: walk, look up and build the tree that maps an ext4 file's logical blocks."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from . import _codecs as C
from . import constants as K
from .csum import extent_block_csum, inode_seed
from .errors import CorruptError, InvalidOptions, LoopError, TruncatedError
from .record import FrozenRecord, fill

ReadBlock = Callable[[int], bytes]
"""``read_block(block) -> bytes``: the ``block_size`` bytes of one block of the device."""

Verify = Callable[[int, bytes, int], None]
"""``verify(block, raw, eh_max)``: checks a tree block's checksum tail; raises ChecksumError."""

HEADER_SIZE = 12
ENTRY_SIZE = 12
ROOT_SIZE = 60  # i_block
ROOT_CAPACITY = (ROOT_SIZE - HEADER_SIZE) // ENTRY_SIZE  # 4
MAX_LOGICAL = 0xFFFFFFFF  # EXT_MAX_BLOCKS: every extent ends at or before this logical block
MAX_PHYSICAL = 1 << 48  # ee_start / ei_leaf are 48 bits

_MAGIC = K.EXT4_EXT_MAGIC
_INIT_MAX = K.EXT_INIT_MAX_LEN  # 32768
_UNWRITTEN_MAX = K.EXT_UNWRITTEN_MAX_LEN  # 32767
_MAX_DEPTH = K.EXT_MAX_DEPTH  # 5
_HDR = C.EXTENT_HEADER
_EXT = C.EXTENT
_IDX = C.EXTENT_IDX
_TAIL = C.EXTENT_TAIL


class Extent(FrozenRecord):
    """A run of ``length`` logical blocks from ``logical`` stored at ``physical`` onward.

    ``unwritten`` extents (preallocated, read as zeroes) are stored with ee_len
    = length + 32768, so they hold at most 32767 blocks; initialized ones hold
    at most 32768.
    """

    __slots__ = ("logical", "physical", "length", "unwritten")

    logical: int
    physical: int
    length: int
    unwritten: bool

    def __init__(self, logical: int, physical: int, length: int, unwritten: bool = False) -> None:
        fill(self, "logical", logical)
        fill(self, "physical", physical)
        fill(self, "length", length)
        fill(self, "unwritten", unwritten)

    @property
    def end(self) -> int:
        """The first logical block after the extent."""
        return self.logical + self.length

    @property
    def physical_end(self) -> int:
        """The first physical block after the extent."""
        return self.physical + self.length


class ExtentHeader(NamedTuple):
    """A validated ext4_extent_header."""

    entries: int
    max: int
    depth: int
    generation: int


def block_capacity(block_size: int) -> int:
    """Entries that fit in one tree block after the header (the tail checksum always fits too)."""
    return (block_size - HEADER_SIZE) // ENTRY_SIZE


def parse_header(
    raw: bytes | bytearray | memoryview, offset: int, *, capacity_entries: int, where: str | None
) -> ExtentHeader:
    """Decode and check the extent header at ``offset``.

    ``capacity_entries`` is how many entries the node can hold: 4 in i_block,
    ``(block_size - 12) // 12`` in a block.  Raises TruncatedError when
    ``raw`` is too short for the header or its eh_max entries, CorruptError
    on a bad magic, eh_max of 0 or above the capacity, eh_entries above
    eh_max, or a depth above 5.
    """
    if offset < 0 or len(raw) < offset + HEADER_SIZE:
        raise TruncatedError("extent header cut short", where=where)
    magic, entries, eh_max, depth, generation = _HDR.unpack_from(raw, offset)
    if magic != _MAGIC:
        raise CorruptError(f"bad extent header magic {magic:#06x}", where=where)
    if eh_max == 0 or eh_max > capacity_entries:
        raise CorruptError(f"extent header eh_max {eh_max} outside 1..{capacity_entries}", where=where)
    if entries > eh_max:
        raise CorruptError(f"extent header eh_entries {entries} > eh_max {eh_max}", where=where)
    if depth > _MAX_DEPTH:
        raise CorruptError(f"extent tree depth {depth} > {_MAX_DEPTH}", where=where)
    if len(raw) < offset + HEADER_SIZE + ENTRY_SIZE * eh_max:
        raise TruncatedError("extent node cut short", where=where)
    return ExtentHeader(entries, eh_max, depth, generation)


# ------------------------------------------------------------------ reading
class _Ctx:
    """Per-walk constants and loop bookkeeping."""

    __slots__ = (
        "read_block", "block_size", "capacity", "min_block", "blocks_count", "where", "verify",
        "visited", "path",
    )

    def __init__(
        self,
        read_block: ReadBlock,
        block_size: int,
        blocks_count: int,
        first_data_block: int,
        ino: int,
        verify: Verify | None,
    ) -> None:
        if block_size < 1024 or block_size & (block_size - 1):
            raise InvalidOptions(f"block size {block_size} is not a power of two >= 1024")
        self.read_block = read_block
        self.block_size = block_size
        self.capacity = block_capacity(block_size)
        # Never block 0 nor a block overlapping the superblock (bytes 1024..2047).
        self.min_block = max(first_data_block, -(-2048 // block_size))
        self.blocks_count = blocks_count
        self.where = f"inode {ino}"
        self.verify = verify
        self.visited: set[int] = set()
        self.path: set[int] = set()

    def read_node(self, block: int, depth: int) -> tuple[bytes, ExtentHeader]:
        """Read, check and return the tree block ``block`` that must have ``depth``."""
        if block in self.path:
            raise LoopError(f"extent tree block {block} points back at itself or an ancestor",
                            where=self.where)
        if block in self.visited:
            raise LoopError(f"extent tree block {block} is referenced twice", where=self.where)
        self.visited.add(block)
        raw = self.read_block(block)
        if len(raw) < self.block_size:
            raise TruncatedError(f"extent tree block {block} cut short", where=self.where)
        where = f"{self.where} extent block {block}"
        hdr = parse_header(raw, 0, capacity_entries=self.capacity, where=where)
        if self.verify is not None:
            self.verify(block, raw, hdr.max)
        if hdr.depth != depth:
            raise CorruptError(f"extent node depth {hdr.depth}, its parent expects {depth}", where=where)
        if depth > 0 and hdr.entries == 0:
            raise CorruptError("extent index node has no entries", where=where)
        return raw, hdr

    def index_entries(
        self, raw: bytes | bytearray | memoryview, hdr: ExtentHeader, lo: int, hi: int
    ) -> list[tuple[int, int, int]]:
        """Checked (child block, lo, hi) of an index node covering logical blocks [lo, hi)."""
        end = HEADER_SIZE + ENTRY_SIZE * hdr.entries
        out: list[tuple[int, int, int]] = []
        prev = -1
        min_block, blocks_count = self.min_block, self.blocks_count
        for ei_block, leaf_lo, leaf_hi, _unused in _IDX.iter_unpack(memoryview(raw)[HEADER_SIZE:end]):
            if ei_block <= prev:
                raise CorruptError(f"extent index entries out of order at logical block {ei_block}",
                                   where=self.where)
            if ei_block < lo or ei_block >= hi:
                raise CorruptError(
                    f"extent index logical block {ei_block} outside its parent's range [{lo}, {hi})",
                    where=self.where,
                )
            child = leaf_hi << 32 | leaf_lo
            if child < min_block or child >= blocks_count:
                raise CorruptError(f"extent index points at block {child} outside the device",
                                   where=self.where)
            if out:
                last_block, last_lo, _ = out[-1]
                out[-1] = (last_block, last_lo, ei_block)
            out.append((child, ei_block, hi))
            prev = ei_block
        return out

    def leaf_extents(
        self, raw: bytes | bytearray | memoryview, hdr: ExtentHeader, lo: int, hi: int, prev_end: int
    ) -> list[Extent]:
        """Checked extents of a leaf covering logical blocks [lo, hi), each starting at >= ``prev_end``."""
        end = HEADER_SIZE + ENTRY_SIZE * hdr.entries
        out: list[Extent] = []
        min_block, blocks_count = self.min_block, self.blocks_count
        floor = max(lo, prev_end)
        for ee_block, ee_len, start_hi, start_lo in _EXT.iter_unpack(memoryview(raw)[HEADER_SIZE:end]):
            if ee_len > _INIT_MAX:
                length = ee_len - _INIT_MAX
                unwritten = True
            else:
                length = ee_len
                unwritten = False
            if length == 0:
                raise CorruptError(f"extent at logical block {ee_block} has length 0", where=self.where)
            if ee_block < floor:
                if ee_block < lo:
                    raise CorruptError(
                        f"extent at logical block {ee_block} starts before its index entry ({lo})",
                        where=self.where,
                    )
                raise CorruptError(f"extent at logical block {ee_block} overlaps or is out of order",
                                   where=self.where)
            ext_end = ee_block + length
            if ext_end > hi:
                raise CorruptError(
                    f"extent {ee_block}+{length} ends beyond its parent's range (logical block {hi})",
                    where=self.where,
                )
            physical = start_hi << 32 | start_lo
            if physical < min_block or physical + length > blocks_count:
                raise CorruptError(
                    f"extent {ee_block}+{length} at physical block {physical} lies outside the device",
                    where=self.where,
                )
            out.append(Extent(ee_block, physical, length, unwritten))
            floor = ext_end
        return out


def _root(root: bytes | bytearray | memoryview, ctx: _Ctx) -> ExtentHeader:
    hdr = parse_header(root, 0, capacity_entries=ROOT_CAPACITY, where=ctx.where)
    if hdr.depth > 0 and hdr.entries == 0:
        raise CorruptError("extent tree root is an index with no entries", where=ctx.where)
    return hdr


def _walk(
    root: bytes | bytearray | memoryview, ctx: _Ctx, blocks_out: list[int] | None
) -> Iterator[Extent]:
    """Depth-first traversal yielding extents in logical order (recording tree blocks)."""
    hdr = _root(root, ctx)
    if hdr.depth == 0:
        yield from ctx.leaf_extents(root, hdr, 0, MAX_LOGICAL, 0)
        return
    prev_end = 0
    # Each frame: the node's remaining children, the node's depth, its block (-1 for the root).
    stack: list[tuple[Iterator[tuple[int, int, int]], int, int]] = [
        (iter(ctx.index_entries(root, hdr, 0, MAX_LOGICAL)), hdr.depth, -1)
    ]
    path = ctx.path
    while stack:
        children, depth, node_block = stack[-1]
        nxt = next(children, None)
        if nxt is None:
            stack.pop()
            path.discard(node_block)
            continue
        block, lo, hi = nxt
        raw, child_hdr = ctx.read_node(block, depth - 1)
        if blocks_out is not None:
            blocks_out.append(block)
        if child_hdr.depth == 0:
            extents = ctx.leaf_extents(raw, child_hdr, lo, hi, prev_end)
            if extents:
                prev_end = extents[-1].end
            yield from extents
        else:
            path.add(block)
            stack.append((iter(ctx.index_entries(raw, child_hdr, lo, hi)), child_hdr.depth, block))


def walk(
    root: bytes | bytearray | memoryview,
    read_block: ReadBlock,
    *,
    block_size: int,
    blocks_count: int,
    first_data_block: int,
    ino: int,
    verify: Verify | None = None,
) -> Iterator[Extent]:
    """Yield every extent of the tree rooted in the 60-byte i_block, in logical order.

    Each tree block read is checked (magic, eh_max, eh_entries, depth one less
    than its parent's) and passed to ``verify(block, raw, eh_max)`` when given.
    Index and data block numbers must lie in the device past the superblock;
    extents must be non-empty, in strictly increasing non-overlapping logical
    order, and inside the range of the index entry above them.  Raises
    CorruptError (where="inode N"), LoopError for a block that points back at
    an ancestor or is referenced twice, TruncatedError for a short block, and
    whatever ``verify`` raises.  Every tree block is read at most once.
    """
    ctx = _Ctx(read_block, block_size, blocks_count, first_data_block, ino, verify)
    return _walk(root, ctx, None)


def scan(
    root: bytes | bytearray | memoryview,
    read_block: ReadBlock,
    *,
    block_size: int,
    blocks_count: int,
    first_data_block: int,
    ino: int,
    verify: Verify | None = None,
) -> tuple[list[Extent], list[int]]:
    """(extents, tree blocks) of a tree in one pass; checks and raises as :func:`walk` does."""
    ctx = _Ctx(read_block, block_size, blocks_count, first_data_block, ino, verify)
    blocks: list[int] = []
    extents = list(_walk(root, ctx, blocks))
    return extents, blocks


def tree_blocks(
    root: bytes | bytearray | memoryview,
    read_block: ReadBlock,
    *,
    block_size: int,
    blocks_count: int,
    first_data_block: int,
    ino: int,
    verify: Verify | None = None,
) -> list[int]:
    """The index and leaf blocks of a tree (not its data), in depth-first order.

    The whole tree is read and checked as :func:`walk` does; raises the same errors.
    """
    return scan(
        root, read_block, block_size=block_size, blocks_count=blocks_count,
        first_data_block=first_data_block, ino=ino, verify=verify,
    )[1]


def lookup(
    root: bytes | bytearray | memoryview,
    read_block: ReadBlock,
    logical: int,
    *,
    block_size: int,
    blocks_count: int,
    first_data_block: int,
    ino: int,
    verify: Verify | None = None,
) -> Extent | None:
    """The extent holding logical block ``logical``, or None for a hole.

    Reads only the nodes on the path down to it; each node on the path is
    checked as :func:`walk` checks it and raises the same errors.
    """
    ctx = _Ctx(read_block, block_size, blocks_count, first_data_block, ino, verify)
    hdr = _root(root, ctx)
    raw: bytes | bytearray | memoryview = root
    lo, hi = 0, MAX_LOGICAL
    if logical < 0 or logical >= MAX_LOGICAL:
        return None
    while hdr.depth > 0:
        children = ctx.index_entries(raw, hdr, lo, hi)
        i = bisect.bisect_right(children, logical, key=_child_start) - 1
        if i < 0:
            return None
        block, lo, hi = children[i]
        raw, hdr = ctx.read_node(block, hdr.depth - 1)
        ctx.path.add(block)
    extents = ctx.leaf_extents(raw, hdr, lo, hi, lo)
    starts = [e.logical for e in extents]
    i = bisect.bisect_right(starts, logical) - 1
    if i >= 0 and logical < extents[i].end:
        return extents[i]
    return None


def _child_start(child: tuple[int, int, int]) -> int:
    return child[1]


# ----------------------------------------------------------------- building
def merge(extents: Iterable[Extent]) -> list[Extent]:
    """Sort extents and join logically and physically contiguous ones of the same kind.

    Joined runs are cut into pieces of the largest allowed length (32768
    initialized, 32767 unwritten), so the result is the fewest extents that
    map the same blocks.  Raises InvalidOptions for an empty or negative
    extent or overlapping extents.
    """
    items = sorted(extents, key=lambda e: e.logical)
    runs: list[list[int]] = []  # [logical, physical, length, unwritten]
    prev_end = 0
    for e in items:
        if e.length <= 0 or e.logical < 0 or e.physical < 0:
            raise InvalidOptions(f"invalid extent {e}")
        if runs and e.logical < prev_end:
            raise InvalidOptions(f"extent {e} overlaps the one before it")
        last = runs[-1] if runs else None
        if (
            last is not None
            and last[0] + last[2] == e.logical
            and last[1] + last[2] == e.physical
            and bool(last[3]) == e.unwritten
        ):
            last[2] += e.length
        else:
            runs.append([e.logical, e.physical, e.length, int(e.unwritten)])
        prev_end = e.end
    out: list[Extent] = []
    for logical, physical, length, unwritten in runs:
        cap = _UNWRITTEN_MAX if unwritten else _INIT_MAX
        done = 0
        while done < length:
            piece = min(cap, length - done)
            out.append(Extent(logical + done, physical + done, piece, bool(unwritten)))
            done += piece
    return out


def _level_counts(n_extents: int, block_size: int) -> list[int]:
    """Nodes per level below the root, leaves first; empty when the root holds everything."""
    if n_extents < 0:
        raise InvalidOptions(f"negative extent count {n_extents}")
    if block_size < 1024 or block_size & (block_size - 1):
        raise InvalidOptions(f"block size {block_size} is not a power of two >= 1024")
    per = block_capacity(block_size)
    counts: list[int] = []
    nodes = n_extents
    while nodes > ROOT_CAPACITY:
        nodes = -(-nodes // per)
        counts.append(nodes)
    if len(counts) > _MAX_DEPTH:
        raise InvalidOptions(f"{n_extents} extents need a tree deeper than {_MAX_DEPTH}")
    return counts


def tree_shape(n_extents: int, block_size: int) -> tuple[int, int]:
    """(depth, tree blocks needed) for a tree built by :func:`build` from ``n_extents`` extents.

    Raises InvalidOptions for a bad block size or a count needing depth > 5.
    """
    counts = _level_counts(n_extents, block_size)
    return len(counts), sum(counts)


def _check_extents(extents: list[Extent]) -> None:
    prev_end = 0
    for e in extents:
        cap = _UNWRITTEN_MAX if e.unwritten else _INIT_MAX
        if not 1 <= e.length <= cap:
            raise InvalidOptions(f"extent {e}: length must be 1..{cap}")
        if e.logical < prev_end:
            raise InvalidOptions(f"extent {e} is out of order or overlaps the one before it")
        if e.end > MAX_LOGICAL:
            raise InvalidOptions(f"extent {e} ends beyond logical block {MAX_LOGICAL}")
        if e.physical < 1 or e.physical_end > MAX_PHYSICAL:
            raise InvalidOptions(f"extent {e}: physical blocks outside 1..2^48")
        prev_end = e.end


def _pack_header(buf: bytearray, entries: int, eh_max: int, depth: int) -> None:
    _HDR.pack_into(buf, 0, _MAGIC, entries, eh_max, depth, 0)


def build(
    extents: list[Extent],
    *,
    block_size: int,
    tree_blocks: list[int],
    ino: int,
    generation: int,
    csum_seed: int | None,
) -> tuple[bytes, list[tuple[int, bytearray]]]:
    """Build a whole extent tree: (60-byte i_block, [(block, contents)] for the tree blocks).

    ``extents`` must be sorted, non-overlapping and of legal lengths (see
    :func:`merge`).  Up to 4 extents fit in i_block (depth 0); otherwise
    leaves are filled in order, each full but the last, with as many index
    levels above as needed.  ``tree_blocks`` are the physical blocks for the
    nodes, exactly ``tree_shape(len(extents), block_size)[1]`` of them: they
    are used top level first, each level in logical order, and returned in
    that order.  eh_generation is 0; with ``csum_seed`` (the metadata_csum
    fs seed) each block gets its tail checksum seeded with the inode number and
    ``generation``.  Raises InvalidOptions for bad extents or a wrong number
    of tree blocks.
    """
    _check_extents(extents)
    counts = _level_counts(len(extents), block_size)
    if len(tree_blocks) != sum(counts):
        raise InvalidOptions(f"{len(extents)} extents need {sum(counts)} tree blocks, got {len(tree_blocks)}")
    if len(set(tree_blocks)) != len(tree_blocks) or any(not 1 <= b < MAX_PHYSICAL for b in tree_blocks):
        raise InvalidOptions("tree blocks must be distinct block numbers in 1..2^48")
    root = bytearray(ROOT_SIZE)
    entries: list[tuple[int, bytes]] = [
        (
            e.logical,
            _EXT.pack(
                e.logical, e.length + _INIT_MAX if e.unwritten else e.length, e.physical >> 32,
                e.physical & 0xFFFFFFFF,
            ),
        )
        for e in extents
    ]
    out: list[tuple[int, bytearray]] = []
    iseed = None if csum_seed is None else inode_seed(csum_seed, ino, generation)
    per = block_capacity(block_size)
    tail = HEADER_SIZE + ENTRY_SIZE * per
    # Level L's nodes take the blocks after all the levels above it.
    first_of_level = [sum(counts[level + 1 :]) for level in range(len(counts))]
    for level, count in enumerate(counts):
        base = first_of_level[level]
        parents: list[tuple[int, bytes]] = []
        for k in range(count):
            chunk = entries[k * per : (k + 1) * per]
            block = tree_blocks[base + k]
            buf = bytearray(block_size)
            _pack_header(buf, len(chunk), per, level)
            buf[HEADER_SIZE : HEADER_SIZE + ENTRY_SIZE * len(chunk)] = b"".join(raw for _, raw in chunk)
            if iseed is not None:
                _TAIL.pack_into(buf, tail, extent_block_csum(iseed, buf, per))
            out.append((block, buf))
            first = chunk[0][0]
            parents.append((first, _IDX.pack(first, block & 0xFFFFFFFF, block >> 32, 0)))
        entries = parents
    _pack_header(root, len(entries), ROOT_CAPACITY, len(counts))
    root[HEADER_SIZE : HEADER_SIZE + ENTRY_SIZE * len(entries)] = b"".join(raw for _, raw in entries)
    order = {block: i for i, block in enumerate(tree_blocks)}
    out.sort(key=lambda item: order[item[0]])
    return bytes(root), out
