"""Fuzz harness: superblock and group descriptor parsing, alone and as the start of a real image.

The input's first byte picks a base image; the rest replaces its superblock and first descriptor
block, after which the image is opened and walked like any other.
"""

from __future__ import annotations

import sys

from common import exercise, patched_image, run_harness


def one_input(data: bytes) -> bytes:
    from pyext4.errors import Ext4Error
    from pyext4.groupdesc import DescChecksummer, GroupDesc
    from pyext4.superblock import Superblock

    raw = data[1:1025]
    if len(raw) == 1024:
        try:
            sb = Superblock.parse(raw, verify=False)
            sb.validate(1 << 30)
            sb.check_readable()
            geo = sb.geometry()
            desc_raw = data[1025:]
            for group in range(min(geo.group_count, 64)):
                offset = group * geo.desc_size
                if offset + geo.desc_size > len(desc_raw):
                    break
                GroupDesc.parse(desc_raw, offset, geo.desc_size)
                DescChecksummer(metadata_csum=sb.metadata_csum, gdt_csum=sb.gdt_csum, seed=sb.csum_seed,
                                uuid=sb.uuid, desc_size=geo.desc_size).compute(group, desc_raw[offset:offset + geo.desc_size])
            for group in range(min(geo.group_count, 64)):
                geo.super_and_desc(group)
                geo.descriptor_block(group // max(1, geo.desc_per_block))
        except Ext4Error:
            pass
    image, info = patched_image(data, ["super", "gdt"])
    exercise(image, verify="off", lookups=info["lookups"])
    return bytes(image)


if __name__ == "__main__":
    run_harness(one_input)
    sys.exit(0)
