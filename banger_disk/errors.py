"""The exception banger_disk raises for its own refusals (pyext4 and OS errors pass through unchanged)."""

from __future__ import annotations


class BangerError(Exception):
    """A request banger_disk refuses: missing device, invalid address or name, a failing capability hook."""


class InvalidGuestConfig(BangerError, ValueError):
    """A value that cannot go into the guest's configuration (an IP address, a host name, a path)."""
