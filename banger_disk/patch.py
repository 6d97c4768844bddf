"""Per-VM patching of the root filesystem (overlay device or image) in one pyext4 writer session."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyext4

from . import capabilities as _caps
from ._fs import ensure_parents, writer_session
from .errors import BangerError, InvalidGuestConfig
from .guest import FSTAB_PATH, GuestConfigBuilder, GuestFile
from .model import VM, DaemonConfig, Image, StageCallback, report

if TYPE_CHECKING:  # pragma: no cover
    from pyext4 import Filesystem

STAGE = "patch_root_overlay"


def read_fstab(fs: Filesystem) -> str:
    """The image's /etc/fstab as text; empty when it is missing or cannot be read."""
    try:
        data = fs.read_bytes(FSTAB_PATH)
    except (pyext4.Ext4Error, OSError):
        return ""
    return data.decode("utf-8", "surrogateescape")


def build_guest_config(
    vm: VM,
    config: DaemonConfig,
    *,
    capabilities: Iterable[_caps.Capability | _caps.Hook] | None = None,
    on_stage: StageCallback | None = None,
) -> GuestConfigBuilder:
    """The VM's guest-config builder with every capability hook applied (``None``: the installed ones).

    Raises InvalidGuestConfig (prefixed with the VM's id) for a bad name or address, BangerError
    for a capability that cannot be loaded or fails.
    """
    try:
        builder = GuestConfigBuilder.from_strings(
            name=vm.name,
            guest_ip=vm.runtime.guest_ip,
            gateway=config.bridge_ip,
            dns=config.default_dns,
            vm_id=vm.id,
        )
    except InvalidGuestConfig as exc:
        raise InvalidGuestConfig(f"vm {vm.id}: {exc}") from exc
    caps = _caps.resolve(capabilities)
    if caps:
        report(on_stage, STAGE, "applying capabilities: " + ", ".join(c.name for c in caps))
        _caps.apply(builder, caps)
    return builder


def patch_root_overlay(
    vm: VM,
    image: Image,
    device_path: str | os.PathLike[str],
    config: DaemonConfig,
    *,
    on_stage: StageCallback | None = None,
    capabilities: Iterable[_caps.Capability | _caps.Hook] | None = None,
) -> list[GuestFile]:
    """Write the VM's guest configuration into its root filesystem at ``device_path``.

    ``device_path`` is the VM's device-mapper device (a block device) or an image file; ``image``
    is the VM's image, whose root filesystem that device presents.  Everything is computed and
    validated first (names, addresses, capability hooks); then the filesystem is opened for writing
    once, /etc/fstab is read (missing or unreadable counts as empty), and every file is written
    root:root (0644, the network script 0755), missing parent directories created root:root 0755.
    ``capabilities``: the hooks to apply; ``None`` means those installed under the
    ``banger_disk.capabilities`` entry point group.  Returns the files written, /etc/fstab last.

    Raises BangerError (``vm <id>: DM device is required`` for an empty ``device_path``, a bad
    name or address, a failing hook, a parent path that is not a directory), pyext4.Ext4Error for
    a filesystem that cannot be opened or written.
    """
    device = os.fspath(device_path) if device_path is not None else ""
    if not device:
        raise BangerError(f"vm {vm.id}: DM device is required")
    builder = build_guest_config(vm, config, capabilities=capabilities, on_stage=on_stage)
    report(on_stage, STAGE, f"opening {device}")
    with writer_session(device) as fs:  # all or nothing: never a half-configured guest
        report(on_stage, STAGE, f"reading {FSTAB_PATH}")
        files = builder.files(read_fstab(fs))
        for item in files:
            report(on_stage, STAGE, f"writing {item.path} ({item.mode:04o})")
            ensure_parents(fs, item.path)
            fs.write_file(item.path, item.data, mode=item.mode, uid=0, gid=0)
    return files


__all__ = ["patch_root_overlay", "build_guest_config", "read_fstab"]
