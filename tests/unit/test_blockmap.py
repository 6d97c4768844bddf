"""ext2/ext3 block maps: build -> walk round trips, corrupt maps, and maps made by mke2fs."""

from __future__ import annotations

import os
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pyext4 import blockmap as B
from pyext4.errors import CorruptError, Ext4Error, InvalidOptions, LoopError, TruncatedError
from tests.conftest import debugfs, mke2fs, tool

U32 = struct.Struct("<I")
BLOCKS_COUNT = 1 << 32
IND1K = 12  # first logical block under IND at 1 KiB
DIND1K = 12 + 256
TIND1K = 12 + 256 + 65536


class Disk:
    """In-memory indirect blocks that count reads."""

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
        "first_data_block": 1 if block_size == 1024 else 0, "where": "inode 12",
    }
    args.update(extra)
    return args


def walk(i_block: bytes, disk: Disk, **extra: object) -> list[tuple[int, int, int]]:
    return list(B.walk(i_block, disk.read, **kw(disk.block_size, **extra)))


def built(runs: list[tuple[int, int, int]], block_size: int, first_meta: int = 10_000_000
          ) -> tuple[bytes, Disk, list[int]]:
    n = B.meta_needed(runs, block_size)
    meta = list(range(first_meta, first_meta + n))
    i_block, blocks = B.build(runs, block_size=block_size, meta_blocks=meta)
    assert [b for b, _ in blocks] == meta
    return i_block, Disk(block_size, blocks), meta


def canonical(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Sorted runs with logically and physically adjacent ones joined."""
    out: list[list[int]] = []
    for logical, physical, length in sorted(runs):
        if out and out[-1][0] + out[-1][2] == logical and out[-1][1] + out[-1][2] == physical:
            out[-1][2] += length
        else:
            out.append([logical, physical, length])
    return [(a, b, c) for a, b, c in out]


def fast_raise(exc: type[BaseException], fn: Callable[[], object]) -> BaseException:
    start = time.perf_counter()
    with pytest.raises(exc) as info:
        fn()
    assert time.perf_counter() - start < 0.1
    return info.value


# ---------------------------------------------------------------- round trips
@st.composite
def runs_strategy(draw: st.DrawFn) -> tuple[int, list[tuple[int, int, int]]]:
    block_size = draw(st.sampled_from([1024, 2048, 4096]))
    limit = min(B.capacity(block_size), 3_000_000)
    n = draw(st.integers(0, 25))
    starts = sorted(draw(st.sets(st.integers(0, limit - 1), min_size=n, max_size=n)))
    runs = []
    physical = draw(st.integers(2, 1000))
    for i, start in enumerate(starts):
        room = (starts[i + 1] if i + 1 < len(starts) else limit) - start
        length = draw(st.integers(1, max(1, min(room, 400))))
        runs.append((start, physical, length))
        physical += length + draw(st.sampled_from([0, 0, 1, 5000]))
    return block_size, runs


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=runs_strategy())
def test_build_walk_round_trip(case: tuple[int, list[tuple[int, int, int]]]) -> None:
    block_size, runs = case
    per = block_size // 4
    i_block, disk, meta = built(runs, block_size)
    assert len(i_block) == 60
    for region, base in ((1, 12), (2, 12 + per), (3, 12 + per + per * per)):
        if any(logical + length > base for logical, _, length in runs):
            event(f"region {region} used")
    assert walk(i_block, disk) == canonical(runs)
    assert sorted(disk.reads) == meta  # every indirect block read once
    assert B.meta_blocks(i_block, disk.read, **kw(block_size)) == meta
    mapped = {}
    for logical, physical, length in runs:
        for i in {0, length // 2, length - 1}:
            mapped[logical + i] = physical + i
        if logical and logical - 1 not in mapped:
            mapped.setdefault(logical - 1, 0)
    for logical, physical in mapped.items():
        got = B.lookup(i_block, disk.read, logical, **kw(block_size))
        assert got == physical or (physical == 0 and any(a <= logical < a + n for a, _, n in runs))
    # stopping at max_logical cuts runs there and reads nothing beyond
    if runs:
        cut = runs[len(runs) // 2][0] + 1
        expected = [(a, b, min(n, cut - a)) for a, b, n in canonical(runs) if a < cut]
        assert walk(i_block, disk, max_logical=cut) == expected


def test_triple_indirect_sparse() -> None:
    """A 1 KiB map with blocks in every region, up to the last triple-indirect block."""
    last = B.capacity(1024) - 1
    assert last == 12 + 256 + 256**2 + 256**3 - 1
    runs = [(0, 100, 3), (11, 200, 2), (DIND1K - 1, 300, 2), (TIND1K - 2, 400, 4), (70_000, 500, 10),
            (last - 1, 600, 2)]
    i_block, disk, meta = built(runs, 1024)
    # IND; DIND + its INDs 0 and 255; TIND + DIND 0 (+ INDs 0 and 16) + DIND 255 (+ IND 255)
    assert B.meta_needed(runs, 1024) == len(meta) == 10
    assert walk(i_block, disk) == [(0, 100, 3), (11, 200, 2), (DIND1K - 1, 300, 2), (TIND1K - 2, 400, 4),
                                   (70_000, 500, 10), (last - 1, 600, 2)]
    pointers = struct.unpack("<15I", i_block)
    assert pointers[:3] == (100, 101, 102) and pointers[11] == 200
    assert pointers[12:] == (meta[0], meta[1], meta[4])  # IND, DIND, TIND in pre-order
    assert B.lookup(i_block, disk.read, last, **kw(1024)) == 601
    assert B.lookup(i_block, disk.read, last + 1, **kw(1024)) == 0
    assert B.lookup(i_block, disk.read, 70_005, **kw(1024)) == 505
    assert B.lookup(i_block, disk.read, 69_999, **kw(1024)) == 0
    disk.reads.clear()
    assert B.lookup(i_block, disk.read, TIND1K, **kw(1024)) == 402
    assert len(disk.reads) == 3  # TIND, DIND, IND


def test_preorder_layout() -> None:
    """Meta blocks are used IND, DIND, its INDs, TIND, its DINDs each followed by their INDs."""
    runs = [(IND1K, 1000, 1), (DIND1K, 2000, 1), (DIND1K + 256, 3000, 1), (TIND1K, 4000, 1),
            (TIND1K + 65536, 5000, 1)]
    i_block, disk, meta = built(runs, 1024, first_meta=50)
    assert meta == list(range(50, 59))
    ptr = struct.unpack("<15I", i_block)
    assert ptr[12:] == (50, 51, 54)
    blk = {b: struct.unpack("<256I", raw) for b, raw in disk.blocks.items()}
    assert blk[50][0] == 1000
    assert blk[51][:2] == (52, 53) and blk[52][0] == 2000 and blk[53][0] == 3000
    assert blk[54][:2] == (55, 57) and blk[55][0] == 56 and blk[56][0] == 4000
    assert blk[57][0] == 58 and blk[58][0] == 5000


def test_contiguous_runs_join_across_indirect_boundaries() -> None:
    i_block, disk, meta = built([(0, 5000, 100_000)], 1024)
    assert walk(i_block, disk) == [(0, 5000, 100_000)]
    assert len(meta) == 1 + (1 + 256) + (1 + 1 + (100_000 - TIND1K + 255) // 256)


def test_build_rejects_bad_runs() -> None:
    for runs in ([(0, 10, 5), (3, 100, 2)], [(0, 0, 1)], [(0, 10, 0)], [(-1, 10, 1)],
                 [(0, (1 << 32) - 2, 5)], [(B.capacity(1024) - 1, 10, 2)]):
        with pytest.raises(InvalidOptions):
            B.meta_needed(runs, 1024)
    with pytest.raises(InvalidOptions):
        B.build([(20, 10, 5)], block_size=1024, meta_blocks=[])
    with pytest.raises(InvalidOptions):
        B.build([(20, 10, 5), (300, 10, 1)], block_size=1024, meta_blocks=[7, 7, 8])
    with pytest.raises(InvalidOptions):
        B.meta_needed([], 1000)


def test_empty_and_direct_only() -> None:
    i_block, disk, meta = built([], 4096)
    assert i_block == bytes(60) and meta == [] and walk(i_block, disk) == []
    i_block, disk, meta = built([(2, 50, 3), (7, 60, 5)], 4096)
    assert meta == [] and walk(i_block, disk) == [(2, 50, 3), (7, 60, 5)]


# ------------------------------------------------------------------ corruption
def i_block_of(*pointers: tuple[int, int]) -> bytes:
    values = [0] * 15
    for slot, value in pointers:
        values[slot] = value
    return struct.pack("<15I", *values)


def ind(block_size: int, *pointers: tuple[int, int]) -> bytearray:
    buf = bytearray(block_size)
    for slot, value in pointers:
        U32.pack_into(buf, slot * 4, value)
    return buf


def corrupt_cases() -> list[tuple[str, type[Exception], bytes, dict[int, bytearray], dict[str, int]]]:
    k = 1024
    return [
        ("direct pointer beyond the device", CorruptError, i_block_of((3, 5000)), {}, {"blocks_count": 5000}),
        ("direct pointer at the superblock", CorruptError, i_block_of((3, 1)), {}, {}),
        ("IND beyond the device", CorruptError, i_block_of((12, BLOCKS_COUNT - 1)), {},
         {"blocks_count": BLOCKS_COUNT - 1}),
        ("data pointer in IND beyond the device", CorruptError, i_block_of((12, 50)),
         {50: ind(k, (7, 999_999))}, {"blocks_count": 999_999}),
        ("DIND pointing at itself", LoopError, i_block_of((13, 60)), {60: ind(k, (0, 60))}, {}),
        ("IND reused as DIND", LoopError, i_block_of((12, 60), (13, 60)), {60: ind(k, (0, 100))}, {}),
        ("two DIND slots share an IND", LoopError, i_block_of((13, 60)),
         {60: ind(k, (0, 61), (5, 61)), 61: ind(k, (0, 100))}, {}),
        ("TIND -> DIND -> TIND loop", LoopError, i_block_of((14, 70)),
         {70: ind(k, (0, 71)), 71: ind(k, (3, 70))}, {}),
        ("indirect pointer 0 in a DIND is a hole, pointer 1 is not", CorruptError, i_block_of((13, 60)),
         {60: ind(k, (1, 1))}, {}),
    ]


@pytest.mark.parametrize(("name", "exc", "i_block", "blocks", "extra"), corrupt_cases(),
                         ids=[c[0] for c in corrupt_cases()])
def test_corrupt_maps(name: str, exc: type[Exception], i_block: bytes, blocks: dict[int, bytearray],
                      extra: dict[str, int]) -> None:
    disk = Disk(1024, list(blocks.items()))
    fast_raise(exc, lambda: walk(i_block, disk, **extra))
    fast_raise(exc, lambda: B.meta_blocks(i_block, disk.read, **kw(1024, **extra)))


def test_corrupt_lookup() -> None:
    disk = Disk(1024, [(70, ind(1024, (0, 71))), (71, ind(1024, (0, 70)))])
    i_block = i_block_of((14, 70))
    fast_raise(LoopError, lambda: B.lookup(i_block, disk.read, TIND1K, **kw(1024)))
    disk = Disk(1024, [(50, ind(1024, (4, 9999)))])
    fast_raise(CorruptError, lambda: B.lookup(i_block_of((12, 50)), disk.read, 16,
                                              **kw(1024, blocks_count=9999)))
    assert B.lookup(i_block_of((12, 50)), disk.read, 17, **kw(1024, blocks_count=9999)) == 0
    assert B.lookup(i_block_of((12, 50)), disk.read, 10**12, **kw(1024)) == 0


def test_short_blocks() -> None:
    disk = Disk(1024, [(50, ind(1024, (0, 100)))])

    def short(block: int) -> bytes:
        return disk.read(block)[:512]

    fast_raise(TruncatedError, lambda: list(B.walk(i_block_of((12, 50)), short, **kw(1024))))
    fast_raise(TruncatedError, lambda: list(B.walk(bytes(40), disk.read, **kw(1024))))


def test_beyond_2_32_logical_blocks() -> None:
    """With 8 KiB blocks the TIND region reaches past 2^32: pointers there are corrupt."""
    per = 2048
    assert B.capacity(8192) == 1 << 32
    disk = Disk(8192, [(70, ind(8192, (per - 1, 71))), (71, ind(8192, (0, 72))), (72, ind(8192, (0, 500)))])
    i_block = i_block_of((14, 70))
    fast_raise(CorruptError, lambda: walk(i_block, disk))
    assert walk(i_block, disk, max_logical=1 << 20) == []  # beyond the file's end: not even read
    assert disk.reads.count(71) == 0


def test_max_logical_skips_unread_subtrees() -> None:
    i_block, disk, meta = built([(0, 100, 5), (TIND1K + 5, 900, 1)], 1024)
    disk.reads.clear()
    assert walk(i_block, disk, max_logical=5) == [(0, 100, 5)]
    assert disk.reads == []
    assert walk(i_block, disk, max_logical=3) == [(0, 100, 3)]


def test_huge_garbage_map_is_bounded() -> None:
    """A DIND whose every slot points at the same IND stops at the second visit."""
    disk = Disk(4096, [(60, ind(4096, *[(i, 61) for i in range(1024)])), (61, ind(4096, (0, 9)))])
    fast_raise(LoopError, lambda: walk(i_block_of((13, 60)), disk))
    assert disk.reads == [60, 61]


@settings(max_examples=150, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 60 + 7 * 1024 - 1), st.integers(0, 31)), min_size=1,
                      max_size=6), logical=st.integers(0, 80_000))
def test_random_damage_only_raises_ext4_errors(flips: list[tuple[int, int]], logical: int) -> None:
    i_block, disk, meta = built([(0, 100, 20), (DIND1K + 3, 200, 300), (TIND1K + 7, 600, 3)], 1024,
                                first_meta=5000)
    assert len(meta) == 7  # IND, DIND + 2 INDs, TIND + DIND + IND
    raw = bytearray(i_block)
    order = meta
    for offset, bit in flips:
        if offset < 60:
            raw[offset] ^= 1 << (bit % 8)
        else:
            block = order[min((offset - 60) // 1024, len(order) - 1)]
            disk.blocks[block][(offset - 60) % 1024] ^= 1 << (bit % 8)
    start = time.perf_counter()
    for call in (lambda: walk(bytes(raw), disk, blocks_count=1 << 20),
                 lambda: B.lookup(bytes(raw), disk.read, logical, **kw(1024, blocks_count=1 << 20))):
        try:
            call()  # type: ignore[no-untyped-call]
        except Ext4Error:
            pass
    assert time.perf_counter() - start < 2


# ------------------------------------------------------- maps made by mke2fs
def image_params(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        sb = f.read(2048)[1024:]
    return {"block_size": 1024 << U32.unpack_from(sb, 0x18)[0], "blocks_count": U32.unpack_from(sb, 0x4)[0],
            "first_data_block": U32.unpack_from(sb, 0x14)[0]}


@pytest.fixture(scope="module")
def ext2_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tool("mke2fs")
    tool("debugfs")
    base = tmp_path_factory.mktemp("blockmap")
    src = base / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:  # blocks in direct, IND, DIND and TIND at 1 KiB
        for logical, length in ((0, 2), (10, 5), (200, 100), (5000, 3), (TIND1K - 3, 6), (90_000, 2),
                                (200_000, 1)):
            f.seek(logical * 1024)
            f.write(bytes([65 + logical % 26]) * (length * 1024))
    (src / "contig").write_bytes(os.urandom(300 * 1024))  # IND + DIND in one piece
    (src / "tiny").write_bytes(b"hello")
    with open(src / "hole-at-end", "wb") as f:
        f.write(b"x" * 3000)
        f.truncate(40 * 1024 * 1024)
    images = {}
    for kind, block_size in (("ext2", 1024), ("ext3", 1024), ("ext2", 4096)):
        image = base / f"{kind}-{block_size}.img"
        mke2fs(image, "-t", kind, "-b", str(block_size), size="16M", root=str(src))
        images[f"{kind}-{block_size}"] = image
    return images


def inode_of(image: Path, name: str, block_size: int) -> tuple[bytes, int]:
    out = debugfs(image, f"imap {name}")
    m = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", out)
    assert m
    with open(image, "rb") as f:
        f.seek(int(m.group(1)) * block_size + int(m.group(2), 16))
        raw = f.read(128)
    size = U32.unpack_from(raw, 0x4)[0] | U32.unpack_from(raw, 0x6C)[0] << 32
    return raw[0x28:0x64], size


@pytest.mark.parametrize("kind", ["ext2-1024", "ext3-1024", "ext2-4096"])
@pytest.mark.parametrize("name", ["/sparse", "/contig", "/tiny", "/hole-at-end"])
def test_walk_matches_debugfs(ext2_images: dict[str, Path], kind: str, name: str) -> None:
    image = ext2_images[kind]
    params = image_params(image)
    bs = params["block_size"]
    fd = os.open(image, os.O_RDONLY)
    try:
        def read(block: int) -> bytes:
            return os.pread(fd, bs, block * bs)

        i_block, size = inode_of(image, name, bs)
        kwargs: dict[str, Any] = {**params, "where": name}
        runs = list(B.walk(i_block, read, **kwargs))
        stat = debugfs(image, f"stat {name}")
        expected_meta = [int(b) for b in re.findall(r"\((?:IND|DIND|TIND)\):(\d+)", stat)]
        assert B.meta_blocks(i_block, read, **kwargs) == expected_meta
        # `debugfs blocks` lists data and indirect blocks together, in iteration order
        all_blocks = [int(x) for x in debugfs(image, f"blocks {name}").split()]
        assert [p + i for _, p, n in runs for i in range(n)] == [b for b in all_blocks if b not in expected_meta]
        assert sorted(all_blocks) == sorted([p + i for _, p, n in runs for i in range(n)] + expected_meta)
        # logical positions agree with debugfs's "(logical-range):physical-range" listing
        listed = []
        for m in re.finditer(r"\((\d+)(?:-(\d+))?\):(\d+)", stat):
            first, last = int(m.group(1)), int(m.group(2) or m.group(1))
            listed.append((first, int(m.group(3)), last - first + 1))
        assert canonical(listed) == runs
        max_logical = -(-size // bs)
        assert list(B.walk(i_block, read, max_logical=max_logical, **kwargs)) == runs
        for logical, physical, length in runs:
            for i in {0, length - 1}:
                assert B.lookup(i_block, read, logical + i, **kwargs) == physical + i
        if name == "/sparse" and bs == 1024:
            assert any(logical >= TIND1K for logical, _, _ in runs)
            assert B.lookup(i_block, read, TIND1K - 4, **kwargs) == 0
        # our build with the same meta blocks reproduces mke2fs's map byte for byte
        rebuilt, blocks = B.build(runs, block_size=bs, meta_blocks=expected_meta)
        assert rebuilt == bytes(i_block)
        assert [(b, bytes(raw)) for b, raw in blocks] == [(b, read(b)) for b in expected_meta]
    finally:
        os.close(fd)
