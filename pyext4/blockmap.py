"""Block maps: walk, look up and build the ext2/ext3 direct and indirect block map in i_block."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from . import constants as K
from .errors import CorruptError, InvalidOptions, LoopError, TruncatedError

ReadBlock = Callable[[int], bytes]
"""``read_block(block) -> bytes``: the ``block_size`` bytes of one block of the device."""

Run = tuple[int, int, int]
"""(logical, physical, length): ``length`` contiguous blocks."""

_N_BLOCKS = K.N_BLOCKS  # 15 pointers in i_block
_NDIR = K.NDIR_BLOCKS  # 12 direct pointers
_I_BLOCK = struct.Struct(f"<{_N_BLOCKS}I")
LOGICAL_LIMIT = 1 << 32  # logical block numbers are 32 bits
POINTER_LIMIT = 1 << 32  # so are block pointers


def _per_block(block_size: int) -> int:
    if block_size < 1024 or block_size & (block_size - 1):
        raise InvalidOptions(f"block size {block_size} is not a power of two >= 1024")
    return block_size // 4


def _regions(per: int) -> list[tuple[int, int]]:
    """(first logical block, blocks covered) of the IND, DIND and TIND regions."""
    out = []
    base = _NDIR
    for height in (1, 2, 3):
        span = per**height
        out.append((base, span))
        base += span
    return out


def _region_of(logical: int, regions: list[tuple[int, int]]) -> tuple[int, int]:
    """(height, first logical block) of the indirect region holding ``logical`` (>= 12)."""
    for height, (base, span) in enumerate(regions, start=1):
        if logical < base + span:
            return height, base
    raise InvalidOptions(f"logical block {logical} is beyond what a block map can address")


def capacity(block_size: int) -> int:
    """How many logical blocks a block map can address (capped at 2^32)."""
    per = _per_block(block_size)
    return min(_NDIR + per + per**2 + per**3, LOGICAL_LIMIT)


# ------------------------------------------------------------------ reading
class _Ctx:
    __slots__ = ("read_block", "block_size", "per", "unpack", "min_block", "blocks_count", "where",
                 "visited", "meta_out", "limit", "strict_limit")

    def __init__(
        self,
        read_block: ReadBlock,
        block_size: int,
        blocks_count: int,
        first_data_block: int,
        where: str | None,
        max_logical: int | None,
    ) -> None:
        self.read_block = read_block
        self.block_size = block_size
        self.per = _per_block(block_size)
        self.unpack = struct.Struct(f"<{self.per}I").unpack_from
        # Never block 0 nor a block overlapping the superblock (bytes 1024..2047).
        self.min_block = max(first_data_block, -(-2048 // block_size))
        self.blocks_count = blocks_count
        self.where = where
        self.visited: set[int] = set()
        self.meta_out: list[int] | None = None
        self.strict_limit = max_logical is None
        self.limit = LOGICAL_LIMIT if max_logical is None else max(0, min(max_logical, LOGICAL_LIMIT))

    def bad_pointer(self, kind: str, block: int, logical: int) -> CorruptError:
        return CorruptError(
            f"{kind} pointer {block} for logical block {logical} lies outside the device",
            where=self.where,
        )

    def read_meta(self, block: int, logical: int) -> tuple[int, ...]:
        """The pointers of indirect block ``block`` (mapping from ``logical`` on), checked once."""
        if block < self.min_block or block >= self.blocks_count:
            raise self.bad_pointer("indirect block", block, logical)
        if block in self.visited:
            raise LoopError(f"indirect block {block} is referenced twice", where=self.where)
        self.visited.add(block)
        if self.meta_out is not None:
            self.meta_out.append(block)
        raw = self.read_block(block)
        if len(raw) < self.block_size:
            raise TruncatedError(f"indirect block {block} cut short", where=self.where)
        return self.unpack(raw)

    def beyond_limit(self, logical: int) -> bool:
        """True when a mapped block at ``logical`` is past the limit (an error unless max_logical was given)."""
        if logical < self.limit:
            return False
        if self.strict_limit:
            raise CorruptError(f"block map maps logical block {logical} beyond 2^32", where=self.where)
        return True

    def data_runs(self, pointers: tuple[int, ...], base: int) -> list[Run]:
        """Runs of the data pointers of one indirect block (or the direct ones) mapping from ``base``."""
        out: list[Run] = []
        min_block, blocks_count = self.min_block, self.blocks_count
        count = min(len(pointers), self.limit - base)
        run_logical = run_physical = run_length = 0
        for i in range(max(count, 0)):
            p = pointers[i]
            if not p:
                continue
            if p < min_block or p >= blocks_count:
                raise self.bad_pointer("data block", p, base + i)
            if run_length and run_logical + run_length == base + i and run_physical + run_length == p:
                run_length += 1
            else:
                if run_length:
                    out.append((run_logical, run_physical, run_length))
                run_logical, run_physical, run_length = base + i, p, 1
        if run_length:
            out.append((run_logical, run_physical, run_length))
        if count < len(pointers) and self.strict_limit:
            for i in range(max(count, 0), len(pointers)):
                if pointers[i]:
                    self.beyond_limit(base + i)
        return out

    def subtree(self, block: int, height: int, base: int) -> Iterator[Run]:
        """Runs below the indirect block ``block`` of ``height`` (1 = holds data pointers)."""
        pointers = self.read_meta(block, base)
        if height == 1:
            yield from self.data_runs(pointers, base)
            return
        span = self.per ** (height - 1)
        for i, p in enumerate(pointers):
            if not p:
                continue
            child_base = base + i * span
            if self.beyond_limit(child_base):
                break
            yield from self.subtree(p, height - 1, child_base)


def _runs(i_block: bytes | bytearray | memoryview, ctx: _Ctx) -> Iterator[Run]:
    """Unmerged runs in logical order: direct blocks, then the IND, DIND and TIND trees."""
    if len(i_block) < _I_BLOCK.size:
        raise TruncatedError("i_block cut short", where=ctx.where)
    pointers = _I_BLOCK.unpack_from(i_block)
    yield from ctx.data_runs(pointers[:_NDIR], 0)
    for height, (base, _span) in enumerate(_regions(ctx.per), start=1):
        top = pointers[_NDIR + height - 1]
        if not top:
            continue
        if ctx.beyond_limit(base):
            break
        yield from ctx.subtree(top, height, base)


def _merged(runs: Iterator[Run]) -> Iterator[Run]:
    pending: Run | None = None
    for run in runs:
        if pending is not None:
            logical, physical, length = pending
            if logical + length == run[0] and physical + length == run[1]:
                pending = (logical, physical, length + run[2])
                continue
            yield pending
        pending = run
    if pending is not None:
        yield pending


def walk(
    i_block: bytes | bytearray | memoryview,
    read_block: ReadBlock,
    *,
    block_size: int,
    blocks_count: int,
    first_data_block: int,
    where: str | None,
    max_logical: int | None = None,
) -> Iterator[Run]:
    """Yield (logical, physical, length) runs of contiguous mapped blocks in logical order.

    Holes (zero pointers) are skipped without reading anything below them.
    With ``max_logical`` (the file's size in blocks) nothing at or past it is
    read or yielded; without it, a block mapped at logical 2^32 or beyond is
    corrupt.  Raises CorruptError for a pointer outside [first data block
    past the superblock, blocks_count), LoopError for an indirect block
    referenced twice, TruncatedError for a short block.  Each indirect block
    is read at most once.
    """
    ctx = _Ctx(read_block, block_size, blocks_count, first_data_block, where, max_logical)
    return _merged(_runs(i_block, ctx))


def meta_blocks(
    i_block: bytes | bytearray | memoryview,
    read_block: ReadBlock,
    *,
    block_size: int,
    blocks_count: int,
    first_data_block: int,
    where: str | None,
    max_logical: int | None = None,
) -> list[int]:
    """The indirect blocks of a block map in pre-order (IND, DIND, its INDs, TIND, ...).

    The whole map is read and checked as :func:`walk` does; raises the same errors.
    """
    ctx = _Ctx(read_block, block_size, blocks_count, first_data_block, where, max_logical)
    out: list[int] = []
    ctx.meta_out = out
    for _ in _runs(i_block, ctx):
        pass
    return out


def lookup(
    i_block: bytes | bytearray | memoryview,
    read_block: ReadBlock,
    logical: int,
    *,
    block_size: int,
    blocks_count: int,
    first_data_block: int,
    where: str | None,
) -> int:
    """The physical block mapped at ``logical``, 0 for a hole (or beyond what a map can address).

    Reads only the indirect blocks on the path.  Raises CorruptError for a
    pointer outside the device, LoopError when the path revisits a block,
    TruncatedError for a short block.
    """
    ctx = _Ctx(read_block, block_size, blocks_count, first_data_block, where, None)
    if len(i_block) < _I_BLOCK.size:
        raise TruncatedError("i_block cut short", where=where)
    pointers = _I_BLOCK.unpack_from(i_block)
    if logical < 0 or logical >= capacity(block_size):
        return 0
    if logical < _NDIR:
        p = pointers[logical]
    else:
        height, base = _region_of(logical, _regions(ctx.per))
        p = pointers[_NDIR + height - 1]
        offset = logical - base
        while height > 0 and p:
            child_span = ctx.per ** (height - 1)
            p = ctx.read_meta(p, logical)[offset // child_span]
            offset %= child_span
            height -= 1
    if p and (p < ctx.min_block or p >= blocks_count):
        raise ctx.bad_pointer("data block", p, logical)
    return p


# ----------------------------------------------------------------- building
def _normalise(runs: list[Run], block_size: int) -> tuple[int, list[Run]]:
    per = _per_block(block_size)
    limit = capacity(block_size)
    ordered = sorted(runs)
    prev_end = 0
    for logical, physical, length in ordered:
        if length < 1 or logical < 0:
            raise InvalidOptions(f"invalid run {(logical, physical, length)}")
        if logical < prev_end:
            raise InvalidOptions(f"run {(logical, physical, length)} overlaps the one before it")
        if logical + length > limit:
            raise InvalidOptions(f"run {(logical, physical, length)} ends beyond logical block {limit}")
        if physical < 1 or physical + length > POINTER_LIMIT:
            raise InvalidOptions(f"run {(logical, physical, length)}: physical blocks outside 1..2^32")
        prev_end = logical + length
    return per, ordered


def _nodes(runs: list[Run], per: int) -> list[tuple[int, int, int]]:
    """Indirect blocks needed, as (first logical block, -height, region) in pre-order."""
    needed: set[tuple[int, int, int]] = set()
    for region, (base, span) in enumerate(_regions(per), start=1):
        region_end = base + span
        for logical, _physical, length in runs:
            first = max(logical, base)
            last = min(logical + length, region_end) - 1
            if first > last:
                continue
            for height in range(1, region + 1):
                node_span = per**height
                for k in range((first - base) // node_span, (last - base) // node_span + 1):
                    needed.add((base + k * node_span, -height, region))
    return sorted(needed)


def meta_needed(runs: list[Run], block_size: int) -> int:
    """How many indirect blocks :func:`build` needs for ``runs``; raises InvalidOptions for bad runs."""
    per, ordered = _normalise(runs, block_size)
    return len(_nodes(ordered, per))


def build(
    runs: list[Run], *, block_size: int, meta_blocks: list[int]
) -> tuple[bytes, list[tuple[int, bytearray]]]:
    """Build a block map: (60-byte i_block, [(indirect block, contents)]).

    ``runs`` are (logical, physical, length), non-overlapping (any order).
    ``meta_blocks`` are the blocks for the indirect blocks, exactly
    ``meta_needed(runs, block_size)`` of them, used in pre-order: IND, DIND,
    the DIND's INDs in logical order, TIND, its first DIND, that DIND's INDs,
    ... and returned in that order.  Raises InvalidOptions for bad runs or a
    wrong number of meta blocks.
    """
    per, ordered = _normalise(runs, block_size)
    nodes = _nodes(ordered, per)
    if len(meta_blocks) != len(nodes):
        raise InvalidOptions(f"the runs need {len(nodes)} indirect blocks, got {len(meta_blocks)}")
    if len(set(meta_blocks)) != len(meta_blocks) or any(not 1 <= b < POINTER_LIMIT for b in meta_blocks):
        raise InvalidOptions("indirect blocks must be distinct block numbers in 1..2^32")
    regions = _regions(per)
    pointers = [0] * _N_BLOCKS
    bufs: dict[tuple[int, int], bytearray] = {}
    out: list[tuple[int, bytearray]] = []
    for (start, neg_height, region), block in zip(nodes, meta_blocks, strict=True):
        height = -neg_height
        buf = bytearray(block_size)
        bufs[(start, height)] = buf
        out.append((block, buf))
        base = regions[region - 1][0]
        if height == region:
            pointers[_NDIR + region - 1] = block
        else:
            parent_span = per ** (height + 1)
            parent = base + (start - base) // parent_span * parent_span
            slot = (start - parent) // per**height
            struct.pack_into("<I", bufs[(parent, height + 1)], slot * 4, block)
    for logical, physical, length in ordered:
        done = 0
        while done < length:
            at = logical + done
            if at < _NDIR:
                count = min(length - done, _NDIR - at)
                pointers[at : at + count] = range(physical + done, physical + done + count)
            else:
                _region, base = _region_of(at, regions)
                node = base + (at - base) // per * per
                index = at - node
                count = min(length - done, per - index)
                struct.pack_into(f"<{count}I", bufs[(node, 1)], index * 4,
                                 *range(physical + done, physical + done + count))
            done += count
    return _I_BLOCK.pack(*pointers), out
