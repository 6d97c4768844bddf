"""Fuzz harness: extended attributes, in the inode body and in xattr blocks, and ACL conversion.

The input is parsed directly as an in-inode xattr area and as an xattr block; then, with its first
byte picking a base image, it replaces that image's xattr blocks, which are read through the reader.
"""

from __future__ import annotations

import sys

from common import exercise, patched_image, run_harness


def one_input(data: bytes) -> bytes:
    from pyext4 import xattr as X
    from pyext4.errors import Ext4Error

    for parse in (
        lambda: X.parse_ibody(data[:160], verify_hashes=True),
        lambda: X.parse_block(data[:1024].ljust(1024, b"\0"), block_nr=100, verify_hashes=True),
        lambda: X.parse_block(data[:4096], block_nr=100),
        lambda: X.acl_disk_to_xattr(data[:200]),
        lambda: X.inline_data_value(X.parse_ibody(data[:256])),
    ):
        try:
            result = parse()
            entries = getattr(result, "entries", result)
            if isinstance(entries, (list, tuple)):
                for e in entries:
                    if isinstance(e, X.XattrEntry):
                        _ = e.full_name, e.key
        except Ext4Error:
            pass
    image, info = patched_image(data, "xattr_blocks")
    exercise(image, verify="off", lookups=["/xattr", "/dir"])
    return bytes(image)


if __name__ == "__main__":
    run_harness(one_input)
    sys.exit(0)
