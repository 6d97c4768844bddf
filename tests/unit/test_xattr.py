"""Extended attributes: names, hashes, ibody/block round trips, placement, corrupt input, ACLs, and
agreement with what e2fsprogs (debugfs) and the kernel (loop mount) write."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyext4 import csum
from pyext4 import xattr as X
from pyext4.errors import ChecksumError, CorruptError, Ext4Error, InvalidOptions, NoSpace
from pyext4.xattr import XattrEntry

UUID = "11111111-2222-3333-4444-555555555555"
NOW = "1700000000"
ENTRY = struct.Struct("<BBHIII")
U32 = struct.Struct("<I")
MAGIC = U32.pack(0xEA020000)


# ----------------------------------------------------------------- helpers
def E(full_name: str, value: bytes = b"") -> XattrEntry:
    return XattrEntry.from_name(full_name, value)


def tool(name: str) -> str:
    for candidate in (shutil.which(name), f"/sbin/{name}", f"/usr/sbin/{name}"):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.skip(f"{name} is not installed (apt-get install e2fsprogs)")


def run(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=NOW, MKE2FS_CONFIG="/etc/mke2fs.conf")
    return subprocess.run([str(a) for a in args], capture_output=True, env=env, check=check)


def mke2fs(image: Path, *args: str, size: str = "16M") -> None:
    run(tool("mke2fs"), "-q", "-F", "-t", "ext4", "-U", UUID, "-I", "256", *args, image, size)


def debugfs(image: Path, *commands: str, write: bool = False) -> str:
    script = image.with_suffix(".cmds")
    script.write_text("\n".join(commands) + "\n")
    args = [tool("debugfs")] + (["-w"] if write else []) + ["-f", str(script), str(image)]
    return run(*args).stdout.decode(errors="replace")


def e2fsck_clean(image: Path) -> None:
    proc = run(tool("e2fsck"), "-fn", image, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")


class Image:
    """Raw access to an ext4 image file made with 256-byte inodes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        sb = path.read_bytes()[1024:2048]
        self.block_size = 1024 << U32.unpack_from(sb, 0x18)[0]
        self.uuid = sb[0x68:0x78]
        self.seed = csum.fs_seed(self.uuid)

    def stat(self, name: str) -> tuple[int, int]:
        """(inode number, File ACL block) of ``name``."""
        out = debugfs(self.path, f"stat {name}")
        ino = int(re.search(r"Inode: (\d+)", out).group(1))  # type: ignore[union-attr]
        acl = int(re.search(r"File ACL: (\d+)", out).group(1))  # type: ignore[union-attr]
        return ino, acl

    def inode_offset(self, ino: int) -> int:
        out = debugfs(self.path, f"imap <{ino}>")
        m = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", out)
        assert m, out
        return int(m.group(1)) * self.block_size + int(m.group(2), 16)

    def inode(self, ino: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.inode_offset(ino))
            return f.read(256)

    def tail(self, ino: int) -> bytes:
        raw = self.inode(ino)
        extra = struct.unpack_from("<H", raw, 128)[0]
        return raw[128 + extra:]

    def block(self, block: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(block * self.block_size)
            return f.read(self.block_size)

    def write_block(self, block: int, data: bytes) -> None:
        assert len(data) == self.block_size
        with open(self.path, "r+b") as f:
            f.seek(block * self.block_size)
            f.write(data)


@contextlib.contextmanager
def mounted(image: Path) -> Iterator[Path]:
    """Loop-mount ``image`` with the kernel's ext4; skip when that cannot be done here."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("loop mounts need root and mount(8)")
    mnt = Path(tempfile.mkdtemp(prefix="xattr-mnt-"))
    proc = subprocess.run(["mount", "-t", "ext4", "-o", "loop", str(image), str(mnt)], capture_output=True)
    if proc.returncode != 0:
        mnt.rmdir()
        pytest.skip("loop mount failed: " + proc.stderr.decode(errors="replace").strip())
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        mnt.rmdir()


def posix_acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL in the VFS xattr format (version 2)."""
    return U32.pack(2) + b"".join(struct.pack("<HHI", *e) for e in entries)


UNDEF = 0xFFFFFFFF
ACL_SAMPLE = posix_acl(
    (X.ACL_USER_OBJ, 6, UNDEF), (X.ACL_USER, 6, 1234), (X.ACL_GROUP_OBJ, 4, UNDEF),
    (X.ACL_GROUP, 5, 77), (X.ACL_MASK, 7, UNDEF), (X.ACL_OTHER, 4, UNDEF),
)


# ------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("full", "index", "name"),
    [
        ("user.foo", 1, b"foo"),
        ("system.posix_acl_access", 2, b""),
        ("system.posix_acl_default", 3, b""),
        ("trusted.x", 4, b"x"),
        ("security.selinux", 6, b"selinux"),
        ("system.data", 7, b"data"),
        ("system.richacl", 8, b""),
        ("gnu.translator", 10, b"translator"),
        ("system.posix_acl_accessX", 7, b"posix_acl_accessX"),
        ("os2.weird", 0, b"os2.weird"),
        ("user.caf\u00e9", 1, "caf\u00e9".encode()),
    ],
)
def test_name_mapping(full: str, index: int, name: bytes) -> None:
    assert X.encode_name(full) == (index, name)
    assert X.encode_name(full.encode()) == (index, name)
    assert X.decode_name(index, name) == full.encode()
    entry = XattrEntry(index, name, b"v")
    assert entry.full_name == full
    assert entry.full_name_bytes == full.encode()


def test_name_surrogateescape_round_trip() -> None:
    raw = b"user.\xff\xfe"
    full = raw.decode("utf-8", "surrogateescape")
    assert X.encode_name(full) == (1, b"\xff\xfe")
    assert XattrEntry(1, b"\xff\xfe").full_name == full


def test_hidden_indices_have_no_name() -> None:
    assert X.decode_name(9, b"c") is None  # encryption context
    assert XattrEntry(5, b"lma").full_name is None


@pytest.mark.parametrize("bad", ["", "user.", "trusted.", "gnu.", "user.a\0b", "user." + "x" * 251])
def test_bad_names_rejected(bad: str) -> None:
    with pytest.raises(InvalidOptions):
        X.encode_name(bad)


def test_longest_name_accepted() -> None:
    assert X.encode_name("user." + "x" * 250) == (1, b"x" * 250)


def test_entry_consistency() -> None:
    assert XattrEntry(1, b"a", b"abc").value_size == 3
    with pytest.raises(InvalidOptions):
        XattrEntry(1, b"a", b"abc", value_size=2)
    with pytest.raises(InvalidOptions):
        XattrEntry(1, b"a", b"abc", value_inum=20, value_size=3)
    with pytest.raises(InvalidOptions):
        XattrEntry(1, b"a", value_inum=20)
    # e_hash is not part of equality
    assert XattrEntry(1, b"a", b"x", e_hash=5) == XattrEntry(1, b"a", b"x")


# ------------------------------------------------------------------ hashes
def _reference_hash(name: bytes, value: bytes) -> int:
    """A direct transcription of the C loop with explicit 32-bit wrap."""
    h = 0
    for c in name:
        h = ((h << 5) ^ (h >> 27) ^ c) & 0xFFFFFFFF
    value += bytes(-len(value) % 4)
    for (w,) in struct.iter_unpack("<I", value):
        h = ((h << 16) ^ (h >> 16) ^ w) & 0xFFFFFFFF
    return h


def test_entry_hash_pinned() -> None:
    assert X.entry_hash(b"a") == 0x61
    assert X.entry_hash(b"ab") == (0x61 << 5) ^ 0x62
    assert X.entry_hash(b"ab", b"\x01") == ((((0x61 << 5) ^ 0x62) << 16) ^ 1)
    # value words are little-endian and zero-padded
    assert X.entry_hash(b"", b"\x01\x02\x03\x04\x05") == 0x02010403 ^ 5
    # rotation wraps around 32 bits
    assert X.entry_hash(b"\xff" * 8) == _reference_hash(b"\xff" * 8, b"")
    assert X.entry_hash(b"user-ish name", b"\xff" * 13) == _reference_hash(b"user-ish name", b"\xff" * 13)
    # signed chars differ only for bytes >= 0x80
    assert X.entry_hash(b"plain", b"v") == X.entry_hash(b"plain", b"v", signed=True)
    assert X.entry_hash(b"\xff") == 0xFF
    assert X.entry_hash(b"\xff", signed=True) == 0xFFFFFFFF
    # an EA inode entry hashes the EA inode's value hash in place of the value
    assert X.entry_hash(b"ab", ea_inode_hash=1) == X.entry_hash(b"ab", b"\x01")


def test_block_hash() -> None:
    assert X.block_hash([]) == 0
    assert X.block_hash([7]) == 7
    assert X.block_hash([1, 2]) == (1 << 16) ^ 2
    assert X.block_hash([1, 0, 2]) == 0  # an unhashed entry makes the block unshareable


def test_verify_entry_hash_variants() -> None:
    name, value = b"caf\xc3\xa9", b"value"
    unsigned = X.entry_hash(name, value)
    signed = X.entry_hash(name, value, signed=True)
    assert unsigned != signed
    for h in (unsigned, signed):
        assert X.verify_entry_hash(XattrEntry(1, name, value, e_hash=h))
    assert not X.verify_entry_hash(XattrEntry(1, name, value, e_hash=unsigned ^ 1))
    assert not X.verify_entry_hash(XattrEntry(1, name, value, e_hash=0))
    assert X.verify_entry_hash(XattrEntry(1, name, value, e_hash=0), allow_zero=True)
    ea = X.ea_inode_entry(1, name, 20, 9000, 0x12345678)
    assert X.verify_entry_hash(ea, ea_inode_hash=0x12345678)
    assert not X.verify_entry_hash(ea, ea_inode_hash=0x12345679)
    assert not X.verify_entry_hash(ea)


def test_block_checksum_helpers() -> None:
    buf = X.build_block([E("user.a", b"1")], 1024)
    value = X.set_block_csum(0xDEADBEEF, 77, buf)
    assert U32.unpack_from(buf, 16)[0] == value == csum.xattr_block_csum(0xDEADBEEF, 77, buf)
    X.verify_block_csum(0xDEADBEEF, 77, buf)
    with pytest.raises(ChecksumError):
        X.verify_block_csum(0xDEADBEEF, 78, buf)
    X.parse_block(buf, block_nr=77, verify_csum=functools.partial(csum.xattr_block_csum, 0xDEADBEEF))
    with pytest.raises(ChecksumError) as info:
        X.parse_block(buf, block_nr=78, where="block 78",
                      verify_csum=functools.partial(csum.xattr_block_csum, 0xDEADBEEF))
    assert info.value.expected == value and info.value.where == "block 78"


# --------------------------------------------------------- round trips
_INDEX = st.sampled_from([1, 2, 3, 4, 6, 7, 8])
_NAME = st.binary(min_size=1, max_size=24).filter(lambda b: b"\0" not in b)


@st.composite
def entry_lists(draw: st.DrawFn, max_value: int = 120, max_size: int = 8) -> list[XattrEntry]:
    out: dict[tuple[int, bytes], XattrEntry] = {}
    for _ in range(draw(st.integers(0, max_size))):
        index = draw(_INDEX)
        name = b"" if index in (2, 3, 8) else draw(_NAME)
        value = draw(st.binary(max_size=max_value))
        out[(index, name)] = XattrEntry(index, name, value)
    return list(out.values())


@settings(max_examples=150, deadline=None)
@given(entries=entry_lists(), space=st.integers(0, 400))
def test_ibody_round_trip(entries: list[XattrEntry], space: int) -> None:
    built = X.build_ibody(entries, space)
    needed = 8 + sum(X.entry_len(len(e.name)) + (len(e.value) + 3) // 4 * 4 for e in entries)
    if entries and needed > space:
        assert built is None
        return
    assert built is not None and len(built) == space
    parsed = X.parse_ibody(built, where="inode 12", verify_hashes=True)
    assert parsed == entries  # order kept
    assert all(e.e_hash == 0 for e in parsed)


@settings(max_examples=150, deadline=None)
@given(entries=entry_lists(max_value=300, max_size=10).filter(bool),
       block_size=st.sampled_from([1024, 2048, 4096]), block_nr=st.integers(1, 1 << 40))
def test_block_round_trip(entries: list[XattrEntry], block_size: int, block_nr: int) -> None:
    try:
        buf = X.build_block(entries, block_size, refcount=3)
    except X.XattrNoSpace:
        needed = 36 + sum(X.entry_len(len(e.name)) + (len(e.value) + 3) // 4 * 4 for e in entries)
        assert needed > block_size
        return
    X.set_block_csum(0x1234, block_nr, buf)
    block = X.parse_block(buf, block_nr=block_nr, where="b", verify_hashes=True,
                          verify_csum=functools.partial(csum.xattr_block_csum, 0x1234))
    assert block.refcount == 3
    expected = sorted(entries, key=lambda e: (e.name_index, len(e.name), e.name))
    assert list(block.entries) == expected
    assert [e.e_hash for e in block.entries] == [X.entry_hash(e.name, e.value) for e in expected]
    assert block.hash == X.block_hash(e.e_hash for e in block.entries)
    # values are 4-byte aligned and packed down from the end, first entry's value last
    offs = [ENTRY.unpack_from(buf, 32 + sum(X.entry_len(len(p.name)) for p in expected[:i]))[2]
            for i in range(len(expected))]
    ends = block_size
    for e, off in zip(expected, offs, strict=True):
        if e.value:
            ends -= (len(e.value) + 3) // 4 * 4
            assert off == ends and off % 4 == 0
        else:
            assert off == 0


def test_ea_inode_entries_round_trip() -> None:
    ea = X.ea_inode_entry(1, b"huge", 99, 50000, 0xCAFEBABE)
    assert ea.in_ea_inode and ea.value == b"" and ea.value_size == 50000
    entries = [E("user.small", b"abc"), ea]
    tail = X.build_ibody(entries, 96)
    assert tail is not None
    parsed = X.parse_ibody(tail)
    assert parsed == entries
    assert parsed[1].e_hash == ea.e_hash != 0 and parsed[0].e_hash == 0
    buf = X.build_block(entries, 1024)
    block = X.parse_block(buf, block_nr=5, verify_hashes=True)
    assert list(block.entries) == [ea, entries[0]]  # "huge" sorts before "small" (shorter)
    assert block.entries[0].e_hash == ea.e_hash


def test_empty_ibody_and_no_magic() -> None:
    assert X.build_ibody([], 96) == bytes(96)
    assert X.parse_ibody(bytes(96)) == []
    assert X.parse_ibody(b"") == []
    assert X.parse_ibody(MAGIC[:3]) == []
    assert X.build_ibody([E("user.a")], 7) is None
    assert X.build_ibody([E("user.a")], 27) is None
    assert X.parse_ibody(X.build_ibody([E("user.a")], 28) or b"") == [E("user.a")]  # 4 + 20 + 4


def test_build_errors() -> None:
    with pytest.raises(InvalidOptions):
        X.build_block([E("user.a"), E("user.a", b"x")], 1024)
    with pytest.raises(InvalidOptions):
        X.build_block([E("os2.name", b"x")], 1024)  # e2fsck rejects index 0 in blocks
    with pytest.raises(InvalidOptions):
        X.build_block([], 1024)
    with pytest.raises(InvalidOptions):
        X.build_block([E("user.a")], 1000)
    with pytest.raises(InvalidOptions):
        X.build_ibody([XattrEntry(1, b"")], 96)
    with pytest.raises(X.XattrNoSpace) as info:
        X.build_block([E("user.a", b"x" * 1000)], 1024)
    assert isinstance(info.value, NoSpace) and isinstance(info.value, Ext4Error)


# -------------------------------------------------------------- placement
def test_plan_fills_inode_then_block() -> None:
    entries = [E("user.a", b"x" * 40), E("user.b", b"y" * 40), E("user.c", b"z" * 10)]
    plan = X.plan_storage(entries, 96, 4096)
    # 96 - 8 = 88 free: a takes 20 + 40; b does not fit (60 > 28); c takes 20 + 12 = 32 > 28 -> block
    assert plan.ibody == (entries[0],)
    assert plan.block == (entries[1], entries[2])
    assert not plan.ea_inode


def test_plan_inline_data_first_and_only_in_inode() -> None:
    acl = XattrEntry(2, b"", b"a" * 60)
    data = XattrEntry(7, b"data", b"d" * 40)
    plan = X.plan_storage([acl, data], 96, 4096)
    assert plan.ibody == (data,) and plan.block == (acl,)
    with pytest.raises(X.XattrNoSpace, match="inode body"):
        X.plan_storage([XattrEntry(7, b"data", b"d" * 100)], 96, 4096)
    with pytest.raises(X.XattrNoSpace):
        X.plan_storage([E("os2.x", b"v" * 100)], 96, 4096)  # index 0: inode only
    assert X.inline_data_value([acl, data]) == b"d" * 40
    assert X.inline_data_value([acl]) is None
    with pytest.raises(CorruptError):
        X.inline_data_value([XattrEntry(7, b"data", value_inum=30, value_size=5)], where="inode 12")


def test_plan_too_big_without_ea_inode() -> None:
    with pytest.raises(X.XattrNoSpace, match="ea_inode"):
        X.plan_storage([E("user.big", b"x" * 5000)], 96, 4096)
    with pytest.raises(InvalidOptions):
        X.plan_storage([E("user.big", b"x" * 70000)], 96, 4096, ea_inode=True)


def test_plan_ea_inode() -> None:
    big = E("user.big", b"x" * 4041)  # > 4096 - 56: always external
    mid = E("user.mid", b"y" * 3700)  # fits the block but not above the 512-byte reserve
    small = E("user.s", b"z" * 100)
    plan = X.plan_storage([big, mid, small], 96, 4096, ea_inode=True)
    assert plan.needs_ea_inode(big) and plan.needs_ea_inode(mid) and not plan.needs_ea_inode(small)
    assert plan.ibody == (big, mid)  # 20 + 20 entries only
    assert plan.block == (small,)
    no_ea = X.plan_storage([mid, small], 96, 4096)
    assert no_ea.block == (small, mid) and not no_ea.ea_inode  # block order: shorter names first


@settings(max_examples=100, deadline=None)
@given(entries=entry_lists(max_value=1500, max_size=10), space=st.sampled_from([0, 4, 36, 96, 160]),
       block_size=st.sampled_from([1024, 4096]), ea_inode=st.booleans())
def test_plan_is_buildable(entries: list[XattrEntry], space: int, block_size: int, ea_inode: bool) -> None:
    try:
        plan = X.plan_storage(entries, space, block_size, ea_inode=ea_inode)
    except X.XattrNoSpace:
        assert not ea_inode or any(e.key == X.INLINE_DATA_KEY for e in entries)
        return
    assert sorted(plan.ibody + plan.block, key=lambda e: e.key) == sorted(entries, key=lambda e: e.key)
    assert plan.ea_inode <= {e.key for e in entries}
    final = [X.ea_inode_entry(*e.key, 100 + i, e.value_size, 0x55) if plan.needs_ea_inode(e) else e
             for i, e in enumerate(plan.ibody)]
    assert X.build_ibody(final, space) is not None
    block = [X.ea_inode_entry(*e.key, 200 + i, e.value_size, 0x55) if plan.needs_ea_inode(e) else e
             for i, e in enumerate(plan.block)]
    if block:
        X.build_block(block, block_size)


# ------------------------------------------------------------ corrupt input
def _entry(name_len: int, index: int, offs: int, inum: int, size: int, h: int = 0, name: bytes = b"") -> bytes:
    raw = ENTRY.pack(name_len, index, offs, inum, size, h) + name
    return raw + bytes(-len(raw) % 4)


def _block(*entries: bytes, blocks: int = 1, magic: int = 0xEA020000, size: int = 1024) -> bytearray:
    buf = bytearray(size)
    struct.pack_into("<IIII", buf, 0, magic, 1, blocks, 0)
    table = b"".join(entries)
    buf[32:32 + len(table)] = table
    return buf


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("magic", "bad magic"),
        ("h_blocks", "must be 1"),
        ("name_past_end", "runs past the end"),
        ("no_end_marker", "runs past the end"),
        ("value_past_end", "runs past the end"),
        ("value_too_big", "exceeds the space"),
        ("value_over_table", "overlaps the entry table"),
        ("values_overlap", "overlap"),
        ("empty_name", "empty name"),
        ("nul_in_name", "NUL"),
        ("ea_inode_offset", "value offset"),
        ("ea_inode_size", "EA inode value"),
        ("short", "too small"),
    ],
)
def test_corrupt_blocks(case: str, message: str) -> None:
    good = _entry(1, 1, 1000, 0, 4, 0, b"a")
    buf: bytes | bytearray
    if case == "magic":
        buf = _block(good, magic=0xEA010000)
    elif case == "h_blocks":
        buf = _block(good, blocks=2)
    elif case == "name_past_end":
        filler = _entry(200, 1, 0, 0, 0, 0, b"a" * 200)  # 216 bytes each
        buf = _block(*[filler] * 4, ENTRY.pack(255, 1, 0, 0, 0, 0) + b"b" * 112)  # ends exactly at 1024
    elif case == "no_end_marker":
        buf = _block()
        for off in range(32, 1024, 20):
            buf[off:off + 20] = _entry(1, 1, 0, 0, 0, 0, b"a")[: 1024 - off]
    elif case == "value_past_end":
        buf = _block(_entry(1, 1, 1020, 0, 8, 0, b"a"))
    elif case == "value_too_big":
        buf = _block(_entry(1, 1, 100, 0, 0xFFFFFFFF, 0, b"a"))
    elif case == "value_over_table":
        buf = _block(_entry(1, 1, 40, 0, 4, 0, b"a"))
    elif case == "values_overlap":
        buf = _block(_entry(1, 1, 1000, 0, 8, 0, b"a"), _entry(1, 1, 1004, 0, 4, 0, b"b"))
    elif case == "empty_name":
        buf = _block(_entry(0, 1, 1000, 0, 4))
    elif case == "nul_in_name":
        buf = _block(_entry(2, 1, 1000, 0, 4, 0, b"a\0"))
    elif case == "ea_inode_offset":
        buf = _block(_entry(1, 1, 1000, 13, 4, 0, b"a"))
    elif case == "ea_inode_size":
        buf = _block(_entry(1, 1, 0, 13, (1 << 24) + 1, 0, b"a"))
    else:
        buf = _block(good)[:35]
    with pytest.raises(CorruptError, match=message) as info:
        X.parse_block(buf, block_nr=9, where="xattr block 9")
    assert info.value.where == "xattr block 9"


def test_corrupt_hash_detected_on_request() -> None:
    buf = X.build_block([E("user.a", b"hello")], 1024)
    struct.pack_into("<I", buf, 32 + 12, 0x1234)
    X.parse_block(buf, block_nr=1)  # hashes not checked by default (the kernel does not either)
    with pytest.raises(CorruptError, match="hash"):
        X.parse_block(buf, block_nr=1, verify_hashes=True)
    struct.pack_into("<I", buf, 32 + 12, 0)  # blocks need the hash; only in-inode entries may have 0
    with pytest.raises(CorruptError, match="hash"):
        X.parse_block(buf, block_nr=1, verify_hashes=True)


def test_corrupt_ibody() -> None:
    with pytest.raises(CorruptError, match="too small"):
        X.parse_ibody(MAGIC + b"\0\0", where="inode 12")
    tail = bytearray(X.build_ibody([E("user.abc", b"value")], 96) or b"")
    tail[4] = 200  # name length runs past the end
    with pytest.raises(CorruptError, match="past the end") as info:
        X.parse_ibody(tail, where="inode 12")
    assert info.value.where == "inode 12"
    tail = bytearray(X.build_ibody([E("user.abc", b"value")], 96) or b"")
    struct.pack_into("<H", tail, 6, 92)  # value offset (relative to the first entry) past the end
    with pytest.raises(CorruptError):
        X.parse_ibody(tail)
    struct.pack_into("<H", tail, 6, 0)  # value over the entry table
    with pytest.raises(CorruptError, match="overlaps"):
        X.parse_ibody(tail)
    tail = bytearray(X.build_ibody([E("user.abc", b"value")], 96) or b"")
    struct.pack_into("<I", tail, 4 + 12, 0x99)  # a non-zero hash must be right
    X.parse_ibody(tail)
    with pytest.raises(CorruptError, match="hash"):
        X.parse_ibody(tail, verify_hashes=True)


_VALID_BLOCK = bytes(X.build_block(
    [E("user.a", b"x" * 30), E("trusted.bb", b""), E("security.c", b"yyy"), XattrEntry(2, b"", b"z" * 12)],
    1024))
_VALID_TAIL = X.build_ibody([E("user.a", b"x" * 10), XattrEntry(7, b"data", b"q" * 9)], 96) or b""


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.integers(0, 1024))
def test_mutated_input_raises_only_corrupt(edits: list[tuple[int, int]], cut: int) -> None:
    block = bytearray(_VALID_BLOCK)
    tail = bytearray(_VALID_TAIL)
    for offset, value in edits:
        block[offset] = value
        tail[offset % len(tail)] = value
    for raw in (block, block[:cut]):
        try:
            parsed = X.parse_block(raw, block_nr=1, verify_hashes=True)
        except CorruptError:
            continue
        for e in parsed.entries:
            assert e.value_inum or len(e.value) == e.value_size <= len(raw)
    for raw in (tail, tail[: cut % 97]):
        try:
            X.parse_ibody(raw, verify_hashes=True)
        except CorruptError:
            pass


# -------------------------------------------------------------------- ACLs
def test_acl_conversion() -> None:
    disk = X.acl_xattr_to_disk(ACL_SAMPLE)
    assert disk == (U32.pack(1) + struct.pack("<HH", 1, 6) + struct.pack("<HHI", 2, 6, 1234)
                    + struct.pack("<HH", 4, 4) + struct.pack("<HHI", 8, 5, 77)
                    + struct.pack("<HH", 0x10, 7) + struct.pack("<HH", 0x20, 4))
    assert X.acl_disk_to_xattr(disk) == ACL_SAMPLE
    # ids of unnamed entries are not stored: they come back as ACL_UNDEFINED_ID
    assert X.acl_disk_to_xattr(X.acl_xattr_to_disk(posix_acl((1, 7, 0), (4, 5, 0), (0x20, 0, 0)))) == \
        posix_acl((1, 7, UNDEF), (4, 5, UNDEF), (0x20, 0, UNDEF))
    assert X.acl_disk_to_xattr(U32.pack(1)) == U32.pack(2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2, 4, 8, 0x10, 0x20]), st.integers(0, 7),
                          st.integers(0, UNDEF)), max_size=12))
def test_acl_round_trip(entries: list[tuple[int, int, int]]) -> None:
    normal = [(t, p, i if t in (2, 8) else UNDEF) for t, p, i in entries]
    disk = X.acl_xattr_to_disk(posix_acl(*entries))
    assert X.acl_disk_to_xattr(disk) == posix_acl(*normal)
    assert X.acl_xattr_to_disk(X.acl_disk_to_xattr(disk)) == disk


@pytest.mark.parametrize(
    "bad",
    [b"", b"\2\0\0", U32.pack(1) + bytes(8), U32.pack(2) + bytes(4), posix_acl((0x40, 4, 0)),
     posix_acl((1, 8, 0))],
)
def test_acl_bad_xattr(bad: bytes) -> None:
    with pytest.raises(InvalidOptions):
        X.acl_xattr_to_disk(bad)


@pytest.mark.parametrize(
    "bad",
    [b"", U32.pack(2) + struct.pack("<HH", 1, 6), U32.pack(1) + struct.pack("<HH", 1, 6) + b"\1",
     U32.pack(1) + struct.pack("<HH", 2, 6), U32.pack(1) + struct.pack("<HH", 0x40, 6),
     U32.pack(1) + struct.pack("<HH", 1, 0x10)],
)
def test_acl_bad_disk(bad: bytes) -> None:
    with pytest.raises(CorruptError):
        X.acl_disk_to_xattr(bad, where="inode 12")


# ----------------------------------------------- e2fsprogs as the oracle
def test_matches_debugfs(tmp_path: Path) -> None:
    img = tmp_path / "e.img"
    mke2fs(img, "-b", "4096")
    (tmp_path / "small").write_bytes(b"hello")
    big = bytes(range(256)) * 6  # 1536 bytes
    (tmp_path / "big").write_bytes(big)
    (tmp_path / "big2").write_bytes(big[::-1][:1001])
    (tmp_path / "acl").write_bytes(ACL_SAMPLE)
    debugfs(
        img,
        f"write {tmp_path / 'small'} f",
        "ea_set f user.small hello",
        "ea_set f trusted.t abc",
        f"ea_set -f {tmp_path / 'big'} f user.big",
        f"ea_set -f {tmp_path / 'big2'} f user.caf\u00e9",
        f"ea_set -f {tmp_path / 'acl'} f system.posix_acl_access",
        "ea_set f security.selinux xyz",
        write=True,
    )
    image = Image(img)
    ino, acl_block = image.stat("f")
    assert acl_block
    tail = image.tail(ino)
    ibody = X.parse_ibody(tail, where=f"inode {ino}", verify_hashes=True)
    block = X.parse_block(image.block(acl_block), block_nr=acl_block, where=f"block {acl_block}",
                          verify_csum=functools.partial(csum.xattr_block_csum, image.seed), verify_hashes=True)
    found = {e.full_name: e.value for e in ibody + list(block.entries)}
    assert found == {
        "user.small": b"hello", "trusted.t": b"abc", "security.selinux": b"xyz", "user.big": big,
        "user.caf\u00e9": big[::-1][:1001], "system.posix_acl_access": X.acl_xattr_to_disk(ACL_SAMPLE),
    }
    assert X.acl_disk_to_xattr(found["system.posix_acl_access"]) == ACL_SAMPLE
    # e2fsprogs writes the unsigned-char hash, 0 for in-inode entries, and leaves h_hash 0
    for e in block.entries:
        assert e.e_hash == X.entry_hash(e.name, e.value)
    cafe = next(e for e in block.entries if e.name == "caf\u00e9".encode())
    assert cafe.e_hash != X.entry_hash(cafe.name, cafe.value, signed=True)
    assert all(e.e_hash == 0 for e in ibody)
    # our builders lay the same attributes out byte for byte as libext2fs does
    assert X.build_ibody(ibody, len(tail)) == tail
    ours = X.build_block(block.entries, image.block_size)
    assert ours[12:16] != bytes(4)  # we set h_hash like the kernel ...
    ours[12:16] = bytes(4)  # ... e2fsprogs 1.47.0 leaves it 0
    X.set_block_csum(image.seed, acl_block, ours)
    assert bytes(ours) == image.block(acl_block)
    # the kernel's placement rule agrees with debugfs' on this set (in the order they were set)
    order = ["user.small", "trusted.t", "user.big", "user.caf\u00e9", "system.posix_acl_access", "security.selinux"]
    plan = X.plan_storage([E(n, found[n]) for n in order], len(tail), image.block_size)
    assert [e.full_name for e in plan.ibody] == [e.full_name for e in ibody]
    assert [e.full_name for e in plan.block] == [e.full_name for e in block.entries]

    # a block we build (with our h_hash and the signed-char hash variant) passes e2fsck in its place
    entries = [XattrEntry(e.name_index, e.name, e.value[::-1]) for e in block.entries]
    ours = X.build_block(entries, image.block_size)
    reparsed = X.parse_block(ours, block_nr=acl_block)
    position = [e.name for e in reparsed.entries].index(cafe.name)
    at = 32 + sum(X.entry_len(len(e.name)) for e in reparsed.entries[:position])
    signed = X.entry_hash(cafe.name, cafe.value[::-1], signed=True)
    assert ENTRY.unpack_from(ours, at)[5] == X.entry_hash(cafe.name, cafe.value[::-1])
    struct.pack_into("<I", ours, at + 12, signed)
    hashes = [signed if e.name == cafe.name else e.e_hash for e in reparsed.entries]
    struct.pack_into("<I", ours, 12, X.block_hash(hashes))
    X.set_block_csum(image.seed, acl_block, ours)
    X.parse_block(ours, block_nr=acl_block, verify_hashes=True,
                  verify_csum=functools.partial(csum.xattr_block_csum, image.seed))
    image.write_block(acl_block, bytes(ours))
    e2fsck_clean(img)
    listing = debugfs(img, "ea_get -f " + str(tmp_path / "out") + " f user.big")
    assert (tmp_path / "out").read_bytes() == big[::-1], listing


def test_matches_debugfs_ea_inode_and_inline_data(tmp_path: Path) -> None:
    img = tmp_path / "i.img"
    mke2fs(img, "-b", "4096", "-O", "inline_data,ea_inode")
    data = bytes(range(100))
    huge = bytes((i * 7) & 0xFF for i in range(4096))
    (tmp_path / "d").write_bytes(data)
    (tmp_path / "huge").write_bytes(huge)
    debugfs(img, f"write {tmp_path / 'd'} f", f"ea_set -f {tmp_path / 'huge'} f user.huge", write=True)
    image = Image(img)
    ino, acl_block = image.stat("f")
    assert acl_block == 0
    raw = image.inode(ino)
    entries = X.parse_ibody(image.tail(ino), where=f"inode {ino}", verify_hashes=True)
    assert raw[40:100] + (X.inline_data_value(entries) or b"") == data
    ea = next(e for e in entries if e.full_name == "user.huge")
    assert ea.in_ea_inode and ea.value_size == len(huge)
    stored_hash = U32.unpack_from(image.inode(ea.value_inum), 8)[0]  # the EA inode's i_atime
    assert X.ea_inode_value_hash(image.seed, huge) == stored_hash
    assert X.verify_entry_hash(ea, ea_inode_hash=stored_hash)
    assert ea.e_hash == X.ea_inode_entry(1, b"huge", ea.value_inum, len(huge), stored_hash).e_hash
    assert X.build_ibody(entries, len(image.tail(ino))) == image.tail(ino)


# ---------------------------------------------------- the kernel as the oracle
def _kernel_image(tmp_path: Path, *features: str) -> Path:
    img = tmp_path / "k.img"
    mke2fs(img, "-b", "4096", *(("-O", ",".join(features)) if features else ()), size="32M")
    return img


def test_matches_kernel(tmp_path: Path) -> None:
    img = _kernel_image(tmp_path)
    names = [
        ("user.a", b"1" * 30), ("user.bb", b"2" * 40), ("user.big", bytes(range(256)) * 5),
        ("user.zz", b"3" * 700), ("trusted.t", b"t" * 9), ("security.s", b"s" * 1100),
        ("user.caf\u00e9", b"e" * 33),
    ]
    with mounted(img) as mnt:
        f = mnt / "f"
        f.write_bytes(b"x")
        if os.listxattr(f):
            pytest.skip("the kernel adds xattrs of its own here (LSM)")
        for name, value in names:
            os.setxattr(f, name, value)
        os.setxattr(f, "system.posix_acl_access", ACL_SAMPLE)
        host_acl = os.getxattr(f, "system.posix_acl_access")
        d = mnt / "d"
        d.mkdir()
        os.setxattr(d, "system.posix_acl_default", ACL_SAMPLE)
        # kernel-made blocks with values in block order: set in sorted order on a second file
        g = mnt / "g"
        g.write_bytes(b"y")
        sorted_names = sorted(names[2:4] + names[5:], key=lambda nv: X.encode_name(nv[0])[0:1]
                              + (len(X.encode_name(nv[0])[1]), X.encode_name(nv[0])[1]))
        os.setxattr(g, "user.pad", b"p" * 60)  # fills the inode body first
        for name, value in sorted_names:
            os.setxattr(g, name, value)
    image = Image(img)
    assert host_acl == ACL_SAMPLE
    ino, acl_block = image.stat("f")
    tail = image.tail(ino)
    ibody = X.parse_ibody(tail, where="inode f", verify_hashes=True)
    block = X.parse_block(image.block(acl_block), block_nr=acl_block, verify_hashes=True,
                          verify_csum=functools.partial(csum.xattr_block_csum, image.seed))
    found = {e.full_name: e.value for e in ibody + list(block.entries)}
    assert X.acl_disk_to_xattr(found.pop("system.posix_acl_access")) == host_acl
    assert found == dict(names)
    assert all(e.e_hash == 0 for e in ibody)
    assert block.hash == X.block_hash(e.e_hash for e in block.entries) != 0
    # the kernel placed them as plan_storage says it would
    wanted = [E(n, v) for n, v in names] + [XattrEntry(2, b"", X.acl_xattr_to_disk(ACL_SAMPLE))]
    plan = X.plan_storage(wanted, len(tail), image.block_size)
    assert {e.key for e in plan.ibody} == {e.key for e in ibody}
    assert list(plan.block) == list(block.entries)
    assert X.build_ibody(ibody, len(tail)) == tail
    # the default ACL of the directory
    ino_d, acl_d = image.stat("d")
    dentries = X.parse_ibody(image.tail(ino_d)) + (
        list(X.parse_block(image.block(acl_d), block_nr=acl_d).entries) if acl_d else [])
    default = next(e for e in dentries if e.full_name == "system.posix_acl_default")
    assert X.acl_disk_to_xattr(default.value) == ACL_SAMPLE
    assert default.value == X.acl_xattr_to_disk(ACL_SAMPLE)
    # a block whose values the kernel stacked in block order is byte-identical to ours
    ino_g, acl_g = image.stat("g")
    kblock = image.block(acl_g)
    kparsed = X.parse_block(kblock, block_nr=acl_g)
    ours = X.build_block(kparsed.entries, image.block_size)
    X.set_block_csum(image.seed, acl_g, ours)
    assert bytes(ours) == kblock
    e2fsck_clean(img)


def test_matches_kernel_ea_inode_and_inline_data(tmp_path: Path) -> None:
    img = _kernel_image(tmp_path, "ea_inode", "inline_data")
    mid = bytes(range(256)) * 14 + b"m" * 100  # 3684 bytes: over the block's 512-byte reserve
    big = bytes(range(255, -1, -1)) * 20  # 5120 bytes: larger than a block
    data = bytes(range(120))
    with mounted(img) as mnt:
        f = mnt / "f"
        f.write_bytes(data)
        if os.listxattr(f) != []:
            pytest.skip("the kernel adds xattrs of its own here (LSM)")
        os.setxattr(f, "user.small", b"s" * 20)
        os.setxattr(f, "user.mid", mid)
        os.setxattr(f, "user.big", big)
    image = Image(img)
    ino, acl_block = image.stat("f")
    raw = image.inode(ino)
    tail = image.tail(ino)
    ibody = X.parse_ibody(tail, where="inode f", verify_hashes=True)
    entries = ibody + (list(X.parse_block(image.block(acl_block), block_nr=acl_block,
                                          verify_hashes=True).entries) if acl_block else [])
    assert raw[40:100] + (X.inline_data_value(entries) or b"") == data
    by_name = {e.full_name: e for e in entries}
    for name, value in (("user.mid", mid), ("user.big", big)):
        e = by_name[name]
        assert e.in_ea_inode and e.value_size == len(value)
        stored = U32.unpack_from(image.inode(e.value_inum), 8)[0]
        assert stored == X.ea_inode_value_hash(image.seed, value)
        assert X.verify_entry_hash(e, ea_inode_hash=stored)
    plan = X.plan_storage(
        [XattrEntry(7, b"data", data[60:]), E("user.small", b"s" * 20), E("user.mid", mid), E("user.big", big)],
        len(tail), image.block_size, ea_inode=True)
    assert plan.ea_inode == {(1, b"mid"), (1, b"big")}
    assert {e.key for e in plan.ibody} == {e.key for e in ibody}
    e2fsck_clean(img)


def test_matches_setfacl(tmp_path: Path) -> None:
    setfacl = shutil.which("setfacl")
    if not setfacl:
        pytest.skip("setfacl is not installed (apt-get install acl)")
    img = _kernel_image(tmp_path)
    with mounted(img) as mnt:
        f = mnt / "f"
        f.write_bytes(b"x")
        subprocess.run([setfacl, "-m", "u:1234:rw,g:77:rx,m::rwx", str(f)], check=True)
        host = os.getxattr(f, "system.posix_acl_access")
    image = Image(img)
    ino, acl_block = image.stat("f")
    entries = X.parse_ibody(image.tail(ino)) + (
        list(X.parse_block(image.block(acl_block), block_nr=acl_block).entries) if acl_block else [])
    disk = next(e for e in entries if e.full_name == "system.posix_acl_access").value
    assert X.acl_disk_to_xattr(disk) == host
    assert X.acl_xattr_to_disk(host) == disk
