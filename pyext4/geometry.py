"""Group arithmetic: where each group starts, which groups hold backups, where descriptors live."""

from __future__ import annotations

from bisect import bisect_left
from functools import cached_property

from .errors import CorruptError


def _is_power_of(n: int, base: int) -> bool:
    while n % base == 0 and n > 1:
        n //= base
    return n == 1


def sparse_backup_groups(group_count: int) -> list[int]:
    """Groups holding superblock backups under sparse_super: 0, 1, and powers of 3, 5, 7."""
    groups = {0, 1} if group_count > 1 else {0}
    for base in (3, 5, 7):
        g = base
        while g < group_count:
            groups.add(g)
            g *= base
    return sorted(g for g in groups if g < group_count)


# Plain classes rather than dataclasses: the mkfs command imports this module at start-up,
# and creating each dataclass costs a fraction of a millisecond.
class SuperAndDesc:
    """What sits at the start of one group (block numbers, 0 when absent)."""

    __slots__ = ("super_block", "old_desc_block", "old_desc_blocks", "new_desc_block", "used")

    def __init__(
        self, super_block: int, old_desc_block: int, old_desc_blocks: int, new_desc_block: int, used: int
    ) -> None:
        self.super_block = super_block
        self.old_desc_block = old_desc_block
        self.old_desc_blocks = old_desc_blocks
        self.new_desc_block = new_desc_block
        self.used = used  # blocks taken by superblock + descriptors (+ reserved GDT)

    def _key(self) -> tuple[int, ...]:
        return (self.super_block, self.old_desc_block, self.old_desc_blocks, self.new_desc_block, self.used)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SuperAndDesc) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "SuperAndDesc(super_block={}, old_desc_block={}, old_desc_blocks={}, new_desc_block={}, used={})".format(
            *self._key()
        )


class Geometry:
    """The numbers that fix where everything is; built from a superblock or by mkfs."""

    _FIELDS = (  # what equality and repr cover
        "block_size", "blocks_count", "first_data_block", "blocks_per_group", "inodes_per_group", "inode_size",
        "desc_size", "reserved_gdt_blocks", "sparse_super", "sparse_super2", "backup_bgs", "meta_bg",
        "first_meta_bg", "log_groups_per_flex", "flex_bg",
    )

    def __init__(
        self,
        block_size: int,
        blocks_count: int,
        first_data_block: int,
        blocks_per_group: int,
        inodes_per_group: int,
        inode_size: int,
        desc_size: int,
        reserved_gdt_blocks: int = 0,
        sparse_super: bool = True,
        sparse_super2: bool = False,
        backup_bgs: tuple[int, int] = (0, 0),
        meta_bg: bool = False,
        first_meta_bg: int = 0,
        log_groups_per_flex: int = 0,
        flex_bg: bool = False,
    ) -> None:
        self.block_size = block_size
        self.blocks_count = blocks_count
        self.first_data_block = first_data_block
        self.blocks_per_group = blocks_per_group
        self.inodes_per_group = inodes_per_group
        self.inode_size = inode_size
        self.desc_size = desc_size
        self.reserved_gdt_blocks = reserved_gdt_blocks
        self.sparse_super = sparse_super
        self.sparse_super2 = sparse_super2
        self.backup_bgs = backup_bgs
        self.meta_bg = meta_bg
        self.first_meta_bg = first_meta_bg
        self.log_groups_per_flex = log_groups_per_flex
        self.flex_bg = flex_bg
        if blocks_per_group <= 0 or inodes_per_group <= 0:
            raise CorruptError("zero blocks or inodes per group", where="superblock")
        if sparse_super2:
            backups = {0} | {g for g in backup_bgs if g}
        elif sparse_super:
            backups = set(sparse_backup_groups(self.group_count))
        else:
            backups = set(range(self.group_count))
        self._backups = frozenset(backups)
        self._backup_list = sorted(g for g in backups if g < self.group_count)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Geometry) and all(getattr(self, n) == getattr(other, n) for n in self._FIELDS)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        return "Geometry(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self._FIELDS) + ")"

    # ------------------------------------------------------------ counts
    @cached_property
    def group_count(self) -> int:
        return -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)

    @cached_property
    def inodes_count(self) -> int:
        return self.group_count * self.inodes_per_group

    @cached_property
    def desc_per_block(self) -> int:
        return self.block_size // self.desc_size

    @cached_property
    def desc_blocks(self) -> int:
        """Blocks needed for the whole descriptor table."""
        return -(-self.group_count // self.desc_per_block)

    @cached_property
    def inode_table_blocks(self) -> int:
        """Inode table blocks per group."""
        return -(-(self.inodes_per_group * self.inode_size) // self.block_size)

    @cached_property
    def inodes_per_block(self) -> int:
        return self.block_size // self.inode_size

    @cached_property
    def groups_per_flex(self) -> int:
        return 1 << self.log_groups_per_flex if self.flex_bg else 1

    @cached_property
    def old_desc_blocks(self) -> int:
        """Descriptor blocks (plus reserved GDT) kept right after each superblock copy."""
        if self.meta_bg:
            return self.first_meta_bg
        return self.desc_blocks + self.reserved_gdt_blocks

    # ------------------------------------------------------------ groups
    def group_first_block(self, group: int) -> int:
        return self.first_data_block + group * self.blocks_per_group

    def group_last_block(self, group: int) -> int:
        if group == self.group_count - 1:
            return self.blocks_count - 1
        return self.group_first_block(group) + self.blocks_per_group - 1

    def group_blocks(self, group: int) -> int:
        """Blocks in ``group`` (the last group may be short)."""
        if group == self.group_count - 1:
            return self.blocks_count - self.group_first_block(group)
        return self.blocks_per_group

    def group_of_block(self, block: int) -> int:
        return (block - self.first_data_block) // self.blocks_per_group

    def group_of_ino(self, ino: int) -> int:
        return (ino - 1) // self.inodes_per_group

    def ino_index(self, ino: int) -> int:
        return (ino - 1) % self.inodes_per_group

    def flex_group_of(self, group: int) -> int:
        return group >> self.log_groups_per_flex if self.flex_bg else group

    # ----------------------------------------------------------- backups
    def has_super(self, group: int) -> bool:
        return group in self._backups

    @property
    def backup_groups(self) -> list[int]:
        return list(self._backup_list)

    def backup_groups_in(self, start: int, end: int) -> list[int]:
        """The backup groups in ``[start, end)``, in increasing order."""
        backups = self._backup_list
        return backups[bisect_left(backups, start) : bisect_left(backups, end)]

    def super_and_desc(self, group: int) -> SuperAndDesc:
        """Locations of the superblock copy and descriptor blocks at the start of ``group``.

        Mirrors e2fsprogs' ext2fs_super_and_bgd_loc2.
        """
        group_block = self.group_first_block(group)
        if group_block == 0 and self.block_size == 1024:
            group_block = 1
        super_blk = old_desc = new_desc = 0
        old_count = 0
        used = 0
        has_super = self.has_super(group)
        if has_super:
            super_blk = group_block
            used += 1
        per = self.desc_per_block
        meta_group = group // per
        if not self.meta_bg or meta_group < self.first_meta_bg:
            if has_super:
                old_desc = group_block + 1
                old_count = self.old_desc_blocks
                used += old_count
        else:
            r = group % per
            if r == 0 or r == 1 or r == per - 1:
                new_desc = group_block + (1 if has_super else 0)
                used += 1
        return SuperAndDesc(super_blk, old_desc, old_count, new_desc, used)

    def descriptor_block(self, index: int, group_block: int | None = None) -> int:
        """Block holding descriptor-table block ``index`` (primary copy unless group_block is a backup).

        Mirrors e2fsprogs' ext2fs_descriptor_block_loc2.
        """
        if group_block is None:
            group_block = self.first_data_block
        if not self.meta_bg or index < self.first_meta_bg:
            return group_block + index + 1
        bg = self.desc_per_block * index
        has_super = 1 if self.has_super(bg) else 0
        block = self.group_first_block(bg)
        if group_block != self.first_data_block and (
            block + has_super + self.blocks_per_group < self.blocks_count
        ):
            block += self.blocks_per_group
            has_super = 1 if self.has_super(bg + 1) else 0
        return block + has_super

    def desc_location(self, group: int) -> tuple[int, int]:
        """(block, byte offset) of ``group``'s primary descriptor."""
        index, slot = divmod(group, self.desc_per_block)
        return self.descriptor_block(index), slot * self.desc_size

    def base_meta_blocks(self, group: int) -> int:
        """Superblock + descriptor blocks at the start of a group (ext4_num_base_meta_blocks)."""
        return self.super_and_desc(group).used
