"""Helpers for the banger_disk tests: e2fsprogs as the oracle, generated trees and images, kernel mounts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

GiB = 1 << 30
MiB = 1 << 20
SEED_UID = 1000


def tool(name: str) -> str | None:
    """The path of an e2fsprogs/util-linux tool, looking in the sbin directories too."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_tools(*names: str) -> None:
    missing = [n for n in names if tool(n) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: e2fsprogs is the oracle for this test")


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, capture_output=True, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


def mke2fs_d(image: Path, tree: Path, size: str, *extra: str) -> None:
    """``mke2fs -t ext4 -b 4096 -d tree image size``."""
    require_tools("mke2fs")
    result = run(
        [
            tool("mke2fs") or "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            *extra,
            "-d",
            str(tree),
            str(image),
            size,
        ]
    )
    assert result.returncode == 0, result.stderr.decode()


def e2fsck_fn(image: Path) -> subprocess.CompletedProcess[bytes]:
    require_tools("e2fsck")
    return run([tool("e2fsck") or "e2fsck", "-fn", str(image)])


def assert_fsck_clean(image: Path) -> None:
    result = e2fsck_fn(image)
    assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")


def debugfs(image: Path, request: str, *, writable: bool = False) -> bytes:
    require_tools("debugfs")
    cmd = [tool("debugfs") or "debugfs", *(["-w"] if writable else []), "-R", request, str(image)]
    result = run(cmd)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def debugfs_script(image: Path, commands: list[str]) -> None:
    """Run several commands in one ``debugfs -w -f -`` process."""
    require_tools("debugfs")
    result = run(
        [tool("debugfs") or "debugfs", "-w", "-f", "-", str(image)],
        input="\n".join(commands).encode() + b"\n",
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")


@dataclass(frozen=True)
class Entry:
    """One directory entry as debugfs sees it."""

    mode: int
    uid: int
    gid: int

    @property
    def perm(self) -> int:
        return stat.S_IMODE(self.mode)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def ls(image: Path, directory: str) -> dict[str, Entry]:
    """``debugfs ls -p``: name -> Entry, without . and .."""
    entries: dict[str, Entry] = {}
    for line in debugfs(image, f'ls -p "{directory}"').decode("utf-8", "surrogateescape").splitlines():
        if not line.startswith("/"):
            continue
        fields = line.split("/")
        # "/ino/mode/uid/gid/name/size/"
        _, ino, mode, uid, gid, name = fields[:6]
        if name in (".", "..") or ino == "0":
            continue
        entries[name] = Entry(int(mode, 8), int(uid), int(gid))
    return entries


def lookup(image: Path, path: str) -> Entry:
    parent, _, name = path.rstrip("/").rpartition("/")
    entries = ls(image, parent or "/")
    assert name in entries, f"{path} not in the image (have {sorted(entries)[:20]})"
    return entries[name]


def walk(image: Path) -> dict[str, Entry]:
    """Every entry of the image below / (path -> Entry), root included as "/"."""
    result = {"/": _root_entry(image)}
    pending = ["/"]
    while pending:
        directory = pending.pop()
        for name, entry in ls(image, directory).items():
            path = directory.rstrip("/") + "/" + name
            result[path] = entry
            if entry.is_dir:
                pending.append(path)
    return result


def _root_entry(image: Path) -> Entry:
    for line in debugfs(image, 'ls -p "/"').decode().splitlines():
        fields = line.split("/")
        if len(fields) > 5 and fields[5] == ".":
            return Entry(int(fields[2], 8), int(fields[3]), int(fields[4]))
    raise AssertionError("no '.' entry in /")


def cat(image: Path, path: str) -> bytes:
    return debugfs(image, f'cat "{path}"')


def symlink_target(image: Path, path: str) -> str:
    text = debugfs(image, f'stat "{path}"').decode()
    match = re.search(r'Fast link dest: "(.*)"', text)
    if match:
        return match.group(1)
    return cat(image, path).decode()


def inode_flags(image: Path, path: str) -> int:
    text = debugfs(image, f'stat "{path}"').decode()
    match = re.search(r"Flags: (0x[0-9a-fA-F]+)", text)
    assert match, text
    return int(match.group(1), 16)


INDEX_FL = 0x1000


# ================================================================ generated inputs
DOTFILES: dict[str, tuple[int, bytes | None]] = {
    # path: (mode, content; None for a directory)
    ".bashrc": (0o644, b"# ~/.bashrc\nexport EDITOR=vi\nalias ll='ls -l'\n"),
    ".profile": (0o644, b"# ~/.profile\n[ -f ~/.bashrc ] && . ~/.bashrc\n"),
    ".ssh": (0o700, None),
    ".ssh/config": (0o600, b"Host *\n    ServerAliveInterval 30\n"),
    ".ssh/known_hosts": (
        0o600,
        b"github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
    ),
    ".config": (0o755, None),
    ".config/git": (0o700, None),
    ".config/git/config": (0o600, b"[user]\n    name = Dev\n    email = dev@example.com\n"),
    ".config/nvim": (0o755, None),
    ".config/nvim/init.lua": (0o644, b"vim.o.number = true\n" * 40),
    ".local": (0o700, None),
    ".local/bin": (0o755, None),
    ".local/bin/hello": (0o755, b"#!/bin/sh\necho hello\n"),
    ".local/share": (0o700, None),
    ".local/share/big.bin": (0o600, bytes(range(256)) * 300),  # 75 KiB: several blocks
    "empty": (0o600, b""),
    "bin": (0o755, None),
    "bin/tool": (0o755, b"#!/bin/sh\nexit 0\n"),
}
# More small files so the seed looks like a real ~40-entry dotfiles tree.
for _i in range(24):
    DOTFILES[f".config/app{_i:02d}.conf"] = (0o600 if _i % 2 else 0o644, f"setting = {_i}\n".encode())
DOTFILE_SYMLINKS = {".vimrc": ".config/nvim/init.lua"}


def make_dotfiles_tree(root: Path, *, uid: int = SEED_UID) -> None:
    """The seed's source tree; owned by ``uid`` when we may chown (else fixed in the image, see make_seed)."""
    root.mkdir(mode=0o700)
    for rel, (mode, content) in DOTFILES.items():
        path = root / rel
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
        path.chmod(mode)
    for rel, target in DOTFILE_SYMLINKS.items():
        (root / rel).symlink_to(target)
    root.chmod(0o700)
    if os.geteuid() == 0:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), uid, uid)
        os.lchown(root, uid, uid)


def make_seed(tmp: Path, size: str = "512M") -> tuple[Path, Path]:
    """A seed image by ``mke2fs -d`` of the dotfiles tree, every entry owned by uid/gid 1000."""
    tree = tmp / "seed-tree"
    make_dotfiles_tree(tree)
    image = tmp / "seed.ext4"
    mke2fs_d(image, tree, size)
    commands: list[str] = []
    if os.geteuid() != 0:
        # Without root the tree could not be chowned; give the image's entries uid 1000 with debugfs.
        for path in walk(image):
            if path not in ("/", "/lost+found"):
                commands += [f'sif "{path}" uid {SEED_UID}', f'sif "{path}" gid {SEED_UID}']
    # mke2fs -d leaves the root directory 0755 root:root; a seed's root owned by the user, 0700, is
    # what ensure_work_disk must correct.
    commands += [f"sif / uid {SEED_UID}", f"sif / gid {SEED_UID}", "sif / mode 040700"]
    debugfs_script(image, commands)
    return tree, image


ETC_ENTRIES = 320
ORIGINAL_FSTAB = (
    "# /etc/fstab: static file system information.\n"
    "#\n"
    "# <file system> <mount point>   <type>  <options>       <dump>  <pass>\n"
    "UUID=0a3407de-014b-458b-b5c1-848e92a327a3 / ext4 errors=remount-ro 0 1\n"
    "/dev/vdb /home ext4 defaults 0 2\n"
    "/dev/vdc\t/var/\text4\tdefaults\t0\t2\n"
    "/dev/vdd /var/lib ext4 defaults 0 2\n"
    "proc /proc proc defaults 0 0\n"
    "\n"
    "# trailing comment stays\n"
)
EXPECTED_FSTAB = (
    "# /etc/fstab: static file system information.\n"
    "#\n"
    "# <file system> <mount point>   <type>  <options>       <dump>  <pass>\n"
    "UUID=0a3407de-014b-458b-b5c1-848e92a327a3 / ext4 errors=remount-ro 0 1\n"
    "/dev/vdd /var/lib ext4 defaults 0 2\n"
    "proc /proc proc defaults 0 0\n"
    "\n"
    "# trailing comment stays\n"
    "tmpfs /run tmpfs defaults,nodev,nosuid,mode=0755 0 0\n"
    "tmpfs /tmp tmpfs defaults,nodev,nosuid,mode=1777 0 0\n"
)


def make_rootfs_tree(root: Path, *, fstab: str | None = ORIGINAL_FSTAB) -> None:
    """A small distro-like root: /etc with 300+ entries (to become an htree), no /etc/banger, no /usr/local/sbin."""
    for d in (
        "etc",
        "etc/ssh",
        "etc/default",
        "usr",
        "usr/bin",
        "usr/local",
        "root",
        "home",
        "var",
        "run",
        "tmp",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "root").chmod(0o700)
    (root / "tmp").chmod(0o1777)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/hostname").write_text("debian\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 debian\n")
    (root / "etc/ssh/sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\n")
    if fstab is not None:
        (root / "etc/fstab").write_text(fstab)
    for i in range(ETC_ENTRIES):
        (root / "etc" / f"generated-config-entry-{i:04d}.conf").write_text(f"entry {i}\n")
    (root / "usr/bin/true").write_bytes(b"\x7fELF-not-really\n")
    (root / "usr/bin/true").chmod(0o755)


def make_rootfs(
    tmp: Path, *, fstab: str | None = ORIGINAL_FSTAB, size: str = "128M", tree_hook: object = None
) -> Path:
    """A root filesystem image whose /etc is an indexed (htree) directory: mke2fs -d, then e2fsck -fyD."""
    tree = tmp / "rootfs-tree"
    tree.mkdir()
    make_rootfs_tree(tree, fstab=fstab)
    if callable(tree_hook):
        tree_hook(tree)
    image = tmp / "rootfs.ext4"
    mke2fs_d(image, tree, size)
    require_tools("e2fsck")
    result = run([tool("e2fsck") or "e2fsck", "-fyD", str(image)])
    assert result.returncode in (0, 1), result.stdout.decode()  # 1: directories optimized
    assert inode_flags(image, "/etc") & INDEX_FL, "fixture: e2fsck -D did not index /etc"
    assert_fsck_clean(image)
    return image


# ================================================================ kernel
def can_loop_mount() -> str | None:
    """None when loop mounts should work here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "loop mounts need root"
    if tool("mount") is None or tool("umount") is None:
        return "mount/umount not installed"
    return None


@contextlib.contextmanager
def kernel_mount(image: Path, *, readonly: bool = True) -> Iterator[Path]:
    """Loop-mount ``image`` (read-only by default); skips the test with the reason when that cannot work."""
    reason = can_loop_mount()
    if reason:
        pytest.skip(f"kernel view not checked: {reason}")
    with tempfile.TemporaryDirectory(prefix="banger-mnt-") as mnt:
        opts = "loop,ro" if readonly else "loop"
        result = run([tool("mount") or "mount", "-t", "ext4", "-o", opts, str(image), mnt])
        if result.returncode != 0:
            pytest.skip(f"kernel view not checked: mount -o loop failed: {result.stderr.decode().strip()}")
        try:
            yield Path(mnt)
        finally:
            run([tool("umount") or "umount", mnt])


def sparse_digest(path: Path) -> str:
    """sha256 over the data regions (offset and bytes) of a possibly huge sparse file, via SEEK_DATA/SEEK_HOLE."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            h.update(start.to_bytes(8, "little"))
            fh.seek(start)
            remaining = end - start
            while remaining:
                chunk = fh.read(min(remaining, 1 << 20))
                h.update(chunk)
                remaining -= len(chunk)
            offset = end
        h.update(size.to_bytes(8, "little"))
    return h.hexdigest()


def host_tree(root: Path) -> dict[str, tuple[int, int, int, bytes | str | None]]:
    """path -> (st_mode, uid, gid, content | link target | None) for a mounted or host tree."""
    out: dict[str, tuple[int, int, int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = "/" + os.path.relpath(full, root)
            content: bytes | str | None = None
            if stat.S_ISREG(st.st_mode):
                content = Path(full).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(full)
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, content)
    return out
