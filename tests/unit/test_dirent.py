"""Tests for pyext4.dirent: rec_len, leaf blocks, checksums, htree hashes and the htree index."""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyext4 import csum as K
from pyext4 import dirent as D
from pyext4.constants import FLAGS_UNSIGNED_HASH, FT_DIR, FT_REG_FILE
from pyext4.errors import (
    CorruptError,
    FileExists,
    InvalidOptions,
    InvalidPath,
    LoopError,
    NameTooLong,
    NoSpace,
    UnsupportedFeature,
)
from pyext4.superblock import Superblock

MKE2FS = shutil.which("mke2fs")
E2FSCK = shutil.which("e2fsck")
DEBUGFS = shutil.which("debugfs")
needs_debugfs = pytest.mark.skipif(DEBUGFS is None, reason="debugfs (e2fsprogs) is not installed")
needs_e2fsprogs = pytest.mark.skipif(
    not (MKE2FS and E2FSCK and DEBUGFS), reason="mke2fs/e2fsck/debugfs (e2fsprogs) not installed"
)
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names_st = st.binary(min_size=1, max_size=255).filter(lambda n: b"/" not in n and b"\0" not in n)
entry_st = st.tuples(st.integers(1, 2**32 - 1), names_st, st.integers(0, 7))


def _entries(blocks: list[bytearray], *, block_size: int, filetype: bool, csum: bool) -> list[tuple[int, bytes, int]]:
    out = []
    for raw in blocks:
        for e in D.parse_block(raw, block_size=block_size, filetype=filetype, has_tail=csum):
            out.append((e.ino, e.name, e.file_type))
    return out


# ------------------------------------------------------------------ rec_len
def test_rec_len_for() -> None:
    assert [D.rec_len_for(n) for n in (0, 1, 4, 5, 8, 255)] == [8, 12, 12, 16, 16, 264]


@given(
    block_size=st.sampled_from([1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]),
    data=st.data(),
)
def test_rec_len_round_trip(block_size: int, data: st.DataObject) -> None:
    length = data.draw(st.integers(3, block_size // 4)) * 4
    disk = D.rec_len_to_disk(length, block_size)
    assert 0 <= disk <= 0xFFFF
    assert D.rec_len_from_disk(disk, block_size) == length


def test_rec_len_64k_encoding() -> None:
    assert D.rec_len_to_disk(65536, 65536) == 0xFFFF
    assert D.rec_len_from_disk(0xFFFF, 65536) == 65536
    assert D.rec_len_from_disk(0, 65536) == 65536
    assert D.rec_len_to_disk(65524, 65536) == 65524
    assert D.rec_len_from_disk(0, 4096) == 0  # below 64 KiB the value is literal
    assert D.rec_len_from_disk(0xFFFF, 4096) == 0xFFFF
    for bad in (4097, 10, -4):
        with pytest.raises(InvalidOptions):
            D.rec_len_to_disk(bad, 4096)


# --------------------------------------------------------- parse and build
@SLOW
@given(
    entries=st.lists(entry_st, max_size=60, unique_by=lambda e: e[1]),
    block_size=st.sampled_from([1024, 4096, 65536]),
    filetype=st.booleans(),
    csum=st.booleans(),
)
def test_linear_round_trip(entries: list[tuple[int, bytes, int]], block_size: int, filetype: bool,
                           csum: bool) -> None:
    blocks = D.build_linear_blocks(entries, block_size=block_size, filetype=filetype, csum=csum)
    assert all(len(b) == block_size for b in blocks)
    assert all(D.has_leaf_tail(b) == csum for b in blocks)
    expected = [(i, n, t if filetype else 0) for i, n, t in entries]
    assert _entries(blocks, block_size=block_size, filetype=filetype, csum=csum) == expected
    usable = block_size - (12 if csum else 0)
    for raw in blocks:
        everything = D.parse_block(raw, block_size=block_size, filetype=filetype, has_tail=csum,
                                   include_empty=True)
        assert sum(e.rec_len for e in everything) == usable  # entries tile the block exactly
        assert everything[-1].offset + everything[-1].rec_len == usable
    if len(blocks) > 1:  # packing is greedy: the next entry did not fit
        first = D.parse_block(blocks[0], block_size=block_size, filetype=filetype, has_tail=csum)
        nxt = D.parse_block(blocks[1], block_size=block_size, filetype=filetype, has_tail=csum)[0]
        used = sum(D.rec_len_for(len(e.name)) for e in first)
        assert used + D.rec_len_for(len(nxt.name)) > usable


def test_parse_without_filetype_uses_16bit_name_len() -> None:
    buf = bytearray(1024)
    struct.pack_into("<IHH", buf, 0, 11, 1024, 3)
    buf[8:11] = b"abc"
    (e,) = D.parse_block(buf, block_size=1024, filetype=False, has_tail=False)
    assert (e.ino, e.name, e.file_type, e.offset, e.rec_len) == (11, b"abc", 0, 0, 1024)
    struct.pack_into("<IHH", buf, 0, 11, 1024, 0x103)  # high byte would be a file type
    with pytest.raises(CorruptError):
        D.parse_block(buf, block_size=1024, filetype=False, has_tail=False)
    (e,) = D.parse_block(buf, block_size=1024, filetype=True, has_tail=False)
    assert (e.name, e.file_type) == (b"abc", 1)


def test_parse_64k_zero_rec_len_is_whole_block() -> None:
    buf = bytearray(65536)
    struct.pack_into("<IHBB", buf, 0, 12, 0, 1, FT_REG_FILE)
    buf[8:9] = b"x"
    (e,) = D.parse_block(buf, block_size=65536, filetype=True, has_tail=False)
    assert e.rec_len == 65536
    with pytest.raises(CorruptError):  # the same bytes in a 4 KiB block
        D.parse_block(buf[:4096], block_size=4096, filetype=True, has_tail=False)


def test_include_empty_and_tail_handling() -> None:
    blocks = D.build_linear_blocks([(12, b"a", 1), (13, b"b", 2)], block_size=1024, filetype=True, csum=True)
    raw = blocks[0]
    assert D.has_leaf_tail(raw) and D.has_tail(raw, 1024)
    assert D.remove_from_block(raw, b"a", block_size=1024, filetype=True, has_tail=True) == 12
    live = D.parse_block(raw, block_size=1024, filetype=True, has_tail=True)
    everything = D.parse_block(raw, block_size=1024, filetype=True, has_tail=True, include_empty=True)
    assert [e.name for e in live] == [b"b"]
    assert [(e.ino, e.offset) for e in everything] == [(0, 0), (13, 12)]
    # Without has_tail, the tail is just an empty 12-byte entry; lenient_tail skips it.
    plain = D.parse_block(raw, block_size=1024, filetype=True, has_tail=False, include_empty=True)
    assert plain[-1].offset == 1012 and plain[-1].rec_len == 12 and plain[-1].ino == 0
    lenient = D.parse_block(raw, block_size=1024, filetype=True, has_tail=False, include_empty=True,
                            lenient_tail=True)
    assert lenient == everything
    no_tail = D.build_linear_blocks([(12, b"a", 1)], block_size=1024, filetype=True, csum=False)[0]
    with pytest.raises(CorruptError, match="tail"):
        D.parse_block(no_tail, block_size=1024, filetype=True, has_tail=True)


def test_max_ino_bound() -> None:
    raw = D.build_leaf_block([(500, b"x", 1)], block_size=1024, filetype=True, csum=False)
    assert D.parse_block(raw, block_size=1024, filetype=True, has_tail=False, max_ino=500)
    with pytest.raises(CorruptError, match="out of range"):
        D.parse_block(raw, block_size=1024, filetype=True, has_tail=False, max_ino=499)


def test_builders_reject_bad_input() -> None:
    with pytest.raises(NameTooLong):
        D.build_linear_blocks([(12, b"x" * 256, 1)], block_size=1024, filetype=True, csum=False)
    for bad in (b"", b"a/b", b"a\0b"):
        with pytest.raises(InvalidPath):
            D.build_linear_blocks([(12, bad, 1)], block_size=1024, filetype=True, csum=False)
    with pytest.raises(InvalidOptions):
        D.build_linear_blocks([(0, b"x", 1)], block_size=1024, filetype=True, csum=False)
    with pytest.raises(NoSpace):
        D.build_leaf_block([(12, b"x" * 255, 1)] * 4, block_size=1024, filetype=True, csum=False)
    with pytest.raises(FileExists):
        D.build_linear_blocks([(12, b"twice", 1), (13, b"twice", 1)], block_size=1024, filetype=True, csum=False)
    common = dict(block_size=1024, hash_version=1, seed=None, filetype=True, csum=False, dir_ino=12, parent_ino=2,
                  large_dir=False)
    with pytest.raises(FileExists):
        D.build_htree([(12, b"twice", 1), (13, b"twice", 1)], **common)  # type: ignore[arg-type]
    with pytest.raises(InvalidPath):
        D.build_htree([(12, b"..", 2)], **common)  # type: ignore[arg-type]
    empty = D.build_leaf_block([], block_size=4096, filetype=True, csum=True)
    (e,) = D.parse_block(empty, block_size=4096, filetype=True, has_tail=True, include_empty=True)
    assert (e.ino, e.rec_len) == (0, 4084)


# ------------------------------------------------------------ corrupt input
def _one_entry_block(rec_len: int, name_len: int, size: int = 4096, ino: int = 12) -> bytearray:
    buf = bytearray(size)
    struct.pack_into("<IHBB", buf, 0, ino, rec_len, name_len, 1)
    return buf


@pytest.mark.parametrize(
    ("rec_len", "name_len", "message"),
    [
        (0, 1, "bad rec_len"),  # must not loop
        (8, 0, "bad rec_len"),
        (14, 1, "bad rec_len"),  # not a multiple of 4
        (4100, 1, "runs past"),
        (12, 5, "does not fit"),  # name_len > rec_len - 8
        (4096, 0, "empty name"),  # a live entry needs a name
        (4088, 1, "too few"),  # 8 bytes left over cannot hold an entry
    ],
)
def test_corrupt_blocks_raise(rec_len: int, name_len: int, message: str) -> None:
    raw = _one_entry_block(rec_len, name_len)
    start = time.perf_counter()
    with pytest.raises(CorruptError, match=message) as info:
        D.parse_block(raw, block_size=4096, filetype=True, has_tail=False, where="block 77")
    assert time.perf_counter() - start < 0.1
    assert "block 77" in str(info.value)


def test_corrupt_second_entry_reports_offset() -> None:
    raw = bytearray(D.build_linear_blocks([(12, b"a", 1), (13, b"b", 1)], block_size=1024, filetype=True,
                                          csum=False)[0])
    struct.pack_into("<H", raw, 12 + 4, 0)
    with pytest.raises(CorruptError, match="offset 12"):
        D.parse_block(raw, block_size=1024, filetype=True, has_tail=False)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(min_size=64, max_size=64), filetype=st.booleans(), tail=st.booleans())
def test_random_bytes_parse_or_corrupt(raw: bytes, filetype: bool, tail: bool) -> None:
    block = raw * 16  # 1 KiB
    try:
        D.parse_block(block, block_size=1024, filetype=filetype, has_tail=tail, include_empty=True)
    except CorruptError:
        pass
    try:
        D.parse_dx_root(block, block_size=1024, csum=tail, large_dir=True, dir_blocks=50)
    except CorruptError:
        pass
    try:
        D.parse_dx_node(block, block_size=1024, csum=tail, dir_blocks=50)
    except CorruptError:
        pass
    try:
        D.parse_inline(raw[:60] + raw[:4], filetype=filetype)
    except CorruptError:
        pass


# -------------------------------------------------------- insert and remove
@SLOW
@given(
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.integers(1, 40)), max_size=120),
    csum=st.booleans(),
    filetype=st.booleans(),
)
def test_insert_remove_against_model(ops: list[tuple[bool, int, int]], csum: bool, filetype: bool) -> None:
    bs = 1024
    buf = D.build_leaf_block([(2, b".", 2), (1, b"..", 2)], block_size=bs, filetype=filetype, csum=csum)
    model: dict[bytes, int] = {b".": 2, b"..": 1}
    for add, key, length in ops:
        name = b"%d-" % key + b"n" * length
        if add:
            if name in model:
                with pytest.raises(FileExists):
                    D.insert_into_block(buf, 99, name, 1, block_size=bs, filetype=filetype, has_tail=csum)
                continue
            before = bytes(buf)
            if D.insert_into_block(buf, 100 + key, name, 1, block_size=bs, filetype=filetype, has_tail=csum):
                model[name] = 100 + key
            else:
                assert bytes(buf) == before
                everything = D.parse_block(buf, block_size=bs, filetype=filetype, has_tail=csum,
                                           include_empty=True)
                need = D.rec_len_for(len(name))
                assert all((e.rec_len - (D.rec_len_for(len(e.name)) if e.ino else 0)) < need
                           for e in everything)
        else:
            got = D.remove_from_block(buf, name, block_size=bs, filetype=filetype, has_tail=csum)
            assert got == model.pop(name, None)
        live = D.parse_block(buf, block_size=bs, filetype=filetype, has_tail=csum)
        assert {e.name: e.ino for e in live} == model
        assert D.has_leaf_tail(buf) == csum


def test_remove_like_the_kernel() -> None:
    bs = 1024
    buf = D.build_leaf_block([(12, b"first", 1), (13, b"second", 1), (14, b"third", 1)],
                             block_size=bs, filetype=True, csum=False)
    assert D.remove_from_block(buf, b"second", block_size=bs, filetype=True, has_tail=False) == 13
    everything = D.parse_block(buf, block_size=bs, filetype=True, has_tail=False, include_empty=True)
    assert [(e.name, e.offset, e.rec_len) for e in everything] == [(b"first", 0, 32), (b"third", 32, 992)]
    assert buf[16:32] == bytes(16)  # the removed entry is wiped
    assert D.remove_from_block(buf, b"first", block_size=bs, filetype=True, has_tail=False) == 12
    everything = D.parse_block(buf, block_size=bs, filetype=True, has_tail=False, include_empty=True)
    assert [(e.ino, e.name, e.offset, e.rec_len) for e in everything] == [(0, b"", 0, 32), (14, b"third", 32, 992)]
    assert D.remove_from_block(buf, b"nothing", block_size=bs, filetype=True, has_tail=False) is None
    # First fit in block order: the unused first entry is reused whole, then
    # the next name goes into the spare bytes after it.
    assert D.insert_into_block(buf, 20, b"new", 7, block_size=bs, filetype=True, has_tail=False)
    everything = D.parse_block(buf, block_size=bs, filetype=True, has_tail=False, include_empty=True)
    assert [(e.ino, e.offset, e.rec_len) for e in everything] == [(20, 0, 32), (14, 32, 992)]
    assert D.insert_into_block(buf, 21, b"more", 1, block_size=bs, filetype=True, has_tail=False)
    assert D.insert_into_block(buf, 22, b"x" * 40, 1, block_size=bs, filetype=True, has_tail=False)
    everything = D.parse_block(buf, block_size=bs, filetype=True, has_tail=False, include_empty=True)
    assert [(e.ino, e.name[:4], e.file_type, e.offset, e.rec_len) for e in everything] == [
        (20, b"new", 7, 0, 12), (21, b"more", 1, 12, 20), (14, b"thir", 1, 32, 16), (22, b"xxxx", 1, 48, 976)]


# ----------------------------------------------------------------- checksums
def test_leaf_and_dx_checksums_synthetic() -> None:
    iseed = K.inode_seed(K.fs_seed(bytes(range(16))), 12, 7)
    leaf = D.build_leaf_block([(12, b"a", 1)], block_size=4096, filetype=True, csum=True)
    assert not D.leaf_csum_ok(leaf, iseed)
    D.set_leaf_csum(leaf, iseed)
    assert D.leaf_csum_ok(leaf, iseed) and D.dir_block_csum_ok(leaf, iseed)
    D.verify_leaf_csum(leaf, iseed)
    leaf[100] ^= 1
    assert not D.leaf_csum_ok(leaf, iseed)
    with pytest.raises(CorruptError):
        D.verify_leaf_csum(leaf, iseed)
    with pytest.raises(CorruptError):
        D.set_leaf_csum(D.build_leaf_block([], block_size=1024, filetype=True, csum=False), iseed)

    root = D.build_dx_root(12, 2, [(0, 1), (0x100, 2)], hash_version=1, levels=0, block_size=4096,
                           filetype=True, csum=True)
    node = D.build_dx_node([(0, 1), (0x100, 2)], block_size=4096, csum=True)
    for block, is_root in ((root, True), (node, False)):
        assert D.is_dx_block(block, 4096, is_root) and not D.is_dx_block(block, 4096, not is_root)
        assert not D.dx_csum_ok(block, iseed)
        D.set_dir_block_csum(block, iseed)
        assert D.dx_csum_ok(block, iseed, is_root=is_root) and D.dir_block_csum_ok(block, iseed)
        assert not D.dx_csum_ok(block, iseed, is_root=not is_root)
        D.verify_dx_csum(block, iseed)
        block[12] ^= 1  # covered by both checksums
        assert not D.dx_csum_ok(block, iseed)
    no_room = D.build_dx_node([(0, 1)], block_size=4096, csum=False)  # limit uses the whole block
    assert not D.dx_csum_ok(no_room, iseed)
    with pytest.raises(CorruptError):
        D.set_dx_csum(no_room, iseed)


def test_dot_entries_and_inline() -> None:
    root = D.build_dx_root(12, 2, [(0, 1)], hash_version=1, levels=0, block_size=1024, filetype=True,
                           csum=False)
    dots = D.dx_root_dot_entries(root, filetype=True)
    assert [(e.ino, e.name, e.file_type, e.rec_len) for e in dots] == [(12, b".", FT_DIR, 12), (2, b"..", FT_DIR, 1012)]
    with pytest.raises(CorruptError):
        D.dx_root_dot_entries(bytes(1024), filetype=True)
    # Inline directory: parent, 56 bytes of i_block entries, then the system.data value.
    first = D.build_leaf_block([(13, b"in_iblock", 1)], block_size=56, filetype=True, csum=False)
    second = D.build_leaf_block([(14, b"in_xattr", 2), (15, b"z", 1)], block_size=40, filetype=True, csum=False)
    data = struct.pack("<I", 2) + bytes(first) + bytes(second)
    got = D.parse_inline(data, filetype=True)
    assert [(e.ino, e.name, e.offset) for e in got] == [(2, b"..", 0), (13, b"in_iblock", 4), (14, b"in_xattr", 60),
                                                         (15, b"z", 76)]
    bad = bytearray(data)
    struct.pack_into("<H", bad, 4 + 4, 60)  # the i_block entry would run into the xattr part
    with pytest.raises(CorruptError, match="runs past"):
        D.parse_inline(bad, filetype=True)
    with pytest.raises(CorruptError):
        D.parse_inline(bytes(60), filetype=True)  # parent 0


# ------------------------------------------------------------------- hashes
def _debugfs_hashes(cases: list[tuple[int, uuid.UUID | None, bytes]]) -> list[tuple[int, int]]:
    script = b"".join(
        b"dx_hash -h %d %s-- %s\n" % (v, b"-s %s " % str(s).encode() if s else b"", name) for v, s, name in cases
    )
    out = subprocess.run([DEBUGFS or "debugfs", "-f", "-"], input=script, capture_output=True, check=True).stdout
    found = re.findall(rb"Hash of (.*?) is 0x([0-9a-f]+) \(minor 0x([0-9a-f]+)\)\n", out, re.S)
    assert [n for n, _, _ in found] == [name for _, _, name in cases]
    return [(int(h, 16), int(m, 16)) for _, h, m in found]


@needs_debugfs
def test_hashes_match_debugfs() -> None:
    rng = random.Random(1234)
    # Bytes the debugfs command parser passes through untouched; 0x80-0xFF included.
    alphabet = bytes(b for b in range(0x21, 0x100) if b not in b"\"'\\#\x7f")
    names = [b"hello", b"a", b"..x", b"file_000123.txt", b"\xe9t\xe9", b"\xff" * 40]
    for length in (1, 2, 3, 4, 5, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 254, 255):
        for _ in range(4):
            names.append(bytes(rng.choice(alphabet) for _ in range(length)))
    seeds = [None, uuid.UUID(int=rng.getrandbits(128))]
    cases = [(v, s, n) for s in seeds for v in range(6) for n in names]
    expected = _debugfs_hashes(cases)
    for (v, s, n), want in zip(cases, expected, strict=True):
        seed = None if s is None else D.seed_from_bytes(s.bytes)
        assert D.name_hash(n, v, seed) == want, (v, s, n)
    # Signed and unsigned variants really differ on non-ASCII names.
    assert D.name_hash(b"\xe9t\xe9", 0) != D.name_hash(b"\xe9t\xe9", 3)


def test_hash_known_vectors_and_seed() -> None:
    assert D.name_hash(b"hello", 1) == (0x1746DA32, 0x420013B5)
    for v in range(6):
        for name in (b"x", b"some name", b"\x80\xff" * 20):
            default = D.name_hash(name, v)
            assert D.name_hash(name, v, (0, 0, 0, 0)) == default
            assert D.name_hash(name, v, D.DEFAULT_HASH_SEED) == default
            major, minor = D.name_hash(name, v, (1, 2, 3, 4))
            assert major & 1 == 0 and major != 0xFFFFFFFE
            if v in (0, 3):
                assert minor == 0
    assert D._finish(0xFFFFFFFF) == 0xFFFFFFFC and D._finish(0xFFFFFFFE) == 0xFFFFFFFC
    assert D._finish(0x12345679) == 0x12345678
    with pytest.raises(UnsupportedFeature):
        D.name_hash(b"x", 6)
    with pytest.raises(InvalidOptions):
        D.name_hash(b"x", 9)
    with pytest.raises(InvalidOptions):
        D.name_hash(b"x", 1, (1, 2, 3))
    assert D.effective_hash_version(1, True) == 4 and D.effective_hash_version(1, False) == 1
    assert D.seed_from_bytes(struct.pack("<4I", 1, 2, 3, 4)) == (1, 2, 3, 4)


def test_batch_hashes_equal_single() -> None:
    rng = random.Random(99)
    names = [bytes(rng.randrange(1, 256) for _ in range(rng.choice([1, 7, 16, 33, 64, 255]))) for _ in range(300)]
    names += [b"file_%05d" % i for i in range(400)] + [b"long_%05d_" % i + b"y" * 40 for i in range(100)]
    for seed in (None, (0x11111111, 0x22222222, 0x33333333, 0x44444444)):
        for v in range(6):
            assert D.name_hashes(names, v, seed) == [D.name_hash(n, v, seed) for n in names]


def test_hash_speed() -> None:
    names = [b"file_%06d.txt" % i for i in range(2000)]
    for v in range(6):
        start = time.perf_counter()
        for n in names:
            D.name_hash(n, v)
        single = (time.perf_counter() - start) / len(names)
        start = time.perf_counter()
        D.name_hashes(names, v)
        batch = (time.perf_counter() - start) / len(names)
        # Generous bounds for slow CI machines; typical: single 3-8 us, batch ~1 us.
        assert single < 40e-6 and batch < 10e-6, (v, single, batch)


# --------------------------------------------------------------- dx parsing
def _root(entries: list[tuple[int, int]], levels: int = 0, bs: int = 1024, csum: bool = False) -> bytearray:
    return D.build_dx_root(12, 2, entries, hash_version=1, levels=levels, block_size=bs, filetype=True, csum=csum)


def test_dx_root_parse() -> None:
    raw = _root([(0, 1), (0x10, 2), (0x10, 3), (0x20, 4)])
    root = D.parse_dx_root(raw, block_size=1024, csum=False, large_dir=False, dir_blocks=5)
    assert (root.dot_ino, root.dotdot_ino, root.hash_version, root.levels) == (12, 2, 1, 0)
    assert root.entries == [(0, 1), (0x10, 2), (0x10, 3), (0x20, 4)]
    assert root.limit == D.dx_root_limit(1024, False) == 124 and root.count == 4
    assert D.dx_root_limit(1024, True) == 123 and D.dx_node_limit(4096, True) == 510
    with pytest.raises(CorruptError, match="limit"):  # a csum root has a smaller limit
        D.parse_dx_root(raw, block_size=1024, csum=True, large_dir=False)
    with pytest.raises(CorruptError, match="outside"):
        D.parse_dx_root(raw, block_size=1024, csum=False, large_dir=False, dir_blocks=4)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (24, "<I", 1, "reserved"),
        (28, "<B", 3, "hash version"),
        (29, "<B", 12, "info_length"),
        (30, "<B", 2, "depth"),
        (31, "<B", 1, "flags"),
        (32, "<H", 100, "limit"),
        (34, "<H", 0, "count"),
        (34, "<H", 125, "count"),
        (40, "<I", 0x30, "order"),
        (4, "<H", 16, "'.'"),
        (16, "<H", 12, "'..'"),
    ],
)
def test_dx_root_corrupt(offset: int, fmt: str, value: int, message: str) -> None:
    raw = _root([(0, 1), (0x10, 2), (0x20, 3)])
    struct.pack_into(fmt, raw, offset, value)
    with pytest.raises(CorruptError, match=message):
        D.parse_dx_root(raw, block_size=1024, csum=False, large_dir=False)


def test_dx_levels_need_large_dir() -> None:
    raw = _root([(0, 1)], levels=2)
    with pytest.raises(CorruptError, match="large_dir"):
        D.parse_dx_root(raw, block_size=1024, csum=False, large_dir=False)
    assert D.parse_dx_root(raw, block_size=1024, csum=False, large_dir=True).levels == 2
    with pytest.raises(CorruptError):
        D.parse_dx_root(_root([(0, 1)], levels=3), block_size=1024, csum=False, large_dir=True)


def test_dx_node_parse() -> None:
    raw = D.build_dx_node([(0, 5), (0x40, 6)], block_size=1024, csum=True)
    node = D.parse_dx_node(raw, block_size=1024, csum=True, dir_blocks=7)
    assert node.entries == [(0, 5), (0x40, 6)] and node.limit == 126
    leaf = D.build_leaf_block([(12, b"a", 1)], block_size=1024, filetype=True, csum=True)
    with pytest.raises(CorruptError, match="leaf"):
        D.parse_dx_node(leaf, block_size=1024, csum=True)
    assert not D.is_dx_block(leaf, 1024, False)
    # A leaf whose only entry spans the block is not a node.
    lone = D.build_leaf_block([(12, b"a", 1)], block_size=1024, filetype=True, csum=False)
    assert not D.is_dx_block(lone, 1024, False)


def test_dx_lookup_loops_and_bounds() -> None:
    blocks: list[bytes] = [bytes(_root([(0, 1)], levels=1)),
                           bytes(D.build_dx_node([(0, 1)], block_size=1024, csum=False))]
    kw = dict(block_size=1024, dir_blocks=2, csum=False)
    with pytest.raises(LoopError):  # node 1 points at itself
        D.dx_lookup_path(0, blocks.__getitem__, large_dir=False, **kw)  # type: ignore[arg-type]
    blocks[1] = bytes(D.build_dx_node([(0, 0)], block_size=1024, csum=False))
    with pytest.raises(CorruptError):  # back to the root
        D.dx_lookup_path(0, blocks.__getitem__, large_dir=False, **kw)  # type: ignore[arg-type]
    blocks = [bytes(_root([(0, 1)], levels=2)), bytes(D.build_dx_node([(0, 2)], block_size=1024, csum=False)),
              bytes(D.build_dx_node([(0, 1)], block_size=1024, csum=False))]
    with pytest.raises(LoopError):  # 1 -> 2 -> 1
        D.dx_lookup_path(0, blocks.__getitem__, block_size=1024, dir_blocks=3, csum=False, large_dir=True)
    blocks = [bytes(_root([(0, 7)]))]
    with pytest.raises(CorruptError, match="outside"):
        D.dx_lookup_path(0, blocks.__getitem__, block_size=1024, dir_blocks=3, csum=False, large_dir=False)


# -------------------------------------------------------------- htree build
def _check_htree(blocks: list[bytes], entries: list[tuple[int, bytes, int]], *, bs: int, csum: bool, version: int,
                 seed: tuple[int, int, int, int] | None, large_dir: bool, sample: int = 1) -> D.DxRoot:
    """Every entry is found by lookup; every leaf's hashes lie within its index range."""
    n = len(blocks)
    read = blocks.__getitem__
    root = D.parse_dx_root(blocks[0], block_size=bs, csum=csum, large_dir=large_dir, dir_blocks=n)
    assert D.effective_hash_version(root.hash_version, version >= 3) == version

    seen: dict[bytes, int] = {}
    leaves: list[tuple[int, int, int | None]] = []  # (block, low hash, next hash)

    def walk(node: D.DxRoot | D.DxNode, depth: int, low: int, high: int | None) -> None:
        for i, (h, child) in enumerate(node.entries):
            start = h if i else low  # a node's first hash is its parent's entry
            nxt = node.hashes[i + 1] if i + 1 < node.count else high
            if depth == 0:
                leaves.append((child, start, nxt))
            else:
                walk(D.parse_dx_node(blocks[child], block_size=bs, csum=csum, dir_blocks=n), depth - 1, start, nxt)

    walk(root, root.levels, 0, None)
    lows = [low for _, low, _ in leaves]
    assert lows == sorted(lows)
    found_in: list[tuple[D.DirEntry, int, int | None, bool]] = []
    for block, low, high in leaves:
        for e in D.parse_block(blocks[block], block_size=bs, filetype=True, has_tail=csum):
            found_in.append((e, low, high, block == leaves[0][0]))
            assert e.name not in seen
            seen[e.name] = e.ino
    majors = D.name_hashes([e.name for e, _, _, _ in found_in], version, seed)
    for (e, low, high, first), (major, _) in zip(found_in, majors, strict=True):
        assert major >= low & ~1 or first, e.name
        assert high is None or major <= high & ~1, e.name
    assert seen == {name: ino for ino, name, _ in entries}
    for ino, name, _ in entries[::sample]:
        found = D.dx_find_entry(name, read, block_size=bs, dir_blocks=n, seed=seed, unsigned_hash=version >= 3,
                                filetype=True, csum=csum, large_dir=large_dir, root=root)
        assert found is not None and found[1].ino == ino, name
    assert D.dx_find_entry(b"not-there", read, block_size=bs, dir_blocks=n, seed=seed, unsigned_hash=version >= 3,
                           filetype=True, csum=csum, large_dir=large_dir) is None
    return root


@pytest.mark.parametrize(
    ("count", "bs", "csum", "version", "levels", "sample"),
    [(0, 1024, True, 1, 0, 1), (1, 4096, True, 4, 0, 1), (100, 1024, False, 2, 0, 1), (100, 4096, True, 3, 0, 1),
     (20000, 1024, True, 4, 1, 1), (20000, 4096, False, 5, 0, 3), (3000, 65536, True, 0, 0, 50)],
)
def test_build_htree_lookup(count: int, bs: int, csum: bool, version: int, levels: int, sample: int) -> None:
    """Every entry lies in its leaf's hash range; every ``sample``-th entry is looked up."""
    seed = (0xDEADBEEF, 1, 2, 3)
    entries = [(100 + i, b"entry-%06d%s" % (i, b"\xc3\xa9" * (i % 5)), FT_REG_FILE) for i in range(count)]
    iseed = K.inode_seed(K.fs_seed(b"0123456789abcdef"), 77, 5)
    blocks = D.build_htree(entries, block_size=bs, hash_version=version, seed=seed, filetype=True, csum=csum,
                           dir_ino=77, parent_ino=2, large_dir=False, iseed=iseed)
    raw = [bytes(b) for b in blocks]
    root = _check_htree(raw, entries, bs=bs, csum=csum, version=version, seed=seed, large_dir=False, sample=sample)
    assert root.levels == levels and (root.dot_ino, root.dotdot_ino) == (77, 2)
    if csum:
        assert all(D.dir_block_csum_ok(b, iseed) for b in raw)
    if count >= 100:  # leaves are reasonably full: at least 80% minus one entry
        used = [sum(D.rec_len_for(len(e.name)) for e in D.parse_block(raw[blk], block_size=bs, filetype=True,
                                                                     has_tail=csum))
                for blk in range(1, len(raw)) if not D.is_dx_block(raw[blk], bs, False)]
        assert all(u >= (bs - 12) * 0.8 - 40 for u in used[:-1])


def test_build_htree_two_levels_and_limits() -> None:
    bs, version = 1024, 1
    root_limit, node_limit = D.dx_root_limit(bs, False), D.dx_node_limit(bs, False)
    count = root_limit * node_limit + 1  # one entry per leaf with slack_percent=100
    entries = [(20 + i, b"%06d" % i, FT_REG_FILE) for i in range(count)]
    with pytest.raises(NoSpace):
        D.build_htree(entries, block_size=bs, hash_version=version, seed=None, filetype=True, csum=False,
                      dir_ino=12, parent_ino=2, large_dir=False, slack_percent=100)
    blocks = D.build_htree(entries, block_size=bs, hash_version=version, seed=None, filetype=True, csum=False,
                           dir_ino=12, parent_ino=2, large_dir=True, slack_percent=100)
    assert len(blocks) > count + 1
    root = _check_htree([bytes(b) for b in blocks], entries, bs=bs, csum=False, version=version, seed=None,
                        large_dir=True, sample=50)
    assert root.levels == 2
    with pytest.raises(InvalidOptions):
        D.build_htree(entries[:1], block_size=bs, hash_version=version, seed=None, filetype=True, csum=False,
                      dir_ino=12, parent_ino=2, large_dir=False, slack_percent=101)


def test_build_htree_equal_hash_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of equal hashes longer than a leaf get the continuation bit and stay findable."""
    real = D.name_hash

    def fake(name: bytes, version: int, seed: object = None) -> tuple[int, int]:
        prefix = name.split(b"-")[0]
        if not prefix.isdigit():
            return real(name, version, None)  # type: ignore[arg-type]
        return (int(prefix) * 0x1000000) & 0xFFFFFFFE, real(name, version, None)[1]  # type: ignore[arg-type]

    monkeypatch.setattr(D, "name_hash", fake)
    monkeypatch.setattr(D, "name_hashes", lambda names, version, seed=None: [fake(n, version) for n in names])
    entries = [(100 + i, b"%d-%s" % (i // 150, b"q" * 40 + b"%04d" % i), FT_REG_FILE) for i in range(1200)]
    blocks = D.build_htree(entries, block_size=1024, hash_version=1, seed=None, filetype=True, csum=True,
                           dir_ino=12, parent_ino=2, large_dir=False)
    raw = [bytes(b) for b in blocks]
    root = _check_htree(raw, entries, bs=1024, csum=True, version=1, seed=None, large_dir=False)
    continued = [h for h in root.hashes if h & 1]
    assert len(continued) > 8 and all((h & ~1) % 0x1000000 == 0 for h in continued)
    hashes = root.hashes[1:]
    assert hashes == sorted(hashes)


# ---------------------------------------------------- split and the writer
class MiniWriter:
    """The kernel's ext4_dx_add_entry, built from the dirent primitives (test only)."""

    def __init__(self, blocks: list[bytearray], *, bs: int, csum: bool, version: int,
                 seed: tuple[int, int, int, int] | None, large_dir: bool) -> None:
        self.blocks, self.bs, self.csum, self.version, self.seed = blocks, bs, csum, version, seed
        self.large_dir = large_dir
        self.splits = 0

    def _leaf(self, entries: list[D.DirEntry]) -> bytearray:
        return D.build_leaf_block([(e.ino, e.name, e.file_type) for e in entries], block_size=self.bs,
                                  filetype=True, csum=self.csum)

    def add(self, ino: int, name: bytes, ft: int) -> None:
        bs, csum = self.bs, self.csum
        major = D.name_hash(name, self.version, self.seed)[0]
        while True:
            path = D.dx_lookup_path(major, self.blocks.__getitem__, block_size=bs, dir_blocks=len(self.blocks),
                                    csum=csum, large_dir=self.large_dir)
            leaf = self.blocks[path.leaf]
            if D.insert_into_block(leaf, ino, name, ft, block_size=bs, filetype=True, has_tail=csum):
                return
            frames = path.frames
            k = len(frames) - 1
            while k >= 0 and frames[k].node.count >= frames[k].node.limit:
                k -= 1
            if k == len(frames) - 1:
                break
            if k < 0:
                self.blocks.append(D.dx_grow_root(self.blocks[0], len(self.blocks), block_size=bs, csum=csum,
                                                  large_dir=self.large_dir))
            else:
                new, hash2 = D.dx_split_node(self.blocks[frames[k + 1].block], block_size=bs, csum=csum)
                self.blocks.append(new)
                assert D.dx_insert_entry(self.blocks[frames[k].block], frames[k].index, hash2, len(self.blocks) - 1)
        live = D.parse_block(leaf, block_size=bs, filetype=True, has_tail=csum)
        lower, upper, split_hash = D.split_leaf(live, hash_version=self.version, seed=self.seed, block_size=bs)
        assert lower and upper and len(lower) + len(upper) == len(live)
        new_block = len(self.blocks)
        self.blocks[path.leaf] = self._leaf(lower)
        self.blocks.append(self._leaf(upper))
        parent = path.frames[-1]
        assert D.dx_insert_entry(self.blocks[parent.block], parent.index, split_hash, new_block)
        target = self.blocks[new_block] if major >= split_hash & ~1 else self.blocks[path.leaf]
        assert D.insert_into_block(target, ino, name, ft, block_size=bs, filetype=True, has_tail=csum)
        self.splits += 1

    def finish(self, iseed: int | None) -> list[bytes]:
        if self.csum and iseed is not None:
            for b in self.blocks:
                D.set_dir_block_csum(b, iseed)
        return [bytes(b) for b in self.blocks]


def test_split_leaf_like_do_split() -> None:
    entries = [(100 + i, b"split-%03d" % i, FT_REG_FILE) for i in range(50)]  # 50 x 20 bytes
    raw = D.build_leaf_block(entries, block_size=1024, filetype=True, csum=False)
    live = D.parse_block(raw, block_size=1024, filetype=True, has_tail=False)
    lower, upper, split_hash = D.split_leaf(live, hash_version=1, seed=None, block_size=1024)
    hash_of = {e.name: D.name_hash(e.name, 1)[0] for e in live}
    assert sorted(e.name for e in lower + upper) == sorted(e.name for e in live)
    assert max(hash_of[e.name] for e in lower) < split_hash <= min(hash_of[e.name] for e in upper)
    assert [e.name for e in lower] == [e.name for e in live if e in lower]  # original order kept
    assert abs(len(lower) - len(upper)) <= 2
    with pytest.raises(InvalidOptions):
        D.split_leaf(live[:1], hash_version=1, seed=None, block_size=1024)


def test_split_leaf_continuation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "name_hashes", lambda names, version, seed=None: [(0x500, 0)] * len(names))
    live = [D.DirEntry(10 + i, b"n%d" % i, 1, 12 * i, 12) for i in range(10)]
    lower, upper, split_hash = D.split_leaf(live, hash_version=1, seed=None, block_size=1024)
    assert split_hash == 0x501 and len(lower) == len(upper) == 5


def test_writer_primitives_grow_to_one_level() -> None:
    bs, csum, version, seed = 1024, True, 4, (7, 7, 7, 7)
    start = [(100 + i, b"grow-%05d-%s" % (i, b"g" * (i % 30)), FT_REG_FILE) for i in range(3000)]
    blocks = D.build_htree(start[:5], block_size=bs, hash_version=version, seed=seed, filetype=True, csum=csum,
                           dir_ino=12, parent_ino=2, large_dir=False)
    writer = MiniWriter(blocks, bs=bs, csum=csum, version=version, seed=seed, large_dir=False)
    for ino, name, ft in start[5:]:
        writer.add(ino, name, ft)
    with pytest.raises(FileExists):
        writer.add(1, start[7][1], 1)
    raw = writer.finish(iseed=0xABCDEF)
    assert writer.splits > 100
    root = _check_htree(raw, start, bs=bs, csum=csum, version=version, seed=seed, large_dir=False, sample=3)
    assert root.levels == 1
    assert all(D.dir_block_csum_ok(b, 0xABCDEF) for b in raw)


def test_writer_primitives_grow_to_two_levels() -> None:
    """A full level-1 tree (every node and the root full) grows a second level with large_dir."""
    bs, version = 1024, 1
    per_leaf = 3  # 255-byte names: rec_len 264, three per 1012-byte leaf
    count = per_leaf * D.dx_root_limit(bs, True) * D.dx_node_limit(bs, True)
    entries = [(11 + i, b"%07d" % i + b"L" * 248, FT_REG_FILE) for i in range(count)]
    blocks = D.build_htree(entries, block_size=bs, hash_version=version, seed=None, filetype=True, csum=True,
                           dir_ino=12, parent_ino=2, large_dir=True, slack_percent=0)
    root = D.parse_dx_root(blocks[0], block_size=bs, csum=True, large_dir=True)
    assert root.levels == 1 and root.count == root.limit
    extra = (count + 11, b"extra" + b"E" * 250, FT_REG_FILE)
    small = MiniWriter([bytearray(b) for b in blocks], bs=bs, csum=True, version=version, seed=None,
                       large_dir=False)
    with pytest.raises(NoSpace):
        small.add(*extra)
    writer = MiniWriter(blocks, bs=bs, csum=True, version=version, seed=None, large_dir=True)
    writer.add(*extra)
    raw = writer.finish(iseed=None)
    root = _check_htree(raw, [*entries, extra], bs=bs, csum=True, version=version, seed=None, large_dir=True,
                        sample=997)
    assert root.levels == 2 and root.count == 1
    assert D.dx_find_entry(extra[1], raw.__getitem__, block_size=bs, dir_blocks=len(raw), seed=None,
                           unsigned_hash=False, filetype=True, csum=True, large_dir=True) is not None


def test_dx_insert_entry_full_and_bad_index() -> None:
    node = D.build_dx_node([(0, 1), (10, 2)], block_size=1024, csum=False)
    assert D.dx_insert_entry(node, 0, 5, 3)
    assert D.parse_dx_node(node, block_size=1024, csum=False).entries == [(0, 1), (5, 3), (10, 2)]
    with pytest.raises(InvalidOptions):
        D.dx_insert_entry(node, 3, 5, 3)
    limit = D.dx_node_limit(1024, False)
    full = D.build_dx_node([(0, 1)] + [(i, i + 1) for i in range(1, limit)], block_size=1024, csum=False)
    assert not D.dx_insert_entry(full, 0, 0, 9)
    with pytest.raises(CorruptError):
        D.dx_insert_entry(bytearray(1024), 0, 0, 1)


# ------------------------------------------------------------------- images
def _run(*args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode in ok, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


class Image:
    """Reads a directory's blocks and the hash/checksum parameters out of an ext4 image file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            f.seek(1024)
            self.sb = Superblock.parse(f.read(1024))
        self.bs = self.sb.block_size
        self.csum = self.sb.metadata_csum
        self.unsigned = bool(self.sb["s_flags"] & FLAGS_UNSIGNED_HASH)
        self.version = D.effective_hash_version(self.sb["s_def_hash_version"], self.unsigned)

    def stat(self, path: str) -> tuple[int, int, int]:
        out = _run(DEBUGFS or "debugfs", "-R", f"stat {path}", str(self.path)).stdout
        ino = int(re.search(r"Inode: (\d+)", out).group(1))  # type: ignore[union-attr]
        flags = int(re.search(r"Flags: (0x[0-9a-f]+)", out).group(1), 16)  # type: ignore[union-attr]
        gen = int(re.search(r"Generation: (\d+)", out).group(1))  # type: ignore[union-attr]
        return ino, flags, gen

    def physical(self, path: str) -> list[int]:
        out = _run(DEBUGFS or "debugfs", "-R", f"blocks {path}", str(self.path)).stdout
        return [int(x) for x in out.split()]

    def read_dir(self, path: str) -> list[bytes]:
        with open(self.path, "rb") as f:
            out = []
            for block in self.physical(path):
                f.seek(block * self.bs)
                out.append(f.read(self.bs))
            return out

    def iseed(self, path: str) -> int:
        ino, _, gen = self.stat(path)
        return K.inode_seed(self.sb.csum_seed, ino, gen)


SOURCE_FILES = 3000


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    d = root / "d"
    d.mkdir()
    for i in range(SOURCE_FILES):
        tail = b"\xc3\xa9\xff"[: i % 4] if i % 7 == 0 else b""  # non-ASCII: signed != unsigned
        name = b"name_%05d_%s%s" % (i, b"x" * (i % 47), tail)
        open(os.path.join(os.fsencode(d), name), "wb").close()
    return root


def _mkfs(tmp: Path, src: Path, *, bs: int, features: str, hash_alg: str) -> Image:
    img = tmp / f"img-{bs}-{hash_alg}-{features.replace(',', '_')}"
    _run(MKE2FS or "mke2fs", "-q", "-F", "-t", "ext4", "-b", str(bs), "-N", "4096", "-O", features,
         "-d", str(src), str(img), "16M")
    _run(DEBUGFS or "debugfs", "-w", "-R", f"ssv def_hash_version {hash_alg}", str(img))
    return Image(img)


def _linear_entries(image: Image, path: str) -> list[tuple[int, bytes, int]]:
    out = []
    for raw in image.read_dir(path):
        for e in D.parse_block(raw, block_size=image.bs, filetype=True, has_tail=image.csum):
            if e.name not in (b".", b".."):
                out.append((e.ino, e.name, e.file_type))
    return out


@needs_e2fsprogs
@pytest.mark.parametrize(
    ("bs", "features", "hash_alg", "unsigned"),
    [(1024, "metadata_csum", "half_md4", False), (4096, "^metadata_csum", "tea", True),
     (1024, "metadata_csum", "legacy", True), (1024, "^metadata_csum", "half_md4", True)],
)
def test_e2fsck_indexed_directory(tmp_path: Path, source_tree: Path, bs: int, features: str, hash_alg: str,
                                  unsigned: bool) -> None:
    image = _mkfs(tmp_path, source_tree, bs=bs, features=features, hash_alg=hash_alg)
    if unsigned:
        _run(DEBUGFS or "debugfs", "-w", "-R", f"ssv flags {FLAGS_UNSIGNED_HASH}", str(image.path))
        image = Image(image.path)
    assert image.unsigned == unsigned
    # The linear directory mke2fs -d wrote: parse it, and check its leaf checksums.
    linear = image.read_dir("/d")
    entries = _linear_entries(image, "/d")
    assert len(entries) == SOURCE_FILES
    if image.csum:
        iseed = image.iseed("/d")
        assert all(D.leaf_csum_ok(raw, iseed) for raw in linear)
        assert all(D.leaf_csum_ok(raw, image.iseed("/")) for raw in image.read_dir("/"))
    _run(E2FSCK or "e2fsck", "-fyD", str(image.path), ok=(0, 1))
    _, flags, _ = image.stat("/d")
    assert flags & 0x1000, "e2fsck -D did not index the directory"
    blocks = image.read_dir("/d")
    root = _check_htree(blocks, entries, bs=bs, csum=image.csum, version=image.version, seed=image.sb.hash_seed,
                        large_dir=False)
    assert root.levels == (1 if bs == 1024 else 0)
    if image.csum:
        iseed = image.iseed("/d")
        assert all(D.dir_block_csum_ok(raw, iseed) for raw in blocks)
        assert D.dx_csum_ok(blocks[0], iseed, is_root=True)
        dots = D.dx_root_dot_entries(blocks[0], filetype=True)
        assert [e.name for e in dots] == [b".", b".."]


def _install_htree(image: Image, path: str, blocks: list[bytes]) -> None:
    """Replace a linear directory's blocks by ``blocks`` and mark it indexed."""
    have = len(image.physical(path))
    assert len(blocks) >= have, "the htree is smaller than the linear directory"
    script = image.path.with_suffix(".cmds")
    script.write_text("".join(f"expand_dir {path}\n" for _ in range(len(blocks) - have)))
    _run(DEBUGFS or "debugfs", "-w", "-f", str(script), str(image.path))
    _, flags, _ = image.stat(path)
    _run(DEBUGFS or "debugfs", "-w", "-R", f"set_inode_field {path} flags {flags | 0x1000:#x}", str(image.path))
    physical = image.physical(path)
    assert len(physical) == len(blocks)
    with open(image.path, "r+b") as f:
        for block, raw in zip(physical, blocks, strict=True):
            f.seek(block * image.bs)
            f.write(raw)


def _kernel_lookup(image: Image, path: str, entries: list[tuple[int, bytes, int]]) -> None:
    if os.geteuid() != 0:
        pytest.skip("loop mount needs root")
    mnt = image.path.with_suffix(".mnt")
    mnt.mkdir()
    proc = subprocess.run(["mount", "-o", "loop,ro", str(image.path), str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"loop mount failed: {proc.stderr.strip()}")
    try:
        base = os.fsencode(mnt) + os.fsencode(path)
        for ino, name, _ in entries:
            assert os.lstat(base + b"/" + name).st_ino == ino
        assert not os.path.exists(base + b"/no-such-name")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@needs_e2fsprogs
@pytest.mark.parametrize("grow", [False, True], ids=["build_htree", "writer_primitives"])
def test_our_htree_passes_e2fsck_and_kernel(tmp_path: Path, source_tree: Path, grow: bool) -> None:
    image = _mkfs(tmp_path, source_tree, bs=1024, features="metadata_csum", hash_alg="half_md4")
    entries = _linear_entries(image, "/d")
    dir_ino, _, _ = image.stat("/d")
    iseed = image.iseed("/d")
    common = dict(block_size=image.bs, hash_version=image.version, seed=image.sb.hash_seed, filetype=True,
                  csum=True, dir_ino=dir_ino, parent_ino=2, large_dir=False)
    if grow:
        blocks = D.build_htree(entries[:3], **common)  # type: ignore[arg-type]
        writer = MiniWriter(blocks, bs=image.bs, csum=True, version=image.version, seed=image.sb.hash_seed,
                            large_dir=False)
        for entry in entries[3:]:
            writer.add(*entry)
        raw = writer.finish(iseed)
    else:
        raw = [bytes(b) for b in D.build_htree(entries, slack_percent=50, iseed=iseed, **common)]  # type: ignore[arg-type]
    root = _check_htree(raw, entries, bs=image.bs, csum=True, version=image.version, seed=image.sb.hash_seed,
                        large_dir=False, sample=5)
    assert root.levels == 1
    _install_htree(image, "/d", raw)
    proc = _run(E2FSCK or "e2fsck", "-fn", str(image.path), ok=(0, 1, 4))
    assert proc.returncode == 0, proc.stdout
    _kernel_lookup(image, "/d", entries)
