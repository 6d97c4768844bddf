"""banger_disk against real images: e2fsck, debugfs and (as root) the kernel judge the work disks and patches.

Tests marked ``needs_pyext4_engines`` go through pyext4.Filesystem / pyext4.populate (the reader,
writer and populate engines); the others need only pyext4.mkfs.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import pyext4
from banger_disk import (
    VM,
    BangerError,
    DaemonConfig,
    Image,
    VMRuntime,
    VMSpec,
    ensure_work_disk,
    patch_root_overlay,
    serial_console,
    sync_authorized_keys,
    sync_files,
)
from banger_disk.capabilities import SERIAL_GETTY_DROPIN
from banger_disk.cli import cli
from banger_disk.guest import render_network_script, render_sshd_dropin

from .banger_helpers import (
    DOTFILE_SYMLINKS,
    DOTFILES,
    ETC_ENTRIES,
    EXPECTED_FSTAB,
    INDEX_FL,
    SEED_UID,
    GiB,
    MiB,
    assert_fsck_clean,
    cat,
    host_tree,
    inode_flags,
    kernel_mount,
    lookup,
    ls,
    make_rootfs,
    make_seed,
    mke2fs_d,
    require_tools,
    run,
    sparse_digest,
    symlink_target,
    tool,
    walk,
)

engines = pytest.mark.needs_pyext4_engines
mount = pytest.mark.mount

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA alice@laptop"
KEY_B = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb bob@desk"
KEY_C = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBccc carol"

CONFIG = DaemonConfig(default_dns="1.1.1.1", bridge_ip="172.16.0.1")

RUN = "tmpfs /run tmpfs defaults,nodev,nosuid,mode=0755 0 0"
TMP = "tmpfs /tmp tmpfs defaults,nodev,nosuid,mode=1777 0 0"


@pytest.fixture(autouse=True)
def _e2fsprogs() -> None:
    require_tools("mke2fs", "e2fsck", "debugfs")


def work_vm(path: Path, size: int = 8 * GiB) -> VM:
    return VM(
        id="vm-1",
        name="devbox",
        spec=VMSpec(work_disk_size=size),
        runtime=VMRuntime(work_disk_path=str(path)),
    )


def rootfs_vm() -> VM:
    return VM(id="vm-7", name="devbox", runtime=VMRuntime(guest_ip="172.16.0.2"))


def record() -> tuple[list[tuple[str, str]], object]:
    stages: list[tuple[str, str]] = []
    return stages, lambda stage, detail: stages.append((stage, detail))


# ================================================================ work disk from a seed
@engines
def test_seed_to_8g_work_disk(tmp_path: Path) -> None:
    _, seed = make_seed(tmp_path)
    seed_hash = sparse_digest(seed)
    seed_view = walk(seed)
    # The fixture is what the issue describes: uid 1000 everywhere, modes 0600/0700/0755.
    assert {(e.uid, e.gid) for p, e in seed_view.items() if p != "/lost+found"} == {(SEED_UID, SEED_UID)}
    assert seed_view["/"].perm == 0o700
    assert {0o600, 0o700, 0o755} <= {e.perm for e in seed_view.values()}

    vmdir = tmp_path / "vm"
    vmdir.mkdir()
    work = vmdir / "work.ext4"
    stages, on_stage = record()
    prep = ensure_work_disk(work_vm(work), Image(work_seed_path=str(seed)), on_stage=on_stage)  # type: ignore[arg-type]

    assert (prep.cloned_from_seed, prep.created) == (True, True)
    assert stages[0] == ("prepare_work_disk", "applying work seed")
    assert stages[-1] == ("prepare_work_disk", f"work disk ready: {work} (8 GiB)")
    assert os.listdir(vmdir) == ["work.ext4"], "no temporary file may be left beside the work disk"
    assert work.stat().st_size == 8 * GiB
    assert work.stat().st_blocks * 512 < 256 * MiB, "the work disk must stay sparse"
    assert_fsck_clean(work)
    assert sparse_digest(seed) == seed_hash, "the seed image must not change"

    view = walk(work)
    assert set(view) == set(seed_view)
    assert view["/"].mode == stat.S_IFDIR | 0o755 and (view["/"].uid, view["/"].gid) == (0, 0)
    for path, entry in view.items():
        assert (entry.uid, entry.gid) == (0, 0), path
        if path != "/":
            assert entry.mode == seed_view[path].mode, path
    for rel, (mode, content) in DOTFILES.items():
        assert view["/" + rel].perm == mode, rel
        if content is not None:
            assert cat(work, "/" + rel) == content, rel
    for rel, target in DOTFILE_SYMLINKS.items():
        assert stat.S_ISLNK(view["/" + rel].mode)
        assert symlink_target(work, "/" + rel) == target


@engines
@mount
def test_seed_work_disk_kernel_view(tmp_path: Path) -> None:
    tree, seed = make_seed(tmp_path)
    work = tmp_path / "work.ext4"
    ensure_work_disk(work_vm(work), Image(work_seed_path=str(seed)))
    source = host_tree(tree)
    with kernel_mount(work) as mnt:
        root = os.stat(mnt)
        assert (stat.S_IMODE(root.st_mode), root.st_uid, root.st_gid) == (0o755, 0, 0)
        seen = host_tree(mnt)
    seen.pop("/lost+found")
    assert set(seen) == set(source)
    for path, (mode, uid, gid, content) in seen.items():
        assert (uid, gid) == (0, 0), path
        assert mode == source[path][0], path
        assert content == source[path][3], path


@engines
def test_failed_seed_leaves_nothing(tmp_path: Path) -> None:
    vmdir = tmp_path / "vm"
    vmdir.mkdir()
    garbage = tmp_path / "garbage.ext4"
    garbage.write_bytes(os.urandom(1 << 20))
    # Whatever populate makes of a file that is no ext4 image (nor tar), it is an error, and the
    # half-made work disk is gone.
    with pytest.raises(Exception):  # noqa: B017
        ensure_work_disk(work_vm(vmdir / "work.ext4"), Image(work_seed_path=str(garbage)))
    assert os.listdir(vmdir) == []

    # A seed whose tree does not fit the requested size.
    tree = tmp_path / "big-tree"
    tree.mkdir()
    (tree / "blob").write_bytes(os.urandom(24 * MiB))
    big_seed = tmp_path / "big.ext4"
    mke2fs_d(big_seed, tree, "64M")
    with pytest.raises(pyext4.Ext4Error):
        ensure_work_disk(work_vm(vmdir / "work.ext4", size=16 * MiB), Image(work_seed_path=str(big_seed)))
    assert os.listdir(vmdir) == []


# ================================================================ empty fallback, idempotence
def test_empty_work_disk(tmp_path: Path) -> None:
    work = tmp_path / "work.ext4"
    stages, on_stage = record()
    prep = ensure_work_disk(work_vm(work), Image(work_seed_path=None), on_stage=on_stage)  # type: ignore[arg-type]
    assert (prep.cloned_from_seed, prep.created) == (False, True)
    assert stages == [
        ("prepare_work_disk", "creating empty work disk"),
        ("prepare_work_disk", f"work disk ready: {work} (8 GiB)"),
    ]
    assert os.listdir(tmp_path) == ["work.ext4"]
    assert work.stat().st_size == 8 * GiB
    assert_fsck_clean(work)
    view = walk(work)
    assert set(view) == {"/", "/lost+found"}
    assert view["/"].mode == stat.S_IFDIR | 0o755 and (view["/"].uid, view["/"].gid) == (0, 0)


@mount
def test_empty_work_disk_kernel_view(tmp_path: Path) -> None:
    work = tmp_path / "work.ext4"
    ensure_work_disk(work_vm(work), Image())
    with kernel_mount(work) as mnt:
        assert os.listdir(mnt) == ["lost+found"]
        root = os.stat(mnt)
        assert (stat.S_IMODE(root.st_mode), root.st_uid, root.st_gid) == (0o755, 0, 0)
        fs = os.statvfs(mnt)
        assert fs.f_blocks * fs.f_frsize > 7 * GiB


@pytest.mark.parametrize("with_seed", [pytest.param(True, marks=engines), False], ids=["seed", "empty"])
def test_work_disk_idempotent(tmp_path: Path, with_seed: bool) -> None:
    seed = make_seed(tmp_path)[1] if with_seed else None
    work = tmp_path / "work.ext4"
    image = Image(work_seed_path=str(seed) if seed else None)
    first = ensure_work_disk(work_vm(work), image)
    assert first.created and first.cloned_from_seed is with_seed
    before = (sparse_digest(work), work.stat().st_mtime_ns, work.stat().st_ino)
    stages, on_stage = record()
    again = ensure_work_disk(work_vm(work, size=16 * GiB), image, on_stage=on_stage)  # type: ignore[arg-type]
    assert (again.created, again.cloned_from_seed) == (False, False)
    assert stages == []
    assert (sparse_digest(work), work.stat().st_mtime_ns, work.stat().st_ino) == before
    assert work.stat().st_size == 8 * GiB


# ================================================================ patch-rootfs
def check_patched(image: Path, *, fstab: str = EXPECTED_FSTAB, with_serial: bool = True) -> None:
    """The patched image as e2fsck and debugfs see it."""
    assert_fsck_clean(image)
    expected = {
        "/etc/resolv.conf": (0o644, b"nameserver 1.1.1.1\n"),
        "/etc/hostname": (0o644, b"devbox\n"),
        "/etc/hosts": (0o644, b"127.0.0.1 localhost\n127.0.1.1 devbox\n"),
        "/etc/ssh/sshd_config.d/99-banger.conf": (0o644, render_sshd_dropin().encode()),
        "/etc/banger/network.conf": (
            0o644,
            b"# banger guest network, read by /usr/local/sbin/banger-network at boot.\n"
            b"GUEST_IP=172.16.0.2\nPREFIX=24\nGATEWAY=172.16.0.1\nDNS=1.1.1.1\n",
        ),
        "/usr/local/sbin/banger-network": (0o755, render_network_script().encode()),
        "/etc/fstab": (0o644, fstab.encode()),
    }
    for path, (mode, content) in expected.items():
        entry = lookup(image, path)
        assert entry.mode == stat.S_IFREG | mode, (path, oct(entry.mode))
        assert (entry.uid, entry.gid) == (0, 0), path
        assert cat(image, path) == content, path
    created_dirs = ["/etc/banger", "/etc/ssh/sshd_config.d", "/usr/local/sbin"]
    if with_serial:
        assert cat(image, SERIAL_GETTY_DROPIN).startswith(b"# Written by banger")
        created_dirs += ["/etc/systemd", "/etc/systemd/system", os.path.dirname(SERIAL_GETTY_DROPIN)]
    for directory in created_dirs:
        entry = lookup(image, directory)
        assert entry.mode == stat.S_IFDIR | 0o755 and (entry.uid, entry.gid) == (0, 0), directory
    # The rest of /etc is still there, and /etc is still a valid (e2fsck-checked) htree.
    etc = ls(image, "/etc")
    assert sum(name.startswith("generated-config-entry-") for name in etc) == ETC_ENTRIES
    assert {"passwd", "ssh", "default"} <= set(etc)
    assert inode_flags(image, "/etc") & INDEX_FL
    assert cat(image, "/etc/generated-config-entry-0123.conf") == b"entry 123\n"
    assert cat(image, "/etc/ssh/sshd_config").startswith(b"Include /etc/ssh/sshd_config.d/*.conf")


@engines
def test_patch_rootfs_htree_image(tmp_path: Path) -> None:
    image = make_rootfs(tmp_path)
    stages, on_stage = record()
    files = patch_root_overlay(
        rootfs_vm(),
        Image(rootfs_path=str(image)),
        image,
        CONFIG,
        on_stage=on_stage,  # type: ignore[arg-type]
        capabilities=[serial_console],
    )
    assert [f.path for f in files][-1] == "/etc/fstab"
    assert stages[0] == ("patch_root_overlay", "applying capabilities: serial_console")
    assert ("patch_root_overlay", f"opening {image}") in stages
    assert ("patch_root_overlay", "reading /etc/fstab") in stages
    check_patched(image)


@engines
@mount
def test_patch_rootfs_kernel_view(tmp_path: Path) -> None:
    image = make_rootfs(tmp_path)
    files = patch_root_overlay(rootfs_vm(), Image(), image, CONFIG, capabilities=[serial_console])
    with kernel_mount(image) as mnt:
        for item in files:
            st = os.lstat(mnt / item.path.lstrip("/"))
            assert (stat.S_ISREG(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (
                True,
                item.mode,
                0,
                0,
            ), item.path
            assert (mnt / item.path.lstrip("/")).read_bytes() == item.data, item.path
        assert (mnt / "etc/fstab").read_text() == EXPECTED_FSTAB
        for directory in ("etc/banger", "etc/ssh/sshd_config.d", "usr/local/sbin"):
            st = os.stat(mnt / directory)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0), directory
        # Every entry of the htree /etc found by name through the kernel's lookup.
        for i in range(ETC_ENTRIES):
            assert (mnt / f"etc/generated-config-entry-{i:04d}.conf").read_text() == f"entry {i}\n"
        assert len(os.listdir(mnt / "etc")) >= ETC_ENTRIES + 8


@engines
def test_patch_rootfs_twice_is_stable(tmp_path: Path) -> None:
    image = make_rootfs(tmp_path)
    patch_root_overlay(rootfs_vm(), Image(), image, CONFIG, capabilities=[serial_console])
    patch_root_overlay(rootfs_vm(), Image(), image, CONFIG, capabilities=[serial_console])
    check_patched(image)


@engines
def test_patch_rootfs_without_fstab(tmp_path: Path) -> None:
    image = make_rootfs(tmp_path, fstab=None)
    patch_root_overlay(rootfs_vm(), Image(), image, CONFIG, capabilities=[])
    check_patched(image, fstab=f"{RUN}\n{TMP}\n", with_serial=False)


@engines
def test_patch_rootfs_replaces_resolv_conf_symlink(tmp_path: Path) -> None:
    """systemd-resolved images have /etc/resolv.conf -> ../run/...; the VM gets a real file instead."""

    def resolved(tree: Path) -> None:
        (tree / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")

    image = make_rootfs(tmp_path, tree_hook=resolved)
    patch_root_overlay(rootfs_vm(), Image(), image, CONFIG, capabilities=[])
    check_patched(image, with_serial=False)
    assert ls(image, "/run") == {}, "the old symlink's target must not be created"


@engines
def test_patch_rootfs_through_a_block_device(tmp_path: Path) -> None:
    if os.geteuid() != 0 or tool("losetup") is None:
        pytest.skip("attaching a loop block device needs root and losetup")
    image = make_rootfs(tmp_path)
    attach = run([tool("losetup") or "losetup", "--find", "--show", str(image)])
    if attach.returncode != 0:
        pytest.skip(f"losetup failed: {attach.stderr.decode().strip()}")
    device = attach.stdout.decode().strip()
    try:
        assert stat.S_ISBLK(os.stat(device).st_mode)
        patch_root_overlay(
            rootfs_vm(), Image(rootfs_path=str(image)), device, CONFIG, capabilities=[serial_console]
        )
    finally:
        run([tool("losetup") or "losetup", "--detach", device])
    check_patched(image)


@engines
def test_patch_rootfs_cli(tmp_path: Path) -> None:
    image = make_rootfs(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from banger_disk.cli import main; main()",
            "patch-rootfs",
            str(image),
            "--name",
            "devbox",
            "--guest-ip",
            "172.16.0.2",
            "--bridge-ip",
            "172.16.0.1",
            "--dns",
            "1.1.1.1",
            "--id",
            "vm-7",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("banger-disk: patch_root_overlay: ") for line in lines)
    assert "banger-disk: patch_root_overlay: writing /usr/local/sbin/banger-network (0755)" in lines
    from importlib.metadata import entry_points

    installed = any(ep.name == "serial-console" for ep in entry_points(group="banger_disk.capabilities"))
    check_patched(image, with_serial=installed)


# ================================================================ keys and files in a work disk
@engines
def test_authorized_keys(tmp_path: Path) -> None:
    work = tmp_path / "work.ext4"
    ensure_work_disk(work_vm(work, size=64 * MiB), Image())
    sync_authorized_keys(work, [KEY_A, f"{KEY_B}\n{KEY_A}\n"])
    assert_fsck_clean(work)
    ssh = lookup(work, "/.ssh")
    keys = lookup(work, "/.ssh/authorized_keys")
    assert (ssh.mode, ssh.uid, ssh.gid) == (stat.S_IFDIR | 0o700, 0, 0)
    assert (keys.mode, keys.uid, keys.gid) == (stat.S_IFREG | 0o600, 0, 0)
    assert cat(work, "/.ssh/authorized_keys") == f"{KEY_A}\n{KEY_B}\n".encode()

    sync_authorized_keys(work, [KEY_B, KEY_C])
    assert cat(work, "/.ssh/authorized_keys") == f"{KEY_A}\n{KEY_B}\n{KEY_C}\n".encode()
    sync_authorized_keys(work, [KEY_C], replace=True)
    assert cat(work, "/.ssh/authorized_keys") == f"{KEY_C}\n".encode()
    assert_fsck_clean(work)


@engines
def test_authorized_keys_fix_an_existing_ssh_dir(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / ".ssh").mkdir(parents=True)
    (tree / ".ssh").chmod(0o775)
    (tree / ".ssh/authorized_keys").write_text(f"# mine\n{KEY_A}\n")
    (tree / ".ssh/authorized_keys").chmod(0o664)
    work = tmp_path / "work.ext4"
    mke2fs_d(work, tree, "64M")
    sync_authorized_keys(work, [KEY_B])
    assert_fsck_clean(work)
    ssh = lookup(work, "/.ssh")
    keys = lookup(work, "/.ssh/authorized_keys")
    assert (ssh.mode, ssh.uid, ssh.gid) == (stat.S_IFDIR | 0o700, 0, 0)
    assert (keys.mode, keys.uid, keys.gid) == (stat.S_IFREG | 0o600, 0, 0)
    assert cat(work, "/.ssh/authorized_keys") == f"# mine\n{KEY_A}\n{KEY_B}\n".encode()


@engines
def test_sync_files(tmp_path: Path) -> None:
    work = tmp_path / "work.ext4"
    ensure_work_disk(work_vm(work, size=64 * MiB), Image())
    settings = tmp_path / "settings.toml"
    settings.write_text("answer = 42\n")
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o750)
    written = sync_files(work, [(settings, "/.config/app/settings.toml", 0o600), (script, "bin/run", None)])
    assert written == ["/.config/app/settings.toml", "/bin/run"]
    assert_fsck_clean(work)
    for directory in ("/.config", "/.config/app", "/bin"):
        entry = lookup(work, directory)
        assert (entry.mode, entry.uid, entry.gid) == (stat.S_IFDIR | 0o755, 0, 0), directory
    assert lookup(work, "/.config/app/settings.toml").mode == stat.S_IFREG | 0o600
    assert lookup(work, "/bin/run").mode == stat.S_IFREG | 0o750
    assert cat(work, "/.config/app/settings.toml") == b"answer = 42\n"

    settings.write_text("answer = 43\n")
    sync_files(work, [(settings, "/.config/app/settings.toml", 0o640)])
    assert cat(work, "/.config/app/settings.toml") == b"answer = 43\n"
    assert lookup(work, "/.config/app/settings.toml").mode == stat.S_IFREG | 0o640
    assert_fsck_clean(work)


@engines
def test_cli_work_disk_keys_and_sync(tmp_path: Path) -> None:
    _, seed = make_seed(tmp_path)
    work = tmp_path / "work.ext4"
    runner = CliRunner()
    result = runner.invoke(cli, ["work-disk", str(work), "--size", "8G", "--seed", str(seed)])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0] == "banger-disk: prepare_work_disk: applying work seed"
    assert work.stat().st_size == 8 * GiB

    key = tmp_path / "id_ed25519.pub"
    key.write_text(KEY_A + "\n")
    result = runner.invoke(cli, ["authorize-key", str(work), str(key), "-"], input=KEY_B + "\n")
    assert result.exit_code == 0, result.stderr
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("[user]\n    name = VM\n")
    result = runner.invoke(cli, ["sync", str(work), f"{gitconfig}:/.gitconfig:0600"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [f"banger-disk: sync_files: {gitconfig} -> /.gitconfig (0600)"]

    assert_fsck_clean(work)
    assert cat(work, "/.ssh/authorized_keys") == f"{KEY_A}\n{KEY_B}\n".encode()
    assert lookup(work, "/.gitconfig").mode == stat.S_IFREG | 0o600
    assert cat(work, "/.config/git/config") == DOTFILES[".config/git/config"][1]
    # The seed's own .ssh/config is still there next to the new authorized_keys.
    assert set(ls(work, "/.ssh")) == {"config", "known_hosts", "authorized_keys"}

    result = runner.invoke(cli, ["work-disk", str(work), "--size", "8G", "--seed", str(seed)])
    assert result.exit_code == 0
    assert "exists; left as it is" in result.stderr


def test_cli_empty_work_disk(tmp_path: Path) -> None:
    work = tmp_path / "work.ext4"
    result = CliRunner().invoke(cli, ["work-disk", str(work), "--size", "1G"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "banger-disk: prepare_work_disk: creating empty work disk",
        f"banger-disk: prepare_work_disk: work disk ready: {work} (1 GiB)",
    ]
    assert work.stat().st_size == GiB
    assert_fsck_clean(work)


@engines
def test_patch_rootfs_failing_half_way_changes_nothing(tmp_path: Path) -> None:
    """/usr/local is a file: the network script cannot be written after resolv.conf, hostname, hosts and
    the network config were; the session is abandoned, so the guest sees none of them."""

    def usr_local_is_a_file(tree: Path) -> None:
        import shutil

        shutil.rmtree(tree / "usr/local", ignore_errors=True)
        (tree / "usr/local").write_text("not a directory\n")

    image = make_rootfs(tmp_path, tree_hook=usr_local_is_a_file)
    before = walk(image)
    with pytest.raises(BangerError, match="/usr/local"):
        patch_root_overlay(rootfs_vm(), Image(), image, CONFIG, capabilities=[])
    assert walk(image) == before
    assert "banger" not in ls(image, "/etc")
    assert_fsck_clean(image)


@engines
def test_sync_files_is_all_or_nothing(tmp_path: Path) -> None:
    disk = tmp_path / "work.ext4"
    pyext4.mkfs(disk, "64M", root_owner=(0, 0))
    with pyext4.Filesystem.open(disk, writable=True) as fs:
        fs.write_file("/blocker", b"a file where a directory is wanted")
    (tmp_path / "one").write_bytes(b"first")
    (tmp_path / "two").write_bytes(b"second")
    before = walk(disk)
    with pytest.raises(BangerError):
        sync_files(disk, [(tmp_path / "one", "/one", 0o600), (tmp_path / "two", "/blocker/two", 0o600)])
    assert walk(disk) == before
    assert_fsck_clean(disk)
