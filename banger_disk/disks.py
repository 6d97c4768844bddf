"""A VM's host-side disks: the sparse system overlay, the ext4 work disk (from a seed image), keys and files."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass

import pyext4

from ._fs import ensure_dir, ensure_parents, writer_session
from .errors import BangerError
from .guest import normalize_guest_path
from .model import VM, Image, StageCallback, report

WORK_DISK_ROOT_MODE = 0o755
SSH_DIR = "/.ssh"
SSH_DIR_MODE = 0o700
AUTHORIZED_KEYS = "/.ssh/authorized_keys"
AUTHORIZED_KEYS_MODE = 0o600
_MAX_FILE_SIZE = (1 << 63) - 1  # off_t


@dataclass(frozen=True)
class WorkDiskPreparation:
    """What :func:`ensure_work_disk` did: whether the disk got the seed's tree, and whether it made one at all."""

    cloned_from_seed: bool
    created: bool = True


def _human(size: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


def _size(vm: VM, value: int | str, what: str) -> int:
    if isinstance(value, str):
        value = pyext4.parse_size(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BangerError(f"vm {vm.id}: {what} size must be a positive number of bytes, not {value!r}")
    if value > _MAX_FILE_SIZE:
        raise BangerError(f"vm {vm.id}: {what} size {value} is larger than any file can be")
    return value


def _fsync_dir(directory: str) -> None:
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_temp_beside(path: str) -> str:
    """Create an empty file with a fresh hidden name in ``path``'s directory (mode 0644 less the umask)."""
    directory, base = os.path.split(os.path.abspath(path))
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileExistsError:
            continue
        except OSError as exc:  # name what the caller asked for, not the hidden temporary name
            raise OSError(exc.errno, f"cannot create {path}: {exc.strerror}", directory) from None
        os.close(fd)
        return tmp
    raise FileExistsError(f"{directory}: cannot find a free temporary name")  # pragma: no cover


# ================================================================ system overlay
def ensure_system_overlay(vm: VM, *, on_stage: StageCallback | None = None) -> bool:
    """Create the VM's system overlay as a sparse file of its spec size; a no-op if the path exists.

    The file is only sized (ftruncate), never written, so it takes no space until the guest writes.
    Returns whether it was created.  Raises BangerError for a missing path or a non-positive size,
    OSError when the file cannot be created (e.g. its directory does not exist).
    """
    path = vm.runtime.system_overlay_path
    if not path:
        raise BangerError(f"vm {vm.id}: system overlay path is required")
    if os.path.lexists(path):
        return False
    size = _size(vm, vm.spec.system_overlay_size, "system overlay")
    report(on_stage, "prepare_system_overlay", f"creating sparse system overlay {path} ({_human(size)})")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    except FileExistsError:
        return False
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        with suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    return True


# ================================================================ work disk
def ensure_work_disk(vm: VM, image: Image, *, on_stage: StageCallback | None = None) -> WorkDiskPreparation:
    """Create the VM's work disk (an ext4 image of its spec size); a no-op if the path exists.

    With ``image.work_seed_path``: a fresh ext4 at the final size whose tree is the seed image's,
    read directly from it, every entry owned by 0:0 with its mode kept, and the root directory
    0755 root:root (sshd's StrictModes checks it).  Without: an empty ext4 whose root is 0:0.  The
    disk is built under a temporary name beside the target and renamed into place only when
    complete, so a failure leaves nothing behind.

    Raises BangerError (missing path, bad size, missing seed), pyext4.Ext4Error (a seed that cannot
    be read, a size too small for its tree) and OSError (the target's directory).
    """
    path = vm.runtime.work_disk_path
    if not path:
        raise BangerError(f"vm {vm.id}: work disk path is required")
    if os.path.lexists(path):
        return WorkDiskPreparation(cloned_from_seed=False, created=False)
    size = _size(vm, vm.spec.work_disk_size, "work disk")
    seed = image.work_seed_path or None
    if seed is not None and not os.path.exists(seed):
        raise BangerError(f"vm {vm.id}: work seed {seed} does not exist")

    tmp = _new_temp_beside(path)
    try:
        if seed is not None:
            report(on_stage, "prepare_work_disk", "applying work seed")
            pyext4.mkfs(tmp, size, root_owner=(0, 0), writeback=True)  # the close's fsync overlaps it
            with pyext4.Filesystem.open(tmp, writable=True) as fs:
                pyext4.populate(fs, seed, owner=(0, 0))
                # populate gives the root the seed root's mode; sshd wants / (= /root) 0755 root:root.
                fs.chown("/", 0, 0)
                fs.chmod("/", WORK_DISK_ROOT_MODE)
        else:
            report(on_stage, "prepare_work_disk", "creating empty work disk")
            pyext4.mkfs(tmp, size, root_owner=(0, 0), sync=True)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    report(on_stage, "prepare_work_disk", f"work disk ready: {path} ({_human(size)})")
    return WorkDiskPreparation(cloned_from_seed=seed is not None, created=True)


# ================================================================ keys and files
def _key_lines(keys: Iterable[str]) -> list[str]:
    """The public key lines in ``keys`` (each item may hold several lines), blank lines and comments dropped.

    Raises BangerError for something that is not a public key line, or is a private key.
    """
    lines: list[str] = []
    for item in keys:
        for raw in str(item).splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "PRIVATE KEY" in line:
                raise BangerError("refusing a private key: authorize the matching public key (.pub) instead")
            if "\0" in line or len(line.split()) < 2:
                raise BangerError(f"not an SSH public key line: {line[:60]!r}")
            lines.append(line)
    return lines


def merge_authorized_keys(existing: str, keys: Iterable[str]) -> str:
    """``existing`` authorized_keys text with ``keys`` appended; every key line appears once, in first-seen order.

    Comments in ``existing`` are kept; blank lines are dropped.  Raises BangerError for an invalid key.
    """
    seen: set[str] = set()
    out: list[str] = []
    for raw in existing.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("#"):
            if line in seen:
                continue
            seen.add(line)
        out.append(line)
    for line in _key_lines(keys):
        if line not in seen:
            seen.add(line)
            out.append(line)
    return "".join(f"{line}\n" for line in out)


def sync_authorized_keys(
    work_disk: str | os.PathLike[str],
    keys: Sequence[str],
    *,
    replace: bool = False,
    on_stage: StageCallback | None = None,
) -> str:
    """Authorize ``keys`` for root in a work disk: /.ssh (0700) and /.ssh/authorized_keys (0600), root-owned.

    The keys already there are kept (``replace=True`` keeps only ``keys``); each key appears once,
    one per line.  Returns the file's new text.  Raises BangerError for an invalid key or a /.ssh
    that is not a directory, pyext4.Ext4Error for an image that cannot be written.
    """
    new_keys = _key_lines(keys)
    report(on_stage, "sync_authorized_keys", f"authorizing {len(new_keys)} key(s) in {os.fspath(work_disk)}")
    with writer_session(work_disk) as fs:  # all or nothing
        ensure_dir(fs, SSH_DIR, SSH_DIR_MODE)
        existing = ""
        if not replace and fs.exists(AUTHORIZED_KEYS):
            existing = fs.read_bytes(AUTHORIZED_KEYS).decode("utf-8", "surrogateescape")
        text = merge_authorized_keys(existing, new_keys)
        fs.write_file(
            AUTHORIZED_KEYS, text.encode("utf-8", "surrogateescape"), mode=AUTHORIZED_KEYS_MODE, uid=0, gid=0
        )
    return text


def sync_files(
    work_disk: str | os.PathLike[str],
    files: Iterable[tuple[str | os.PathLike[str], str, int | None]],
    *,
    on_stage: StageCallback | None = None,
) -> list[str]:
    """Copy host files into a work disk: ``(host_path, guest_path, mode)``, root-owned.

    ``guest_path`` is a path inside the work disk (its root is /root in the guest; a relative path
    is taken from that root); ``mode`` None keeps the host file's permission bits.  Missing parent
    directories are created root:root 0755; existing files are replaced.  Every host file is checked
    before the image is opened.  Returns the guest paths written.  Raises BangerError for a host
    path that is not a regular file, a bad guest path or mode; OSError for an unreadable host file;
    pyext4.Ext4Error for an image that cannot be written.
    """
    plan: list[tuple[str, str, int]] = []
    for host_path, guest_path, mode in files:
        host = os.fspath(host_path)
        st = os.stat(host)
        if not stat.S_ISREG(st.st_mode):
            raise BangerError(f"{host}: not a regular file")
        guest_text = str(guest_path)
        guest = normalize_guest_path(guest_text if guest_text.startswith("/") else "/" + guest_text)
        if mode is None:
            mode = stat.S_IMODE(st.st_mode)
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise BangerError(f"{guest}: mode {mode!r} is not a permission mode")
        plan.append((host, guest, mode))
    if not plan:
        return []
    with writer_session(work_disk) as fs:  # all the files or none
        for host, guest, mode in plan:
            report(on_stage, "sync_files", f"{host} -> {guest} ({mode:04o})")
            ensure_parents(fs, guest)
            with open(host, "rb") as fh:
                data = fh.read()
            fs.write_file(guest, data, mode=mode, uid=0, gid=0)
    return [guest for _, guest, _ in plan]


__all__ = [
    "WorkDiskPreparation",
    "ensure_system_overlay",
    "ensure_work_disk",
    "sync_authorized_keys",
    "sync_files",
    "merge_authorized_keys",
]
