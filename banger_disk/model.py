"""Records banger_disk works on: the VM, its image, the daemon's settings and the stage callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

StageCallback = Callable[[str, str], None]
"""Called as ``on_stage(stage, detail)``, e.g. ``("prepare_work_disk", "applying work seed")``."""


@dataclass
class VMSpec:
    """What the VM asked for; sizes in bytes."""

    system_overlay_size: int = 0
    work_disk_size: int = 0


@dataclass
class VMRuntime:
    """Where the VM's disks live on the host and the address it gets on the bridge."""

    system_overlay_path: str = ""
    work_disk_path: str = ""
    guest_ip: str = ""


@dataclass
class VM:
    """One VM record: identity, spec and runtime state."""

    id: str
    name: str
    spec: VMSpec = field(default_factory=VMSpec)
    runtime: VMRuntime = field(default_factory=VMRuntime)


@dataclass
class Image:
    """A VM image: its root filesystem and, optionally, an ext4 image whose tree seeds new work disks."""

    rootfs_path: str = ""
    work_seed_path: str | None = None


@dataclass
class DaemonConfig:
    """Daemon-wide settings: the DNS server given to guests and the bridge's address (the guests' gateway)."""

    default_dns: str
    bridge_ip: str


def report(on_stage: StageCallback | None, stage: str, detail: str) -> None:
    """Send one stage to ``on_stage`` when there is one."""
    if on_stage is not None:
        on_stage(stage, detail)


__all__ = ["VM", "VMSpec", "VMRuntime", "Image", "DaemonConfig", "StageCallback", "report"]
