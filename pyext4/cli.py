"""The ``pyext4`` command line: parses options, calls the public API, formats results."""

from __future__ import annotations

import os
import sys
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


def _usage_error(exc: click.UsageError) -> int:
    """One line for a usage error (click prints a usage block): the problem and where help is; status 2."""
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    _print_error(exc.format_message() + hint)
    return 2


def _with_image(ctx: click.Context, exc: BaseException, message: str) -> str:
    """A damaged or refused image is named in the message (paths inside it already say where)."""
    from .errors import NoSpace, PathError

    image = ctx.meta.get("pyext4.image")
    if (image and isinstance(exc, Ext4Error) and not isinstance(exc, (PathError, NoSpace, InvalidOptions))
            and not message.startswith(image)):
        return f"{image}: {message}"
    return message


def _note_image(image: str) -> None:
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta["pyext4.image"] = image


class Pyext4Group(click.Group):
    """A click group whose commands fail with one line and status 1 (2 for usage errors)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise  # plain `pyext4`: the help
        except click.UsageError as exc:
            raise click.exceptions.Exit(_usage_error(exc)) from None

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug")) or os.environ.get("PYEXT4_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a command without its arguments: its help
        except click.UsageError as exc:
            raise click.exceptions.Exit(_usage_error(exc)) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (Ext4Error, OSError, ValueError) as exc:
            if debug:
                raise
            if isinstance(exc, BrokenPipeError):
                raise click.exceptions.Exit(1) from None
            raise click.exceptions.Exit(_print_error(_with_image(ctx, exc, _describe(exc)))) from None
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
@click.option("-b", "block_size", type=int, help="Block size in bytes (1024 to 65536; above the page size most kernels cannot mount it). Default 4096.")
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
@click.option("-d", "source", help="Populate from a directory, a tar archive (gz/bz2/xz), '-' (tar on stdin) or an ext4 image.")
@click.option("--owner", "owner_text", help="With -d: give every entry this UID:GID.")
@click.option("--rules", "rules_file", type=click.Path(exists=True, dir_okay=False),
              help="With -d: lines of 'GLOB UID:GID [MODE]' (later lines win).")
@click.option("--timestamp", type=int, help="Clamp every time to this (seconds); default SOURCE_DATE_EPOCH.")
@click.option("--seed", help="Derive the UUID and hash seed from this text (default: the timestamp).")
@click.option("--headroom", type=float, default=20.0, show_default=True, help="With SIZE 'auto': free space to add, in percent.")
@click.option("--no-xattrs", is_flag=True, help="With -d: do not copy extended attributes.")
@click.option("-q", "quiet", is_flag=True, help="Quiet: print nothing on success (and no progress bar).")
@click.option("-F", "force", is_flag=True, help="Overwrite an existing filesystem.")
def mkfs_cmd(
    image: str, size: str | None, block_size: int | None, inode_size: int | None, inode_ratio: int | None,
    inodes: int | None, label: str, uuid: str | None, features: tuple[str, ...], extended: str | None,
    journal_opts: str | None, reserved_ratio: float, flex_bg_size: int, usage_type: str | None,
    fs_type: str, source: str | None, owner_text: str | None, rules_file: str | None, timestamp: int | None,
    seed: str | None, headroom: float, no_xattrs: bool, quiet: bool, force: bool,
) -> None:
    """Create an ext4 filesystem in IMAGE (a file, created if missing, or a block device).

    SIZE takes K, M, G or T suffixes, or 'auto' with -d; without it an existing
    file keeps its size.  Time comes from --timestamp or SOURCE_DATE_EPOCH when set.
    """
    from .mkfs import mkfs, parse_size

    ub, ur, ui = _USAGE_TYPES.get(usage_type or "default", (None, None, None))
    bs = block_size or ub or 4096
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    if bs > page:  # as mke2fs warns (and goes on)
        click.echo(f"{PROG}: warning: {bs}-byte blocks are larger than the page size ({page}): "
                   "most kernels cannot mount the image", err=True)
    ext = _parse_extended(extended)
    if uuid is not None and uuid.lower() in ("random", "time"):
        uuid = None
    feature_list = list(features)
    if fs_type == "ext2":
        feature_list.insert(0, "^has_journal,^extent,^flex_bg,^huge_file,^dir_nlink,^extra_isize,^64bit,^metadata_csum")
    auto = size is not None and size.lower() == "auto"
    if auto and source is None:
        raise click.UsageError("SIZE 'auto' needs a source (-d)")
    if size is not None and not auto:
        parse_size(size)  # validate before touching the target
    when = timestamp if timestamp is not None else _source_date_epoch()
    existing = _existing_fs(image)
    if existing and not force:
        fail(f"{image} contains {existing}; use -F to overwrite it")
    if size is None and not os.path.exists(image):
        fail(f"{image}: does not exist; give a SIZE to create it")
    kwargs: dict[str, Any] = dict(
        block_size=bs,
        inode_size=inode_size or ui or 256,
        inode_ratio=inode_ratio or ur or 16384,
        inodes=inodes or None,  # -N 0 means the default, as for mke2fs
        features=feature_list or None,
        label=label,
        uuid=uuid,
        hash_seed=ext.get("hash_seed"),
        root_owner=ext.get("root_owner", (0, 0)),
        journal_blocks=_parse_journal(journal_opts, bs),
        now=when,
        reserved_ratio=reserved_ratio,
        flex_bg_size=flex_bg_size,
    )
    if source is None:
        plan = mkfs(image, size, **kwargs)
        if not quiet:
            _mkfs_summary(plan)
        return
    _mkfs_populate(image, size, auto, source, kwargs, ext, owner_text, rules_file, when, seed, headroom,
                   no_xattrs, quiet)


def _mkfs_summary(plan: Any) -> None:
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


def _derived_uuid(seed_text: str, what: str) -> str:
    import uuid as uuidlib

    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"pyext4:{what}:{seed_text}"))


class _PopulateProgress:
    """mkfs -d's progress: a click bar on ``stream`` once populating has taken ``delay`` seconds and only
    when ``stream`` is a terminal; never with ``quiet``.  Called with byte counts as data is copied."""

    def __init__(self, total: int, *, quiet: bool, stream: Any = None, clock: Any = None,
                 delay: float = 1.0) -> None:
        import time

        self.total = max(total, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock or time.monotonic
        self.delay = delay
        self.started = self.clock()
        self.done = 0
        self.bar: Any = None
        try:
            tty = self.stream.isatty()
        except (AttributeError, ValueError, OSError):
            tty = False
        self.enabled = not quiet and tty

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        if not self.enabled:
            return
        if self.bar is None:
            if self.clock() - self.started < self.delay:
                return
            self.bar = click.progressbar(length=self.total, label="populating", file=self.stream)
            self.bar.__enter__()
            self.bar.update(self.done)
        else:
            self.bar.update(nbytes)

    @property
    def shown(self) -> bool:
        return self.bar is not None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _mkfs_populate(image: str, size: str | None, auto: bool, source: str, kwargs: dict[str, Any],
                   ext: dict[str, Any], owner_text: str | None, rules_file: str | None, when: int | None,
                   seed: str | None, headroom: float, no_xattrs: bool, quiet: bool) -> None:
    import gc
    import shutil
    import tempfile

    from .mkfs import MkfsOptions, make_plan, mkfs, parse_size, resolve_features
    from .populate import parse_rules, populate, source_needs
    from .reader import Filesystem

    owner = _parse_owner(owner_text)
    rules = None
    if rules_file:
        with open(rules_file, encoding="utf-8") as f:
            rules = parse_rules(f.read(), origin=rules_file)
    if headroom < 0:
        raise click.BadParameter("must not be negative", param_hint="--headroom")
    if seed is None and when is not None:
        seed = str(when)
    if seed is not None:
        if kwargs["uuid"] is None:
            kwargs["uuid"] = _derived_uuid(seed, "uuid")
        if kwargs["hash_seed"] is None:
            kwargs["hash_seed"] = _derived_uuid(seed, "hash_seed")
    features = resolve_features(kwargs["features"])
    bs = kwargs["block_size"]
    spool = None
    created = not os.path.exists(image)
    try:
        if source == "-":
            spool = tempfile.NamedTemporaryFile(prefix="pyext4-stdin-", suffix=".tar", delete=False)
            shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
            spool.close()
            source_path = spool.name
        else:
            source_path = source
        if not os.path.exists(source_path):
            fail(f"{source}: no such file or directory")
        exclude = set()
        if not created:  # an image inside the source tree is not copied into itself
            st = os.stat(image)
            exclude.add((st.st_dev, st.st_ino))
        nodes, needs = source_needs(
            source_path, bs, extents="extent" in features, dir_index="dir_index" in features,
            inode_size=kwargs["inode_size"], metadata_csum="metadata_csum" in features, exclude=exclude,
        )

        def plan_for(size_bytes: int, inode_count: int | None) -> Any:
            return make_plan(MkfsOptions(
                size=size_bytes, block_size=bs, inode_size=kwargs["inode_size"],
                inode_ratio=kwargs["inode_ratio"], inodes=inode_count, features=set(features),
                uuid=bytes(16), hash_seed=bytes(16), journal_blocks=kwargs["journal_blocks"],
                reserved_ratio=kwargs["reserved_ratio"], flex_bg_size=kwargs["flex_bg_size"],
            ))

        if auto:
            size_bytes, inode_count, plan = _auto_size(plan_for, needs, bs, headroom, kwargs["inodes"])
            kwargs["inodes"] = inode_count
        else:
            size_bytes = parse_size(size) if size is not None else os.path.getsize(image)
            plan = plan_for(size_bytes, kwargs["inodes"])
            free_blocks, free_inodes = plan.sb.free_blocks_count, plan.sb["s_free_inodes_count"]
            if free_blocks < needs.blocks or free_inodes < needs.inodes:
                fail(f"{size} is too small for {source}: it needs up to {needs.blocks} blocks and "
                     f"{needs.inodes} inodes, the filesystem would have {free_blocks} free blocks and "
                     f"{free_inodes} free inodes (use a larger SIZE or 'auto')")
        plan = mkfs(image, size_bytes, writeback=True, **kwargs)  # populate and the close's fsync overlap it
        progress = _PopulateProgress(sum(n.size for n in nodes if n.kind == "file"), quiet=quiet)
        gc_was = gc.isenabled()
        gc.disable()  # hundreds of thousands of long-lived objects: the cyclic collector only costs time
        try:
            with Filesystem.open(image, writable=True, now=when) as fs:
                report = populate(fs, source_path, owner=owner, rules=rules, root_owner=ext.get("root_owner"),
                                  timestamp=when, xattrs=not no_xattrs, progress=progress, nodes=nodes)
        finally:
            if gc_was:
                gc.enable()
            progress.close()
        for warning in report.warnings:
            if not quiet:
                click.echo(f"{PROG}: warning: {warning}", err=True)
        if not quiet:
            _mkfs_summary(plan)
            click.echo(f"Copied {report.entries} entries ({report.bytes} bytes of file data).")
    except BaseException:
        if created and os.path.exists(image):
            try:
                os.unlink(image)
            except OSError:
                pass
        raise
    finally:
        if spool is not None:
            os.unlink(spool.name)


def _auto_size(plan_for: Any, needs: Any, bs: int, headroom: float, inodes: int | None) -> tuple[int, int | None, Any]:
    """The smallest size (and inode count) whose free blocks beyond the reserved ones hold the content
    plus ``headroom`` percent of it, found from an estimate and a few corrections."""
    factor = 1 + headroom / 100.0
    want_blocks = int(needs.blocks * factor) + 16
    want_inodes = int(needs.inodes * factor) + 16
    inode_count = inodes
    size_bytes = max(8 << 20, want_blocks * bs * 21 // 20 + (4 << 20))
    for _ in range(64):
        size_bytes -= size_bytes % bs
        plan = plan_for(size_bytes, inode_count)
        sb = plan.sb
        spare = sb.free_blocks_count - sb.r_blocks_count
        short_inodes = sb["s_free_inodes_count"] < want_inodes
        if short_inodes:
            if inodes is not None:
                fail(f"-N {inodes} is too few inodes for the source (it needs {needs.inodes})")
            if inode_count != want_inodes + 16:
                inode_count = want_inodes + 16
                continue
        if spare >= want_blocks and not short_inodes:
            return size_bytes, inode_count, plan
        deficit = max(want_blocks - spare, 0)
        size_bytes += deficit * bs * 21 // 20 + 64 * bs
    fail("could not find a size that fits the source")


# ============================================================ reading
def _open_read(image: str, verify: str, allow_dirty: bool) -> Any:
    import warnings

    from .reader import Ext4Warning, Filesystem

    warnings.simplefilter("default", Ext4Warning)
    warnings.showwarning = _show_warning  # type: ignore[assignment]
    _note_image(image)
    return Filesystem.open(image, verify=verify, allow_needs_recovery=allow_dirty)


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    click.echo(f"{PROG}: warning: {message}", err=True)


_verify_option = click.option(
    "--verify", type=click.Choice(["strict", "warn", "off"]), default="strict", show_default=True,
    help="On a checksum mismatch: fail, warn and go on, or do not check.",
)
_dirty_option = click.option(
    "--allow-needs-recovery", "allow_dirty", is_flag=True,
    help="Read an image whose journal was not replayed, as it stands.",
)


def _human(n: int) -> str:
    for unit in ("", "K", "M", "G", "T", "P"):
        if n < 1024 or unit == "P":
            return f"{n}{unit}" if unit == "" else f"{n:.1f}{unit}".replace(".0", "")
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


@main.command("info")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_verify_option
@_dirty_option
def info_cmd(image: str, as_json: bool, verify: str, allow_dirty: bool) -> None:
    """Show the superblock summary (like dumpe2fs -h)."""
    with _open_read(image, verify, allow_dirty) as fs:
        info = fs.info()
    if as_json:
        import json

        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if isinstance(value, list):
            value = " ".join(value)
        click.echo(f"{key + ':':<26}{value}")


def _mode_string(mode: int) -> str:
    import stat

    return stat.filemode(mode)


def _ls_line(st: Any, name: str, target: str | None) -> str:
    import time

    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.st_mtime_ns // 1_000_000_000))
    size = f"{st.rdev_major}, {st.rdev_minor}" if (st.st_mode & 0o170000) in (0o020000, 0o060000) else str(st.st_size)
    line = f"{_mode_string(st.st_mode)} {st.st_nlink:>3} {st.st_uid:>5} {st.st_gid:>5} {size:>10} {when} {name}"
    if target is not None:
        line += f" -> {target}"
    return line


@main.command("ls")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("path", default="/")
@click.option("-l", "long", is_flag=True, help="Long listing: mode, links, owner, size, time.")
@click.option("-R", "recursive", is_flag=True, help="List subdirectories recursively.")
@click.option("-a", "all_", is_flag=True, help="Also show '.' and '..' (ignored; for habit).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per entry).")
@_verify_option
@_dirty_option
def ls_cmd(image: str, path: str, long: bool, recursive: bool, all_: bool, as_json: bool, verify: str,
           allow_dirty: bool) -> None:
    """List a directory of the image."""
    import json

    with _open_read(image, verify, allow_dirty) as fs:
        st = fs.stat(path)
        skipped: list[str] = []
        if not st.is_dir():
            listings = [("", [(path.rsplit("/", 1)[-1] or path, fs.resolve(path))])]
        else:
            listings = []
            if recursive:

                def unreadable(exc: Exception) -> None:
                    skipped.append(str(exc))
                    click.echo(f"{PROG}: warning: {exc}", err=True)

                for dirpath, _dirs, _files in fs.walk(path, onerror=unreadable):
                    listings.append((dirpath, [(e.name, e.ino) for e in sorted(fs.scandir(dirpath), key=lambda e: e.name)]))
            else:
                listings.append((path, [(e.name, e.ino) for e in sorted(fs.scandir(path), key=lambda e: e.name)]))
        out = []
        for dirpath, items in listings:
            if recursive and not as_json:
                out.append(f"{dirpath}:")
            for name, ino in items:
                st = fs.stat_ino(ino)
                target = fs.readlink_ino(ino, fs.inode(ino)).decode("utf-8", "surrogateescape") if st.is_symlink() else None
                if as_json:
                    record = st.as_dict()
                    record["name"] = name
                    record["path"] = (dirpath.rstrip("/") + "/" + name) if dirpath else name
                    if target is not None:
                        record["target"] = target
                    out.append(json.dumps(record, ensure_ascii=False, default=str))
                elif long:
                    out.append(_ls_line(st, name, target))
                else:
                    out.append(name)
            if recursive and not as_json:
                out.append("")
        click.echo("\n".join(out).rstrip("\n"))
        if skipped:
            fail(f"{len(skipped)} directories could not be read (see above)")


@main.command("stat")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-L", "follow", is_flag=True, help="Follow a final symlink.")
@_verify_option
@_dirty_option
def stat_cmd(image: str, path: str, as_json: bool, follow: bool, verify: str, allow_dirty: bool) -> None:
    """Show an inode's metadata."""
    import json
    import time

    with _open_read(image, verify, allow_dirty) as fs:
        ino = fs.resolve(path, follow=follow)
        inode = fs.inode(ino)
        st = fs.stat_ino(ino, inode)
        record = st.as_dict()
        record["path"] = path
        if st.is_symlink():
            record["target"] = fs.readlink_ino(ino, inode).decode("utf-8", "surrogateescape")
        xattrs = fs.xattrs_ino(ino, inode)
        record["xattrs"] = {k: v.decode("utf-8", "backslashreplace") for k, v in xattrs.items()}
        record["extents"] = [[e.logical, e.physical, e.length, e.unwritten] for e in fs.extents_of(ino, inode)][:1000]
    if as_json:
        click.echo(json.dumps(record, indent=2, ensure_ascii=False))
        return

    def when(ns: int) -> str:
        sec, frac = divmod(ns, 1_000_000_000)
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec)) + f".{frac:09d} UTC"

    lines = [
        f"  File: {path}" + (f" -> {record['target']}" if "target" in record else ""),
        f"  Size: {st.st_size:<12} Blocks: {st.st_blocks:<10} {record['type']}",
        f" Inode: {st.st_ino:<12} Links: {st.st_nlink:<10} Flags: {st.st_flags:#x}  Generation: {st.st_generation}",
        f"Access: ({st.st_mode & 0o7777:04o}/{_mode_string(st.st_mode)})  Uid: {st.st_uid}  Gid: {st.st_gid}",
    ]
    if st.st_rdev:
        lines.append(f"Device: {st.rdev_major},{st.rdev_minor}")
    lines += [
        f"Access: {when(st.st_atime_ns)}",
        f"Modify: {when(st.st_mtime_ns)}",
        f"Change: {when(st.st_ctime_ns)}",
        f" Birth: {when(st.st_birthtime_ns)}",
    ]
    for key, value in record["xattrs"].items():
        lines.append(f" Xattr: {key}={value}")
    click.echo("\n".join(lines))


@main.command("cat")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("path")
@_verify_option
@_dirty_option
def cat_cmd(image: str, path: str, verify: str, allow_dirty: bool) -> None:
    """Write a file's content to stdout (streamed; holes read as zeros)."""
    out = click.get_binary_stream("stdout")
    buf = bytearray(1 << 20)  # one buffer, refilled: constant memory whatever the file's size
    view = memoryview(buf)
    with _open_read(image, verify, allow_dirty) as fs, fs.open(path) as f:
        raw = f.raw
        while True:
            n = raw.readinto(view)
            if not n:
                break
            out.write(view[:n])
    out.flush()


@main.command("extract")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--path", "src_path", default="/", show_default=True, help="Directory or file of the image to extract.")
@click.option("--same-owner/--no-same-owner", default=None,
              help="Set owners from the image (default: when root), as tar does.")
@click.option("-p", "--preserve-permissions/--no-preserve-permissions", "preserve", default=None,
              help="Keep setuid/setgid bits (default: when root), as tar does.")
@click.option("--overwrite", is_flag=True, help="Replace existing files in DEST.")
@click.option("--no-xattrs", is_flag=True, help="Do not copy extended attributes.")
@click.option("-q", "quiet", is_flag=True, help="Do not print warnings.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Processes extracting files side by side (default: one per CPU, at most 4).")
@_verify_option
@_dirty_option
def extract_cmd(image: str, dest: str, src_path: str, same_owner: bool | None, preserve: bool | None,
                overwrite: bool, no_xattrs: bool, quiet: bool, jobs: int | None, verify: str,
                allow_dirty: bool) -> None:
    """Recreate the image's tree (or --path) under DEST, exactly and never outside it."""
    from .extract import default_jobs, extract

    def message(kind: str, text: str) -> None:
        if kind == "error" or not quiet:
            click.echo(f"{PROG}: {kind}: {text}", err=True)

    with _open_read(image, verify, allow_dirty) as fs:
        report = extract(fs, dest, path=src_path, same_owner=same_owner, preserve_permissions=preserve,
                         overwrite=overwrite, xattrs=not no_xattrs, on_message=message, jobs=jobs or default_jobs())
    if report.errors:
        fail(f"{len(report.errors)} entries could not be extracted (see above)")


# ============================================================ writing
def _open_write(image: str, force: bool = False) -> Any:
    from .reader import Filesystem

    _note_image(image)
    return Filesystem.open(image, writable=True, force=force, now=_source_date_epoch())


def _parse_owner(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    uid_s, sep, gid_s = text.partition(":")
    if not sep or not uid_s.isdigit() or not gid_s.isdigit():
        raise click.BadParameter(f"{text!r}: expected UID:GID (numbers)", param_hint="--owner")
    return int(uid_s), int(gid_s)


def _parse_mode(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text, 8)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected an octal mode such as 0644", param_hint="--mode") from None
    if not 0 <= value <= 0o7777:
        raise click.BadParameter(f"{text!r}: mode out of range", param_hint="--mode")
    return value


_force_option = click.option("--force", is_flag=True, help="Write even if the image looks mounted or damaged.")


def _put_one(fs: Any, src: str, dest: str, mode: int | None, owner: tuple[int, int] | None, preserve: bool) -> None:
    """Copy one host entry that is not a directory to ``dest`` (put without -r)."""
    import stat as statmod

    st = os.lstat(src)
    uid, gid = owner if owner is not None else ((st.st_uid, st.st_gid) if preserve else (0, 0))
    perm = mode if mode is not None else statmod.S_IMODE(st.st_mode)
    kind = statmod.S_IFMT(st.st_mode)
    if kind in (statmod.S_IFLNK, statmod.S_IFIFO, statmod.S_IFSOCK, statmod.S_IFCHR, statmod.S_IFBLK):
        try:
            if not fs.lstat(dest).is_dir():
                fs.unlink(dest)  # replaced, as a regular file would be
        except FileNotFoundError:
            pass
    if kind == statmod.S_IFLNK:
        ino = fs.symlink(os.readlink(src), dest, uid=uid, gid=gid)
    elif kind == statmod.S_IFREG:
        ino = fs.write_file(dest, src, mode=perm, uid=uid, gid=gid)
    elif kind in (statmod.S_IFIFO, statmod.S_IFSOCK, statmod.S_IFCHR, statmod.S_IFBLK):
        ino = fs.mknod(dest, kind | perm, st.st_rdev, uid=uid, gid=gid)
    else:  # pragma: no cover
        raise InvalidOptions(f"{src}: unsupported file type")
    if preserve:
        fs.set_times(ino, atime=st.st_atime_ns, mtime=st.st_mtime_ns)
        if kind != statmod.S_IFLNK:
            try:
                names = os.listxattr(src, follow_symlinks=False)
            except OSError:
                names = []
            values = {}
            for name in names:
                try:
                    values[name] = os.getxattr(src, name, follow_symlinks=False)
                except OSError:
                    continue
            if values:
                fs.set_xattrs(ino, values)


def _put_tree(fs: Any, image: str, src: str, target: str, mode: int | None, owner: tuple[int, int] | None,
              preserve: bool) -> None:
    """put -r: the host tree under ``target`` in one bulk populate (all or nothing), with put's rules:
    owners 0:0, the current time, no xattrs and hard links copied apart unless -p; --mode on everything
    but directories (a 0600 directory could not be entered) and symlinks; an existing directory keeps
    its metadata unless -p or --owner say otherwise."""
    from .errors import FileExists
    from .populate import populate, scan_directory

    parent, name, shown = fs._parent_and_name(target)
    existing = fs._lookup_child(parent, name)
    if existing is not None and not fs.inode(existing).is_dir():
        raise FileExists(shown)
    image_st = os.stat(image)
    nodes = scan_directory(os.path.realpath(src), exclude={(image_st.st_dev, image_st.st_ino)})
    now = fs._now()
    keep_dirs = not (preserve or owner is not None)
    kept = []
    for node in nodes:
        if node.kind == "dir" and existing is not None and keep_dirs:
            image_path = target.rstrip("/") + os.fsdecode(node.path) if node.path != b"/" else target
            if fs.exists(image_path):
                continue  # an existing directory: left as it is
        if mode is not None and node.kind not in ("dir", "symlink"):
            node.mode = mode
        if not preserve:
            node.atime_ns = node.mtime_ns = now
            node.link_key = None
            node.xattrs = {}
        kept.append(node)
    squash = owner if owner is not None else (None if preserve else (0, 0))
    populate(fs, src, nodes=kept, owner=squash, xattrs=preserve, dest=target)


@main.command("put")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("src", type=click.Path(exists=True))
@click.argument("dest")
@click.option("-r", "--recursive", is_flag=True, help="Copy directories recursively.")
@click.option("--mode", "mode_text", help="Permissions for the copied files (octal; with -r directories keep theirs).")
@click.option("--owner", "owner_text", help="UID:GID for the copied files (default 0:0).")
@click.option("-p", "--preserve", is_flag=True, help="Keep the host's owners, modes, times and xattrs.")
@_force_option
def put_cmd(image: str, src: str, dest: str, recursive: bool, mode_text: str | None, owner_text: str | None,
            preserve: bool, force: bool) -> None:
    """Copy a host file (or with -r a directory tree) into the image at DEST."""
    import stat as statmod

    mode = _parse_mode(mode_text)
    owner = _parse_owner(owner_text)
    st = os.stat(src)
    if statmod.S_ISDIR(st.st_mode) and not recursive:
        fail(f"{src} is a directory (use -r)")
    with _open_write(image, force) as fs:
        target = dest
        if fs.is_dir(dest):
            base = os.path.basename(os.path.normpath(src))
            target = dest.rstrip("/") + "/" + base
        if statmod.S_ISDIR(st.st_mode):
            # populate walks plain directories: give it the path with the image's symlinks resolved.
            head, _, tail = target.rstrip("/").rpartition("/")
            target = fs.realpath(head or "/").rstrip("/") + "/" + tail
            _put_tree(fs, image, src, target, mode, owner, preserve)
        else:
            _put_one(fs, src, target, mode, owner, preserve)


@main.command("mkdir")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("path")
@click.option("-p", "--parents", is_flag=True, help="Make parent directories as needed; no error if it exists.")
@click.option("--mode", "mode_text", default="0755", show_default=True, help="Permissions (octal).")
@click.option("--owner", "owner_text", default="0:0", show_default=True, help="UID:GID.")
@_force_option
def mkdir_cmd(image: str, path: str, parents: bool, mode_text: str, owner_text: str, force: bool) -> None:
    """Create a directory."""
    mode = _parse_mode(mode_text)
    owner = _parse_owner(owner_text)
    assert mode is not None and owner is not None
    with _open_write(image, force) as fs:
        fs.mkdir(path, mode, owner[0], owner[1], parents=parents, exist_ok=parents)


@main.command("ln")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("target")
@click.argument("link")
@click.option("-s", "--symbolic", is_flag=True, help="Make a symbolic link (TARGET is stored as is).")
@click.option("--owner", "owner_text", default="0:0", show_default=True, help="UID:GID of a symbolic link.")
@_force_option
def ln_cmd(image: str, target: str, link: str, symbolic: bool, owner_text: str, force: bool) -> None:
    """Make a hard link LINK to TARGET (or with -s a symbolic link)."""
    owner = _parse_owner(owner_text)
    assert owner is not None
    with _open_write(image, force) as fs:
        if fs.is_dir(link):  # like ln: a link into an existing directory keeps the target's name
            link = link.rstrip("/") + "/" + (target.rstrip("/").rsplit("/", 1)[-1] or target)
        if symbolic:
            fs.symlink(target, link, uid=owner[0], gid=owner[1])
        else:
            fs.link(target, link)


@main.command("mknod")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("path")
@click.argument("kind", type=click.Choice(["c", "u", "b", "p", "s"]))
@click.argument("major", type=int, required=False)
@click.argument("minor", type=int, required=False)
@click.option("--mode", "mode_text", default="0644", show_default=True, help="Permissions (octal).")
@click.option("--owner", "owner_text", default="0:0", show_default=True, help="UID:GID.")
@_force_option
def mknod_cmd(image: str, path: str, kind: str, major: int | None, minor: int | None, mode_text: str,
              owner_text: str, force: bool) -> None:
    """Make a device node (c/u char, b block: MAJOR MINOR), a fifo (p) or a socket (s)."""
    import stat as statmod

    mode = _parse_mode(mode_text)
    owner = _parse_owner(owner_text)
    assert mode is not None and owner is not None
    types = {"c": statmod.S_IFCHR, "u": statmod.S_IFCHR, "b": statmod.S_IFBLK, "p": statmod.S_IFIFO,
             "s": statmod.S_IFSOCK}
    if kind in "cub" and (major is None or minor is None):
        raise click.UsageError("devices need MAJOR and MINOR")
    if kind in "ps" and (major is not None or minor is not None):
        raise click.UsageError("fifos and sockets take no MAJOR/MINOR")
    with _open_write(image, force) as fs:
        fs.mknod(path, types[kind] | mode, (major or 0, minor or 0), uid=owner[0], gid=owner[1])


@main.command("rm")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Remove directories and their contents.")
@click.option("-f", "ignore_missing", is_flag=True, help="Ignore paths that do not exist.")
@_force_option
def rm_cmd(image: str, paths: tuple[str, ...], recursive: bool, ignore_missing: bool, force: bool) -> None:
    """Remove files (or with -r directory trees)."""
    from .errors import FileNotFound, IsADirectory

    with _open_write(image, force) as fs:
        for path in paths:
            try:
                st = fs.lstat(path)
            except FileNotFound:
                if ignore_missing:
                    continue
                raise
            if st.is_dir():
                if not recursive:
                    raise IsADirectory(path, "is a directory (use -r)")
                fs.remove_tree(path)
            else:
                fs.unlink(path)


@main.command("mv")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("src")
@click.argument("dst")
@_force_option
def mv_cmd(image: str, src: str, dst: str, force: bool) -> None:
    """Move or rename SRC to DST (into DST when it is a directory)."""
    with _open_write(image, force) as fs:
        target = dst
        if fs.is_dir(dst):  # like mv: into an existing directory, keeping the name
            target = dst.rstrip("/") + "/" + src.rstrip("/").rsplit("/", 1)[-1]
        fs.rename(src, target)


@main.command("chmod")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("mode_text", metavar="MODE")
@click.argument("paths", nargs=-1, required=True)
@_force_option
def chmod_cmd(image: str, mode_text: str, paths: tuple[str, ...], force: bool) -> None:
    """Change permissions (octal MODE)."""
    mode = _parse_mode(mode_text)
    assert mode is not None
    with _open_write(image, force) as fs:
        for path in paths:
            fs.chmod(path, mode)


@main.command("chown")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("owner_text", metavar="UID:GID")
@click.argument("paths", nargs=-1, required=True)
@click.option("-h", "--no-dereference", "no_deref", is_flag=True, help="Change a symlink itself.")
@_force_option
def chown_cmd(image: str, owner_text: str, paths: tuple[str, ...], no_deref: bool, force: bool) -> None:
    """Change owners (numeric UID:GID)."""
    owner = _parse_owner(owner_text)
    assert owner is not None
    with _open_write(image, force) as fs:
        for path in paths:
            fs.chown(path, owner[0], owner[1], follow_symlinks=not no_deref)


@main.command("setfattr")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("path")
@click.option("-n", "--name", help="Attribute name, e.g. user.comment.")
@click.option("-v", "--value", help="Value (text; 0x... for hex, 0s... for base64, as setfattr).")
@click.option("-x", "--remove", is_flag=False, flag_value="", default=None, metavar="[NAME]",
              help="Remove the attribute (-x NAME, or -x with -n NAME).")
@_force_option
def setfattr_cmd(image: str, path: str, name: str | None, value: str | None, remove: str | None,
                 force: bool) -> None:
    """Set (-n NAME -v VALUE) or remove (-x NAME) an extended attribute."""
    if remove:
        if name and name != remove:
            raise click.UsageError("give the attribute once: -x NAME or -n NAME -x")
        name = remove
    if not name:
        raise click.UsageError("missing the attribute name (-n NAME or -x NAME)")
    if remove is not None and value is not None:
        raise click.UsageError("-x removes an attribute: it takes no -v VALUE")
    with _open_write(image, force) as fs:
        if remove is not None:
            fs.removexattr(path, name)
            return
        raw = _decode_xattr_value(value or "")
        fs.setxattr(path, name, raw)


def _decode_xattr_value(text: str) -> bytes:
    import base64

    if text.startswith(("0x", "0X")):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise click.BadParameter("invalid hex value", param_hint="-v") from None
    if text.startswith(("0s", "0S")):
        try:
            return base64.b64decode(text[2:], validate=True)
        except ValueError:
            raise click.BadParameter("invalid base64 value", param_hint="-v") from None
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return text.encode("utf-8", "surrogateescape")


def run(argv: list[str] | None = None) -> int:
    """Entry point for tests: run the CLI and return its exit status."""
    try:
        main.main(args=argv, prog_name=PROG, standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0




if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
