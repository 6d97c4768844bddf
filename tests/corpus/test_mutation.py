"""The corrupt-image contract on seeded random damage to the metadata of valid images.

Valid images are made at test time with ``mke2fs -d`` from a generated tree (ext4 with 4 KiB
blocks, an htree directory and xattrs; ext2 with 1 KiB blocks and indirect blocks; inline_data).
pyext4's own reader finds their metadata blocks (superblock, descriptors, bitmaps, inode tables,
directory, extent, indirect and xattr blocks); each mutation flips a few bytes in them, and the
damaged image is opened, walked, read and extracted as in test_corpus: only Ext4Error may escape,
each image within 5 s and a bounded address space.

The seeds are fixed so that a failure reproduces; ``PYEXT4_MUTATION_SEED=N`` explores other ones
and ``PYEXT4_MUTATIONS=N`` changes how many run per image.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import mke2fs
from tests.corpus.test_corpus import TIME_LIMIT, Deadline, _fast_tmp, exercise_image, run_isolated

BASE_SEED = int(os.environ.get("PYEXT4_MUTATION_SEED", "20240601"))
PER_IMAGE = int(os.environ.get("PYEXT4_MUTATIONS", "120"))
BATCH = 20


def _tree(root: Path, *, many: int) -> None:
    rng = random.Random(7)
    (root / "big").mkdir(parents=True)
    for i in range(many):
        (root / "big" / f"entry-{i:04d}-{'n' * 24}").write_bytes(rng.randbytes(rng.choice([0, 10, 100, 3000])))
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "f").write_bytes(rng.randbytes(50_000))
    with open(root / "fragmented", "wb") as f:
        for i in range(12):
            f.seek(i * 8192)
            f.write(rng.randbytes(4096))
    with open(root / "sparse", "wb") as f:
        f.write(b"start")
        f.seek(3 << 20)
        f.write(b"end")
    (root / "small").write_bytes(b"tiny")
    os.symlink("d/e/f", root / "fast")
    os.symlink("x/" * 50 + "slow", root / "slow")
    os.link(root / "small", root / "d" / "hard")
    (root / "xa").write_bytes(b"x")
    os.setxattr(root / "xa", "user.small", b"1")
    os.setxattr(root / "xa", "user.big", rng.randbytes(600))
    os.setxattr(root / "d", "user.dir", b"dir")
    os.mkfifo(root / "fifo")


IMAGES = {
    # name: (mke2fs arguments, size, entries in /big)
    "ext4-4k-htree-xattr": (["-t", "ext4", "-b", "4096", "-O", "^has_journal"], "8M", 400),
    "ext2-1k": (["-t", "ext2", "-b", "1024"], "8M", 150),
    "ext4-inline": (["-t", "ext4", "-b", "1024", "-O", "inline_data,^has_journal", "-I", "256"], "8M", 150),
}


def metadata_ranges(image: Path) -> list[tuple[int, int]]:
    """(offset, length) of every metadata block of ``image``, found with pyext4's reader."""
    from pyext4 import blockmap, extents
    from pyext4.reader import Filesystem

    ranges: list[tuple[int, int]] = [(1024, 1024)]
    with Filesystem.open(image) as fs:
        bs = fs.block_size
        geo = fs.geo
        for index in range(geo.desc_blocks):
            ranges.append((geo.descriptor_block(index) * bs, bs))
        for group in range(geo.group_count):
            desc = fs.group_desc(group)
            ranges.append((desc.block_bitmap * bs, bs))
            ranges.append((desc.inode_bitmap * bs, bs))
            used = geo.inodes_per_group - desc.itable_unused if hasattr(desc, "itable_unused") else 64
            used = max(16, min(used, geo.inodes_per_group))
            ranges.append((desc.inode_table * bs, -(-used * geo.inode_size // bs) * bs))
        for entry in [None, *fs.walk_entries("/")]:
            ino = 2 if entry is None else entry.ino
            inode = fs.inode(ino)
            if inode.is_dir():
                for ext in fs.extents_of(ino, inode):
                    ranges.append((ext.physical * bs, min(ext.length, 64) * bs))
            if inode.has_extents() and not inode.has_inline_data():
                for block in extents.tree_blocks(inode.block, fs.read_block, block_size=bs,
                                                 blocks_count=geo.blocks_count,
                                                 first_data_block=geo.first_data_block, ino=ino):
                    ranges.append((block * bs, bs))
            elif inode.is_reg() and not inode.has_inline_data():
                for block in blockmap.meta_blocks(inode.block, fs.read_block, block_size=bs,
                                                  blocks_count=geo.blocks_count,
                                                  first_data_block=geo.first_data_block, where=None,
                                                  max_logical=-(-inode.size // bs)):
                    ranges.append((block * bs, bs))
            if inode.file_acl:
                ranges.append((inode.file_acl * bs, bs))
    return ranges


def mutate(data: bytes, ranges: list[tuple[int, int]], seed: int) -> tuple[bytes, list[int]]:
    """A copy of ``data`` with 1 to 8 bytes changed inside ``ranges`` (bit flips, random or extreme bytes)."""
    rng = random.Random(seed)
    out = bytearray(data)
    weights = [length for _, length in ranges]
    where = []
    for _ in range(rng.randint(1, 8)):
        offset, length = rng.choices(ranges, weights=weights)[0]
        pos = offset + rng.randrange(length)
        kind = rng.random()
        if kind < 0.5:
            out[pos] ^= 1 << rng.randrange(8)
        elif kind < 0.8:
            out[pos] = rng.randrange(256)
        else:
            out[pos] = rng.choice([0x00, 0xFF, 0x7F, 0x80])
        where.append(pos)
    return bytes(out), where


def run_batch(base: str, ranges: list[tuple[int, int]], seeds: list[int], scratch: str) -> dict[str, Any]:
    """In a child: each mutation exercised under its own alarm; what went wrong, per seed."""
    data = Path(base).read_bytes()
    outcomes: Counter[str] = Counter()
    failures = []
    image = os.path.join(scratch, "mutant.img")

    def on_alarm(signum: int, frame: Any) -> None:
        raise Deadline(f"over {TIME_LIMIT} s")

    signal.signal(signal.SIGALRM, on_alarm)
    for seed in seeds:
        mutant, where = mutate(data, ranges, seed)
        with open(image, "wb") as f:
            f.write(mutant)
        verify = ("off", "warn", "strict")[seed % 3]
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
        try:
            result = exercise_image(image, verify, scratch)
            outcomes["opened" if result["open"] == "ok" else f"refused: {result['open']}"] += 1
        except BaseException as exc:
            failures.append({"seed": seed, "verify": verify, "bytes": where, "kind": type(exc).__name__,
                             "traceback": traceback.format_exc()[-2500:],
                             "seconds": round(time.monotonic() - started, 2)})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for leftover in os.listdir(scratch):
                path = os.path.join(scratch, leftover)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
    return {"outcomes": dict(outcomes), "failures": failures}


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[tuple[int, int]]]]:
    tmp = tmp_path_factory.mktemp("mutation")
    out = {}
    for name, (args, size, many) in IMAGES.items():
        src = tmp / f"src-{name}"
        _tree(src, many=many)
        image = tmp / f"{name}.img"
        mke2fs(image, *args, size=size, root=str(src))
        out[name] = (image, metadata_ranges(image))
    return out


@pytest.mark.parametrize("name", list(IMAGES))
def test_mutated_metadata(name: str, bases: dict[str, tuple[Path, list[tuple[int, int]]]]) -> None:
    image, ranges = bases[name]
    assert len(ranges) > 10
    index = list(IMAGES).index(name)
    seeds = [BASE_SEED * 1000 + index * 100_000 + i for i in range(PER_IMAGE)]
    totals: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pyext4-mut-", dir=_fast_tmp()) as scratch:
        for start in range(0, len(seeds), BATCH):
            batch = seeds[start : start + BATCH]
            result = run_isolated(run_batch, str(image), ranges, batch, scratch,
                                  time_limit=TIME_LIMIT * len(batch) + 5)
            assert "ok" in result, f"{name}: batch {batch[0]}..{batch[-1]} died: {result}"
            totals.update(result["ok"]["outcomes"])
            failures.extend(result["ok"]["failures"])
    print(f"\n{name}: {PER_IMAGE} mutations (seed base {BASE_SEED}): {dict(totals)}")
    assert not failures, (
        f"{len(failures)} mutations broke the contract; first: seed {failures[0]['seed']} "
        f"verify={failures[0]['verify']} bytes {failures[0]['bytes']}:\n{failures[0]['traceback']}"
    )
