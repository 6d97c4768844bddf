"""One full-tree read (or an in-process extract) of an image by one library; prints a JSON line.

Run by bench/read.py in a fresh process per run, with the interpreter that has
the library: the project's for pyext4, bench/.venv's for the peers.

    python bench/_read_worker.py {pyext4,pyext4-verify-off,python-ext4,dissect.extfs} IMAGE
    python bench/_read_worker.py pyext4-extract IMAGE DEST

Every contender does the same work: walk every directory from the root
(symlinks not followed), and read every regular file to its end, whole when it
is at most CHUNK bytes, else CHUNK bytes at a time through the library's file
object; nothing is hashed.  The time is taken around the open and the walk only
(interpreter start-up and imports excluded; bench/read.py reports the process
wall too).
"""

from __future__ import annotations

import json
import stat
import sys
import time

CHUNK = 1 << 20


def read_pyext4(image: str, verify: str) -> dict[str, int]:
    import pyext4
    from pyext4.constants import FT_DIR, FT_REG_FILE

    files = dirs = total = 0
    with pyext4.Filesystem.open(image, verify=verify) as fs:
        for entry in fs.walk_entries("/"):
            ft = entry.file_type
            if ft == FT_REG_FILE:
                files += 1
                size = fs.inode(entry.ino).size
                if size <= CHUNK:
                    total += len(fs.read_bytes(entry))
                else:
                    with fs.open_file(entry) as f:
                        while True:
                            block = f.read(CHUNK)
                            if not block:
                                break
                            total += len(block)
            elif ft == FT_DIR:
                dirs += 1
    return {"files": files, "dirs": dirs, "bytes": total}


def read_python_ext4(image: str) -> dict[str, int]:
    from ext4 import EXT4_FT, Volume

    files = dirs = total = 0
    with open(image, "rb") as fh:
        volume = Volume(fh)
        stack = [volume.root]
        while stack:
            directory = stack.pop()
            for dirent, ft in directory.opendir():
                name = dirent.name_bytes
                if name in (b".", b".."):
                    continue
                if ft == EXT4_FT.DIR:
                    dirs += 1
                    stack.append(volume.inodes[dirent.inode])
                elif ft == EXT4_FT.REG_FILE:
                    files += 1
                    inode = volume.inodes[dirent.inode]
                    f = inode.open()
                    if inode.i_size <= CHUNK:
                        total += len(f.read())
                    else:
                        while True:
                            block = f.read(CHUNK)
                            if not block:
                                break
                            total += len(block)
    return {"files": files, "dirs": dirs, "bytes": total}


def read_dissect(image: str) -> dict[str, int]:
    from dissect.extfs import ExtFS

    files = dirs = total = 0
    with open(image, "rb") as fh:
        fs = ExtFS(fh)
        stack = [fs.root]
        while stack:
            directory = stack.pop()
            for node in directory.iterdir():
                if node.filename in (".", ".."):
                    continue
                ft = node.filetype
                if ft == stat.S_IFDIR:
                    dirs += 1
                    stack.append(node)
                elif ft == stat.S_IFREG:
                    files += 1
                    f = node.open()
                    if node.size <= CHUNK:
                        total += len(f.read())
                    else:
                        while True:
                            block = f.read(CHUNK)
                            if not block:
                                break
                            total += len(block)
    return {"files": files, "dirs": dirs, "bytes": total}


def extract_pyext4(image: str, dest: str) -> dict[str, int]:
    import pyext4
    from pyext4.extract import default_jobs, extract

    jobs = default_jobs()  # what the CLI uses
    with pyext4.Filesystem.open(image) as fs:
        report = extract(fs, dest, jobs=jobs)
    return {"files": report.files, "dirs": report.directories, "bytes": report.bytes, "errors": len(report.errors),
            "jobs": jobs}


def preload(which: str) -> None:
    """Import the library before the clock starts."""
    if which.startswith("pyext4"):
        import pyext4.extract  # noqa: F401
        import pyext4.reader  # noqa: F401
    elif which == "python-ext4":
        import ext4  # noqa: F401
    elif which == "dissect.extfs":
        import dissect.extfs  # noqa: F401


def main() -> None:
    which, image = sys.argv[1], sys.argv[2]
    preload(which)
    start = time.perf_counter()
    if which == "pyext4":
        result = read_pyext4(image, "strict")
    elif which == "pyext4-verify-off":
        result = read_pyext4(image, "off")
    elif which == "python-ext4":
        result = read_python_ext4(image)
    elif which == "dissect.extfs":
        result = read_dissect(image)
    elif which == "pyext4-extract":
        result = extract_pyext4(image, sys.argv[3])
    else:
        raise SystemExit(f"unknown contender {which!r}")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, **result}))


if __name__ == "__main__":
    main()
