"""Fuzz harness: a whole image (the input) opened, walked, every file, link and xattr read, paths looked up."""

from __future__ import annotations

import sys

from common import exercise, run_harness

VERIFY = ("off", "warn", "strict")


def one_input(data: bytes) -> bytes:
    """Exercise ``data`` as an image; returns the image that was exercised."""
    verify = VERIFY[data[-1] % 3] if data else "off"
    exercise(data, verify=verify, lookups=["/dir/file", "/htree/name-0007-" + "x" * 30, "/fast/../slow"])
    return data


if __name__ == "__main__":
    run_harness(one_input)
    sys.exit(0)
