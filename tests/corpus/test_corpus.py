"""The corrupt-image contract on e2fsprogs' test images: only Ext4Error escapes, in bounded time and memory.

Every image of ``shared/corpus/e2fsprogs`` is opened (verify="strict" and "warn"), walked, every
file's data streamed, every symlink, xattr set and stat read, every path looked up again (through
the htree when there is one) and the tree extracted to a temporary directory.  Each image runs in a
forked child with an address-space limit and an alarm, so a hang or a huge allocation fails the test
with the image's name instead of taking the machine down.

Run with ``pytest -s tests/corpus/test_corpus.py`` to see the per-image outcome and the summary
table (kept in tests/corpus/README.md).
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import resource
import shutil
import signal
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import pyext4.extract  # noqa: F401  (imported before forking, so each child starts warm)
import pyext4.reader  # noqa: F401
from tests.conftest import CORPUS

TIME_LIMIT = 5.0  # seconds per image and verify mode (each run in its own child, extraction included)
MEMORY_LIMIT = 1 << 30  # bytes of address space a child may add to what it inherited
READ_CHUNK = 1 << 20
MAX_ENTRIES = 200_000  # a walk of a corpus image never needs more; more would mean a loop


# ------------------------------------------------------------------ exercising one image
def _drain(f: Any) -> int:
    total = 0
    while True:
        chunk = f.read(READ_CHUNK)
        if not chunk:
            return total
        total += len(chunk)


def exercise_fs(fs: Any, dest: str | None, counts: Counter[str], *, max_lookups: int = 3000, jobs: int = 1) -> None:
    """Touch everything the reader offers on an open Filesystem; Ext4Error per item is counted.

    Any other exception propagates (that is the bug the contract looks for).
    """
    from pyext4.errors import Ext4Error

    def attempt(kind: str, fn: Any, *args: Any) -> Any:
        try:
            result = fn(*args)
        except Ext4Error as exc:
            counts[f"{kind}:{type(exc).__name__}"] += 1
            return None
        counts[f"{kind}:ok"] += 1
        return result

    attempt("info", fs.info)
    attempt("journal", fs.journal_superblock)
    entries = []

    def walk_error(exc: Ext4Error) -> None:
        counts[f"walk:{type(exc).__name__}"] += 1

    try:
        for entry in fs.walk_entries("/", onerror=walk_error):
            entries.append(entry)
            if len(entries) > MAX_ENTRIES:
                raise AssertionError(f"walk yielded more than {MAX_ENTRIES} entries (a loop?)")
    except Ext4Error as exc:  # the root itself
        counts[f"walk:{type(exc).__name__}"] += 1
    else:
        counts["walk:ok"] += 1
    attempt("stat", fs.stat_ino, 2)
    attempt("xattrs", fs.xattrs_ino, 2)
    for entry in entries:
        inode = attempt("inode", fs.inode, entry.ino)
        if inode is None:
            continue
        attempt("stat", fs.stat_ino, entry.ino, inode)
        if inode.tail or inode.file_acl:
            attempt("xattrs", fs.xattrs_ino, entry.ino, inode)
        if inode.is_symlink():
            attempt("readlink", fs.readlink_ino, entry.ino, inode)
        elif inode.is_reg():
            # Every file's stored data; the file-object and whole-file paths on a sample of big trees.
            thorough = len(entries) < 5000 or entry.ino % 16 == 0
            attempt("read", _stream, fs, entry.ino, inode, thorough)
    # Look paths up again with the directory cache emptied, so indexed directories are
    # searched through their htree rather than the listing the walk cached.
    fs._dir_cache.clear()
    step = max(1, len(entries) // max_lookups)
    for entry in entries[::step]:
        attempt("lookup", fs.resolve, entry.path.encode("utf-8", "surrogateescape"))
    if len(entries) < 10_000:  # the same directories again, through the os.walk-like API
        attempt("walk-os", lambda: sum(1 for _ in fs.walk("/")))
    if dest is not None:
        from pyext4.extract import extract

        # Very large trees (f_many_subdirs: 65,000 directories, no files to share) go through one
        # process: the parallel walk's second pass over the directories would eat the time limit.
        share = jobs if len(entries) < 50_000 else 1
        report = attempt("extract", lambda: extract(fs, dest, jobs=share))
        if report is not None:
            counts["extract-entry-errors"] += len(report.errors)


def _stream(fs: Any, ino: int, inode: Any, thorough: bool = True) -> int:
    """Read a file the way a careful caller does: stored data in chunks, plus both ends via open()."""
    total = 0
    for offset, length, phys in fs.data_segments(ino, inode):
        if phys is None:
            continue
        pos = offset
        while pos < offset + length:
            n = min(READ_CHUNK, offset + length - pos)
            total += len(fs.read_range(ino, inode, pos, n))
            pos += n
    if not thorough:
        return total
    with fs.open(ino) as f:
        total += len(f.read(min(inode.size, 1 << 16)))
        f.seek(max(0, inode.size - 4096))
        total += len(f.read(8192))
    if inode.size <= (8 << 20):
        total += len(fs.read_bytes(ino))
    return total


def exercise_image(image: str, verify: str, scratch: str) -> dict[str, Any]:
    """Open ``image`` with ``verify`` and exercise it (extracting under ``scratch``)."""
    from pyext4.errors import Ext4Error
    from pyext4.reader import Filesystem

    counts: Counter[str] = Counter()
    dest = tempfile.mkdtemp(prefix="x-", dir=scratch)  # the caller removes it (outside the time limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fs = Filesystem.open(image, verify=verify, allow_needs_recovery=verify != "strict")
        except Ext4Error as exc:
            return {"open": type(exc).__name__, "message": str(exc)}
        with fs:
            # The parallel extraction (forked workers) on the images that are not strictly verified.
            exercise_fs(fs, dest, counts, jobs=1 if verify == "strict" else 2)
    errors = {k: v for k, v in counts.items() if not k.endswith(":ok") and k != "extract-entry-errors"}
    return {"open": "ok", "errors": errors, "items": sum(counts.values()),
            "extract_entry_errors": counts["extract-entry-errors"]}


# ------------------------------------------------------------------ isolation
class Deadline(BaseException):
    """Raised by the alarm: a BaseException, so that no ``except OSError``/``Exception`` swallows it."""


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def run_isolated(fn: Any, *args: Any, time_limit: float = TIME_LIMIT,
                 memory_limit: int = MEMORY_LIMIT) -> dict[str, Any]:
    """Run ``fn(*args)`` in a forked child under an alarm and an address-space limit.

    Returns {"ok": result} or {"escaped": traceback text} or {"timeout": seconds} or
    {"memory": ...} (MemoryError) or {"crashed": status}.
    """
    read_fd, write_fd = os.pipe()
    base = _vm_size()
    pid = os.fork()
    if pid == 0:  # child
        status = 0
        try:
            os.close(read_fd)
            resource.setrlimit(resource.RLIMIT_AS, (base + memory_limit, base + memory_limit))

            def on_alarm(signum: int, frame: Any) -> None:
                raise Deadline(f"took longer than {time_limit} s")

            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, time_limit)
            started = time.monotonic()
            try:
                payload: dict[str, Any] = {"ok": fn(*args)}
            except Deadline as exc:
                payload = {"timeout": str(exc), "traceback": traceback.format_exc()[-3000:]}
            except MemoryError:
                payload = {"memory": traceback.format_exc()[-3000:]}
            except BaseException:
                payload = {"escaped": traceback.format_exc()[-6000:]}
            signal.setitimer(signal.ITIMER_REAL, 0)
            payload["seconds"] = round(time.monotonic() - started, 3)
            payload["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            data = json.dumps(payload, default=str).encode()
            with os.fdopen(write_fd, "wb") as f:
                f.write(data)
        except BaseException:  # pragma: no cover - last resort
            status = 70
        finally:
            os._exit(status)
    os.close(write_fd)
    deadline = time.monotonic() + time_limit + 10
    chunks = []
    with os.fdopen(read_fd, "rb") as f:
        import select

        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"timeout": "child did not answer (killed)"}
            ready, _, _ = select.select([f], [], [], left)
            if not ready:
                continue
            chunk = os.read(f.fileno(), 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return {"crashed": status}
    return json.loads(b"".join(chunks))  # type: ignore[no-any-return]


# ------------------------------------------------------------------ the corpus
def corpus_images() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.iterdir() if p.name.endswith((".img.gz", ".img.bz2")))


def decompress(src: Path, dest_dir: Path) -> Path:
    out = dest_dir / src.name.rsplit(".", 1)[0]
    opener = gzip.open if src.suffix == ".gz" else bz2.open
    with opener(src, "rb") as fin, open(out, "wb") as fout:
        # Keep zero runs sparse: the images are mostly empty.
        while True:
            chunk = fin.read(1 << 16)
            if not chunk:
                break
            if chunk.count(0) == len(chunk):
                fout.seek(len(chunk), os.SEEK_CUR)
            else:
                fout.write(chunk)
        fout.truncate()
    return out


def classify(outcome: dict[str, Any]) -> str:
    """One line for the summary: how the strict open went (read cleanly, or refused with what)."""
    if outcome["open"] != "ok":
        return f"refused at open: {outcome['open']}"
    if outcome["errors"]:
        kinds = sorted({k.split(":", 1)[1] for k in outcome["errors"]})
        return "opened, some items refused: " + ", ".join(kinds)
    return "read cleanly"


_SUMMARY: dict[str, dict[str, str]] = {}


def _fast_tmp() -> str | None:
    """tmpfs when there is one: extracting 100,000 entries to a disk filesystem takes longer than 5 s."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture(scope="module")
def scratch() -> Any:
    with tempfile.TemporaryDirectory(prefix="pyext4-corpus-") as tmp:
        yield Path(tmp)


IMAGES = corpus_images()


def check_result(name: str, result: dict[str, Any]) -> None:
    assert "escaped" not in result, f"{name}: a non-Ext4Error escaped:\n{result['escaped']}"
    assert "timeout" not in result, f"{name}: over {TIME_LIMIT} s: {result}"
    assert "memory" not in result, f"{name}: memory limit hit:\n{result['memory']}"
    assert "crashed" not in result, f"{name}: child died with status {result['crashed']}"


@pytest.mark.skipif(not IMAGES, reason=f"no corpus at {CORPUS}")
@pytest.mark.parametrize("src", IMAGES, ids=[p.name.split(".")[0] for p in IMAGES])
def test_corpus_image(src: Path, scratch: Path) -> None:
    name = src.name.split(".")[0]
    work = scratch / name
    work.mkdir()
    outcome = {}
    try:
        image = decompress(src, work)
        with tempfile.TemporaryDirectory(prefix="pyext4-x-", dir=_fast_tmp()) as xdir:
            for verify in ("strict", "warn"):
                result = run_isolated(exercise_image, str(image), verify, xdir)
                for leftover in os.listdir(xdir):
                    shutil.rmtree(os.path.join(xdir, leftover), ignore_errors=True)
                check_result(f"{src.name} (verify={verify})", result)
                outcome[verify] = classify(result["ok"])
                print(f"\n{name} verify={verify}: {outcome[verify]} "
                      f"({result['seconds']} s, maxrss {result['maxrss_kib'] // 1024} MiB)", end="")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _SUMMARY[name] = outcome


def test_corpus_summary() -> None:
    """Print the counts (pytest -s); runs after the per-image tests."""
    if not _SUMMARY:
        pytest.skip("no corpus image ran")
    print(f"\ncorpus: {len(_SUMMARY)} images, none escaped, none over {TIME_LIMIT} s or {MEMORY_LIMIT >> 20} MiB")
    for verify in ("strict", "warn"):
        print(f"verify={verify}:")
        for kind, n in Counter(o[verify] for o in _SUMMARY.values()).most_common():
            print(f"  {n:4d}  {kind}")
