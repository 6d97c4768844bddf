"""Fuzz harness: inodes and their block mapping (extent trees, indirect blocks) through the reader.

The input's first byte picks a base image; the rest replaces the start of its inode table and the
extent tree / indirect blocks of its fragmented and indirect files; then every file is mapped and read.
"""

from __future__ import annotations

import sys

from common import exercise, patched_image, run_harness


def one_input(data: bytes) -> bytes:
    image, info = patched_image(data, ["itable", "trees"])
    exercise(image, verify="off", lookups=info["lookups"])
    return bytes(image)


if __name__ == "__main__":
    run_harness(one_input)
    sys.exit(0)
