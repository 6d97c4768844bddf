"""Every on-disk structure declared once, with construct and the kernel's field names.

This module is the single source of truth for byte layouts.  The hot paths do
not import construct: ``_codecs.py`` holds ``struct`` formats generated from
these declarations by :func:`render_codecs` (``python -m pyext4.layout``), and
a test checks that the generated file is current and that both decoders agree.
Checksums are deliberately absent from the declarations: they need context
(seed, inode number, group) and live in ``csum.py``.
"""

from __future__ import annotations

from typing import Any

from construct import (
    Array,
    Bytes,
    Int8ul,
    Int16ub,
    Int16ul,
    Int32ub,
    Int32ul,
    Int64ul,
    Struct,
)

# ---------------------------------------------------------------- superblock
ext4_super_block = Struct(
    "s_inodes_count" / Int32ul,
    "s_blocks_count_lo" / Int32ul,
    "s_r_blocks_count_lo" / Int32ul,
    "s_free_blocks_count_lo" / Int32ul,
    "s_free_inodes_count" / Int32ul,
    "s_first_data_block" / Int32ul,
    "s_log_block_size" / Int32ul,
    "s_log_cluster_size" / Int32ul,
    "s_blocks_per_group" / Int32ul,
    "s_clusters_per_group" / Int32ul,
    "s_inodes_per_group" / Int32ul,
    "s_mtime" / Int32ul,
    "s_wtime" / Int32ul,
    "s_mnt_count" / Int16ul,
    "s_max_mnt_count" / Int16ul,
    "s_magic" / Int16ul,
    "s_state" / Int16ul,
    "s_errors" / Int16ul,
    "s_minor_rev_level" / Int16ul,
    "s_lastcheck" / Int32ul,
    "s_checkinterval" / Int32ul,
    "s_creator_os" / Int32ul,
    "s_rev_level" / Int32ul,
    "s_def_resuid" / Int16ul,
    "s_def_resgid" / Int16ul,
    "s_first_ino" / Int32ul,
    "s_inode_size" / Int16ul,
    "s_block_group_nr" / Int16ul,
    "s_feature_compat" / Int32ul,
    "s_feature_incompat" / Int32ul,
    "s_feature_ro_compat" / Int32ul,
    "s_uuid" / Bytes(16),
    "s_volume_name" / Bytes(16),
    "s_last_mounted" / Bytes(64),
    "s_algorithm_usage_bitmap" / Int32ul,
    "s_prealloc_blocks" / Int8ul,
    "s_prealloc_dir_blocks" / Int8ul,
    "s_reserved_gdt_blocks" / Int16ul,
    "s_journal_uuid" / Bytes(16),
    "s_journal_inum" / Int32ul,
    "s_journal_dev" / Int32ul,
    "s_last_orphan" / Int32ul,
    "s_hash_seed" / Bytes(16),
    "s_def_hash_version" / Int8ul,
    "s_jnl_backup_type" / Int8ul,
    "s_desc_size" / Int16ul,
    "s_default_mount_opts" / Int32ul,
    "s_first_meta_bg" / Int32ul,
    "s_mkfs_time" / Int32ul,
    "s_jnl_blocks" / Array(17, Int32ul),
    "s_blocks_count_hi" / Int32ul,
    "s_r_blocks_count_hi" / Int32ul,
    "s_free_blocks_count_hi" / Int32ul,
    "s_min_extra_isize" / Int16ul,
    "s_want_extra_isize" / Int16ul,
    "s_flags" / Int32ul,
    "s_raid_stride" / Int16ul,
    "s_mmp_interval" / Int16ul,
    "s_mmp_block" / Int64ul,
    "s_raid_stripe_width" / Int32ul,
    "s_log_groups_per_flex" / Int8ul,
    "s_checksum_type" / Int8ul,
    "s_encryption_level" / Int8ul,
    "s_reserved_pad" / Int8ul,
    "s_kbytes_written" / Int64ul,
    "s_snapshot_inum" / Int32ul,
    "s_snapshot_id" / Int32ul,
    "s_snapshot_r_blocks_count" / Int64ul,
    "s_snapshot_list" / Int32ul,
    "s_error_count" / Int32ul,
    "s_first_error_time" / Int32ul,
    "s_first_error_ino" / Int32ul,
    "s_first_error_block" / Int64ul,
    "s_first_error_func" / Bytes(32),
    "s_first_error_line" / Int32ul,
    "s_last_error_time" / Int32ul,
    "s_last_error_ino" / Int32ul,
    "s_last_error_line" / Int32ul,
    "s_last_error_block" / Int64ul,
    "s_last_error_func" / Bytes(32),
    "s_mount_opts" / Bytes(64),
    "s_usr_quota_inum" / Int32ul,
    "s_grp_quota_inum" / Int32ul,
    "s_overhead_clusters" / Int32ul,
    "s_backup_bgs" / Array(2, Int32ul),
    "s_encrypt_algos" / Bytes(4),
    "s_encrypt_pw_salt" / Bytes(16),
    "s_lpf_ino" / Int32ul,
    "s_prj_quota_inum" / Int32ul,
    "s_checksum_seed" / Int32ul,
    "s_wtime_hi" / Int8ul,
    "s_mtime_hi" / Int8ul,
    "s_mkfs_time_hi" / Int8ul,
    "s_lastcheck_hi" / Int8ul,
    "s_first_error_time_hi" / Int8ul,
    "s_last_error_time_hi" / Int8ul,
    "s_first_error_errcode" / Int8ul,
    "s_last_error_errcode" / Int8ul,
    "s_encoding" / Int16ul,
    "s_encoding_flags" / Int16ul,
    "s_orphan_file_inum" / Int32ul,
    "s_reserved" / Bytes(376),
    "s_checksum" / Int32ul,
)

# ---------------------------------------------------------- group descriptor
ext4_group_desc_32 = Struct(
    "bg_block_bitmap_lo" / Int32ul,
    "bg_inode_bitmap_lo" / Int32ul,
    "bg_inode_table_lo" / Int32ul,
    "bg_free_blocks_count_lo" / Int16ul,
    "bg_free_inodes_count_lo" / Int16ul,
    "bg_used_dirs_count_lo" / Int16ul,
    "bg_flags" / Int16ul,
    "bg_exclude_bitmap_lo" / Int32ul,
    "bg_block_bitmap_csum_lo" / Int16ul,
    "bg_inode_bitmap_csum_lo" / Int16ul,
    "bg_itable_unused_lo" / Int16ul,
    "bg_checksum" / Int16ul,
)

ext4_group_desc_64 = Struct(
    *ext4_group_desc_32.subcons,
    "bg_block_bitmap_hi" / Int32ul,
    "bg_inode_bitmap_hi" / Int32ul,
    "bg_inode_table_hi" / Int32ul,
    "bg_free_blocks_count_hi" / Int16ul,
    "bg_free_inodes_count_hi" / Int16ul,
    "bg_used_dirs_count_hi" / Int16ul,
    "bg_itable_unused_hi" / Int16ul,
    "bg_exclude_bitmap_hi" / Int32ul,
    "bg_block_bitmap_csum_hi" / Int16ul,
    "bg_inode_bitmap_csum_hi" / Int16ul,
    "bg_reserved" / Int32ul,
)

# --------------------------------------------------------------------- inode
# The 128-byte base inode (ext2's "good old" size); i_osd2 is the Linux variant.
ext4_inode = Struct(
    "i_mode" / Int16ul,
    "i_uid" / Int16ul,
    "i_size_lo" / Int32ul,
    "i_atime" / Int32ul,
    "i_ctime" / Int32ul,
    "i_mtime" / Int32ul,
    "i_dtime" / Int32ul,
    "i_gid" / Int16ul,
    "i_links_count" / Int16ul,
    "i_blocks_lo" / Int32ul,
    "i_flags" / Int32ul,
    "l_i_version" / Int32ul,
    "i_block" / Bytes(60),
    "i_generation" / Int32ul,
    "i_file_acl_lo" / Int32ul,
    "i_size_high" / Int32ul,
    "i_obso_faddr" / Int32ul,
    "l_i_blocks_high" / Int16ul,
    "l_i_file_acl_high" / Int16ul,
    "l_i_uid_high" / Int16ul,
    "l_i_gid_high" / Int16ul,
    "l_i_checksum_lo" / Int16ul,
    "l_i_reserved" / Int16ul,
)

# The fields after byte 128, present up to i_extra_isize.
ext4_inode_extra = Struct(
    "i_extra_isize" / Int16ul,
    "i_checksum_hi" / Int16ul,
    "i_ctime_extra" / Int32ul,
    "i_mtime_extra" / Int32ul,
    "i_atime_extra" / Int32ul,
    "i_crtime" / Int32ul,
    "i_crtime_extra" / Int32ul,
    "i_version_hi" / Int32ul,
    "i_projid" / Int32ul,
)

# ------------------------------------------------------------------- extents
ext4_extent_header = Struct(
    "eh_magic" / Int16ul,
    "eh_entries" / Int16ul,
    "eh_max" / Int16ul,
    "eh_depth" / Int16ul,
    "eh_generation" / Int32ul,
)
ext4_extent = Struct(
    "ee_block" / Int32ul,
    "ee_len" / Int16ul,
    "ee_start_hi" / Int16ul,
    "ee_start_lo" / Int32ul,
)
ext4_extent_idx = Struct(
    "ei_block" / Int32ul,
    "ei_leaf_lo" / Int32ul,
    "ei_leaf_hi" / Int16ul,
    "ei_unused" / Int16ul,
)
ext4_extent_tail = Struct(
    "et_checksum" / Int32ul,
)

# --------------------------------------------------------------- directories
# The fixed head of ext4_dir_entry_2; the name follows.
ext4_dir_entry_2 = Struct(
    "inode" / Int32ul,
    "rec_len" / Int16ul,
    "name_len" / Int8ul,
    "file_type" / Int8ul,
)
# Old-style entry without a file type (no "filetype" feature).
ext4_dir_entry = Struct(
    "inode" / Int32ul,
    "rec_len" / Int16ul,
    "name_len" / Int16ul,
)
ext4_dir_entry_tail = Struct(
    "det_reserved_zero1" / Int32ul,
    "det_rec_len" / Int16ul,
    "det_reserved_zero2" / Int8ul,
    "det_reserved_ft" / Int8ul,
    "det_checksum" / Int32ul,
)
# dx_root: "." (12 bytes), ".." head (8 bytes + 4 name bytes), then the info.
dx_root_info = Struct(
    "reserved_zero" / Int32ul,
    "hash_version" / Int8ul,
    "info_length" / Int8ul,
    "indirect_levels" / Int8ul,
    "unused_flags" / Int8ul,
)
dx_countlimit = Struct(
    "limit" / Int16ul,
    "count" / Int16ul,
)
dx_entry = Struct(
    "hash" / Int32ul,
    "block" / Int32ul,
)
dx_tail = Struct(
    "dt_reserved" / Int32ul,
    "dt_checksum" / Int32ul,
)

# ------------------------------------------------------- extended attributes
ext4_xattr_header = Struct(
    "h_magic" / Int32ul,
    "h_refcount" / Int32ul,
    "h_blocks" / Int32ul,
    "h_hash" / Int32ul,
    "h_checksum" / Int32ul,
    "h_reserved" / Bytes(12),
)
ext4_xattr_ibody_header = Struct(
    "h_magic" / Int32ul,
)
# The fixed head of an entry; e_name (e_name_len bytes) follows.
ext4_xattr_entry = Struct(
    "e_name_len" / Int8ul,
    "e_name_index" / Int8ul,
    "e_value_offs" / Int16ul,
    "e_value_inum" / Int32ul,
    "e_value_size" / Int32ul,
    "e_hash" / Int32ul,
)

# ---------------------------------------------------------------------- jbd2
journal_header_t = Struct(
    "h_magic" / Int32ub,
    "h_blocktype" / Int32ub,
    "h_sequence" / Int32ub,
)
journal_superblock_t = Struct(
    "s_header" / journal_header_t,
    "s_blocksize" / Int32ub,
    "s_maxlen" / Int32ub,
    "s_first" / Int32ub,
    "s_sequence" / Int32ub,
    "s_start" / Int32ub,
    "s_errno" / Int32ub,
    "s_feature_compat" / Int32ub,
    "s_feature_incompat" / Int32ub,
    "s_feature_ro_compat" / Int32ub,
    "s_uuid" / Bytes(16),
    "s_nr_users" / Int32ub,
    "s_dynsuper" / Int32ub,
    "s_max_transaction" / Int32ub,
    "s_max_trans_data" / Int32ub,
    "s_checksum_type" / Int8ul,
    "s_padding2" / Bytes(3),
    "s_num_fc_blks" / Int32ub,
    "s_head" / Int32ub,
    "s_padding" / Bytes(160),
    "s_checksum" / Int32ub,
    "s_users" / Bytes(768),
)
journal_block_tag3_t = Struct(
    "t_blocknr" / Int32ub,
    "t_flags" / Int32ub,
    "t_blocknr_high" / Int32ub,
    "t_checksum" / Int32ub,
)
journal_block_tag_t = Struct(
    "t_blocknr" / Int32ub,
    "t_checksum" / Int16ub,
    "t_flags" / Int16ub,
    "t_blocknr_high" / Int32ub,
)
commit_header = Struct(
    "h_magic" / Int32ub,
    "h_blocktype" / Int32ub,
    "h_sequence" / Int32ub,
    "h_chksum_type" / Int8ul,
    "h_chksum_size" / Int8ul,
    "h_padding" / Bytes(2),
    "h_chksum" / Bytes(32),
    "h_commit_sec" / Int32ub,
    "h_commit_nsec" / Int32ub,
)

# Everything render_codecs() turns into a struct codec, by the name it exports.
CODEC_LAYOUTS: dict[str, Any] = {
    "SUPERBLOCK": ext4_super_block,
    "GROUP_DESC_32": ext4_group_desc_32,
    "GROUP_DESC_64": ext4_group_desc_64,
    "INODE": ext4_inode,
    "INODE_EXTRA": ext4_inode_extra,
    "EXTENT_HEADER": ext4_extent_header,
    "EXTENT": ext4_extent,
    "EXTENT_IDX": ext4_extent_idx,
    "EXTENT_TAIL": ext4_extent_tail,
    "DIR_ENTRY_2": ext4_dir_entry_2,
    "DIR_ENTRY": ext4_dir_entry,
    "DIR_ENTRY_TAIL": ext4_dir_entry_tail,
    "DX_ROOT_INFO": dx_root_info,
    "DX_COUNTLIMIT": dx_countlimit,
    "DX_ENTRY": dx_entry,
    "DX_TAIL": dx_tail,
    "XATTR_HEADER": ext4_xattr_header,
    "XATTR_IBODY_HEADER": ext4_xattr_ibody_header,
    "XATTR_ENTRY": ext4_xattr_entry,
    "JOURNAL_HEADER": journal_header_t,
    "JOURNAL_SUPERBLOCK": journal_superblock_t,
    "JOURNAL_BLOCK_TAG3": journal_block_tag3_t,
    "JOURNAL_BLOCK_TAG": journal_block_tag_t,
    "COMMIT_HEADER": commit_header,
}

_INT_CODES = {
    (1, False): "B",
    (2, False): "H",
    (4, False): "I",
    (8, False): "Q",
}


def _flatten(struct: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(field name, struct code) pairs for a construct Struct, nested structs flattened."""
    fields: list[tuple[str, str]] = []
    for sub in struct.subcons:
        name = prefix + sub.name
        inner = getattr(sub, "subcon", sub)
        if isinstance(inner, Struct):
            fields.extend(_flatten(inner, name + "."))
        elif type(inner).__name__ == "Array":
            code = _code_of(inner.subcon)
            fields.append((name, f"{inner.count}{code}"))
        else:
            fields.append((name, _code_of(inner)))
    return fields


def _code_of(con: Any) -> str:
    name = type(con).__name__
    if name == "FormatField":
        return str(con.fmtstr[1:])
    if name in ("Bytes", "StringEncoded"):
        return f"{con.length}s"
    raise TypeError(f"no struct code for {con!r}")


def _byte_order(struct: Any) -> str:
    orders = set()
    for sub in struct.subcons:
        inner = getattr(sub, "subcon", sub)
        if isinstance(inner, Struct):
            orders.add(_byte_order(inner))
            continue
        if type(inner).__name__ == "Array":
            inner = inner.subcon
        if type(inner).__name__ == "FormatField" and inner.length > 1:
            orders.add(inner.fmtstr[0])
    orders.discard("")
    if len(orders) > 1:
        raise TypeError("mixed byte order")
    return orders.pop() if orders else "<"


def codec_spec(layout: Any) -> tuple[str, tuple[str, ...]]:
    """The struct format and the flat field names (arrays expanded) of a layout."""
    order = _byte_order(layout)
    fmt = order
    names: list[str] = []
    for name, code in _flatten(layout):
        fmt += code
        if code[:-1].isdigit() and code[-1] != "s":
            count = int(code[:-1])
            names.extend(f"{name}[{i}]" for i in range(count))
        else:
            names.append(name)
    return fmt, tuple(names)


def render_codecs() -> str:
    """The text of ``_codecs.py``."""
    lines = [
        '"""Generated by ``python -m pyext4.layout`` from layout.py: struct codecs for hot loops."""',
        "",
        "# Do not edit: tests/unit/test_layout.py checks this file against layout.py.",
        "",
        "from __future__ import annotations",
        "",
        "import struct",
        "",
    ]
    for export, layout in CODEC_LAYOUTS.items():
        fmt, names = codec_spec(layout)
        lines.append(f"{export} = struct.Struct({fmt!r})")
        lines.append(f"{export}_FIELDS = (")
        for n in names:
            lines.append(f"    {n!r},")
        lines.append(")")
        for i, n in enumerate(names):
            ident = n.replace("[", "_").replace("]", "").replace(".", "_").upper()
            lines.append(f"{export}_{ident} = {i}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    import pathlib

    target = pathlib.Path(__file__).with_name("_codecs.py")
    target.write_text(render_codecs())
    print(f"wrote {target}")
