"""layout.py (construct) is the truth; _codecs.py (struct) is generated from it and must agree."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pyext4 import _codecs as C
from pyext4 import layout


def test_generated_codecs_are_current() -> None:
    generated = Path(C.__file__).read_text()
    assert generated == layout.render_codecs(), "run: python -m pyext4.layout"


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, item in value.items():  # type: ignore[attr-defined]
        if key.startswith("_"):
            continue
        name = prefix + key
        if hasattr(item, "items"):
            out.update(_flatten(item, name + "."))
        elif isinstance(item, list):
            for i, element in enumerate(item):
                out[f"{name}[{i}]"] = element
        else:
            out[name] = item
    return out


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_struct_and_construct_agree(data: st.DataObject) -> None:
    for export, con in layout.CODEC_LAYOUTS.items():
        codec = getattr(C, export)
        names = getattr(C, export + "_FIELDS")
        assert codec.size == con.sizeof(), export
        raw = data.draw(st.binary(min_size=codec.size, max_size=codec.size), label=export)
        parsed = _flatten(con.parse(raw))
        unpacked = dict(zip(names, codec.unpack(raw)))
        assert parsed == unpacked, export
        assert codec.pack(*codec.unpack(raw)) == raw
        assert con.build(con.parse(raw)) == raw


def test_known_sizes_from_the_spec() -> None:
    assert C.SUPERBLOCK.size == 1024
    assert C.GROUP_DESC_32.size == 32 and C.GROUP_DESC_64.size == 64
    assert C.INODE.size == 128 and C.INODE_EXTRA.size == 32
    assert C.EXTENT_HEADER.size == C.EXTENT.size == C.EXTENT_IDX.size == 12
    assert C.DIR_ENTRY_TAIL.size == 12 and C.XATTR_HEADER.size == 32 and C.XATTR_ENTRY.size == 16
    assert C.JOURNAL_SUPERBLOCK.size == 1024
    # Spot-check offsets against super.rst.
    import struct

    def offset_of(name: str) -> int:
        position = 0
        for field, code in zip(C.SUPERBLOCK_FIELDS, _expand(C.SUPERBLOCK.format)):
            if field == name:
                return position
            position += struct.calcsize("<" + code)
        raise KeyError(name)

    assert offset_of("s_magic") == 0x38
    assert offset_of("s_uuid") == 0x68
    assert offset_of("s_hash_seed") == 0xEC
    assert offset_of("s_desc_size") == 0xFE
    assert offset_of("s_jnl_blocks[0]") == 0x10C
    assert offset_of("s_log_groups_per_flex") == 0x174
    assert offset_of("s_checksum_seed") == 0x270
    assert offset_of("s_orphan_file_inum") == 0x280
    assert offset_of("s_checksum") == 0x3FC


def _expand(fmt: str) -> list[str]:
    import re

    codes = []
    for count, code in re.findall(r"(\d*)([a-zA-Z])", fmt[1:]):
        if code == "s":
            codes.append(f"{count}s")
        else:
            codes.extend([code] * int(count or 1))
    return codes
