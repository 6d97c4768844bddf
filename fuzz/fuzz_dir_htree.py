"""Fuzz harness: directory blocks and htree index nodes, listed and searched by hash.

The input's first byte picks a base image; the rest replaces the blocks of its root, /htree (an
indexed directory) and /dir; then the tree is listed and names are looked up through the index
(the directory cache is emptied first so lookups take the htree path).
"""

from __future__ import annotations

import sys

from common import exercise, patched_image, run_harness


def one_input(data: bytes) -> bytes:
    image, info = patched_image(data, "dirs")
    exercise(image, verify="off" if data[-1:] != b"\xff" else "warn", lookups=info["lookups"])
    return bytes(image)


if __name__ == "__main__":
    run_harness(one_input)
    sys.exit(0)
