"""The guest-config builder: fstab cases, rendered files, address and name validation."""

from __future__ import annotations

import ipaddress

import pytest

from banger_disk.errors import BangerError, InvalidGuestConfig
from banger_disk.guest import (
    FSTAB_PATH,
    NETWORK_CONF_PATH,
    NETWORK_SCRIPT_PATH,
    SSHD_DROPIN_PATH,
    GuestConfigBuilder,
    GuestNetwork,
    Mount,
    fstab_target,
    normalize_guest_path,
    render_fstab,
    render_hostname,
    render_hosts,
    render_network_conf,
    render_network_script,
    render_resolv_conf,
    render_sshd_dropin,
    validate_hostname,
    validate_ip,
    validate_ipv4,
)

RUN = "tmpfs /run tmpfs defaults,nodev,nosuid,mode=0755 0 0"
TMP = "tmpfs /tmp tmpfs defaults,nodev,nosuid,mode=1777 0 0"


def builder(**overrides: str) -> GuestConfigBuilder:
    args = {"name": "devbox", "guest_ip": "172.16.0.2", "gateway": "172.16.0.1", "dns": "1.1.1.1"}
    args.update(overrides)
    return GuestConfigBuilder.from_strings(**args)


# ================================================================ fstab
class TestFstab:
    def test_empty_gets_run_and_tmp(self) -> None:
        assert render_fstab("") == f"{RUN}\n{TMP}\n"

    def test_keeps_lines_comments_and_blanks_in_order(self) -> None:
        existing = "# static file system information\n\nUUID=abc / ext4 errors=remount-ro 0 1\n  # indented\n"
        assert render_fstab(existing) == existing + f"{RUN}\n{TMP}\n"

    @pytest.mark.parametrize(
        "line",
        [
            "/dev/vdb /home ext4 defaults 0 2",
            "/dev/vdc /var ext4 defaults 0 2",
            "/dev/vdb /home/ ext4 defaults 0 2",
            "/dev/vdc /var// ext4 defaults 0 2",
            "/dev/vdc\t/var\text4\tdefaults\t0\t2",
            "   LABEL=home   /home   xfs   noatime   0   0",
            "UUID=1 //home ext4 defaults",  # short line, doubled slash
            "server:/export /home nfs rw",
        ],
    )
    def test_drops_home_and_var_mounts(self, line: str) -> None:
        existing = f"UUID=abc / ext4 defaults 0 1\n{line}\nproc /proc proc defaults 0 0\n"
        assert (
            render_fstab(existing)
            == f"UUID=abc / ext4 defaults 0 1\nproc /proc proc defaults 0 0\n{RUN}\n{TMP}\n"
        )

    @pytest.mark.parametrize(
        "line",
        [
            "/dev/vdd /var/lib ext4 defaults 0 2",
            "/dev/vde /home2 ext4 defaults 0 2",
            "/dev/vdf /srv/home ext4 defaults 0 2",
            "# /dev/vdb /home ext4 defaults 0 2",  # a comment is kept even if it mentions /home
            "#/dev/vdb /var ext4 defaults 0 2",
            "/home",  # one field: not a mount line, kept as it is
        ],
    )
    def test_keeps_everything_else(self, line: str) -> None:
        assert render_fstab(line + "\n") == f"{line}\n{RUN}\n{TMP}\n"

    def test_existing_run_and_tmp_win(self) -> None:
        existing = "tmpfs /tmp tmpfs size=1G 0 0\nnone /run/ tmpfs defaults 0 0\n"
        assert render_fstab(existing) == existing

    def test_only_missing_one_added(self) -> None:
        existing = "tmpfs /tmp tmpfs size=1G 0 0\n"
        assert render_fstab(existing) == f"{existing}{RUN}\n"

    def test_no_trailing_newline_in_input(self) -> None:
        assert render_fstab("proc /proc proc defaults 0 0") == f"proc /proc proc defaults 0 0\n{RUN}\n{TMP}\n"

    def test_idempotent(self) -> None:
        existing = "UUID=abc / ext4 defaults 0 1\n/dev/vdb /home ext4 defaults 0 2\n"
        extra = [Mount("tmpfs", "/var/cache", "tmpfs", "mode=0755")]
        once = render_fstab(existing, extra)
        assert render_fstab(once, extra) == once

    def test_extra_mounts_after_run_and_tmp_unless_present(self) -> None:
        extra = [Mount("tag0", "/mnt/share", "virtiofs", "defaults"), Mount("tmpfs", "/srv", "tmpfs")]
        existing = "/dev/vdz /srv ext4 defaults 0 2\n"
        assert render_fstab(existing, extra) == (
            f"{existing}{RUN}\n{TMP}\ntag0 /mnt/share virtiofs defaults 0 0\n"
        )

    def test_fstab_target(self) -> None:
        assert fstab_target("/dev/a /var/ ext4") == "/var"
        assert fstab_target("/dev/a / ext4") == "/"
        assert fstab_target("# /dev/a /var ext4") is None
        assert fstab_target("") is None
        assert fstab_target("lonely") is None

    def test_surrogate_bytes_survive_the_builder(self) -> None:
        raw = b"# caf\xe9 (latin-1 comment)\nproc /proc proc defaults 0 0\n"
        text = raw.decode("utf-8", "surrogateescape")
        fstab = builder().files(text)[-1]
        assert fstab.path == FSTAB_PATH
        assert fstab.data == raw + f"{RUN}\n{TMP}\n".encode()


class TestMount:
    def test_line(self) -> None:
        assert Mount("tmpfs", "/run", "tmpfs", "mode=0755").line() == "tmpfs /run tmpfs mode=0755 0 0"
        assert (
            Mount("/dev/vdb", "/data", "ext4", "defaults", 1, 2).line() == "/dev/vdb /data ext4 defaults 1 2"
        )

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"source": "a b"},
            {"target": "relative"},
            {"target": "/with space"},
            {"options": ""},
            {"options": "defaults\n/dev/x /home"},
            {"fstype": "ext4#x"},
            {"dump": -1},
            {"passno": 10},
        ],
    )
    def test_rejects_what_would_break_fstab(self, kwargs: dict[str, object]) -> None:
        args: dict[str, object] = {"source": "tmpfs", "target": "/x", "fstype": "tmpfs"}
        args.update(kwargs)
        with pytest.raises(InvalidGuestConfig):
            Mount(**args)  # type: ignore[arg-type]


# ================================================================ other files
def test_resolv_conf() -> None:
    assert render_resolv_conf("1.1.1.1") == "nameserver 1.1.1.1\n"
    assert render_resolv_conf("2606:4700:4700::1111") == "nameserver 2606:4700:4700::1111\n"
    with pytest.raises(InvalidGuestConfig):
        render_resolv_conf("1.1.1.1\nnameserver 6.6.6.6")


def test_hostname_and_hosts() -> None:
    assert render_hostname("devbox") == "devbox\n"
    assert render_hosts("devbox") == "127.0.0.1 localhost\n127.0.1.1 devbox\n"


def test_sshd_dropin_has_each_setting_with_a_comment() -> None:
    text = render_sshd_dropin()
    lines = text.splitlines()
    settings = [
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "AuthorizedKeysFile /root/.ssh/authorized_keys",
    ]
    directives = [line for line in lines if line and not line.startswith("#")]
    assert directives == settings
    for setting in settings:
        index = lines.index(setting)
        assert lines[index - 1].startswith("# "), f"no comment saying why above {setting!r}"


def test_network_conf() -> None:
    net = GuestNetwork.from_strings("172.16.0.2", "172.16.0.1", "9.9.9.9")
    text = render_network_conf(net)
    values = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert values == {"GUEST_IP": "172.16.0.2", "PREFIX": "24", "GATEWAY": "172.16.0.1", "DNS": "9.9.9.9"}
    assert text.endswith("\n")


def test_network_script_reads_the_documented_path() -> None:
    script = render_network_script()
    assert script.startswith("#!/bin/sh\n")
    assert f"conf=${{BANGER_NETWORK_CONF:-{NETWORK_CONF_PATH}}}" in script
    assert "/etc/banger/network.conf" == NETWORK_CONF_PATH
    assert NETWORK_SCRIPT_PATH == "/usr/local/sbin/banger-network"


# ================================================================ validation
class TestValidation:
    @pytest.mark.parametrize("value", ["10.0.0.1", "172.16.0.2", " 192.168.1.1 "])
    def test_ipv4_ok(self, value: str) -> None:
        assert validate_ipv4(value, "x") == ipaddress.IPv4Address(value.strip())

    @pytest.mark.parametrize(
        "value",
        ["", "10.0.0", "10.0.0.256", "010.0.0.1", "::1", "10.0.0.1/24", "host", "1.2.3.4\nx", "1.2.3.4 5"],
    )
    def test_ipv4_rejected(self, value: str) -> None:
        with pytest.raises(InvalidGuestConfig, match="not an IPv4 address"):
            validate_ipv4(value, "guest IP")

    def test_any_ip_for_dns(self) -> None:
        assert str(validate_ip("fe80::1", "dns")) == "fe80::1"
        with pytest.raises(InvalidGuestConfig):
            validate_ip("dns.example", "dns")

    @pytest.mark.parametrize(
        ("guest", "gateway", "dns", "message"),
        [
            ("172.16.1.2", "172.16.0.1", "1.1.1.1", "outside the bridge's network"),
            ("172.16.0.1", "172.16.0.1", "1.1.1.1", "bridge's own address"),
            ("172.16.0.0", "172.16.0.1", "1.1.1.1", "network or broadcast"),
            ("172.16.0.255", "172.16.0.1", "1.1.1.1", "network or broadcast"),
            ("127.0.0.2", "127.0.0.1", "1.1.1.1", "not a usable host address"),
            ("172.16.0.2", "172.16.0.1", "0.0.0.0", "not a usable address"),
            ("172.16.0.2", "172.16.0.1", "one.one", "not an IP address"),
            ("fd00::2", "172.16.0.1", "1.1.1.1", "not an IPv4 address"),
        ],
    )
    def test_network_relation(self, guest: str, gateway: str, dns: str, message: str) -> None:
        with pytest.raises(InvalidGuestConfig, match=message):
            GuestNetwork.from_strings(guest, gateway, dns)

    def test_network_is_a_value_error_and_banger_error(self) -> None:
        with pytest.raises(ValueError):
            GuestNetwork.from_strings("x", "172.16.0.1", "1.1.1.1")
        with pytest.raises(BangerError):
            GuestNetwork.from_strings("x", "172.16.0.1", "1.1.1.1")

    @pytest.mark.parametrize("name", ["devbox", "vm-1", "a", "web01.lab.example", "x" * 63])
    def test_hostname_ok(self, name: str) -> None:
        assert validate_hostname(name) == name

    @pytest.mark.parametrize(
        "name", ["", "-vm", "vm-", "vm_1", "vm 1", "vm\n127.0.0.1 evil", "x" * 64, "a..b", "ünï"]
    )
    def test_hostname_rejected(self, name: str) -> None:
        with pytest.raises(InvalidGuestConfig):
            validate_hostname(name)

    @pytest.mark.parametrize(
        ("path", "expected"), [("/etc/x", "/etc/x"), ("//etc///x/", "/etc/x"), ("/a", "/a")]
    )
    def test_guest_path(self, path: str, expected: str) -> None:
        assert normalize_guest_path(path) == expected

    @pytest.mark.parametrize("path", ["etc/x", "/", "", "/etc/../x", "/./x", "/etc/x\0"])
    def test_guest_path_rejected(self, path: str) -> None:
        with pytest.raises(InvalidGuestConfig):
            normalize_guest_path(path)


# ================================================================ builder
class TestBuilder:
    def test_standard_files_modes_and_fstab_last(self) -> None:
        files = builder().files("UUID=a / ext4 defaults 0 1\n")
        by_path = {f.path: f for f in files}
        assert files[-1].path == FSTAB_PATH
        assert set(by_path) == {
            "/etc/resolv.conf",
            "/etc/hostname",
            "/etc/hosts",
            SSHD_DROPIN_PATH,
            NETWORK_CONF_PATH,
            NETWORK_SCRIPT_PATH,
            FSTAB_PATH,
        }
        assert by_path[NETWORK_SCRIPT_PATH].mode == 0o755
        assert all(f.mode == 0o644 for f in files if f.path != NETWORK_SCRIPT_PATH)
        assert by_path["/etc/resolv.conf"].data == b"nameserver 1.1.1.1\n"
        assert by_path["/etc/hostname"].data == b"devbox\n"
        assert by_path["/etc/hosts"].data == b"127.0.0.1 localhost\n127.0.1.1 devbox\n"
        assert by_path[FSTAB_PATH].data == f"UUID=a / ext4 defaults 0 1\n{RUN}\n{TMP}\n".encode()

    def test_bad_inputs_rejected_up_front(self) -> None:
        with pytest.raises(InvalidGuestConfig):
            builder(name="bad name")
        with pytest.raises(InvalidGuestConfig):
            builder(guest_ip="10.0.0.2")

    def test_add_file_and_mount(self) -> None:
        b = builder()
        b.add_file("/etc/motd", "hello\n")
        b.add_file("//opt/run.sh", b"#!/bin/sh\n", mode=0o750)
        b.add_mount(Mount("tmpfs", "/var/cache", "tmpfs", "mode=0755"))
        by_path = {f.path: f for f in b.files("")}
        assert by_path["/etc/motd"].data == b"hello\n"
        assert by_path["/opt/run.sh"].mode == 0o750
        assert by_path[FSTAB_PATH].data.decode().endswith("tmpfs /var/cache tmpfs mode=0755 0 0\n")
        assert [m.target for m in b.mounts] == ["/var/cache"]

    def test_conflicts(self) -> None:
        b = builder()
        with pytest.raises(InvalidGuestConfig, match="already contributed"):
            b.add_file("/etc/hosts", "x")
        b.add_file("/etc/hosts", "127.0.0.1 localhost\n", replace=True)
        assert {f.path: f.data for f in b.files("")}["/etc/hosts"] == b"127.0.0.1 localhost\n"
        with pytest.raises(InvalidGuestConfig, match="contribute mounts"):
            b.add_file("/etc//fstab", "x", replace=True)
        with pytest.raises(InvalidGuestConfig, match="already mounted"):
            b.add_mount(Mount("tmpfs", "/tmp/", "tmpfs"))
        b.add_mount(Mount("tmpfs", "/scratch", "tmpfs"))
        with pytest.raises(InvalidGuestConfig, match="already mounted"):
            b.add_mount(Mount("other", "/scratch", "ext4"))
        with pytest.raises(InvalidGuestConfig, match="permission mode"):
            b.add_file("/etc/x", "x", mode=0o10000)
