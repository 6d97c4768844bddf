"""Shared pieces of the read-side fuzz harnesses: base images, where their structures are, the exercise.

Base images are small (1 KiB blocks, a few hundred KiB) and made with ``mke2fs -d`` from a generated
tree, so that every harness starts from structures the reference tools wrote: an htree directory,
a file with an extent tree below i_block, files with in-inode and block xattrs, fast and slow
symlinks, an ext2 image with indirect blocks and an inline_data image.  ``make_seeds.py`` builds
them (into fuzz/work/, not committed) and records where each structure lives in layout.json.

The contract every harness checks: whatever the input, only ``Ext4Error`` subclasses escape, and
nothing is read or allocated beyond small fixed bounds (libFuzzer's -timeout and -rss_limit_mb
catch hangs and memory blow-ups).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = Path(os.environ.get("PYEXT4_FUZZ_WORK", HERE / "work"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

UUID = "11111111-2222-3333-4444-555555555555"
HASH_SEED = "66666666-7777-8888-9999-aaaaaaaaaaaa"
NOW = "1700000000"

MAX_ENTRIES = 3000  # entries walked per input
MAX_READ = 1 << 20  # bytes read per file per input

BASES = {
    # name: (mke2fs arguments, size)
    "ext4": (["-t", "ext4", "-b", "1024", "-N", "256", "-O", "^has_journal"], "512K"),
    "ext4nocsum": (["-t", "ext4", "-b", "1024", "-N", "256", "-O", "^has_journal,^metadata_csum,^64bit"], "512K"),
    "ext2": (["-t", "ext2", "-b", "1024", "-N", "256"], "512K"),
    "inline": (["-t", "ext4", "-b", "1024", "-N", "256", "-I", "256", "-O", "^has_journal,inline_data"], "512K"),
}


def _tool(name: str) -> str:
    for candidate in (f"/sbin/{name}", f"/usr/sbin/{name}", name):
        if os.path.exists(candidate) or "/" not in candidate:
            return candidate
    return name


def make_source_tree(root: Path) -> None:
    """The tree every base image holds (deterministic: fixed content, names and times)."""
    rng = random.Random(1234)
    (root / "dir").mkdir(parents=True)
    (root / "htree").mkdir()
    for i in range(120):
        (root / "htree" / f"name-{i:04d}-{'x' * 30}").write_bytes(b"")
    (root / "small").write_bytes(b"tiny\n")
    (root / "inline59").write_bytes(bytes(range(59)))
    (root / "dir" / "file").write_bytes(rng.randbytes(3000))
    with open(root / "fragmented", "wb") as f:
        for i in range(8):
            f.seek(i * 2048)
            f.write(rng.randbytes(1024))
    with open(root / "indirect", "wb") as f:
        f.write(rng.randbytes(20 * 1024))
    os.symlink("dir/file", root / "fast")
    os.symlink("d/" * 40 + "target", root / "slow")
    (root / "xattr").write_bytes(b"x\n")
    os.setxattr(root / "xattr", "user.small", b"v")
    os.setxattr(root / "xattr", "user.block", rng.randbytes(300))
    os.setxattr(root / "dir", "user.dir", b"on a dir")
    os.link(root / "small", root / "dir" / "hardlink")
    os.mkfifo(root / "fifo")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9),
                     follow_symlinks=False)


def build_bases(work: Path = WORK) -> dict[str, Any]:
    """Make the base images and layout.json under ``work`` (once); returns the layout."""
    layout_path = work / "layout.json"
    if layout_path.exists():
        return json.loads(layout_path.read_text())  # type: ignore[no-any-return]
    import shutil
    import tempfile

    work.mkdir(parents=True, exist_ok=True)
    layout: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_source_tree(src)
        for name, (args, size) in BASES.items():
            image = work / f"base-{name}.img"
            if image.exists():
                image.unlink()
            env = dict(os.environ, E2FSPROGS_FAKE_TIME=NOW, MKE2FS_CONFIG="/etc/mke2fs.conf")
            subprocess.run([_tool("mke2fs"), "-q", "-F", "-U", UUID, "-E", f"hash_seed={HASH_SEED}", *args,
                            "-d", str(src), str(image), size], check=True, env=env, capture_output=True)
            layout[name] = describe(image)
        shutil.rmtree(src)
    layout_path.write_text(json.dumps(layout, indent=1))
    return layout


def describe(image: Path) -> dict[str, Any]:
    """Byte ranges of the structures of ``image`` that the harnesses patch, found with pyext4 itself."""
    from pyext4.reader import Filesystem

    out: dict[str, Any] = {}
    with Filesystem.open(image) as fs:
        bs = fs.block_size
        out["block_size"] = bs
        desc = fs.group_desc(0)
        out["super"] = [1024, 1024]
        out["gdt"] = [fs.geo.descriptor_block(0) * bs, bs]
        out["bitmaps"] = [[desc.block_bitmap * bs, bs], [desc.inode_bitmap * bs, bs]]
        out["itable"] = [desc.inode_table * bs, min(fs.geo.inode_table_blocks * bs, 32 * fs.geo.inode_size)]
        dirs = []
        for path in ("/", "/htree", "/dir"):
            ino = fs.resolve(path)
            inode = fs.inode(ino)
            for ext in fs.extents_of(ino, inode):
                dirs.append([ext.physical * bs, ext.length * bs])
        out["dirs"] = dirs
        trees = []
        for path in ("/fragmented", "/indirect"):
            ino = fs.resolve(path)
            inode = fs.inode(ino)
            from pyext4 import blockmap, extents

            if inode.has_extents():
                blocks = extents.tree_blocks(inode.block, fs.read_block, block_size=bs,
                                             blocks_count=fs.geo.blocks_count,
                                             first_data_block=fs.geo.first_data_block, ino=ino)
            else:
                blocks = blockmap.meta_blocks(inode.block, fs.read_block, block_size=bs,
                                              blocks_count=fs.geo.blocks_count,
                                              first_data_block=fs.geo.first_data_block, where=path)
            trees.extend([b * bs, bs] for b in blocks)
        out["trees"] = trees
        xattr_blocks = []
        for path in ("/xattr", "/dir"):
            acl = fs.inode(fs.resolve(path)).file_acl
            if acl:
                xattr_blocks.append([acl * bs, bs])
        out["xattr_blocks"] = xattr_blocks
        out["lookups"] = ["/htree/" + e.name for e in fs.scandir("/htree")][::7] + [
            "/dir/file", "/fast", "/slow", "/dir/hardlink", "/htree/missing", "/inline59"]
    return out


def base_image(name: str) -> bytes:
    build_bases()
    return (WORK / f"base-{name}.img").read_bytes()


def patch(image: bytes | bytearray, ranges: list[list[int]], data: bytes) -> bytearray:
    """``image`` with ``data`` laid over the concatenation of ``ranges`` (as far as it reaches)."""
    out = bytearray(image)
    pos = 0
    for offset, length in ranges:
        if pos >= len(data):
            break
        chunk = data[pos : pos + length]
        out[offset : offset + len(chunk)] = chunk
        pos += length
    return out


def exercise(data: bytes | bytearray, *, verify: str = "off", lookups: list[str] | None = None) -> None:
    """Open ``data`` as an image and touch everything, within bounds; only Ext4Error may escape."""
    import warnings

    from pyext4.blockdev import MemoryDevice
    from pyext4.errors import Ext4Error
    from pyext4.reader import Filesystem

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fs = Filesystem(MemoryDevice(bytes(data)), verify=verify, allow_needs_recovery=True)
        except Ext4Error:
            return
        walk_fs(fs, lookups)


def walk_fs(fs: Any, lookups: list[str] | None = None) -> None:
    from pyext4.errors import Ext4Error

    def attempt(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Ext4Error:
            return None

    attempt(fs.info)
    attempt(fs.journal_superblock)
    entries = []
    try:
        for entry in fs.walk_entries("/", onerror=lambda exc: None):
            entries.append(entry)
            if len(entries) >= MAX_ENTRIES:
                break
    except Ext4Error:
        pass
    for entry in entries:
        inode = attempt(fs.inode, entry.ino)
        if inode is None:
            continue
        attempt(fs.stat_ino, entry.ino, inode)
        attempt(fs.xattrs_ino, entry.ino, inode)
        if inode.is_symlink():
            attempt(fs.readlink_ino, entry.ino, inode)
        elif inode.is_reg():
            attempt(_read_some, fs, entry.ino, inode)
        elif inode.is_dir():
            attempt(fs.dir_entries, entry.ino, inode)
    fs._dir_cache.clear()
    for path in (lookups or []) + [e.path for e in entries[:200]]:
        attempt(fs.resolve, path)
    attempt(lambda: [fs.stat(p) for p in ("/", "/dir", "/fast")])


def _read_some(fs: Any, ino: int, inode: Any) -> None:
    budget = MAX_READ
    for offset, length, phys in fs.data_segments(ino, inode):
        if phys is None:
            continue
        n = min(length, budget)
        fs.read_range(ino, inode, offset, n)
        budget -= n
        if budget <= 0:
            break
    with fs.open(ino) as f:
        f.read(4096)
        f.seek(max(0, inode.size - 100))
        f.read(200)


def pack_blob(data: bytes) -> str:
    """An image as a short string for regression tests (zlib + base64)."""
    import base64

    return base64.b64encode(zlib.compress(bytes(data), 9)).decode()


def unpack_blob(text: str) -> bytes:
    import base64

    return zlib.decompress(base64.b64decode(text))


# ------------------------------------------------------------------ harness plumbing
BASE_NAMES = sorted(BASES)


def pick_base(selector: int) -> tuple[str, dict[str, Any]]:
    layout = build_bases()
    name = BASE_NAMES[selector % len(BASE_NAMES)]
    return name, layout[name]


def patched_image(data: bytes, key: str | list[str]) -> tuple[bytearray, dict[str, Any]]:
    """The base image chosen by data[0] with data[1:] laid over its ``key`` ranges."""
    name, info = pick_base(data[0] if data else 0)
    keys = [key] if isinstance(key, str) else key
    ranges: list[list[int]] = []
    for k in keys:
        value = info[k]
        ranges.extend(value if value and isinstance(value[0], list) else [value])
    return patch(base_image(name), ranges, data[1:]), info


def seeds_for(key: str | list[str]) -> list[bytes]:
    """Seed inputs for a patching harness: each base's own bytes of those ranges."""
    layout = build_bases()
    out = []
    for index, name in enumerate(BASE_NAMES):
        info = layout[name]
        image = base_image(name)
        keys = [key] if isinstance(key, str) else key
        chunks = []
        for k in keys:
            value = info[k]
            for offset, length in (value if value and isinstance(value[0], list) else [value]):
                chunks.append(image[offset : offset + length])
        out.append(bytes([index]) + b"".join(chunks))
    return out


def run_harness(one_input: Any, modules: tuple[str, ...] = ()) -> None:
    """atheris entry point: instrument pyext4 (and ``modules``), build the bases, fuzz ``one_input``."""
    import importlib

    import atheris

    with atheris.instrument_imports(include=["pyext4"]):
        import pyext4.blockdev  # noqa: F401
        import pyext4.dirent  # noqa: F401
        import pyext4.extents  # noqa: F401
        import pyext4.reader  # noqa: F401
        import pyext4.superblock  # noqa: F401
        import pyext4.xattr  # noqa: F401

        for name in modules:
            importlib.import_module(name)
    build_bases()

    def test_one(data: bytes) -> None:
        one_input(data)

    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
