"""Fuzz harness: the writer on a damaged image, a fixed list of operations, then e2fsck and a model.

The input's first byte picks a base image, the second which of its structures the rest replaces
(superblock + descriptors, the bitmaps, the inodes the operations touch, the directory blocks,
extent tree / indirect / xattr blocks), the third the session's shape (bit 0: flush after every
operation; bit 1: close and reopen half-way; bit 2: let ``e2fsck -fy`` repair the patched image
first, which mostly turns it into a clean but unusual one).  The image goes to a tmpfs file, is
checked with ``e2fsck -fn`` (the *baseline*), opened with ``Filesystem.open(path, writable=True)`` and
changed by OPERATIONS: files written into an htree directory and the root, mkdir, fast and slow
symlinks, a hard link, xattrs set and removed, chmod/chown, renames (within a directory, across
directories, a directory), unlinks, truncates, a file grown past four extents by write_at, an
inline file grown out of its inode, mknod, remove_tree.

The contract (anything else raises AssertionError, which libFuzzer records as a crash):

1. Opening either works or raises an ``Ext4Error``; a refused open leaves the image byte-identical.
2. Every operation either returns or raises an ``Ext4Error`` (the harness then goes on with the
   next one: an operation is a unit).  An operation that raises must not have changed the image
   file, except inside blocks that the image's own block bitmap (as it stands on disk at that
   moment) marks free: the writer sends new file data straight to newly allocated blocks, and only
   the bitmap tells it which blocks are free.  Flushing (after an operation, and at close) never
   raises.
3. If the baseline was clean (``e2fsck -fn`` exit 0, and none of the few inconsistencies e2fsck
   passes, see ``e2fsck_blind_spot``), the result must be clean too, and pyext4 must
   read back exactly the tree a model predicts from the baseline's tree and the operations that
   returned: the same names, the same inode numbers for the files that were there, file contents,
   symlink targets, xattrs, permissions and owners (a refused operation changes nothing).
4. If the baseline was not clean, nothing is asked of the result beyond 1 and 2: the writer checks
   what it reads and changes (checksums, bitmap counts against the descriptors, double frees, an
   inode in use that the bitmap calls free, the structures along the paths it walks) but cannot
   see damage elsewhere (an inode it never reads, a bitmap bit flipped together with another so
   that the count still matches), so damage there may survive or spread into what it writes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, NoReturn

from common import _tool, base_image, build_bases, patch, pick_base, run_harness

NOW = 1_700_000_100  # the time the writer records (fixed: reproducible images)
LIMIT = 1 << 20  # file contents the model follows (larger files: size unknown to it)
FSCK_TIMEOUT = 3  # seconds (it takes milliseconds on these images)
FSCK_OUTPUT = 1 << 20  # bytes
WORKFILE = os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp", f"pyext4-fuzz-writer-{os.getpid()}.img")

H = "/htree/"
LONG = "y" * 40


def _payload(n: int, salt: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (salt, counter)).digest()
        counter += 1
    return bytes(out[:n])


# (method, args): FIXED, in this order.  Paths are those of common.make_source_tree.
OPERATIONS: list[tuple[str, tuple[Any, ...]]] = [
    *[("write_file", (f"{H}new-{i:02d}-{LONG}", _payload((0, 40, 1500)[i % 3], i))) for i in range(18)],
    ("write_file", ("/newroot", _payload(3000, 100))),
    ("write_file", ("/inline59", _payload(30, 101))),
    ("mkdir", ("/dir/sub",)),
    ("write_file", ("/dir/sub/f", _payload(10, 102))),
    ("symlink", ("dir/file", "/dir/sym")),
    ("symlink", ("l/" * 50 + "x", "/slow2")),
    ("link", ("/small", f"{H}small-link")),
    ("setxattr", ("/xattr", "user.new", _payload(200, 103))),
    ("removexattr", ("/xattr", "user.small")),
    ("setxattr", ("/dir", "user.dir", b"changed")),
    ("setxattr", ("/small", "user.z", b"1")),
    ("chmod", ("/fragmented", 0o600)),
    ("chown", ("/dir/file", 1000, 1001)),
    ("rename", ("/dir/file", f"{H}moved")),
    ("rename", (f"{H}name-0010-{'x' * 30}", f"{H}renamed")),
    ("rename", ("/dir/sub", "/subdir")),
    ("unlink", (f"{H}name-0003-{'x' * 30}",)),
    ("unlink", ("/dir/hardlink",)),
    ("truncate", ("/fragmented", 3000)),
    ("truncate", ("/indirect", 5000)),
    ("write_file", ("/grow", _payload(1000, 104))),
    *[("write_at", ("/grow", 4096 * k, _payload(700, 104 + k))) for k in range(1, 6)],
    ("write_at", ("/small", 100, b"appended")),
    ("mknod", ("/node", 0o020644, (1, 3))),
    ("unlink", ("/slow",)),
    ("remove_tree", ("/dir",)),
    ("truncate", ("/grow", 30000)),
    ("remove_tree", ("/subdir",)),
    ("unlink", ("/fifo",)),
]

FOLLOWING = {"chmod", "chown", "truncate", "write_at"}  # operations that follow a final symlink


# ------------------------------------------------------------------ inputs
def structure_groups(name: str, info: dict[str, Any]) -> list[list[list[int]]]:
    """The byte ranges of ``name``'s base that each value of the input's second byte overlays."""
    image = base_image(name)
    inode_size = int.from_bytes(image[1024 + 88 : 1024 + 90], "little")
    table = info["itable"][0]
    # root, lost+found and the top-level entries of the source tree (11..18, 139..142),
    # and the free inodes after them, which the writer hands out.
    inos = [2, *range(11, 19), *range(139, 151)]
    inodes = [[table + (ino - 1) * inode_size, inode_size] for ino in inos]
    return [
        [info["super"], info["gdt"]],
        list(info["bitmaps"]),
        inodes,
        list(info["dirs"]),
        list(info["trees"]) + list(info["xattr_blocks"]),
    ]


def image_of(data: bytes) -> tuple[bytearray, int]:
    """(the patched image, the options byte) an input stands for."""
    name, info = pick_base(data[0] if data else 0)
    groups = structure_groups(name, info)
    ranges = groups[data[1] % len(groups)] if len(data) > 1 else []
    options = data[2] if len(data) > 2 else 0
    return patch(base_image(name), ranges, data[3:]), options


def regression_image(data: bytes) -> bytes:
    """The image ``data`` stands for, with the base's file data zeroed: a small blob for a regression test.

    The inputs patch metadata only, so the file data blocks are the base's own; the writer and
    e2fsck do not care what they hold (the model compares what it read before with what it reads after).
    """
    from pyext4.blockdev import MemoryDevice
    from pyext4.reader import Filesystem

    image, options = image_of(data)
    name, _info = pick_base(data[0] if data else 0)
    bs = 1024
    with Filesystem(MemoryDevice(base_image(name)), verify="off") as fs:
        bs = fs.block_size
        blocks: list[int] = []
        for entry in fs.walk_entries("/"):
            inode = fs.inode(entry.ino)
            if inode.is_reg() and not inode.has_inline_data():
                for ext in fs.extents_of(entry.ino, inode):
                    blocks.extend(range(ext.physical, ext.physical + ext.length))
    for block in blocks:
        image[block * bs : (block + 1) * bs] = bytes(bs)
    if options & 4:  # the regression test starts from the repaired image
        with open(WORKFILE, "wb") as f:
            f.write(image)
        fsck(WORKFILE, "-fy")
        image = bytearray(_read(WORKFILE))
        os.unlink(WORKFILE)
    return bytes(image)


def seeds() -> list[bytes]:
    """Each base, each structure group, with its own bytes (in the various session shapes)."""
    from common import BASE_NAMES

    layout = build_bases()
    out = []
    for index, name in enumerate(BASE_NAMES):
        image = base_image(name)
        for g, ranges in enumerate(structure_groups(name, layout[name])):
            chunk = b"".join(image[o : o + n] for o, n in ranges)
            out.append(bytes([index, g, (index + g) % 8]) + chunk)
    return out


# ------------------------------------------------------------------ model
@dataclass
class Node:
    kind: str  # "reg", "dir", "lnk", "other"
    data: bytes | None = None  # file content (None: not followed) / symlink target
    xattrs: dict[str, bytes] | None = field(default_factory=dict)
    perm: int = 0
    uid: int = 0
    gid: int = 0


class Model:
    """The tree the image should hold: path -> key, key -> Node (keys: inode numbers, negative when new)."""

    def __init__(self, paths: dict[str, int], nodes: dict[int, Node]) -> None:
        self.paths = paths
        self.nodes = nodes
        self.valid = True
        self._next = -1

    def _new(self, path: str, node: Node) -> None:
        self._drop(path)
        self.paths[path] = self._next
        self.nodes[self._next] = node
        self._next -= 1

    def _drop(self, path: str) -> None:
        for p in [p for p in self.paths if p == path or p.startswith(path + "/")]:
            del self.paths[p]

    def _node(self, path: str) -> Node | None:
        key = self.paths.get(path)
        return None if key is None else self.nodes[key]

    def _plain(self, path: str, follow: bool) -> bool:
        """Whether every parent of ``path`` is a directory (and the path itself not a symlink if followed)."""
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            node = self._node("/" + "/".join(parts[:i]))
            if node is None or node.kind != "dir":
                return False
        node = self._node(path)
        return not (follow and node is not None and node.kind == "lnk")

    def apply(self, method: str, args: tuple[Any, ...]) -> None:
        """Record that ``method(*args)`` returned."""
        if not self.valid:
            return
        paths = [a for a in args if isinstance(a, str) and a.startswith("/")]
        if not all(self._plain(p, method in FOLLOWING) for p in paths):
            self.valid = False  # symlinks in the way: not modelled
            return
        node = self._node(paths[-1]) if paths else None
        if method == "write_file":
            path, data = args
            if node is not None and node.kind == "reg":
                node.data, node.perm, node.uid, node.gid = data, 0o644, 0, 0
            else:
                self._new(path, Node("reg", data, {}, 0o644))
        elif method == "mkdir":
            self._new(args[0], Node("dir", None, {}, 0o755))
        elif method == "symlink":
            self._new(args[1], Node("lnk", args[0].encode(), {}, 0o777))
        elif method == "mknod":
            self._new(args[0], Node("other", None, {}, args[1] & 0o7777))
        elif method == "link":
            source, new = args
            if source not in self.paths:
                self.valid = False
                return
            self.paths[new] = self.paths[source]
        elif method in ("unlink", "remove_tree"):
            self._drop(args[0])
        elif method == "rename":
            src, dst = args
            if src not in self.paths:
                self.valid = False
                return
            if self.paths.get(dst) == self.paths[src]:
                return
            self._drop(dst)
            for p in [p for p in self.paths if p == src or p.startswith(src + "/")]:
                self.paths[dst + p[len(src) :]] = self.paths.pop(p)
        elif node is None:
            self.valid = False
        elif method in ("setxattr", "removexattr"):
            if node.xattrs is not None:
                if method == "setxattr":
                    node.xattrs[args[1]] = args[2]
                else:
                    node.xattrs.pop(args[1], None)
        elif method == "chmod":
            node.perm = args[1] & 0o7777
        elif method == "chown":
            node.uid, node.gid = args[1], args[2]
        elif method == "truncate":
            size = args[1]
            if node.data is not None:
                node.data = node.data[:size].ljust(size, b"\0") if size <= LIMIT else None
        elif method == "write_at":
            offset, data = args[1], args[2]
            if node.data is not None:
                end = offset + len(data)
                if end > LIMIT:
                    node.data = None
                else:
                    old = node.data.ljust(offset, b"\0")
                    node.data = old[:offset] + data + old[end:]
        else:  # pragma: no cover - an operation added without a model
            self.valid = False


def read_tree(fs: Any) -> tuple[dict[str, int], dict[int, Node]]:
    """Every path under / with its inode, and each inode's content, xattrs and owner, as pyext4 reads them."""
    from pyext4 import constants as K

    paths: dict[str, int] = {}
    nodes: dict[int, Node] = {}
    for entry in fs.walk_entries("/"):
        paths[entry.path] = entry.ino
        if entry.ino in nodes:
            continue
        inode = fs.inode(entry.ino)
        mode = inode.mode
        kind = {K.S_IFREG: "reg", K.S_IFDIR: "dir", K.S_IFLNK: "lnk"}.get(mode & K.S_IFMT, "other")
        data: bytes | None = None
        if kind == "reg" and inode.size <= LIMIT:
            data = fs.read_range(entry.ino, inode, 0, inode.size)
        elif kind == "lnk":
            data = fs.readlink_ino(entry.ino, inode)
        nodes[entry.ino] = Node(kind, data, fs.xattrs_ino(entry.ino, inode), mode & 0o7777, inode.uid, inode.gid)
        if len(paths) > 3000:
            raise AssertionError("more than 3000 entries: not a tree made from the base")
    return paths, nodes


def compare(model: Model, paths: dict[str, int], nodes: dict[int, Node]) -> list[str]:
    """How the tree read back differs from the model (empty: not at all)."""
    problems = []
    missing = sorted(set(model.paths) - set(paths))
    extra = sorted(set(paths) - set(model.paths))
    if missing:
        problems.append(f"missing paths {missing[:5]}")
    if extra:
        problems.append(f"unexpected paths {extra[:5]}")
    ino_of: dict[int, int] = {}
    for path in sorted(set(model.paths) & set(paths)):
        key, ino = model.paths[path], paths[path]
        if key >= 0 and key != ino:
            problems.append(f"{path}: inode {ino}, was {key}")
        if ino_of.setdefault(key, ino) != ino:
            problems.append(f"{path}: inode {ino}, its other names have {ino_of[key]}")
        want, got = model.nodes[key], nodes[ino]
        for attr in ("kind", "data", "xattrs", "perm", "uid", "gid"):
            w, g = getattr(want, attr), getattr(got, attr)
            if attr in ("data", "xattrs") and w is None:
                continue
            if w != g:
                shown = (f"{len(w)} bytes {hashlib.sha1(w).hexdigest()[:8]}" if isinstance(w, bytes) else w,
                         f"{len(g)} bytes {hashlib.sha1(g).hexdigest()[:8]}" if isinstance(g, bytes) else g)
                problems.append(f"{path}: {attr} {shown[1]}, expected {shown[0]}")
    return problems


# ------------------------------------------------------------------ checks
def fsck(path: str, mode: str = "-fn") -> tuple[int, str]:
    """``e2fsck -fn`` (or ``mode``) of an image file: (exit status, output); 124 when it ran too long or said too much."""
    import threading

    proc = subprocess.Popen([_tool("e2fsck"), mode, path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, LANG="C", LC_ALL="C"))
    timer = threading.Timer(FSCK_TIMEOUT, proc.kill)
    timer.start()
    out = bytearray()
    killed = False
    try:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
            out += chunk
            if len(out) > FSCK_OUTPUT:  # e2fsck going round in circles on a damaged image
                proc.kill()
                killed = True
                break
        status = proc.wait()
    finally:
        timer.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    if killed or status < 0:
        return 124, "e2fsck ran too long or said too much; its output ended:\n" + out[-3000:].decode(errors="replace")
    return status, out.decode(errors="replace")


def changed_outside_free(before: bytes, after: bytes) -> str | None:
    """Why ``after`` is not ``before`` up to blocks that ``before``'s block bitmap marks free (None: it is)."""
    if before == after:
        return None
    if len(before) != len(after):
        return f"the image grew from {len(before)} to {len(after)} bytes"
    from pyext4.blockdev import MemoryDevice
    from pyext4.errors import Ext4Error
    from pyext4.reader import Filesystem

    try:
        fs = Filesystem(MemoryDevice(before), verify="off", allow_needs_recovery=True)
        bs = fs.block_size
    except Ext4Error as exc:
        return f"the image changed and its superblock does not parse ({exc})"
    geo = fs.geo
    changed = [b for b in range(-(-len(before) // bs)) if before[b * bs : (b + 1) * bs] != after[b * bs : (b + 1) * bs]]
    bad = []
    for block in changed:
        free = False
        if geo.first_data_block <= block < geo.blocks_count:
            group = geo.group_of_block(block)
            try:
                desc = fs.group_desc(group)
                if not (fs.sb.group_desc_csum and desc.flags & 1):  # BLOCK_UNINIT: counted as used
                    raw = fs.read_block(desc.block_bitmap)
                    bit = block - geo.group_first_block(group)
                    free = not raw[bit >> 3] >> (bit & 7) & 1
            except Ext4Error:
                free = False
        if not free:
            bad.append(block)
    if not bad:
        return None
    return f"blocks in use (or outside the bitmap) changed: {bad[:12]}{' ...' if len(bad) > 12 else ''}"


def e2fsck_blind_spot(image: bytes) -> str | None:
    """Damage that ``e2fsck -fn`` passes but that still shows once the writer uses the blocks involved.

    resize_inode with s_reserved_gdt_blocks 0: e2fsck checks none of the reserved GDT blocks its
    double indirect block lists, and counts them free; once one holds data, e2fsck reads it as an
    indirect block of inode 7 and reports illegal blocks (the kernel would allocate it just the same).
    """
    sb = image[1024:2048]
    if len(sb) == 1024 and sb[0x5C] & 0x10 and not int.from_bytes(sb[0xCE:0xD0], "little"):
        return "resize_inode without reserved GDT blocks"
    return None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def run_session(image: bytes | bytearray, options: int, workfile: str = WORKFILE) -> dict[str, Any]:
    """Check the contract on one image; returns what happened (AssertionError when the contract is broken).

    The image lives in ``workfile`` (a tmpfs file by default) for the session and is removed after it.
    """
    try:
        return _session(image, options, workfile)
    finally:
        try:
            os.unlink(workfile)
        except OSError:
            pass


def _session(image: bytes | bytearray, options: int, workfile: str) -> dict[str, Any]:
    import pyext4
    from pyext4.errors import Ext4Error

    image = bytes(image)
    with open(workfile, "wb") as f:
        f.write(image)
    if options & 4:
        fsck(workfile, "-fy")  # let e2fsck repair the damage first: the baseline is then mostly clean
        image = _read(workfile)
    status, report = fsck(workfile)
    clean = status == 0 and not e2fsck_blind_spot(image)
    model: Model | None = None
    if clean:
        from pyext4.blockdev import MemoryDevice

        try:
            with pyext4.Filesystem(MemoryDevice(image), verify="strict") as ro:
                model = Model(*read_tree(ro))
        except Ext4Error:
            model = None  # pyext4 reads this clean image differently from e2fsck: no model
    outcome: dict[str, Any] = {"clean": clean, "refused": [], "opened": False}

    def fail(message: str, cause: BaseException | None = None) -> NoReturn:
        raise AssertionError(f"{message}\n[baseline e2fsck exit {status}; options {options}]") from cause

    def open_fs() -> Any:
        before = _read(workfile)
        try:
            return pyext4.Filesystem.open(workfile, writable=True, now=NOW)
        except Ext4Error as exc:
            if _read(workfile) != before:
                fail(f"open refused ({type(exc).__name__}: {exc}) but changed the image", exc)
            outcome["open_error"] = f"{type(exc).__name__}: {exc}"
            return None
        except Exception as exc:
            fail(f"open raised {type(exc).__name__} (not an Ext4Error): {exc}", exc)

    def flush(fs: Any, what: str, *, close: bool) -> None:
        try:
            fs.close() if close else fs.flush()
        except Exception as exc:
            fail(f"{what} raised {type(exc).__name__}: {exc}", exc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fs = open_fs()
        if fs is None:
            return outcome
        outcome["opened"] = True
        try:
            half = len(OPERATIONS) // 2
            for index, (method, args) in enumerate(OPERATIONS):
                if index == half and options & 2:
                    flush(fs, "close (half-way)", close=True)
                    fs = open_fs()
                    if fs is None:
                        if clean:
                            fail(f"the writer cannot reopen what it wrote: {outcome['open_error']}")
                        return outcome
                before = _read(workfile)
                shown = f"{method}{tuple(a if not isinstance(a, bytes) else f'<{len(a)} bytes>' for a in args)}"
                try:
                    getattr(fs, method)(*args)
                except Ext4Error as exc:
                    problem = changed_outside_free(before, _read(workfile))
                    if problem:
                        fail(f"op {index} {shown} was refused ({type(exc).__name__}: {exc}) but {problem}", exc)
                    outcome["refused"].append((index, type(exc).__name__))
                    continue
                except Exception as exc:
                    fail(f"op {index} {shown} raised {type(exc).__name__} (not an Ext4Error): {exc!r}", exc)
                if model is not None:
                    model.apply(method, args)
                if options & 1:
                    flush(fs, f"flush after op {index} {shown}", close=False)
        except BaseException:
            from pyext4.reader import Filesystem

            Filesystem.close(fs)  # leave without flushing
            raise
        flush(fs, "close", close=True)
    if not clean:
        return outcome
    status_after, report_after = fsck(workfile)
    if status_after != 0:
        fail(f"e2fsck -fn exit {status_after} after the writer (clean before):\n{report_after[-3000:]}")
    if model is not None and model.valid:
        result = _read(workfile)
        from pyext4.blockdev import MemoryDevice

        try:
            with pyext4.Filesystem(MemoryDevice(result), verify="strict") as ro:
                paths, nodes = read_tree(ro)
        except Ext4Error as exc:
            fail(f"pyext4 cannot read back what the writer wrote ({type(exc).__name__}: {exc})", exc)
        problems = compare(model, paths, nodes)
        if problems:
            fail("the tree read back differs from the model:\n  " + "\n  ".join(problems[:20]))
    outcome["model"] = model is not None and model.valid
    return outcome


def one_input(data: bytes) -> bytes:
    """Run the writer session on the image ``data`` stands for; returns that image."""
    image, options = image_of(data)
    run_session(image, options)
    return bytes(image)


if __name__ == "__main__":
    run_harness(one_input, modules=("pyext4.writer", "pyext4.alloc", "pyext4.blockmap", "pyext4.bitmap",
                                    "pyext4.inode", "pyext4.groupdesc"))
    sys.exit(0)
