"""The guest-config builder: fstab, resolv.conf, hostname, hosts, the sshd drop-in and the guest network files."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InvalidGuestConfig

if TYPE_CHECKING:
    import ipaddress  # imported where used: `banger-disk work-disk` never needs it

FSTAB_PATH = "/etc/fstab"
RESOLV_CONF_PATH = "/etc/resolv.conf"
HOSTNAME_PATH = "/etc/hostname"
HOSTS_PATH = "/etc/hosts"
SSHD_DROPIN_PATH = "/etc/ssh/sshd_config.d/99-banger.conf"
NETWORK_CONF_PATH = "/etc/banger/network.conf"
NETWORK_SCRIPT_PATH = "/usr/local/sbin/banger-network"
DEFAULT_PREFIX = 24

FILE_MODE = 0o644
SCRIPT_MODE = 0o755

# Mounts of these targets are dropped from the image's fstab: the VM has no such disks (the work disk
# is mounted on /root, everything else lives in the root filesystem's overlay).
DROPPED_MOUNT_TARGETS = frozenset({"/home", "/var"})

_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_FSTAB_FIELD = re.compile(r"[^\s#]+\Z")


# ================================================================ values
def validate_ipv4(value: str, what: str) -> ipaddress.IPv4Address:
    """``value`` as an IPv4 address; raises InvalidGuestConfig naming ``what`` otherwise."""
    import ipaddress

    try:
        return ipaddress.IPv4Address(str(value).strip())
    except ValueError:
        raise InvalidGuestConfig(f"{what}: {value!r} is not an IPv4 address") from None


def validate_ip(value: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``value`` as an IPv4 or IPv6 address; raises InvalidGuestConfig naming ``what`` otherwise."""
    import ipaddress

    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise InvalidGuestConfig(f"{what}: {value!r} is not an IP address") from None


def validate_hostname(name: str) -> str:
    """``name`` if it can be the guest's host name (RFC 1123 labels); raises InvalidGuestConfig otherwise."""
    text = str(name)
    labels = text.split(".")
    if not text or len(text) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise InvalidGuestConfig(
            f"{text!r} cannot be a host name (letters, digits and '-', in dot-separated labels of 1-63)"
        )
    return text


def normalize_guest_path(path: str) -> str:
    """An absolute path inside the guest, with repeated and trailing slashes removed.

    Raises InvalidGuestConfig for a relative path, a ``..`` or ``.`` component, a NUL byte or ``/``.
    """
    text = str(path)
    if not text.startswith("/") or "\0" in text:
        raise InvalidGuestConfig(f"{text!r}: a guest path must be absolute")
    parts = [p for p in text.split("/") if p]
    if not parts:
        raise InvalidGuestConfig(f"{text!r}: not a file path")
    if any(p in (".", "..") for p in parts):
        raise InvalidGuestConfig(f"{text!r}: '.' and '..' are not allowed in a guest path")
    return "/" + "/".join(parts)


@dataclass(frozen=True)
class GuestNetwork:
    """The guest's address on the bridge: its IP, the prefix length, the gateway (the bridge) and DNS."""

    guest_ip: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address
    dns: ipaddress.IPv4Address | ipaddress.IPv6Address
    prefix: int = DEFAULT_PREFIX

    @classmethod
    def from_strings(
        cls, guest_ip: str, gateway: str, dns: str, prefix: int = DEFAULT_PREFIX
    ) -> GuestNetwork:
        """Validate the three addresses and their relation.

        Raises InvalidGuestConfig when an address does not parse, the guest IP is not a usable host
        address of the gateway's /prefix network, or the two are the same.
        """
        if not isinstance(prefix, int) or not 1 <= prefix <= 30:
            raise InvalidGuestConfig(f"prefix length {prefix!r} must be between 1 and 30")
        guest = validate_ipv4(guest_ip, "guest IP")
        gw = validate_ipv4(gateway, "bridge IP")
        dns_ip = validate_ip(dns, "DNS server")
        if dns_ip.is_unspecified:
            raise InvalidGuestConfig(f"DNS server: {dns_ip} is not a usable address")
        import ipaddress

        network = ipaddress.IPv4Network(f"{gw}/{prefix}", strict=False)
        for addr, what in ((guest, "guest IP"), (gw, "bridge IP")):
            if addr.is_unspecified or addr.is_loopback or addr.is_multicast:
                raise InvalidGuestConfig(f"{what}: {addr} is not a usable host address")
            if addr in (network.network_address, network.broadcast_address):
                raise InvalidGuestConfig(f"{what}: {addr} is the network or broadcast address of {network}")
        if guest not in network:
            raise InvalidGuestConfig(f"guest IP {guest} is outside the bridge's network {network}")
        if guest == gw:
            raise InvalidGuestConfig(f"guest IP {guest} is the bridge's own address")
        return cls(guest, gw, dns_ip, prefix)


@dataclass(frozen=True)
class Mount:
    """One fstab entry; every field is a single fstab word (no blanks, no '#')."""

    source: str
    target: str
    fstype: str
    options: str = "defaults"
    dump: int = 0
    passno: int = 0

    def __post_init__(self) -> None:
        for name in ("source", "target", "fstype", "options"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _FSTAB_FIELD.match(value):
                raise InvalidGuestConfig(f"fstab {name} {value!r} must be one word without blanks or '#'")
        if not self.target.startswith("/") and self.target != "none":
            raise InvalidGuestConfig(f"fstab target {self.target!r} must be an absolute path")
        for name in ("dump", "passno"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 9:
                raise InvalidGuestConfig(f"fstab {name} {value!r} must be a digit")

    def line(self) -> str:
        """The fstab line (no newline)."""
        return f"{self.source} {self.target} {self.fstype} {self.options} {self.dump} {self.passno}"


RUN_TMPFS = Mount("tmpfs", "/run", "tmpfs", "defaults,nodev,nosuid,mode=0755")
TMP_TMPFS = Mount("tmpfs", "/tmp", "tmpfs", "defaults,nodev,nosuid,mode=1777")


@dataclass(frozen=True)
class GuestFile:
    """A file to write into the guest, owned by root:root."""

    path: str
    data: bytes
    mode: int = FILE_MODE


# ================================================================ fstab
def _normalize_target(target: str) -> str:
    collapsed = re.sub("/+", "/", target)
    return collapsed.rstrip("/") or "/"


def fstab_target(line: str) -> str | None:
    """The normalized mount target (2nd field) of an fstab line, or None for a comment, blank or short line."""
    fields = line.split()
    if len(fields) < 2 or fields[0].startswith("#"):
        return None
    return _normalize_target(fields[1])


def render_fstab(existing: str, extra_mounts: Iterable[Mount] = ()) -> str:
    """The guest's fstab made from the image's ``existing`` text.

    Every existing line is kept as it is (comments and blank lines too) except mounts whose target is
    /home or /var (with or without trailing slashes); then tmpfs on /run and /tmp and ``extra_mounts``
    are appended, each unless a line already mounts something on its target.
    """
    lines = existing.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    kept: list[str] = []
    present: set[str] = set()
    for line in lines:
        target = fstab_target(line)
        if target in DROPPED_MOUNT_TARGETS:
            continue
        if target is not None:
            present.add(target)
        kept.append(line)
    for mount in (RUN_TMPFS, TMP_TMPFS, *extra_mounts):
        target = _normalize_target(mount.target)
        if target not in present:
            kept.append(mount.line())
            present.add(target)
    return "\n".join(kept) + "\n"


# ================================================================ other files
def render_resolv_conf(dns: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """/etc/resolv.conf: one ``nameserver`` line."""
    return f"nameserver {validate_ip(str(dns), 'DNS server')}\n"


def render_hostname(name: str) -> str:
    """/etc/hostname: the VM's name."""
    return f"{validate_hostname(name)}\n"


def render_hosts(name: str) -> str:
    """/etc/hosts: localhost and the VM's own name on 127.0.1.1 (the Debian convention)."""
    return f"127.0.0.1 localhost\n127.0.1.1 {validate_hostname(name)}\n"


def render_sshd_dropin() -> str:
    """The sshd drop-in that lets root in with the work disk's keys and nothing else."""
    return (
        "# Written by banger for this VM: root logs in over the bridge with the keys banger put in the\n"
        "# work disk (mounted on /root), and in no other way.\n"
        "\n"
        "# Root is the VM's user; keys only, so a guessed or empty password never opens it.\n"
        "PermitRootLogin prohibit-password\n"
        "# Public keys are how banger's clients authenticate.\n"
        "PubkeyAuthentication yes\n"
        "# No passwords at all: the image's accounts may have default or empty ones.\n"
        "PasswordAuthentication no\n"
        "# Keyboard-interactive (PAM) would otherwise ask for a password by another route.\n"
        "KbdInteractiveAuthentication no\n"
        "# The keys live on the work disk, which is /root in the guest; look nowhere else.\n"
        "AuthorizedKeysFile /root/.ssh/authorized_keys\n"
    )


def render_network_conf(network: GuestNetwork) -> str:
    """The guest network config file read by the bootstrap script (KEY=VALUE lines)."""
    return (
        f"# banger guest network, read by {NETWORK_SCRIPT_PATH} at boot.\n"
        f"GUEST_IP={network.guest_ip}\n"
        f"PREFIX={network.prefix}\n"
        f"GATEWAY={network.gateway}\n"
        f"DNS={network.dns}\n"
    )


NETWORK_SCRIPT = r"""#!/bin/sh
# banger-network: give this VM its address on the banger bridge.
#
# Reads @CONF@ (KEY=VALUE lines written by banger: GUEST_IP, PREFIX,
# GATEWAY, DNS) and configures the first non-loopback network interface: the address
# GUEST_IP/PREFIX, the link up, and the default route via GATEWAY.  Nothing else: DNS is already
# in /etc/resolv.conf and no other interface or setting is touched.  Running it again is harmless.
set -eu

conf=${BANGER_NETWORK_CONF:-@CONF@}
sys_net=${BANGER_SYS_CLASS_NET:-/sys/class/net}

die() {
    echo "banger-network: $*" >&2
    exit 1
}

[ -r "$conf" ] || die "$conf: cannot read the network configuration"

GUEST_IP=
PREFIX=24
GATEWAY=
while IFS='=' read -r key value || [ -n "$key" ]; do
    case $key in
        GUEST_IP) GUEST_IP=$value ;;
        PREFIX) PREFIX=$value ;;
        GATEWAY) GATEWAY=$value ;;
    esac
done <"$conf"

case $GUEST_IP in '' | *[!0-9.]*) die "$conf: GUEST_IP '$GUEST_IP' is not an IPv4 address" ;; esac
case $GATEWAY in '' | *[!0-9.]*) die "$conf: GATEWAY '$GATEWAY' is not an IPv4 address" ;; esac
case $PREFIX in '' | *[!0-9]*) die "$conf: PREFIX '$PREFIX' is not a number" ;; esac

# The first interface, in name order, that is not a loopback (ARPHRD_LOOPBACK is type 772).
iface=
for dev in "$sys_net"/*; do
    [ -r "$dev/type" ] || continue
    read -r type <"$dev/type" || continue
    if [ "$type" != 772 ]; then
        iface=${dev##*/}
        break
    fi
done
[ -n "$iface" ] || die "no network interface other than loopback"

if command -v ip >/dev/null 2>&1; then
    run_ip() { ip "$@"; }
elif command -v busybox >/dev/null 2>&1; then
    run_ip() { busybox ip "$@"; }
else
    die "no ip command (iproute2 or busybox) found"
fi

case $(run_ip addr show dev "$iface") in
    *"inet $GUEST_IP/$PREFIX "*) ;;
    *) run_ip addr add "$GUEST_IP/$PREFIX" dev "$iface" ;;
esac
run_ip link set dev "$iface" up
run_ip route replace default via "$GATEWAY" dev "$iface"
"""


def render_network_script(conf_path: str = NETWORK_CONF_PATH) -> str:
    """The POSIX sh bootstrap script that configures the guest's interface from the network config file."""
    return NETWORK_SCRIPT.replace("@CONF@", normalize_guest_path(conf_path))


# ================================================================ builder
class GuestConfigBuilder:
    """Collects the files and mounts one VM's root filesystem gets; capability hooks add to it.

    The standard files (resolv.conf, hostname, hosts, the sshd drop-in, the network config and its
    script) are there from the start; hooks add files with :meth:`add_file` (``replace=True`` to
    override a standard one) and mounts with :meth:`add_mount`.  /etc/fstab is rendered last, by
    :meth:`files`, from the image's existing text.
    """

    def __init__(self, *, name: str, network: GuestNetwork, vm_id: str = "") -> None:
        self.name = validate_hostname(name)
        self.network = network
        self.vm_id = vm_id
        self._files: dict[str, GuestFile] = {}
        self._mounts: list[Mount] = []
        self.add_file(RESOLV_CONF_PATH, render_resolv_conf(network.dns))
        self.add_file(HOSTNAME_PATH, render_hostname(self.name))
        self.add_file(HOSTS_PATH, render_hosts(self.name))
        self.add_file(SSHD_DROPIN_PATH, render_sshd_dropin())
        self.add_file(NETWORK_CONF_PATH, render_network_conf(network))
        self.add_file(NETWORK_SCRIPT_PATH, render_network_script(), mode=SCRIPT_MODE)

    @classmethod
    def from_strings(
        cls, *, name: str, guest_ip: str, gateway: str, dns: str, vm_id: str = ""
    ) -> GuestConfigBuilder:
        """A builder from textual addresses; raises InvalidGuestConfig for a bad name or address."""
        return cls(name=name, network=GuestNetwork.from_strings(guest_ip, gateway, dns), vm_id=vm_id)

    def add_file(self, path: str, data: bytes | str, mode: int = FILE_MODE, *, replace: bool = False) -> None:
        """Write ``data`` at ``path`` (root:root, ``mode``) in the guest.

        Raises InvalidGuestConfig for a bad path or mode, for /etc/fstab (use :meth:`add_mount`), and
        for a path already contributed unless ``replace`` is true.
        """
        norm = normalize_guest_path(path)
        if norm == FSTAB_PATH:
            raise InvalidGuestConfig(f"{FSTAB_PATH} is rendered by the builder; contribute mounts instead")
        if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise InvalidGuestConfig(f"{norm}: mode {mode!r} is not a permission mode")
        if norm in self._files and not replace:
            raise InvalidGuestConfig(f"{norm}: already contributed (pass replace=True to override it)")
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._files[norm] = GuestFile(norm, payload, mode)

    def add_mount(self, mount: Mount) -> None:
        """Add ``mount`` to fstab (unless the image's fstab already mounts its target).

        Raises InvalidGuestConfig when another contribution already mounts the same target.
        """
        target = _normalize_target(mount.target)
        for other in (RUN_TMPFS, TMP_TMPFS, *self._mounts):
            if _normalize_target(other.target) == target:
                raise InvalidGuestConfig(f"fstab: {target} is already mounted by {other.line()!r}")
        self._mounts.append(mount)

    @property
    def mounts(self) -> tuple[Mount, ...]:
        """The mounts contributed so far (besides /run and /tmp)."""
        return tuple(self._mounts)

    def render_fstab(self, existing: str) -> str:
        """/etc/fstab from the image's ``existing`` text and the contributed mounts."""
        return render_fstab(existing, self._mounts)

    def files(self, existing_fstab: str) -> list[GuestFile]:
        """Every file to write, the rendered /etc/fstab last, in a stable order."""
        fstab = GuestFile(FSTAB_PATH, self.render_fstab(existing_fstab).encode("utf-8", "surrogateescape"))
        return [*self._files.values(), fstab]


__all__ = [
    "GuestConfigBuilder",
    "GuestNetwork",
    "GuestFile",
    "Mount",
    "RUN_TMPFS",
    "TMP_TMPFS",
    "render_fstab",
    "fstab_target",
    "render_resolv_conf",
    "render_hostname",
    "render_hosts",
    "render_sshd_dropin",
    "render_network_conf",
    "render_network_script",
    "validate_ipv4",
    "validate_ip",
    "validate_hostname",
    "normalize_guest_path",
    "DROPPED_MOUNT_TARGETS",
    "FSTAB_PATH",
    "RESOLV_CONF_PATH",
    "HOSTNAME_PATH",
    "HOSTS_PATH",
    "SSHD_DROPIN_PATH",
    "NETWORK_CONF_PATH",
    "NETWORK_SCRIPT_PATH",
    "FILE_MODE",
    "SCRIPT_MODE",
]
