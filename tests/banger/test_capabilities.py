"""Capability hooks: the built-in example, explicit hook lists, entry point discovery and failures."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger_disk import capabilities as caps
from banger_disk.errors import BangerError
from banger_disk.guest import FSTAB_PATH, GuestConfigBuilder, Mount
from banger_disk.model import VM, DaemonConfig, VMRuntime
from banger_disk.patch import build_guest_config


def builder() -> GuestConfigBuilder:
    return GuestConfigBuilder.from_strings(
        name="devbox", guest_ip="172.16.0.2", gateway="172.16.0.1", dns="1.1.1.1"
    )


def vm() -> VM:
    return VM(id="vm-7", name="devbox", runtime=VMRuntime(guest_ip="172.16.0.2"))


CONFIG = DaemonConfig(default_dns="1.1.1.1", bridge_ip="172.16.0.1")


def test_serial_console_contributes_a_getty_dropin_only() -> None:
    b = builder()
    before = {f.path for f in b.files("")}
    caps.serial_console(b)
    files = {f.path: f for f in b.files("")}
    added = set(files) - before
    assert added == {caps.SERIAL_GETTY_DROPIN}
    dropin = files[caps.SERIAL_GETTY_DROPIN]
    assert dropin.mode == 0o644
    text = dropin.data.decode()
    assert "[Service]" in text
    assert "autologin" not in text  # it logs no one in
    assert b.mounts == ()


def test_explicit_hooks_add_files_and_mounts_before_fstab() -> None:
    seen: list[str] = []

    def shares(builder: GuestConfigBuilder) -> None:
        seen.append(builder.name)
        builder.add_mount(Mount("hostshare", "/mnt/host", "virtiofs", "defaults"))
        builder.add_file("/etc/banger/shares", f"{builder.network.guest_ip}\n")

    b = build_guest_config(
        vm(), CONFIG, capabilities=[shares, caps.Capability("serial", caps.serial_console)]
    )
    assert seen == ["devbox"]
    files = {f.path: f.data for f in b.files("proc /proc proc defaults 0 0\n")}
    assert files["/etc/banger/shares"] == b"172.16.0.2\n"
    assert caps.SERIAL_GETTY_DROPIN in files
    assert files[FSTAB_PATH].decode().splitlines()[-1] == "hostshare /mnt/host virtiofs defaults 0 0"


def test_empty_list_applies_nothing() -> None:
    b = build_guest_config(vm(), CONFIG, capabilities=[])
    assert caps.SERIAL_GETTY_DROPIN not in {f.path for f in b.files("")}


def test_stage_reports_the_hooks() -> None:
    stages: list[tuple[str, str]] = []
    build_guest_config(
        vm(), CONFIG, capabilities=[caps.serial_console], on_stage=lambda s, d: stages.append((s, d))
    )
    assert stages == [("patch_root_overlay", "applying capabilities: serial_console")]


def test_failing_hook_names_itself() -> None:
    def broken(builder: GuestConfigBuilder) -> None:
        raise RuntimeError("boom")

    with pytest.raises(BangerError, match="capability broken: boom"):
        build_guest_config(vm(), CONFIG, capabilities=[broken])


def test_conflicting_hooks_fail() -> None:
    def one(builder: GuestConfigBuilder) -> None:
        builder.add_mount(Mount("a", "/data", "ext4"))

    def two(builder: GuestConfigBuilder) -> None:
        builder.add_mount(Mount("b", "/data/", "ext4"))

    with pytest.raises(BangerError, match="capability two: .*already mounted"):
        build_guest_config(vm(), CONFIG, capabilities=[one, two])


def test_not_callable_rejected() -> None:
    with pytest.raises(BangerError, match="not callable"):
        caps.resolve(["serial_console"])  # type: ignore[list-item]


# ================================================================ entry points
@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution on sys.path declaring hooks in the banger_disk.capabilities group."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "banger_test_hooks.py").write_text(
        textwrap.dedent(
            """
            from banger_disk.guest import Mount

            def motd(builder):
                builder.add_file("/etc/motd", "welcome to " + builder.name + "\\n")

            def scratch(builder):
                builder.add_mount(Mount("tmpfs", "/scratch", "tmpfs", "size=64m"))

            NOT_A_HOOK = 42
            """
        )
    )
    dist = site / "banger_test_hooks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: banger-test-hooks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[banger_disk.capabilities]\n"
        "zz-motd = banger_test_hooks:motd\n"
        "aa-scratch = banger_test_hooks:scratch\n"
        "\n"
        "[banger_disk.test_broken]\n"
        "missing = banger_test_hooks_nowhere:hook\n"
        "\n"
        "[banger_disk.test_not_callable]\n"
        "value = banger_test_hooks:NOT_A_HOOK\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("banger_test_hooks", None)


def test_discovery_finds_entry_points_sorted(fake_distribution: Path) -> None:
    found = caps.discover()
    names = [c.name for c in found]
    assert "aa-scratch" in names and "zz-motd" in names
    assert names == sorted(names)
    b = build_guest_config(
        vm(), CONFIG, capabilities=[c for c in found if c.name in ("aa-scratch", "zz-motd")]
    )
    files = {f.path: f.data for f in b.files("")}
    assert files["/etc/motd"] == b"welcome to devbox\n"
    assert files[FSTAB_PATH].decode().endswith("tmpfs /scratch tmpfs size=64m 0 0\n")


def test_none_means_discovered(fake_distribution: Path) -> None:
    b = build_guest_config(vm(), CONFIG, capabilities=None)
    assert b"welcome to devbox\n" == {f.path: f.data for f in b.files("")}["/etc/motd"]


def test_discovery_errors_name_the_entry_point(fake_distribution: Path) -> None:
    with pytest.raises(BangerError, match="capability missing .*cannot load"):
        caps.discover("banger_disk.test_broken")
    with pytest.raises(BangerError, match="capability value .*not callable"):
        caps.discover("banger_disk.test_not_callable")


def test_empty_group() -> None:
    assert caps.discover("banger_disk.no_such_group_here") == []


def test_installed_metadata_declares_serial_console() -> None:
    from importlib.metadata import entry_points

    declared = {ep.name: ep.value for ep in entry_points(group=caps.ENTRY_POINT_GROUP)}
    if "serial-console" not in declared:
        pytest.skip("the project is not installed (pip install -e .), so its entry points are not visible")
    assert declared["serial-console"] == "banger_disk.capabilities:serial_console"
    found = {c.name: c.hook for c in caps.discover()}
    assert found["serial-console"] is caps.serial_console
