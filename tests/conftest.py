"""Shared test helpers: external tools, loop mounts, image factories."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

UUID = "11111111-2222-3333-4444-555555555555"
HASH_SEED = "66666666-7777-8888-9999-aaaaaaaaaaaa"
NOW = 1700000000
SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "corpus" / "e2fsprogs"


def tool(name: str) -> str:
    """Path of an e2fsprogs tool, or skip the test saying it is missing."""
    for candidate in (shutil.which(name), f"/sbin/{name}", f"/usr/sbin/{name}"):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.skip(f"{name} is not installed (apt-get install e2fsprogs)")


def run(*args: str | os.PathLike[str], env: dict[str, str] | None = None, check: bool = True,
        input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([str(a) for a in args], capture_output=True, env=full_env, check=check, input=input)


def e2fsck(image: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    """e2fsck -fn; returns the completed process (status 0 means clean)."""
    return run(tool("e2fsck"), "-fn", image, check=False)


def assert_fsck_clean(image: str | os.PathLike[str]) -> None:
    proc = e2fsck(image)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")


def mke2fs(image: str | os.PathLike[str], *args: str, size: str | None = None, root: str | None = None) -> None:
    """mke2fs with fixed UUID, hash seed and time (deterministic)."""
    cmd = [tool("mke2fs"), "-q", "-F", "-U", UUID, "-E", f"hash_seed={HASH_SEED}"]
    if root:
        cmd += ["-d", root]
    cmd += [*args, str(image)]
    if size:
        cmd.append(size)
    run(*cmd, env={"E2FSPROGS_FAKE_TIME": str(NOW), "MKE2FS_CONFIG": "/etc/mke2fs.conf"})


def debugfs(image: str | os.PathLike[str], request: str, *, write: bool = False) -> str:
    args = [tool("debugfs")]
    if write:
        args.append("-w")
    args += ["-R", request, str(image)]
    return run(*args).stdout.decode(errors="replace")


_MOUNT_PROBE: str | None | bool = False  # False: not probed; None: works; str: reason it cannot


def mount_unavailable() -> str | None:
    """Why a loop mount cannot be done here, or None when it can (probed once)."""
    global _MOUNT_PROBE
    if _MOUNT_PROBE is not False:
        return _MOUNT_PROBE  # type: ignore[return-value]
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "loop mounts need root"
    elif not shutil.which("mount"):
        reason = "mount(8) is not installed"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            img = Path(tmp) / "probe.img"
            mnt = Path(tmp) / "mnt"
            mnt.mkdir()
            try:
                from pyext4 import mkfs

                mkfs(img, "8M", uuid=UUID, hash_seed=HASH_SEED, now=NOW)
                proc = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True)
                if proc.returncode != 0:
                    reason = "loop mount failed: " + proc.stderr.decode(errors="replace").strip()
                else:
                    subprocess.run(["umount", str(mnt)], check=True)
            except Exception as exc:  # pragma: no cover - environment specific
                reason = f"loop mount probe failed: {exc}"
    _MOUNT_PROBE = reason
    return reason


@contextlib.contextmanager
def loop_mounted(image: str | os.PathLike[str], *, readonly: bool = False) -> Iterator[Path]:
    """Mount ``image`` with the kernel's ext4 driver; skip the test when that cannot be done."""
    reason = mount_unavailable()
    if reason:
        pytest.skip(reason)
    mnt = Path(tempfile.mkdtemp(prefix="pyext4-mnt-"))
    opts = "loop,ro" if readonly else "loop"
    proc = subprocess.run(["mount", "-t", "ext4", "-o", opts, str(image), str(mnt)], capture_output=True)
    if proc.returncode != 0:
        mnt.rmdir()
        raise AssertionError("kernel refused to mount the image: " + proc.stderr.decode(errors="replace"))
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        mnt.rmdir()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
