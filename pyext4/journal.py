"""The jbd2 journal superblock: parsing, building and its checksum (replay is a later step)."""

from __future__ import annotations

import struct

from . import _codecs as C
from . import constants as K
from .csum import jbd2_superblock_csum
from .errors import CorruptError
from .record import Record

_NAMES = {n: i for i, n in enumerate(C.JOURNAL_SUPERBLOCK_FIELDS)}

FEATURE_NAMES = {
    ("compat", K.JBD2_FEATURE_COMPAT_CHECKSUM): "journal_checksum",
    ("incompat", K.JBD2_FEATURE_INCOMPAT_REVOKE): "journal_incompat_revoke",
    ("incompat", K.JBD2_FEATURE_INCOMPAT_64BIT): "journal_64bit",
    ("incompat", K.JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT): "journal_async_commit",
    ("incompat", K.JBD2_FEATURE_INCOMPAT_CSUM_V2): "journal_checksum_v2",
    ("incompat", K.JBD2_FEATURE_INCOMPAT_CSUM_V3): "journal_checksum_v3",
    ("incompat", K.JBD2_FEATURE_INCOMPAT_FAST_COMMIT): "journal_fast_commit",
}


class JournalSuperblock(Record):
    """The fields of a jbd2 superblock that tools look at."""

    __slots__ = (
        "blocktype", "block_size", "maxlen", "first", "sequence", "start", "errno", "feature_compat",
        "feature_incompat", "feature_ro_compat", "uuid", "nr_users", "max_transaction", "checksum_type",
        "num_fc_blocks", "checksum",
    )

    def __init__(
        self,
        blocktype: int,
        block_size: int,
        maxlen: int,
        first: int,
        sequence: int,
        start: int,
        errno: int,
        feature_compat: int,
        feature_incompat: int,
        feature_ro_compat: int,
        uuid: bytes,
        nr_users: int,
        max_transaction: int,
        checksum_type: int,
        num_fc_blocks: int,
        checksum: int,
    ) -> None:
        self.blocktype = blocktype
        self.block_size = block_size
        self.maxlen = maxlen
        self.first = first
        self.sequence = sequence
        self.start = start
        self.errno = errno
        self.feature_compat = feature_compat
        self.feature_incompat = feature_incompat
        self.feature_ro_compat = feature_ro_compat
        self.uuid = uuid
        self.nr_users = nr_users
        self.max_transaction = max_transaction
        self.checksum_type = checksum_type
        self.num_fc_blocks = num_fc_blocks
        self.checksum = checksum

    @property
    def features(self) -> list[str]:
        names = []
        for (kind, bit), name in FEATURE_NAMES.items():
            value = self.feature_compat if kind == "compat" else self.feature_incompat
            if value & bit:
                names.append(name)
        return names

    @property
    def has_csum(self) -> bool:
        return bool(self.feature_incompat & (K.JBD2_FEATURE_INCOMPAT_CSUM_V2 | K.JBD2_FEATURE_INCOMPAT_CSUM_V3))

    @property
    def needs_replay(self) -> bool:
        """The log holds transactions (s_start != 0)."""
        return self.start != 0


def parse_superblock(raw: bytes | bytearray | memoryview, *, where: str = "journal superblock") -> JournalSuperblock:
    """Decode a jbd2 superblock; CorruptError for a bad magic or block type."""
    if len(raw) < C.JOURNAL_SUPERBLOCK.size:
        raise CorruptError("journal superblock cut short", where=where)
    v = C.JOURNAL_SUPERBLOCK.unpack_from(raw, 0)

    def get(name: str) -> int:
        return int(v[_NAMES[name]])

    if get("s_header.h_magic") != K.JBD2_MAGIC:
        raise CorruptError(f"bad journal magic {get('s_header.h_magic'):#010x}", where=where)
    blocktype = get("s_header.h_blocktype")
    if blocktype not in (K.JBD2_SUPERBLOCK_V1, K.JBD2_SUPERBLOCK_V2):
        raise CorruptError(f"bad journal superblock type {blocktype}", where=where)
    return JournalSuperblock(
        blocktype=blocktype,
        block_size=get("s_blocksize"),
        maxlen=get("s_maxlen"),
        first=get("s_first"),
        sequence=get("s_sequence"),
        start=get("s_start"),
        errno=struct.unpack(">i", struct.pack(">I", get("s_errno")))[0],
        feature_compat=get("s_feature_compat") if blocktype == K.JBD2_SUPERBLOCK_V2 else 0,
        feature_incompat=get("s_feature_incompat") if blocktype == K.JBD2_SUPERBLOCK_V2 else 0,
        feature_ro_compat=get("s_feature_ro_compat") if blocktype == K.JBD2_SUPERBLOCK_V2 else 0,
        uuid=bytes(v[_NAMES["s_uuid"]]),
        nr_users=get("s_nr_users"),
        max_transaction=get("s_max_transaction"),
        checksum_type=get("s_checksum_type"),
        num_fc_blocks=get("s_num_fc_blks"),
        checksum=get("s_checksum"),
    )


def checksum_ok(raw: bytes | bytearray | memoryview) -> bool:
    """Whether a v2/v3-checksummed journal superblock's checksum matches."""
    stored = struct.unpack_from(">I", raw, 0xFC)[0]
    return bool(stored == jbd2_superblock_csum(raw))
