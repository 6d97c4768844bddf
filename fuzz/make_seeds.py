"""Build the fuzzing seed corpora: base images (mke2fs -d of a generated tree) and small e2fsprogs images.

Writes fuzz/work/seeds/<harness>/ (inputs libFuzzer starts from) and fuzz/work/base-*.img with
layout.json (what the patching harnesses overlay).  Idempotent; ``--force`` rebuilds.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import shutil
import sys
from pathlib import Path

from common import BASE_NAMES, ROOT, WORK, base_image, build_bases, seeds_for

CORPUS = ROOT.parent / "shared" / "corpus" / "e2fsprogs"
MAX_IMAGE_SEED = 1 << 20  # whole-image seeds larger than this slow libFuzzer's mutations down too much

PATCH_KEYS = {
    "superblock": ["super", "gdt"],
    "inode_extents": ["itable", "trees"],
    "dir_htree": "dirs",
    "xattr": "xattr_blocks",
}


def write_seed(directory: Path, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


def write_writer_seeds(seeds: Path) -> None:
    from fuzz_writer import seeds as writer_seeds

    for data in writer_seeds():
        write_seed(seeds / "writer", data)


def main(argv: list[str]) -> int:
    seeds = WORK / "seeds"
    if "--force" in argv:
        shutil.rmtree(WORK, ignore_errors=True)
    if seeds.is_dir() and (WORK / "layout.json").exists():
        if not (seeds / "writer").is_dir():  # a work dir made before the writer harness
            write_writer_seeds(seeds)
        return 0
    build_bases()
    for name in BASE_NAMES:
        write_seed(seeds / "read_all", base_image(name))
    if CORPUS.is_dir():
        for src in sorted(CORPUS.iterdir()):
            if not src.name.endswith((".img.gz", ".img.bz2")):
                continue
            opener = gzip.open if src.suffix == ".gz" else bz2.open
            with opener(src, "rb") as f:
                data = f.read(MAX_IMAGE_SEED + 1)
            if len(data) <= MAX_IMAGE_SEED:
                write_seed(seeds / "read_all", data)
    for harness, key in PATCH_KEYS.items():
        for data in seeds_for(key):
            write_seed(seeds / harness, data)
    write_writer_seeds(seeds)
    counts = {d.name: len(list(d.iterdir())) for d in sorted(seeds.iterdir())}
    print("seeds:", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
