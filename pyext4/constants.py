"""Numbers fixed by the ext4 on-disk format: magics, feature bits, flags, reserved inodes."""

from __future__ import annotations

SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 1024
EXT4_SUPER_MAGIC = 0xEF53
JBD2_MAGIC = 0xC03B3998

MIN_BLOCK_LOG = 10
MAX_BLOCK_LOG = 16  # 64 KiB blocks
GOOD_OLD_INODE_SIZE = 128
GOOD_OLD_FIRST_INO = 11
EXTRA_ISIZE_DEFAULT = 32  # sizeof(ext2_inode_large) - 128
NAME_LEN = 255
LINK_MAX = 65000
N_BLOCKS = 15
NDIR_BLOCKS = 12
IND_BLOCK = 12
DIND_BLOCK = 13
TIND_BLOCK = 14
FAST_SYMLINK_MAX = 59  # bytes that fit in i_block with the trailing NUL
MAX_SYMLINK_LEN = 4095

# Reserved inodes
BAD_INO = 1
ROOT_INO = 2
USR_QUOTA_INO = 3
GRP_QUOTA_INO = 4
BOOT_LOADER_INO = 5
UNDEL_DIR_INO = 6
RESIZE_INO = 7
JOURNAL_INO = 8
EXCLUDE_INO = 9
REPLICA_INO = 10

# s_state
STATE_VALID = 0x0001
STATE_ERROR = 0x0002
STATE_ORPHAN = 0x0004

ERRORS_CONTINUE = 1
CREATOR_LINUX = 0
DYNAMIC_REV = 1

# s_flags
FLAGS_SIGNED_HASH = 0x0001
FLAGS_UNSIGNED_HASH = 0x0002
FLAGS_TEST_FILESYS = 0x0004

# s_default_mount_opts
DEFM_XATTR_USER = 0x0004
DEFM_ACL = 0x0008

# Feature bits, with the names mke2fs -O and dumpe2fs use.
COMPAT = {
    "dir_prealloc": 0x0001,
    "imagic_inodes": 0x0002,
    "has_journal": 0x0004,
    "ext_attr": 0x0008,
    "resize_inode": 0x0010,
    "dir_index": 0x0020,
    "lazy_bg": 0x0040,
    "exclude_inode": 0x0080,
    "exclude_bitmap": 0x0100,
    "sparse_super2": 0x0200,
    "fast_commit": 0x0400,
    "stable_inodes": 0x0800,
    "orphan_file": 0x1000,
}
INCOMPAT = {
    "compression": 0x0001,
    "filetype": 0x0002,
    "needs_recovery": 0x0004,
    "journal_dev": 0x0008,
    "meta_bg": 0x0010,
    "extent": 0x0040,
    "64bit": 0x0080,
    "mmp": 0x0100,
    "flex_bg": 0x0200,
    "ea_inode": 0x0400,
    "dirdata": 0x1000,
    "metadata_csum_seed": 0x2000,
    "large_dir": 0x4000,
    "inline_data": 0x8000,
    "encrypt": 0x10000,
    "casefold": 0x20000,
}
RO_COMPAT = {
    "sparse_super": 0x0001,
    "large_file": 0x0002,
    "btree_dir": 0x0004,
    "huge_file": 0x0008,
    "uninit_bg": 0x0010,
    "dir_nlink": 0x0020,
    "extra_isize": 0x0040,
    "snapshot": 0x0080,
    "quota": 0x0100,
    "bigalloc": 0x0200,
    "metadata_csum": 0x0400,
    "replica": 0x0800,
    "read-only": 0x1000,
    "project": 0x2000,
    "shared_blocks": 0x4000,
    "verity": 0x8000,
    "orphan_present": 0x10000,
}
FEATURE_ALIASES = {"extents": "extent", "gdt_csum": "uninit_bg", "64BIT": "64bit"}

# What the reader understands.  An incompat bit outside this set refuses the
# image; an ro_compat bit outside the writer set refuses writing only.
READ_INCOMPAT = (
    INCOMPAT["filetype"] | INCOMPAT["needs_recovery"] | INCOMPAT["meta_bg"]
    | INCOMPAT["extent"] | INCOMPAT["64bit"] | INCOMPAT["mmp"] | INCOMPAT["flex_bg"]
    | INCOMPAT["ea_inode"] | INCOMPAT["metadata_csum_seed"] | INCOMPAT["large_dir"]
    | INCOMPAT["inline_data"]
)
WRITE_INCOMPAT = (
    INCOMPAT["filetype"] | INCOMPAT["meta_bg"] | INCOMPAT["extent"] | INCOMPAT["64bit"]
    | INCOMPAT["flex_bg"] | INCOMPAT["metadata_csum_seed"] | INCOMPAT["large_dir"]
    | INCOMPAT["inline_data"] | INCOMPAT["ea_inode"]
)
WRITE_RO_COMPAT = (
    RO_COMPAT["sparse_super"] | RO_COMPAT["large_file"] | RO_COMPAT["huge_file"]
    | RO_COMPAT["uninit_bg"] | RO_COMPAT["dir_nlink"] | RO_COMPAT["extra_isize"]
    | RO_COMPAT["metadata_csum"] | RO_COMPAT["orphan_present"]
)

# Block group flags
BG_INODE_UNINIT = 0x0001
BG_BLOCK_UNINIT = 0x0002
BG_INODE_ZEROED = 0x0004

# Inode flags (i_flags)
SECRM_FL = 0x00000001
UNRM_FL = 0x00000002
COMPR_FL = 0x00000004
SYNC_FL = 0x00000008
IMMUTABLE_FL = 0x00000010
APPEND_FL = 0x00000020
NODUMP_FL = 0x00000040
NOATIME_FL = 0x00000080
ENCRYPT_FL = 0x00000800
INDEX_FL = 0x00001000
IMAGIC_FL = 0x00002000
JOURNAL_DATA_FL = 0x00004000
NOTAIL_FL = 0x00008000
DIRSYNC_FL = 0x00010000
TOPDIR_FL = 0x00020000
HUGE_FILE_FL = 0x00040000
EXTENTS_FL = 0x00080000
VERITY_FL = 0x00100000
EA_INODE_FL = 0x00200000
INLINE_DATA_FL = 0x10000000
PROJINHERIT_FL = 0x20000000
CASEFOLD_FL = 0x40000000

# File mode bits (i_mode)
S_IFMT = 0o170000
S_IFSOCK = 0o140000
S_IFLNK = 0o120000
S_IFREG = 0o100000
S_IFBLK = 0o060000
S_IFDIR = 0o040000
S_IFCHR = 0o020000
S_IFIFO = 0o010000

# Directory entry file types
FT_UNKNOWN = 0
FT_REG_FILE = 1
FT_DIR = 2
FT_CHRDEV = 3
FT_BLKDEV = 4
FT_FIFO = 5
FT_SOCK = 6
FT_SYMLINK = 7
FT_DIR_CSUM = 0xDE  # file type of the checksum tail's fake entry

MODE_TO_FT = {
    S_IFREG: FT_REG_FILE,
    S_IFDIR: FT_DIR,
    S_IFCHR: FT_CHRDEV,
    S_IFBLK: FT_BLKDEV,
    S_IFIFO: FT_FIFO,
    S_IFSOCK: FT_SOCK,
    S_IFLNK: FT_SYMLINK,
}
FT_TO_MODE = {v: k for k, v in MODE_TO_FT.items()}

# Extents
EXT4_EXT_MAGIC = 0xF30A
EXT_INIT_MAX_LEN = 1 << 15
EXT_UNWRITTEN_MAX_LEN = EXT_INIT_MAX_LEN - 1
EXT_MAX_DEPTH = 5

# htree hash versions (s_def_hash_version, dx_root_info.hash_version)
HASH_LEGACY = 0
HASH_HALF_MD4 = 1
HASH_TEA = 2
HASH_LEGACY_UNSIGNED = 3
HASH_HALF_MD4_UNSIGNED = 4
HASH_TEA_UNSIGNED = 5
HASH_SIPHASH = 6
HASH_NAMES = {
    "legacy": HASH_LEGACY,
    "half_md4": HASH_HALF_MD4,
    "tea": HASH_TEA,
}
DX_HTREE_LEVELS = 2
DX_HTREE_LEVELS_LARGEDIR = 3

# Extended attributes
XATTR_MAGIC = 0xEA020000
XATTR_INDEX_PREFIXES = {
    1: "user.",
    2: "system.posix_acl_access",
    3: "system.posix_acl_default",
    4: "trusted.",
    6: "security.",
    7: "system.",
    8: "system.richacl",
}
XATTR_ROUND = 3  # entries and values are padded to 4 bytes

# Inline data
INLINE_DATA_XATTR_NAME = "data"  # system.data
MIN_INLINE_DATA_SIZE = 60

# jbd2
JBD2_DESCRIPTOR_BLOCK = 1
JBD2_COMMIT_BLOCK = 2
JBD2_SUPERBLOCK_V1 = 3
JBD2_SUPERBLOCK_V2 = 4
JBD2_REVOKE_BLOCK = 5
JBD2_FEATURE_COMPAT_CHECKSUM = 0x1
JBD2_FEATURE_INCOMPAT_REVOKE = 0x1
JBD2_FEATURE_INCOMPAT_64BIT = 0x2
JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT = 0x4
JBD2_FEATURE_INCOMPAT_CSUM_V2 = 0x8
JBD2_FEATURE_INCOMPAT_CSUM_V3 = 0x10
JBD2_FEATURE_INCOMPAT_FAST_COMMIT = 0x20
JBD2_CRC32C_CHKSUM = 4
JBD2_MIN_JOURNAL_BLOCKS = 1024

CRC32C_CHKSUM = 1
