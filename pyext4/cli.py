"""The ``pyext4`` command line: parses options, calls the public API, formats results."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from .errors import Ext4Error, InvalidOptions

PROG = "pyext4"


def fail(message: str) -> NoReturn:
    """Print one error line and exit 1."""
    raise click.exceptions.Exit(_print_error(message))


def _print_error(message: str) -> int:
    message = " ".join(str(message).split("\n"))
    click.echo(f"{PROG}: error: {message}", err=True)
    return 1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, Ext4Error):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return str(exc) or type(exc).__name__


class Pyext4Group(click.Group):
    """A click group whose commands fail with one line and status 1 (2 for usage errors)."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug")) or os.environ.get("PYEXT4_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (Ext4Error, OSError, ValueError) as exc:
            if debug:
                raise
            if isinstance(exc, BrokenPipeError):
                raise click.exceptions.Exit(1) from None
            raise click.exceptions.Exit(_print_error(_describe(exc))) from None
        except KeyboardInterrupt:
            raise click.exceptions.Exit(_print_error("interrupted")) from None
        except Exception as exc:  # pragma: no cover - last resort: still one line
            if debug:
                raise
            raise click.exceptions.Exit(
                _print_error(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
            ) from None


@click.group(cls=Pyext4Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.version_option(package_name="pyext4", prog_name=PROG)
def main(debug: bool) -> None:
    """Create, inspect and change ext4 images without mkfs.ext4, debugfs, mount or root."""


# ====================================================================== mkfs
_USAGE_TYPES = {
    # mke2fs.conf's [fs_types]: (block size, inode ratio, inode size)
    "default": (4096, 16384, 256),
    "small": (1024, 4096, None),
    "floppy": (1024, 8192, None),
    "big": (None, 32768, None),
    "huge": (None, 65536, None),
    "news": (None, 4096, None),
    "largefile": (None, 1048576, None),
    "largefile4": (None, 4194304, None),
    "hurd": (4096, None, 128),
}


def _parse_extended(text: str | None) -> dict[str, Any]:
    """mke2fs -E options: root_owner=U:G, hash_seed=UUID (others are refused)."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        if key == "root_owner":
            if not value:
                out["root_owner"] = (os.getuid(), os.getgid())
                continue
            uid_s, sep, gid_s = value.partition(":")
            if not sep or not uid_s.isdigit() or not gid_s.isdigit():
                raise InvalidOptions(f"invalid root_owner {value!r}: expected UID:GID")
            out["root_owner"] = (int(uid_s), int(gid_s))
        elif key == "hash_seed":
            out["hash_seed"] = value
        elif key in ("lazy_itable_init", "lazy_journal_init", "nodiscard", "discard", "assume_storage_prezeroed"):
            continue  # accepted for compatibility: pyext4 always leaves unwritten space as holes
        else:
            raise InvalidOptions(f"unknown extended option {key!r} (supported: root_owner=U:G, hash_seed=UUID)")
    return out


def _parse_journal(text: str | None, block_size: int) -> int | None:
    """-J size=MiB -> journal blocks."""
    if not text:
        return None
    blocks: int | None = None
    for item in text.split(","):
        key, _, value = item.strip().partition("=")
        if key == "size":
            try:
                mib = int(value)
            except ValueError:
                raise InvalidOptions(f"invalid journal size {value!r} (MiB)") from None
            blocks = mib * 1024 // (block_size // 1024)
        elif key in ("location", "fast_commit_size"):
            raise InvalidOptions(f"journal option {key!r} is not supported")
        else:
            raise InvalidOptions(f"unknown journal option {key!r} (supported: size=MiB)")
    return blocks


def _source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidOptions(f"SOURCE_DATE_EPOCH must be an integer, not {value!r}") from None


def _existing_fs(path: str) -> str | None:
    """A one-line description when ``path`` already holds an ext2/3/4 filesystem."""
    try:
        with open(path, "rb") as f:
            f.seek(1024)
            raw = f.read(1024)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    if len(raw) < 1024 or raw[56:58] != b"\x53\xef":
        return None
    import datetime
    import struct

    mkfs_time = struct.unpack_from("<I", raw, 0x108)[0]
    label = raw[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", "replace")
    when = datetime.datetime.fromtimestamp(mkfs_time, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    desc = f"an ext2/ext3/ext4 filesystem created {when}"
    if label:
        desc += f" labelled {label!r}"
    return desc


@main.command("mkfs")
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("size", required=False)
@click.option("-b", "block_size", type=int, help="Block size in bytes (1024, 2048, 4096). Default 4096.")
@click.option("-I", "inode_size", type=int, help="Inode size in bytes. Default 256.")
@click.option("-i", "inode_ratio", type=int, help="Bytes per inode. Default 16384.")
@click.option("-N", "inodes", type=int, help="Number of inodes (overrides -i).")
@click.option("-L", "label", default="", help="Volume label (up to 16 bytes).")
@click.option("-U", "uuid", help="Filesystem UUID (or 'null', 'random').")
@click.option("-O", "features", multiple=True, help="Features to add or, with ^, remove (comma separated).")
@click.option("-E", "extended", help="Extended options: root_owner=U:G, hash_seed=UUID.")
@click.option("-J", "journal_opts", help="Journal options: size=MiB.")
@click.option("-m", "reserved_ratio", type=float, default=5.0, show_default=True, help="Reserved blocks percentage.")
@click.option("-G", "flex_bg_size", type=int, default=16, show_default=True, help="Groups per flex group.")
@click.option("-T", "usage_type", type=click.Choice(sorted(_USAGE_TYPES)), help="mke2fs usage type (sets -b/-i/-I defaults).")
@click.option("-t", "fs_type", type=click.Choice(["ext4", "ext2"]), default="ext4", show_default=True,
              help="Filesystem type: ext4, or ext2 (no journal, no extents).")
@click.option("-q", "quiet", is_flag=True, help="Quiet: print nothing on success.")
@click.option("-F", "force", is_flag=True, help="Overwrite an existing filesystem.")
def mkfs_cmd(
    image: str, size: str | None, block_size: int | None, inode_size: int | None, inode_ratio: int | None,
    inodes: int | None, label: str, uuid: str | None, features: tuple[str, ...], extended: str | None,
    journal_opts: str | None, reserved_ratio: float, flex_bg_size: int, usage_type: str | None,
    fs_type: str, quiet: bool, force: bool,
) -> None:
    """Create an ext4 filesystem in IMAGE (a file, created if missing, or a block device).

    SIZE takes K, M, G or T suffixes; without it an existing file keeps its size.
    Time comes from SOURCE_DATE_EPOCH when it is set.
    """
    from .mkfs import mkfs, parse_size

    ub, ur, ui = _USAGE_TYPES.get(usage_type or "default", (None, None, None))
    bs = block_size or ub or 4096
    ext = _parse_extended(extended)
    if uuid is not None and uuid.lower() == "random":
        uuid = None
    if uuid is not None and uuid.lower() == "time":
        uuid = None
    feature_list = list(features)
    if fs_type == "ext2":
        feature_list.insert(0, "^has_journal,^extent,^flex_bg,^huge_file,^dir_nlink,^extra_isize,^64bit,^metadata_csum")
    if size is not None:
        parse_size(size)  # validate before touching the target
    existing = _existing_fs(image)
    if existing and not force:
        fail(f"{image} contains {existing}; use -F to overwrite it")
    if size is None and not os.path.exists(image):
        fail(f"{image}: does not exist; give a SIZE to create it")
    plan = mkfs(
        image,
        size,
        block_size=bs,
        inode_size=inode_size or ui or 256,
        inode_ratio=inode_ratio or ur or 16384,
        inodes=inodes,
        features=feature_list or None,
        label=label,
        uuid=uuid,
        hash_seed=ext.get("hash_seed"),
        root_owner=ext.get("root_owner", (0, 0)),
        journal_blocks=_parse_journal(journal_opts, bs),
        now=_source_date_epoch(),
        reserved_ratio=reserved_ratio,
        flex_bg_size=flex_bg_size,
    )
    if not quiet:
        geo = plan.geo
        out = [
            f"Creating filesystem with {geo.blocks_count} {geo.block_size // 1024}k blocks and {geo.inodes_count} inodes",
            f"Filesystem UUID: {plan.sb.uuid_str}",
        ]
        backups = [geo.group_first_block(g) for g in geo.backup_groups if g]
        if backups:
            out.append("Superblock backups stored on blocks: ")
            out.append("\t" + ", ".join(str(b) for b in backups))
        if plan.journal_blocks:
            out.append(f"Journal: {plan.journal_blocks} blocks")
        out.append("Done.")
        click.echo("\n".join(out))


def run(argv: list[str] | None = None) -> int:
    """Entry point for tests: run the CLI and return its exit status."""
    try:
        main.main(args=argv, prog_name=PROG, standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0




if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
