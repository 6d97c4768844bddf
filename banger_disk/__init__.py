"""banger_disk: a microVM manager's disk preparation (work disks, overlays, root filesystem patching) on pyext4."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import BangerError, InvalidGuestConfig
from .model import VM, DaemonConfig, Image, StageCallback, VMRuntime, VMSpec

# Modules that pull in pyext4 load on first use, so that `banger-disk --help` stays instant.
_LAZY = {
    "Capability": "capabilities",
    "ENTRY_POINT_GROUP": "capabilities",
    "Hook": "capabilities",
    "discover": "capabilities",
    "serial_console": "capabilities",
    "WorkDiskPreparation": "disks",
    "ensure_system_overlay": "disks",
    "ensure_work_disk": "disks",
    "merge_authorized_keys": "disks",
    "sync_authorized_keys": "disks",
    "sync_files": "disks",
    "GuestConfigBuilder": "guest",
    "GuestFile": "guest",
    "GuestNetwork": "guest",
    "Mount": "guest",
    "render_fstab": "guest",
    "build_guest_config": "patch",
    "patch_root_overlay": "patch",
}

if TYPE_CHECKING:  # pragma: no cover
    from .capabilities import ENTRY_POINT_GROUP, Capability, Hook, discover, serial_console
    from .disks import (
        WorkDiskPreparation,
        ensure_system_overlay,
        ensure_work_disk,
        merge_authorized_keys,
        sync_authorized_keys,
        sync_files,
    )
    from .guest import GuestConfigBuilder, GuestFile, GuestNetwork, Mount, render_fstab
    from .patch import build_guest_config, patch_root_overlay


def __getattr__(name: str) -> Any:
    try:
        module_name = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'banger_disk' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "BangerError",
    "Capability",
    "DaemonConfig",
    "ENTRY_POINT_GROUP",
    "GuestConfigBuilder",
    "GuestFile",
    "GuestNetwork",
    "Hook",
    "Image",
    "InvalidGuestConfig",
    "Mount",
    "StageCallback",
    "VM",
    "VMRuntime",
    "VMSpec",
    "WorkDiskPreparation",
    "build_guest_config",
    "discover",
    "ensure_system_overlay",
    "ensure_work_disk",
    "merge_authorized_keys",
    "patch_root_overlay",
    "render_fstab",
    "serial_console",
    "sync_authorized_keys",
    "sync_files",
]
