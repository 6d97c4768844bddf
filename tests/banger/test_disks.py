"""Host-side disk preparation that needs no ext4 writer: sparse overlays, argument checks, key merging."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from banger_disk.disks import (
    ensure_system_overlay,
    ensure_work_disk,
    merge_authorized_keys,
    sync_authorized_keys,
    sync_files,
)
from banger_disk.errors import BangerError, InvalidGuestConfig
from banger_disk.model import VM, DaemonConfig, Image, VMRuntime, VMSpec
from banger_disk.patch import patch_root_overlay

GiB = 1 << 30
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA alice@laptop"
KEY_B = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb bob@desk"
KEY_C = (
    'from="10.0.0.0/8" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICcccccccccccccccccccccccccccccccccccccccccc ci'
)


def overlay_vm(path: Path, size: int | str = 8 * GiB) -> VM:
    return VM(
        id="vm-1",
        name="devbox",
        spec=VMSpec(system_overlay_size=size),  # type: ignore[arg-type]
        runtime=VMRuntime(system_overlay_path=str(path)),
    )


# ================================================================ system overlay
class TestSystemOverlay:
    def test_sparse_file_of_the_spec_size(self, tmp_path: Path) -> None:
        path = tmp_path / "overlay.img"
        stages: list[tuple[str, str]] = []
        assert ensure_system_overlay(overlay_vm(path), on_stage=lambda s, d: stages.append((s, d))) is True
        st = path.stat()
        assert st.st_size == 8 * GiB
        assert st.st_blocks == 0, "the overlay must be sparse: nothing written"
        assert stages == [("prepare_system_overlay", f"creating sparse system overlay {path} (8 GiB)")]

    def test_size_as_text(self, tmp_path: Path) -> None:
        path = tmp_path / "overlay.img"
        ensure_system_overlay(overlay_vm(path, "1536M"))
        assert path.stat().st_size == 1536 << 20
        assert path.stat().st_blocks == 0

    def test_noop_when_present(self, tmp_path: Path) -> None:
        path = tmp_path / "overlay.img"
        path.write_bytes(b"guest data")
        before = path.stat()
        stages: list[tuple[str, str]] = []
        assert ensure_system_overlay(overlay_vm(path), on_stage=lambda s, d: stages.append((s, d))) is False
        assert path.read_bytes() == b"guest data"
        assert path.stat().st_mtime_ns == before.st_mtime_ns
        assert stages == []

    def test_noop_for_dangling_symlink(self, tmp_path: Path) -> None:
        path = tmp_path / "overlay.img"
        path.symlink_to(tmp_path / "elsewhere")
        assert ensure_system_overlay(overlay_vm(path)) is False
        assert not (tmp_path / "elsewhere").exists()

    @pytest.mark.parametrize("size", [0, -1, "0"])
    def test_bad_size(self, tmp_path: Path, size: int | str) -> None:
        with pytest.raises(BangerError, match="vm vm-1: system overlay size must be a positive"):
            ensure_system_overlay(overlay_vm(tmp_path / "o.img", size))
        assert list(tmp_path.iterdir()) == []

    def test_missing_path(self) -> None:
        with pytest.raises(BangerError, match="vm vm-1: system overlay path is required"):
            ensure_system_overlay(VM(id="vm-1", name="x", spec=VMSpec(system_overlay_size=GiB)))

    def test_missing_directory_is_an_os_error(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            ensure_system_overlay(overlay_vm(tmp_path / "no" / "overlay.img"))

    def test_impossible_size(self, tmp_path: Path) -> None:
        path = tmp_path / "overlay.img"
        with pytest.raises(BangerError, match="larger than any file"):
            ensure_system_overlay(overlay_vm(path, 1 << 70))
        assert not path.exists()

    def test_failed_truncate_leaves_nothing(self, tmp_path: Path) -> None:
        # A file size limit makes ftruncate fail with EFBIG after the file was created.
        path = tmp_path / "overlay.img"
        code = textwrap.dedent(
            f"""
            import resource, signal, sys
            from banger_disk.disks import ensure_system_overlay
            from banger_disk.model import VM, VMRuntime, VMSpec
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
            vm = VM(id="v", name="v", spec=VMSpec(system_overlay_size=1 << 30),
                    runtime=VMRuntime(system_overlay_path={str(path)!r}))
            try:
                ensure_system_overlay(vm)
            except OSError as exc:
                print("errno", exc.errno)
                sys.exit(3)
            """
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 3, result.stdout + result.stderr
        assert result.stdout.strip() == f"errno {errno.EFBIG}"
        assert not path.exists()


# ================================================================ work disk arguments
class TestWorkDiskArguments:
    def test_noop_when_present(self, tmp_path: Path) -> None:
        path = tmp_path / "work.ext4"
        path.write_bytes(b"not even ext4")
        vm = VM(
            id="vm-1", name="x", spec=VMSpec(work_disk_size=GiB), runtime=VMRuntime(work_disk_path=str(path))
        )
        prep = ensure_work_disk(vm, Image(work_seed_path=str(tmp_path / "missing-seed")))
        assert (prep.cloned_from_seed, prep.created) == (False, False)
        assert path.read_bytes() == b"not even ext4"

    def test_missing_seed(self, tmp_path: Path) -> None:
        vm = VM(
            id="vm-1",
            name="x",
            spec=VMSpec(work_disk_size=GiB),
            runtime=VMRuntime(work_disk_path=str(tmp_path / "work.ext4")),
        )
        with pytest.raises(BangerError, match="work seed .* does not exist"):
            ensure_work_disk(vm, Image(work_seed_path=str(tmp_path / "nope.ext4")))
        assert list(tmp_path.iterdir()) == []

    def test_bad_size_and_path(self, tmp_path: Path) -> None:
        vm = VM(id="vm-1", name="x", runtime=VMRuntime(work_disk_path=str(tmp_path / "w")))
        with pytest.raises(BangerError, match="work disk size must be a positive"):
            ensure_work_disk(vm, Image())
        with pytest.raises(BangerError, match="work disk path is required"):
            ensure_work_disk(VM(id="vm-1", name="x", spec=VMSpec(work_disk_size=GiB)), Image())
        assert list(tmp_path.iterdir()) == []


# ================================================================ patch arguments
class TestPatchArguments:
    def vm(self, guest_ip: str = "172.16.0.2", name: str = "devbox") -> VM:
        return VM(id="vm-42", name=name, runtime=VMRuntime(guest_ip=guest_ip))

    config = DaemonConfig(default_dns="1.1.1.1", bridge_ip="172.16.0.1")

    @pytest.mark.parametrize("device", ["", None])
    def test_empty_device_path(self, device: str | None) -> None:
        with pytest.raises(BangerError, match=r"^vm vm-42: DM device is required$"):
            patch_root_overlay(self.vm(), Image(), device, self.config, capabilities=[])  # type: ignore[arg-type]

    def test_bad_address_refused_before_opening(self, tmp_path: Path) -> None:
        # The device does not exist: a failure to open it would be a different error.
        missing = tmp_path / "missing.ext4"
        with pytest.raises(InvalidGuestConfig, match="vm vm-42: guest IP 10.9.9.9 is outside"):
            patch_root_overlay(self.vm("10.9.9.9"), Image(), missing, self.config, capabilities=[])
        with pytest.raises(InvalidGuestConfig, match="vm vm-42: .*cannot be a host name"):
            patch_root_overlay(self.vm(name="my_vm"), Image(), missing, self.config, capabilities=[])

    def test_failing_hook_refused_before_opening(self, tmp_path: Path) -> None:
        def hook(builder: object) -> None:
            raise ValueError("no")

        with pytest.raises(BangerError, match="capability hook: no"):
            patch_root_overlay(self.vm(), Image(), tmp_path / "missing", self.config, capabilities=[hook])


# ================================================================ keys and files (pure parts)
class TestAuthorizedKeys:
    def test_merge_dedupes_and_keeps_order(self) -> None:
        existing = f"# managed\n{KEY_A}\n\n{KEY_A}\n"
        text = merge_authorized_keys(existing, [f"{KEY_B}\n{KEY_A}\n", f"  {KEY_C}  ", KEY_B])
        assert text == f"# managed\n{KEY_A}\n{KEY_B}\n{KEY_C}\n"

    def test_key_files_with_comments_and_blank_lines(self) -> None:
        assert merge_authorized_keys("", [f"# my keys\n\n{KEY_A}\r\n"]) == f"{KEY_A}\n"

    def test_empty(self) -> None:
        assert merge_authorized_keys("", []) == ""

    def test_private_key_refused(self) -> None:
        with pytest.raises(BangerError, match="private key"):
            merge_authorized_keys("", ["-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n"])

    def test_garbage_refused(self) -> None:
        with pytest.raises(BangerError, match="not an SSH public key"):
            merge_authorized_keys("", ["justoneword"])

    def test_invalid_keys_refused_before_opening(self, tmp_path: Path) -> None:
        with pytest.raises(BangerError, match="not an SSH public key"):
            sync_authorized_keys(tmp_path / "missing.ext4", ["x"])


class TestSyncFilesArguments:
    def test_checked_before_opening(self, tmp_path: Path) -> None:
        missing_image = tmp_path / "missing.ext4"
        host = tmp_path / "f"
        host.write_text("x")
        with pytest.raises(FileNotFoundError):
            sync_files(missing_image, [(tmp_path / "nope", "/x", 0o644)])
        with pytest.raises(BangerError, match="not a regular file"):
            sync_files(missing_image, [(tmp_path, "/x", 0o644)])
        with pytest.raises(InvalidGuestConfig):
            sync_files(missing_image, [(host, "/a/../b", 0o644)])
        with pytest.raises(BangerError, match="permission mode"):
            sync_files(missing_image, [(host, "/x", 0o17777)])

    def test_nothing_to_do(self, tmp_path: Path) -> None:
        assert sync_files(tmp_path / "missing.ext4", []) == []


def test_public_api_exports() -> None:
    import banger_disk

    for name in banger_disk.__all__:
        assert getattr(banger_disk, name) is not None
    assert os.path.basename(banger_disk.__file__) == "__init__.py"
