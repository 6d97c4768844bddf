"""Capability hooks: plug-ins found through entry points that add files and mounts to the guest config."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .errors import BangerError
from .guest import GuestConfigBuilder

ENTRY_POINT_GROUP = "banger_disk.capabilities"

Hook = Callable[[GuestConfigBuilder], None]
"""A capability hook: called with the builder before fstab is rendered; adds files and mounts to it."""

SERIAL_GETTY_DROPIN = "/etc/systemd/system/serial-getty@ttyS0.service.d/10-banger.conf"


@dataclass(frozen=True)
class Capability:
    """A named hook (the entry point's name, or the function's for a hook given directly)."""

    name: str
    hook: Hook


def serial_console(builder: GuestConfigBuilder) -> None:
    """Built-in example: a drop-in for the serial console's getty (ttyS0, Firecracker's console).

    It only sets the terminal type and keeps the console's scrollback; it neither enables the getty
    (systemd does that for ``console=ttyS0``) nor logs anyone in.
    """
    builder.add_file(
        SERIAL_GETTY_DROPIN,
        "# Written by banger: the VM's serial console is ttyS0.\n"
        "[Service]\n"
        "# The serial line does not announce a terminal type; full-screen programs need one.\n"
        "Environment=TERM=vt220\n"
        "# Keep what the console already shows when the getty starts.\n"
        "TTYVTDisallocate=no\n",
    )


def discover(group: str = ENTRY_POINT_GROUP) -> list[Capability]:
    """The hooks installed under the entry point ``group``, sorted by name, each name once.

    Raises BangerError naming the entry point when one cannot be loaded or is not callable.
    """
    from importlib.metadata import entry_points

    found: dict[str, Capability] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: (e.name, e.value)):
        if ep.name in found:
            continue
        try:
            hook = ep.load()
        except Exception as exc:
            raise BangerError(f"capability {ep.name} ({ep.value}): cannot load: {exc}") from exc
        if not callable(hook):
            raise BangerError(f"capability {ep.name} ({ep.value}): not callable")
        found[ep.name] = Capability(ep.name, hook)
    return list(found.values())


def resolve(hooks: Iterable[Capability | Hook] | None) -> list[Capability]:
    """``hooks`` as Capabilities; ``None`` means every installed one (:func:`discover`)."""
    if hooks is None:
        return discover()
    result: list[Capability] = []
    for item in hooks:
        if isinstance(item, Capability):
            result.append(item)
        elif callable(item):
            result.append(Capability(getattr(item, "__name__", repr(item)), item))
        else:
            raise BangerError(f"capability {item!r} is not callable")
    return result


def apply(builder: GuestConfigBuilder, capabilities: Sequence[Capability]) -> None:
    """Run each hook on ``builder`` in order; raises BangerError naming the hook that failed."""
    for cap in capabilities:
        try:
            cap.hook(builder)
        except Exception as exc:
            raise BangerError(f"capability {cap.name}: {exc}") from exc


__all__ = ["Capability", "Hook", "ENTRY_POINT_GROUP", "serial_console", "discover", "resolve", "apply"]
