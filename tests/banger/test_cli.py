"""banger-disk's CLI without an ext4 writer: usage errors (exit 2), one-line errors (exit 1), --help cost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from banger_disk.cli import _parse_sync_spec, cli

GiB = 1 << 30


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.ext4"
    path.write_bytes(b"\0" * 4096)
    return path


PATCH_OK = ["--name", "devbox", "--guest-ip", "172.16.0.2", "--bridge-ip", "172.16.0.1", "--dns", "1.1.1.1"]


class TestUsageErrors:
    @pytest.mark.parametrize(
        "args",
        [
            [],  # no command: click prints the help, exit 2; every other usage error is one line
            ["frobnicate"],
            ["work-disk"],
            ["work-disk", "out.ext4"],  # --size is required
            ["work-disk", "out.ext4", "--size", "8Q"],
            ["work-disk", "out.ext4", "--size", "0"],
            ["work-disk", "out.ext4", "--size", "-1G"],
            ["work-disk", "out.ext4", "--size", "8G", "--seed", "/nonexistent/seed.ext4"],
            ["system-overlay", "out.img"],
            ["system-overlay", "out.img", "--size", "lots"],
            ["patch-rootfs", "/nonexistent/rootfs.ext4", *PATCH_OK],
            ["authorize-key", "/nonexistent/work.ext4", "/nonexistent/key.pub"],
            ["sync", "/nonexistent/work.ext4", "a:b"],
        ],
    )
    def test_exit_2(self, args: list[str], tmp_path: Path) -> None:
        code, _, err = invoke(*[a.replace("out.", str(tmp_path / "out.")) for a in args])
        assert code == 2, err
        if not args:  # no command at all: the help
            assert "Usage:" in err
        else:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("banger-disk: error: ") and "--help" in lines[0], err
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("--guest-ip", "172.16.0.300"),
            ("--guest-ip", "fd00::2"),
            ("--bridge-ip", "bridge0"),
            ("--dns", "dns.example"),
            ("--name", None),
        ],
    )
    def test_patch_rootfs_bad_options(self, image: Path, option: str, value: str | None) -> None:
        args = list(PATCH_OK)
        index = args.index(option)
        if value is None:
            del args[index : index + 2]
        else:
            args[index + 1] = value
        code, _, err = invoke("patch-rootfs", str(image), *args)
        assert code == 2, err
        assert option in err
        assert image.read_bytes() == b"\0" * 4096

    def test_authorize_key_needs_a_key_file(self, image: Path) -> None:
        code, _, err = invoke("authorize-key", str(image))
        assert code == 2 and "KEYFILES" in err

    @pytest.mark.parametrize(
        "spec", ["nocolon", ":guest", "host:", "a:b:0999", "a:b:rw", "a:b:c:0644", "a:b:12345"]
    )
    def test_sync_bad_specs(self, image: Path, spec: str) -> None:
        code, _, err = invoke("sync", str(image), spec)
        assert code == 2, err
        assert "HOST:GUEST" in err or "MODE" in err


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("dot/bashrc:/.bashrc", ("dot/bashrc", "/.bashrc", None)),
        ("a:b:0600", ("a", "b", 0o600)),
        ("a:/x/y:755", ("a", "/x/y", 0o755)),
        ("a:b:4755", ("a", "b", 0o4755)),
    ],
)
def test_sync_spec_parsing(spec: str, expected: tuple[str, str, int | None]) -> None:
    assert _parse_sync_spec(spec) == expected


class TestOneLineErrors:
    def test_error_is_one_line_exit_1(self, tmp_path: Path) -> None:
        out = tmp_path / "missing-dir" / "overlay.img"
        code, stdout, err = invoke("system-overlay", str(out), "--size", "1G")
        assert code == 1
        assert stdout == ""
        lines = err.splitlines()
        assert lines[-1] == f"banger-disk: error: {out}: No such file or directory"
        assert all(line.startswith("banger-disk: ") for line in lines)
        assert "Traceback" not in err

    def test_debug_shows_the_traceback(self, tmp_path: Path) -> None:
        out = tmp_path / "missing-dir" / "overlay.img"
        code, _, err = invoke("--debug", "system-overlay", str(out), "--size", "1G")
        assert code == 1
        assert "Traceback (most recent call last)" in err
        assert err.splitlines()[-1].startswith("banger-disk: error: ")

    def test_banger_error(self, image: Path) -> None:
        code, _, err = invoke(
            "patch-rootfs", str(image), *PATCH_OK[:2], "--guest-ip", "10.0.0.2", *PATCH_OK[4:], "--id", "vm-9"
        )
        assert code == 1
        assert err.splitlines()[-1] == (
            "banger-disk: error: vm vm-9: guest IP 10.0.0.2 is outside the bridge's network 172.16.0.0/24"
        )
        assert image.read_bytes() == b"\0" * 4096

    def test_invalid_key_file(self, tmp_path: Path, image: Path) -> None:
        key = tmp_path / "id_ed25519"
        key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
        code, _, err = invoke("authorize-key", str(image), str(key))
        assert code == 1
        assert err.splitlines() == [
            "banger-disk: error: refusing a private key: authorize the matching public key (.pub) instead"
        ]


class TestSystemOverlay:
    def test_creates_sparse_and_reports(self, tmp_path: Path) -> None:
        out = tmp_path / "overlay.img"
        code, stdout, err = invoke("system-overlay", str(out), "--size", "8G")
        assert code == 0, err
        assert out.stat().st_size == 8 * GiB and out.stat().st_blocks == 0
        assert err == f"banger-disk: prepare_system_overlay: creating sparse system overlay {out} (8 GiB)\n"
        assert stdout == ""

    def test_existing_left_alone(self, tmp_path: Path) -> None:
        out = tmp_path / "overlay.img"
        out.write_bytes(b"data")
        code, _, err = invoke("system-overlay", str(out), "--size", "8G")
        assert code == 0
        assert out.read_bytes() == b"data"
        assert "exists; left as it is" in err


def test_help_does_not_load_pyext4() -> None:
    code = (
        "import sys\n"
        "from banger_disk.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "loaded = sorted(m for m in sys.modules if m == 'pyext4' or m.startswith('pyext4.'))\n"
        "print('LOADED', loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage: banger-disk" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "LOADED []"


@pytest.mark.parametrize("command", ["work-disk", "system-overlay", "patch-rootfs", "authorize-key", "sync"])
def test_every_command_has_help(command: str) -> None:
    code, stdout, _ = invoke(command, "--help")
    assert code == 0
    assert "Usage:" in stdout and command in stdout


def test_work_disk_error_names_the_output_not_a_temporary(tmp_path: Path) -> None:
    out = tmp_path / "missing-dir" / "work.ext4"
    code, _, err = invoke("work-disk", str(out), "--size", "64M")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("banger-disk: error: "), err
    assert str(out) in lines[0] and ".tmp" not in lines[0]
