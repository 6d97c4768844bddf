"""The banger-disk command: parses, calls banger_disk's API, prints stages and one-line errors."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import click

PROG = "banger-disk"
_SYNC_MODE = re.compile(r"[0-7]{1,4}\Z")


def _stage(stage: str, detail: str) -> None:
    click.echo(f"{PROG}: {stage}: {detail}", err=True)


def _describe(exc: BaseException) -> str:
    """One line for an error: ``path: reason`` for OS errors, the message otherwise."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename is not None else str(exc.strerror)
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _usage_error(exc: click.UsageError) -> int:
    """One line for a usage error (click prints a usage block): the problem and where help is; status 2."""
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    click.echo(f"{PROG}: error: {' '.join((exc.format_message() + hint).split())}", err=True)
    return 2


class _Group(click.Group):
    """A group that turns any error of a command into one line on stderr and exit status 1 (usage: 2)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise  # plain `banger-disk`: the help
        except click.UsageError as exc:
            raise click.exceptions.Exit(_usage_error(exc)) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise click.exceptions.Exit(_usage_error(exc)) from None
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                import traceback  # only here: it costs a millisecond of every start-up

                traceback.print_exc(file=sys.stderr)
            click.echo(f"{PROG}: error: {_describe(exc)}", err=True)
            ctx.exit(1)


class _Size(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        else:
            import pyext4

            try:
                size = pyext4.parse_size(str(value))
            except pyext4.InvalidOptions as exc:
                self.fail(str(exc), param, ctx)
        if size <= 0:
            self.fail(f"{value!r} is not a positive size", param, ctx)
        return size


class _Address(click.ParamType):
    def __init__(self, ipv4_only: bool) -> None:
        self.ipv4_only = ipv4_only
        self.name = "IPV4" if ipv4_only else "IP"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from .errors import InvalidGuestConfig
        from .guest import validate_ip, validate_ipv4

        try:
            addr = validate_ipv4(value, "address") if self.ipv4_only else validate_ip(value, "address")
        except InvalidGuestConfig:
            self.fail(f"{value!r} is not an {'IPv4' if self.ipv4_only else 'IP'} address", param, ctx)
        return str(addr)


def _parse_sync_spec(text: str) -> tuple[str, str, int | None]:
    """``HOST:GUEST[:MODE]`` -> (host, guest, mode or None); raises click.BadParameter."""
    parts = text.split(":")
    mode: int | None = None
    if len(parts) == 3:
        if not _SYNC_MODE.match(parts[2]):
            raise click.BadParameter(f"{text!r}: MODE must be octal, like 0644")
        mode = int(parts.pop(), 8)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise click.BadParameter(
            f"{text!r}: expected HOST:GUEST or HOST:GUEST:MODE (no ':' inside the paths)"
        )
    return parts[0], parts[1], mode


def _sync_specs(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, str, int | None]]:
    return [_parse_sync_spec(v) for v in values]


_FILE = click.Path(exists=True, dir_okay=False)
_OUT = click.Path(dir_okay=False, writable=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def cli(debug: bool) -> None:
    """Prepare a microVM's disks in-process with pyext4: work disks, system overlays, root filesystem patches.

    Stages are printed to stderr as `banger-disk: STAGE: DETAIL`; an error is one line
    `banger-disk: error: ...` and exit status 1 (usage errors: 2).
    """


@cli.command("work-disk")
@click.argument("out", type=_OUT)
@click.option("--size", required=True, type=_Size(), help="Size of the work disk, e.g. 8G.")
@click.option(
    "--seed", type=_FILE, help="An ext4 image whose tree the work disk starts with (owners become 0:0)."
)
def work_disk(out: str, size: int, seed: str | None) -> None:
    """Create the work disk OUT (an ext4 image), from --seed or empty; nothing is done if OUT exists."""
    from .disks import ensure_work_disk
    from .model import VM, Image, VMRuntime, VMSpec

    name = os.path.basename(out)
    vm = VM(id=name, name=name, spec=VMSpec(work_disk_size=size), runtime=VMRuntime(work_disk_path=out))
    prep = ensure_work_disk(vm, Image(work_seed_path=seed), on_stage=_stage)
    if not prep.created:
        _stage("prepare_work_disk", f"{out} exists; left as it is")


@cli.command("system-overlay")
@click.argument("out", type=_OUT)
@click.option("--size", required=True, type=_Size(), help="Size of the overlay, e.g. 8G.")
def system_overlay(out: str, size: int) -> None:
    """Create the sparse system overlay OUT; nothing is done if OUT exists."""
    from .disks import ensure_system_overlay
    from .model import VM, VMRuntime, VMSpec

    name = os.path.basename(out)
    vm = VM(
        id=name, name=name, spec=VMSpec(system_overlay_size=size), runtime=VMRuntime(system_overlay_path=out)
    )
    if not ensure_system_overlay(vm, on_stage=_stage):
        _stage("prepare_system_overlay", f"{out} exists; left as it is")


@cli.command("patch-rootfs")
@click.argument("image", type=_FILE)
@click.option("--name", required=True, help="The VM's name (its host name).")
@click.option("--guest-ip", required=True, type=_Address(True), help="The guest's IPv4 address (a /24).")
@click.option("--bridge-ip", required=True, type=_Address(True), help="The bridge's address: the gateway.")
@click.option("--dns", required=True, type=_Address(False), help="The DNS server for /etc/resolv.conf.")
@click.option("--id", "vm_id", help="The VM's id, for messages (default: the name).")
@click.option(
    "--no-capabilities", is_flag=True, help="Apply no capability hooks (default: every installed one)."
)
def patch_rootfs(
    image: str, name: str, guest_ip: str, bridge_ip: str, dns: str, vm_id: str | None, no_capabilities: bool
) -> None:
    """Write the VM's guest config into IMAGE (an ext4 image or block device): fstab, network, sshd, hosts."""
    from .model import VM, DaemonConfig, Image, VMRuntime
    from .patch import patch_root_overlay

    vm = VM(id=vm_id or name, name=name, runtime=VMRuntime(guest_ip=guest_ip))
    patch_root_overlay(
        vm,
        Image(rootfs_path=image),
        image,
        DaemonConfig(default_dns=dns, bridge_ip=bridge_ip),
        on_stage=_stage,
        capabilities=[] if no_capabilities else None,
    )


@cli.command("authorize-key")
@click.argument("workdisk", type=_FILE)
@click.argument(
    "keyfiles", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, allow_dash=True)
)
@click.option("--replace", is_flag=True, help="Keep only these keys (default: add them to those there).")
def authorize_key(workdisk: str, keyfiles: tuple[str, ...], replace: bool) -> None:
    """Authorize the public keys in KEYFILE... (- for stdin) for root in WORKDISK's /.ssh/authorized_keys."""
    from .disks import sync_authorized_keys

    keys: list[str] = []
    for path in keyfiles:
        with click.open_file(path, "r", encoding="utf-8", errors="surrogateescape") as fh:
            keys.append(fh.read())
    sync_authorized_keys(workdisk, keys, replace=replace, on_stage=_stage)


@cli.command("sync")
@click.argument("workdisk", type=_FILE)
@click.argument("specs", nargs=-1, required=True, metavar="HOST:GUEST[:MODE]...", callback=_sync_specs)
def sync(workdisk: str, specs: list[tuple[str, str, int | None]]) -> None:
    """Copy host files into WORKDISK, root-owned; GUEST is a path inside the work disk, MODE octal (default: the host file's)."""
    from .disks import sync_files

    sync_files(workdisk, specs, on_stage=_stage)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``banger-disk`` script."""
    cli.main(args=argv, prog_name=PROG)


if __name__ == "__main__":  # pragma: no cover
    main()
