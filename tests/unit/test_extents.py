"""Extent trees: build -> walk round trips, merging, corrupt trees, and trees made by mke2fs."""

from __future__ import annotations

import bisect
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pyext4 import csum
from pyext4 import extents as X
from pyext4.errors import ChecksumError, CorruptError, Ext4Error, InvalidOptions, LoopError, TruncatedError
from pyext4.extents import Extent
from tests.conftest import debugfs, mke2fs, tool

BLOCKS_COUNT = 1 << 41
HDR = struct.Struct("<HHHHI")
ENTRY = struct.Struct("<IHHI")
IDX = struct.Struct("<IIHH")
U32 = struct.Struct("<I")


# ----------------------------------------------------------------- helpers
class Disk:
    """An in-memory set of tree blocks that counts reads."""

    def __init__(self, block_size: int, blocks: list[tuple[int, bytearray]] | None = None) -> None:
        self.block_size = block_size
        self.blocks: dict[int, bytearray] = dict(blocks or [])
        self.reads: list[int] = []

    def read(self, block: int) -> bytes:
        self.reads.append(block)
        return bytes(self.blocks.get(block, bytes(self.block_size)))


def kw(block_size: int, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "block_size": block_size, "blocks_count": BLOCKS_COUNT,
        "first_data_block": 1 if block_size == 1024 else 0, "ino": 12,
    }
    args.update(extra)
    return args


def walk(root: bytes, disk: Disk, **extra: object) -> list[Extent]:
    return list(X.walk(root, disk.read, **kw(disk.block_size, **extra)))


def make_extents(spec: list[tuple[int, int, bool]], start: int = 5000) -> list[Extent]:
    """Extents from (gap before, length, unwritten) triples, physically scattered."""
    out = []
    logical = 0
    physical = start
    for gap, length, unwritten in spec:
        logical += gap
        out.append(Extent(logical, physical, length, unwritten))
        logical += length
        physical += length + 1 + (logical % 7)
    return out


def built(extents: list[Extent], block_size: int, *, seed: int | None = None,
          first_tree_block: int = 100) -> tuple[bytes, Disk, list[int]]:
    depth, needed = X.tree_shape(len(extents), block_size)
    blocks = list(range(first_tree_block, first_tree_block + needed))
    root, nodes = X.build(extents, block_size=block_size, tree_blocks=blocks, ino=12, generation=7,
                          csum_seed=seed)
    return root, Disk(block_size, nodes), blocks


def node(depth: int, entries: list[bytes], *, size: int, eh_max: int | None = None,
         magic: int = 0xF30A, n_entries: int | None = None) -> bytearray:
    """A tree node of ``size`` bytes (60 for a root) with raw entries."""
    buf = bytearray(size)
    cap = (size - 12) // 12
    HDR.pack_into(buf, 0, magic, len(entries) if n_entries is None else n_entries,
                  cap if eh_max is None else eh_max, depth, 0)
    for i, raw in enumerate(entries):
        buf[12 + 12 * i : 24 + 12 * i] = raw
    return buf


def ext(logical: int, physical: int, length: int, unwritten: bool = False) -> bytes:
    return ENTRY.pack(logical, length + 32768 if unwritten else length, physical >> 32, physical & 0xFFFFFFFF)


def idx(logical: int, block: int) -> bytes:
    return IDX.pack(logical, block & 0xFFFFFFFF, block >> 32, 0)


def fast_raise(exc: type[BaseException], fn: Callable[[], object]) -> BaseException:
    start = time.perf_counter()
    with pytest.raises(exc) as info:
        fn()
    assert time.perf_counter() - start < 0.1
    return info.value


# ---------------------------------------------------------------- round trips
@st.composite
def spec_strategy(draw: st.DrawFn) -> list[tuple[int, int, bool]]:
    """0..2000 (gap, length, unwritten) triples; large counts come from a seeded generator."""
    n = draw(st.one_of(st.integers(0, 6), st.integers(0, 2000)))
    rng = draw(st.randoms(use_true_random=False))
    max_gap = draw(st.sampled_from([0, 1, 40, 100_000]))
    max_len = draw(st.sampled_from([1, 40, 32767]))
    return [(rng.randint(0, max_gap), rng.randint(1, max_len), rng.random() < 0.3) for _ in range(n)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=spec_strategy(), block_size=st.sampled_from([1024, 4096]), with_csum=st.booleans())
def test_build_walk_round_trip(spec: list[tuple[int, int, bool]], block_size: int, with_csum: bool) -> None:
    extents = make_extents(spec)
    if extents and extents[-1].end > X.MAX_LOGICAL:
        return
    seed = 0xDEADBEEF if with_csum else None
    root, disk, blocks = built(extents, block_size, seed=seed)
    assert len(root) == 60
    depth, needed = X.tree_shape(len(extents), block_size)
    event(f"depth {depth} at {block_size}")
    assert HDR.unpack_from(root)[3] == depth
    assert walk(root, disk) == extents
    assert sorted(disk.reads) == blocks  # every tree block read exactly once
    assert X.tree_blocks(root, disk.read, **kw(block_size)) == blocks
    if with_csum:
        iseed = csum.inode_seed(0xDEADBEEF, 12, 7)
        for raw in disk.blocks.values():
            eh_max = HDR.unpack_from(raw)[2]
            assert U32.unpack_from(raw, 12 + 12 * eh_max)[0] == csum.extent_block_csum(iseed, raw, eh_max)
    # lookups: first and last block of some extents, and the holes between them
    for e in extents[:: max(1, len(extents) // 25)]:
        for logical in (e.logical, e.end - 1):
            assert X.lookup(root, disk.read, logical, **kw(block_size)) == e
        assert X.lookup(root, disk.read, e.end, **kw(block_size)) in (None, *extents)
    mapped = {e.logical for e in extents}
    holes = [e.logical - 1 for e in extents if e.logical and e.logical - 1 not in mapped]
    for logical in holes[:10]:
        found = X.lookup(root, disk.read, logical, **kw(block_size))
        assert found is None or found.logical <= logical < found.end


def test_depths_reached() -> None:
    """Depth 0..3 at 1 KiB (84 entries a block) and the block counts tree_shape predicts."""
    assert X.tree_shape(0, 1024) == (0, 0)
    assert X.tree_shape(4, 1024) == (0, 0)
    assert X.tree_shape(5, 1024) == (1, 1)
    assert X.tree_shape(4 * 84, 1024) == (1, 4)
    assert X.tree_shape(4 * 84 + 1, 1024) == (2, 5 + 1)
    assert X.tree_shape(4 * 84 * 84, 1024) == (2, 336 + 4)
    assert X.tree_shape(4 * 84 * 84 + 1, 1024) == (3, 337 + 5 + 1)
    assert X.tree_shape(341, 4096) == (1, 2)
    assert X.tree_shape(4 * 340 + 1, 4096) == (2, 6)
    for n, depth in ((3, 0), (200, 1), (2000, 2), (4 * 84 * 84 + 1000, 3)):
        extents = make_extents([(i % 3, 1 + i % 5, i % 4 == 0) for i in range(n)])
        root, disk, blocks = built(extents, 1024, seed=1)
        assert HDR.unpack_from(root)[3] == depth
        assert walk(root, disk) == extents
        assert X.lookup(root, disk.read, extents[-1].end - 1, **kw(1024)) == extents[-1]


def test_leaves_full_and_blocks_top_down() -> None:
    extents = make_extents([(1, 1, False)] * (84 * 5 + 3))
    root, disk, blocks = built(extents, 1024)
    assert HDR.unpack_from(root)[1:4] == (1, 4, 2)  # one index block under the root
    top = disk.blocks[blocks[0]]
    assert HDR.unpack_from(top)[1:4] == (6, 84, 1)
    leaf_entries = [HDR.unpack_from(disk.blocks[b])[1] for b in blocks[1:]]
    assert leaf_entries == [84] * 5 + [3]
    children = [IDX.unpack_from(top, 12 + 12 * i) for i in range(6)]
    assert [c[1] for c in children] == blocks[1:]
    assert [c[0] for c in children] == [extents[84 * i].logical for i in range(6)]
    assert all(HDR.unpack_from(raw)[4] == 0 for raw in disk.blocks.values())  # eh_generation 0


def test_lengths_at_the_limits() -> None:
    extents = [Extent(0, 1000, 32768), Extent(32768, 40000, 32767, True), Extent(70000, 90000, 1, True),
               Extent(70001, 1 << 40, 5)]
    root, disk, _ = built(extents, 4096)
    assert [ENTRY.unpack_from(root, 12 + 12 * i)[1] for i in range(4)] == [32768, 65535, 32769, 5]
    assert walk(root, disk) == extents
    # ee_len 32768 is an initialized extent of 32768 blocks
    raw = bytes(node(0, [ext(0, 100, 32768)], size=60))
    assert walk(raw, disk) == [Extent(0, 100, 32768, False)]
    with pytest.raises(InvalidOptions):
        X.build([Extent(0, 100, 32768, True)], block_size=4096, tree_blocks=[], ino=1, generation=0,
                csum_seed=None)


def test_empty_root() -> None:
    root, disk, blocks = built([], 4096)
    assert blocks == []
    assert HDR.unpack_from(root) == (0xF30A, 0, 4, 0, 0)
    assert walk(root, disk) == []
    assert X.lookup(root, disk.read, 0, **kw(4096)) is None


def test_build_rejects_bad_input() -> None:
    good = make_extents([(0, 3, False)] * 10)
    with pytest.raises(InvalidOptions):  # wrong number of tree blocks
        X.build(good, block_size=1024, tree_blocks=[], ino=1, generation=0, csum_seed=None)
    with pytest.raises(InvalidOptions):  # duplicate tree blocks
        X.build(make_extents([(0, 1, False)] * 400), block_size=1024,
                tree_blocks=[9] * X.tree_shape(400, 1024)[1], ino=1, generation=0, csum_seed=None)
    for bad in ([Extent(0, 10, 5), Extent(3, 50, 5)], [Extent(5, 10, 1), Extent(0, 50, 1)],
                [Extent(0, 10, 0)], [Extent(0, 0, 1)], [Extent(0xFFFFFFFE, 10, 2)]):
        with pytest.raises(InvalidOptions):
            X.build(bad, block_size=1024, tree_blocks=[], ino=1, generation=0, csum_seed=None)
    with pytest.raises(InvalidOptions):
        X.tree_shape(5, 1000)


def test_depth_five_chain() -> None:
    """A legal (if silly) tree of depth 5 with one entry per level."""
    disk = Disk(1024)
    disk.blocks[14] = node(0, [ext(50, 900, 4)], size=1024)
    for depth, block in zip(range(1, 5), range(13, 9, -1), strict=True):
        disk.blocks[block] = node(depth, [idx(10 * (5 - depth), block + 1)], size=1024)
    root = bytes(node(5, [idx(0, 10)], size=60))
    assert walk(root, disk) == [Extent(50, 900, 4)]
    assert X.tree_blocks(root, disk.read, **kw(1024)) == [10, 11, 12, 13, 14]
    assert X.lookup(root, disk.read, 53, **kw(1024)) == Extent(50, 900, 4)
    assert X.lookup(root, disk.read, 9, **kw(1024)) is None
    disk.reads.clear()
    assert X.lookup(root, disk.read, 60, **kw(1024)) is None
    assert disk.reads == [10, 11, 12, 13, 14]


def test_lookup_reads_one_path() -> None:
    extents = make_extents([(1, 2, False)] * 3000)
    root, disk, blocks = built(extents, 1024)
    disk.reads.clear()
    target = extents[1777]
    assert X.lookup(root, disk.read, target.logical + 1, **kw(1024)) == target
    assert len(disk.reads) == 2  # depth 2: one index block and one leaf


def test_verify_callback_sees_every_block() -> None:
    extents = make_extents([(2, 1, True)] * 500)
    root, disk, blocks = built(extents, 1024, seed=42)
    seen: list[tuple[int, int]] = []
    iseed = csum.inode_seed(42, 12, 7)

    def verify(block: int, raw: bytes, eh_max: int) -> None:
        seen.append((block, eh_max))
        stored = U32.unpack_from(raw, 12 + 12 * eh_max)[0]
        computed = csum.extent_block_csum(iseed, raw, eh_max)
        if stored != computed:
            raise ChecksumError("extent block", expected=stored, actual=computed, where=f"block {block}")

    assert walk(root, disk, verify=verify) == extents
    assert sorted(b for b, _ in seen) == blocks and {m for _, m in seen} == {84}
    disk.blocks[blocks[-1]][40] ^= 1
    with pytest.raises(ChecksumError):
        walk(root, disk, verify=verify)


# --------------------------------------------------------------------- merge
def test_merge() -> None:
    assert X.merge([]) == []
    a = [Extent(10, 110, 5), Extent(0, 100, 10), Extent(15, 115, 1, True), Extent(16, 116, 4, True),
         Extent(20, 121, 3), Extent(30, 130, 2), Extent(23, 124, 1), Extent(24, 126, 1)]
    assert X.merge(a) == [Extent(0, 100, 15), Extent(15, 115, 5, True), Extent(20, 121, 4), Extent(24, 126, 1),
                          Extent(30, 130, 2)]
    # long runs are cut at the largest legal lengths
    pieces = [Extent(i * 1000, 5000 + i * 1000, 1000) for i in range(70)]
    assert X.merge(pieces) == [Extent(0, 5000, 32768), Extent(32768, 37768, 32768), Extent(65536, 70536, 4464)]
    unw = [Extent(i * 1000, 5000 + i * 1000, 1000, True) for i in range(70)]
    assert X.merge(unw) == [Extent(0, 5000, 32767, True), Extent(32767, 37767, 32767, True),
                            Extent(65534, 70534, 4466, True)]
    assert X.merge([Extent(0, 1, 100000)]) == [Extent(0, 1, 32768), Extent(32768, 32769, 32768),
                                               Extent(65536, 65537, 32768), Extent(98304, 98305, 1696)]
    with pytest.raises(InvalidOptions):
        X.merge([Extent(0, 100, 10), Extent(5, 200, 10)])
    with pytest.raises(InvalidOptions):
        X.merge([Extent(0, 100, 0)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 20000), st.integers(0, 1), st.booleans()),
                max_size=40))
def test_merge_preserves_mapping(spec: list[tuple[int, int, int, bool]]) -> None:
    extents = []
    logical, physical = 0, 1000
    for lgap, length, pgap, unwritten in spec:
        logical += lgap
        physical += pgap
        extents.append(Extent(logical, physical, length, unwritten))
        logical += length
        physical += length
    merged = X.merge(extents)
    # Same blocks, same places, same kind: every original block is inside a merged
    # extent with the same logical->physical offset, and the totals agree.
    starts = [m.logical for m in merged]
    for e in extents:
        pos = e.logical
        while pos < e.end:
            m = merged[bisect.bisect_right(starts, pos) - 1]
            assert m.logical <= pos < m.end
            assert m.physical - m.logical == e.physical - e.logical and m.unwritten == e.unwritten
            pos = m.end
    assert sum(e.length for e in merged) == sum(e.length for e in extents)
    assert len(merged) <= len(extents) + sum(e.length for e in extents) // 32767 + 1
    for a, b in zip(merged, merged[1:], strict=False):
        assert a.end <= b.logical
        joinable = a.end == b.logical and a.physical_end == b.physical and a.unwritten == b.unwritten
        assert not joinable or a.length == (32767 if a.unwritten else 32768)
    root, disk, _ = built(merged, 1024)
    assert walk(root, disk) == merged


# ------------------------------------------------------------------ corruption
def tree_for_corruption() -> tuple[bytes, Disk, list[int]]:
    """A depth-3 tree at 1 KiB made by hand: root -> A -> (B, C) -> leaves."""
    disk = Disk(1024)
    disk.blocks[30] = node(0, [ext(0, 500, 5), ext(10, 600, 5)], size=1024)
    disk.blocks[31] = node(0, [ext(20, 700, 5)], size=1024)
    disk.blocks[32] = node(0, [ext(40, 800, 5)], size=1024)
    disk.blocks[21] = node(1, [idx(0, 30), idx(20, 31)], size=1024)
    disk.blocks[22] = node(1, [idx(40, 32)], size=1024)
    disk.blocks[20] = node(2, [idx(0, 21), idx(40, 22)], size=1024)
    root = bytes(node(3, [idx(0, 20)], size=60))
    return root, disk, [20, 21, 30, 31, 22, 32]


def test_hand_made_tree_is_valid() -> None:
    root, disk, blocks = tree_for_corruption()
    assert walk(root, disk) == [Extent(0, 500, 5), Extent(10, 600, 5), Extent(20, 700, 5), Extent(40, 800, 5)]
    assert X.tree_blocks(root, disk.read, **kw(1024)) == blocks


def corrupt_cases() -> list[tuple[str, type[Exception], Callable[[bytearray, Disk], bytes]]]:
    def set_block(block: int, raw: bytearray) -> Callable[[bytearray, Disk], bytes]:
        def mutate(root: bytearray, disk: Disk) -> bytes:
            disk.blocks[block] = raw
            return bytes(root)
        return mutate

    def root_is(raw: bytearray) -> Callable[[bytearray, Disk], bytes]:
        return lambda root, disk: bytes(raw)

    def magic(root: bytearray, disk: Disk) -> bytes:
        disk.blocks[31][0] = 0
        return bytes(root)

    def too_many(root: bytearray, disk: Disk) -> bytes:
        HDR.pack_into(disk.blocks[30], 0, 0xF30A, 85, 84, 0, 0)
        return bytes(root)

    def entries_gt_max(root: bytearray, disk: Disk) -> bytes:
        HDR.pack_into(disk.blocks[30], 0, 0xF30A, 3, 2, 0, 0)
        return bytes(root)

    return [
        ("bad magic in a leaf", CorruptError, magic),
        ("bad magic in the root", CorruptError, root_is(node(0, [], size=60, magic=0xF30B))),
        ("eh_max above the block's capacity", CorruptError, too_many),
        ("entries > max", CorruptError, entries_gt_max),
        ("root entries > max", CorruptError, root_is(node(0, [], size=60, n_entries=5, eh_max=4))),
        ("root eh_max 5", CorruptError, root_is(node(0, [], size=60, eh_max=5))),
        ("root depth 6", CorruptError, root_is(node(6, [idx(0, 20)], size=60))),
        ("index root with no entries", CorruptError, root_is(node(1, [], size=60))),
        ("depth mismatch", CorruptError, set_block(22, node(0, [ext(40, 800, 5)], size=1024))),
        ("self-pointing index", LoopError, set_block(21, node(1, [idx(0, 21)], size=1024))),
        ("parent loop", LoopError, set_block(21, node(1, [idx(0, 30), idx(20, 20)], size=1024))),
        ("shared leaf", LoopError, set_block(22, node(1, [idx(40, 30)], size=1024))),
        ("index beyond the device", CorruptError, set_block(22, node(1, [idx(40, BLOCKS_COUNT)], size=1024))),
        ("index at block 0", CorruptError, set_block(22, node(1, [idx(40, 0)], size=1024))),
        ("index at the superblock", CorruptError, set_block(22, node(1, [idx(40, 1)], size=1024))),
        ("extent beyond the device", CorruptError,
         set_block(32, node(0, [ext(40, BLOCKS_COUNT - 2, 5)], size=1024))),
        ("extent at the superblock", CorruptError, set_block(32, node(0, [ext(40, 1, 5)], size=1024))),
        ("overlapping extents in a leaf", CorruptError,
         set_block(30, node(0, [ext(0, 500, 5), ext(4, 600, 5)], size=1024))),
        ("extents out of order", CorruptError,
         set_block(30, node(0, [ext(10, 500, 5), ext(0, 600, 5)], size=1024))),
        ("overlap across leaves", CorruptError, set_block(31, node(0, [ext(14, 700, 5)], size=1024))),
        ("extent past the next index", CorruptError,
         set_block(31, node(0, [ext(20, 700, 5), ext(30, 900, 11)], size=1024))),
        ("leaf starts before its index", CorruptError, set_block(32, node(0, [ext(39, 800, 5)], size=1024))),
        ("index entries out of order", CorruptError,
         set_block(21, node(1, [idx(20, 31), idx(0, 30)], size=1024))),
        ("zero-length extent", CorruptError, set_block(31, node(0, [ext(20, 700, 0)], size=1024))),
        ("extent past 2^32-1", CorruptError, root_is(node(0, [ext(0xFFFFFFF0, 700, 16)], size=60))),
        ("missing block (zeroes)", CorruptError, set_block(32, bytearray(1024))),
    ]


@pytest.mark.parametrize(("name", "exc", "mutate"), corrupt_cases(), ids=[c[0] for c in corrupt_cases()])
def test_corrupt_trees(name: str, exc: type[Exception], mutate: Callable[[bytearray, Disk], bytes]) -> None:
    root, disk, _ = tree_for_corruption()
    bad_root = mutate(bytearray(root), disk)
    fast_raise(exc, lambda: walk(bad_root, disk))
    fast_raise(exc, lambda: X.tree_blocks(bad_root, disk.read, **kw(1024)))


def test_corrupt_lookup_path() -> None:
    root, disk, _ = tree_for_corruption()
    disk.blocks[22] = node(1, [idx(40, 20)], size=1024)  # points back at its parent
    fast_raise(LoopError, lambda: X.lookup(root, disk.read, 41, **kw(1024)))
    assert X.lookup(root, disk.read, 11, **kw(1024)) == Extent(10, 600, 5)
    disk.blocks[32] = node(0, [ext(40, 800, 5)], size=1024)
    disk.blocks[22] = node(1, [idx(40, 32)], size=1024)
    disk.blocks[31] = node(0, [ext(20, 700, 5), ext(22, 900, 1)], size=1024)
    fast_raise(CorruptError, lambda: X.lookup(root, disk.read, 20, **kw(1024)))


def test_short_block_and_truncated_root() -> None:
    root, disk, _ = tree_for_corruption()

    def short(block: int) -> bytes:
        return disk.read(block)[:100]

    fast_raise(TruncatedError, lambda: list(X.walk(root, short, **kw(1024))))
    fast_raise(TruncatedError, lambda: list(X.walk(root[:30], disk.read, **kw(1024))))


def test_self_loop_is_fast_at_scale() -> None:
    """Every index entry of a full block pointing at the block itself stops at the first."""
    disk = Disk(4096)
    disk.blocks[50] = node(1, [idx(i, 50) for i in range(340)], size=4096)
    root = bytes(node(2, [idx(0, 50)], size=60))
    fast_raise(LoopError, lambda: walk(root, disk))
    assert len(disk.reads) == 1


@settings(max_examples=150, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 60 + 7 * 1024 - 1), st.integers(1, 255)), min_size=1,
                      max_size=6), logical=st.integers(0, 60))
def test_random_damage_only_raises_ext4_errors(flips: list[tuple[int, int]], logical: int) -> None:
    root, disk, blocks = tree_for_corruption()
    raw_root = bytearray(root)
    order = [20, 21, 22, 30, 31, 32, 33]
    disk.blocks[33] = node(0, [ext(50, 900, 2)], size=1024)
    for offset, xor in flips:
        if offset < 60:
            raw_root[offset] ^= xor
        else:
            block = order[(offset - 60) // 1024]
            disk.blocks[block][(offset - 60) % 1024] ^= xor
    start = time.perf_counter()
    try:
        result = walk(bytes(raw_root), disk)
    except Ext4Error:
        pass
    else:
        for a, b in zip(result, result[1:], strict=False):
            assert a.end <= b.logical
    try:
        X.lookup(bytes(raw_root), disk.read, logical, **kw(1024))
    except Ext4Error:
        pass
    assert time.perf_counter() - start < 0.5


# -------------------------------------------------------- trees made by mke2fs
class Image:
    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            sb = f.read(2048)[1024:]
        self.block_size = 1024 << U32.unpack_from(sb, 0x18)[0]
        incompat = U32.unpack_from(sb, 0x60)[0]
        hi = U32.unpack_from(sb, 0x150)[0] if incompat & 0x80 else 0
        self.blocks_count = hi << 32 | U32.unpack_from(sb, 0x4)[0]
        self.first_data_block = U32.unpack_from(sb, 0x14)[0]
        self.seed = U32.unpack_from(sb, 0x270)[0] if incompat & 0x2000 else csum.fs_seed(sb[0x68:0x78])
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, block: int) -> bytes:
        return os.pread(self.fd, self.block_size, block * self.block_size)

    def inode(self, name: str) -> tuple[int, bytes, int]:
        """(ino, i_block, generation) of a file."""
        out = debugfs(self.path, f"imap {name}")
        ino = int(re.search(r"Inode (\d+)", out).group(1))  # type: ignore[union-attr]
        m = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", out)
        assert m
        raw = os.pread(self.fd, 160, int(m.group(1)) * self.block_size + int(m.group(2), 16))
        return ino, raw[0x28:0x64], U32.unpack_from(raw, 0x64)[0]

    def kw(self, ino: int) -> dict[str, Any]:
        return {"block_size": self.block_size, "blocks_count": self.blocks_count,
                "first_data_block": self.first_data_block, "ino": ino}


def debugfs_extents(image: Path, name: str) -> tuple[list[Extent], list[int]]:
    """(leaf extents, index-entry target blocks in order) from `debugfs ex`."""
    out = debugfs(image, f"ex {name}")
    extents, tree = [], []
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s+(\d+)\s+-\s+(\d+)\s+(\d+)(?:\s+-\s+(\d+))?\s+(\d+)\s*(\S*)",
                     line)
        if not m:
            continue
        level, max_level = int(m.group(1)), int(m.group(2))
        if level < max_level:
            tree.append(int(m.group(5)))
        else:
            extents.append(Extent(int(m.group(3)), int(m.group(5)), int(m.group(7)), m.group(8) == "Uninit"))
    return extents, tree


def write_sparse(path: Path, runs: list[tuple[int, int]], block_size: int, size: int | None = None) -> None:
    with open(path, "wb") as f:
        for logical, length in runs:
            f.seek(logical * block_size)
            f.write(bytes([65 + logical % 26]) * (length * block_size))
        if size is not None:
            f.truncate(size)


@pytest.fixture(scope="module")
def ext4_images(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    tool("mke2fs")
    tool("debugfs")
    base = tmp_path_factory.mktemp("extents")
    images = {}
    for block_size, count in ((1024, 600), (4096, 1500)):
        src = base / f"src{block_size}"
        src.mkdir()
        write_sparse(src / "many", [(3 * i, 1 + (i % 2)) for i in range(count)], block_size)
        write_sparse(src / "few", [(0, 2), (10, 1), (20, 3)], block_size)
        write_sparse(src / "mid", [(5 * i, 2) for i in range(60)], block_size)
        write_sparse(src / "prealloc", [(20, 3), (300, 1), (900, 1)], block_size)
        (src / "empty").write_bytes(b"")
        image = base / f"ext4-{block_size}.img"
        mke2fs(image, "-t", "ext4", "-b", str(block_size), size="16M" if block_size == 1024 else "64M",
               root=str(src))
        debugfs(image, "fallocate /prealloc 0 60", write=True)
        images[block_size] = image
    return images


@pytest.mark.parametrize("block_size", [1024, 4096])
@pytest.mark.parametrize("name", ["/many", "/few", "/mid", "/prealloc", "/empty"])
def test_walk_matches_debugfs(ext4_images: dict[int, Path], block_size: int, name: str) -> None:
    image = Image(ext4_images[block_size])
    ino, i_block, generation = image.inode(name)
    iseed = csum.inode_seed(image.seed, ino, generation)
    verified = []

    def verify(block: int, raw: bytes, eh_max: int) -> None:
        stored = U32.unpack_from(raw, 12 + 12 * eh_max)[0]
        computed = csum.extent_block_csum(iseed, raw, eh_max)
        if stored != computed:
            raise ChecksumError("extent block", expected=stored, actual=computed, where=f"block {block}")
        verified.append(block)

    expected, expected_tree = debugfs_extents(image.path, name)
    got, tree = X.scan(i_block, image.read, verify=verify, **image.kw(ino))
    assert got == expected
    assert tree == expected_tree == verified
    if name == "/many":
        assert HDR.unpack_from(i_block)[3] == 2
    if name == "/prealloc":
        assert any(e.unwritten for e in got) and not all(e.unwritten for e in got)
    for e in got:
        assert X.lookup(i_block, image.read, e.logical, **image.kw(ino)) == e
        assert X.lookup(i_block, image.read, e.end - 1, **image.kw(ino)) == e
    covered = {e.logical + i for e in got for i in range(e.length)}
    for logical in range(0, max(covered, default=0) + 2, 7):
        found = X.lookup(i_block, image.read, logical, **image.kw(ino))
        assert (found is not None) == (logical in covered)


def test_rebuilt_tree_passes_e2fsck(ext4_images: dict[int, Path], tmp_path: Path) -> None:
    """Replace /many's tree with ours (same extents, same tree blocks) and let e2fsck judge."""
    copy = tmp_path / "copy.img"
    shutil.copy(ext4_images[1024], copy)
    image = Image(copy)
    ino, i_block, generation = image.inode("/many")
    extents, old_tree = X.scan(i_block, image.read, **image.kw(ino))
    merged = X.merge(extents)
    assert merged == extents  # mke2fs already made the fewest extents
    assert X.tree_shape(len(extents), 1024)[1] == len(old_tree)
    root, nodes = X.build(extents, block_size=1024, tree_blocks=sorted(old_tree), ino=ino, generation=generation,
                          csum_seed=image.seed)
    out = debugfs(copy, "imap /many")
    m = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", out)
    assert m
    inode_offset = int(m.group(1)) * 1024 + int(m.group(2), 16)
    with open(copy, "r+b") as f:
        f.seek(inode_offset)
        raw = bytearray(f.read(256))
        raw[0x28:0x64] = root
        value = csum.inode_csum(image.seed, ino, raw, True)
        struct.pack_into("<H", raw, 0x7C, value & 0xFFFF)
        struct.pack_into("<H", raw, 0x82, value >> 16)
        f.seek(inode_offset)
        f.write(raw)
        for block, data in nodes:
            f.seek(block * 1024)
            f.write(data)
    check = subprocess.run([tool("e2fsck"), "-fn", str(copy)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert debugfs_extents(copy, "/many")[0] == extents
    assert list(X.walk(root, Image(copy).read, **image.kw(ino))) == extents


def test_single_leaf_is_byte_identical(ext4_images: dict[int, Path]) -> None:
    """With one leaf (<= 84 extents) our build reproduces mke2fs's block exactly."""
    image = Image(ext4_images[1024])
    ino, i_block, generation = image.inode("/mid")
    extents, tree = X.scan(i_block, image.read, **image.kw(ino))
    assert len(tree) == 1
    root, nodes = X.build(extents, block_size=1024, tree_blocks=tree, ino=ino, generation=generation,
                          csum_seed=image.seed)
    assert root[:24] == bytes(i_block[:24])  # mke2fs leaves stale bytes after the root's one entry
    assert nodes == [(tree[0], bytearray(image.read(tree[0])))]
