"""Shared helpers for the benchmarks: timing, subprocess runs with peak RSS, alternation, reports.

Every benchmark compares pyext4 with the e2fsprogs tool doing the same job, in the
same run, and reports medians and the ratio pyext4 / reference.  Results are
printed as markdown tables and saved as JSON under bench/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import stat as _stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
VENV_DIR = BENCH_DIR / ".venv"
DEFAULT_WORK_DIR = Path(os.environ.get("PYEXT4_BENCH_DIR", "/tmp/pyext4-bench"))
PYCACHE_DIR = DEFAULT_WORK_DIR / "pycache"

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB


# ------------------------------------------------------------------ tools
CLI_ENVS = ("venv", "dev")
_cli: dict[str, Any] = {"env": "venv", "venv": DEFAULT_WORK_DIR / "cli-venv", "ready": False}


def console_script(name: str, where: str | None = None) -> str:
    """The console script ``name`` as a user runs it: from the CLI venv, or (``where="dev"``) next to
    the running (development) interpreter; by default as --cli-env says.  Never a pyenv shim (~100 ms
    each)."""
    if (where or _cli["env"]) == "venv":
        script = Path(ensure_cli_venv()) / "bin" / name
        if not script.exists():
            raise SystemExit(f"bench: {script} is missing (the CLI venv has no {name})")
        return str(script)
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(candidate):
        return candidate
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"bench: {name} is not installed (pip install -e . in {REPO_DIR})")
    return found


def cli_env() -> str:
    """'venv' or 'dev': where console_script() takes the CLIs from (--cli-env)."""
    return str(_cli["env"])


def cli_python(where: str | None = None) -> str:
    """The interpreter behind the console scripts: the CLI venv's python, or ``sys.executable`` ("dev")."""
    if (where or _cli["env"]) == "venv":
        return str(Path(ensure_cli_venv()) / "bin" / "python")
    return sys.executable


def set_cli_env(where: str, work_dir: Path) -> dict[str, Any]:
    """Choose where console_script() takes the CLIs from; build the CLI venv now if it is used.
    Returns the description recorded with the results."""
    if where not in CLI_ENVS:
        raise SystemExit(f"bench: --cli-env must be one of {', '.join(CLI_ENVS)}")
    _cli.update(env=where, venv=work_dir / "cli-venv", ready=False)
    if where == "dev":
        return {"cli_env": "dev", "python": sys.executable}
    venv = ensure_cli_venv()
    stamp = _read_stamp(venv / STAMP_NAME)
    return {"cli_env": "venv", "venv": str(venv), "python": str(venv / "bin" / "python"),
            "sources_sha256": stamp.get("sources", "")}


STAMP_NAME = "pyext4-bench-stamp.json"
# What goes into the wheel; only these are copied for the install and hashed for the stamp.
_PACKAGES = ("pyext4", "banger_disk")
_TOP_FILES = ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in", "LICENSE")


def _source_files() -> list[Path]:
    """The checkout's files that make the installed package (relative paths, sorted)."""
    files = [Path(n) for n in _TOP_FILES if (REPO_DIR / n).is_file()]
    for pkg in _PACKAGES:
        for path in sorted((REPO_DIR / pkg).rglob("*")):
            rel = path.relative_to(REPO_DIR)
            if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in (".pyc", ".pyo") \
                    and not any(p.endswith(".egg-info") for p in rel.parts):
                files.append(rel)
    return sorted(files)


def _snapshot(dest: Path) -> dict[str, str]:
    """Copy the package sources into ``dest``; return the hashes of what was copied.

    pip builds a local directory in place (setuptools writes build/ and *.egg-info into it, and a
    stale build/lib could put deleted modules into the wheel): installing from a fresh copy keeps the
    checkout untouched and the stamp exactly what was installed, even while others edit it.
    """
    meta = hashlib.sha256()
    sources = hashlib.sha256()
    for rel in _source_files():
        data = (REPO_DIR / rel).read_bytes()
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if rel.name == "README.md" and len(rel.parts) == 1:
            continue  # the long description only: no reinstall for a README edit
        h = meta if len(rel.parts) == 1 else sources
        h.update(str(rel).encode() + b"\0" + hashlib.sha256(data).digest())
    return {"meta": meta.hexdigest(), "sources": sources.hexdigest()}


def _read_stamp(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _pip_env() -> dict[str, str]:
    # pip compiles the bytecode at install time; none of these must redirect or disable it
    # (PYTHONPYCACHEPREFIX would put the .pyc where the venv's runs do not look; SOURCE_DATE_EPOCH
    # would make them checked-hash .pyc, which hash the source at every import).
    env = dict(os.environ)
    for var in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "SOURCE_DATE_EPOCH", "PIP_NO_COMPILE",
                "PYTHONNOUSERSITE", "PYTHONPATH"):
        env.pop(var, None)
    return env


def ensure_cli_venv() -> Path:
    """The CLI venv (``<work dir>/cli-venv``): the project installed as a user installs it.

    ``python -m venv`` from ``sys.executable`` (no system site-packages: neither the development
    interpreter's editable finder nor this sandbox's ``.pth`` files), then ``pip install`` of the
    checkout, non-editable, dependencies from the index.  A stamp file holds the hashes of what
    was installed: when pyext4/ or banger_disk/ changed since, the checkout is reinstalled with
    ``--force-reinstall --no-deps`` (seconds); when pyproject.toml or the interpreter changed, the
    venv is rebuilt.  A lock keeps two benchmarks from building it at once.
    """
    import fcntl

    venv: Path = _cli["venv"]
    if _cli["ready"]:
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / "cli-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with tempfile.TemporaryDirectory(prefix="pyext4-src-", dir=venv.parent) as tmp:
            src = Path(tmp) / "pyext4"
            hashes = _snapshot(src)
            want = {"python": sys.executable, "version": platform.python_version(), **hashes}
            have = _read_stamp(venv / STAMP_NAME)
            py = venv / "bin" / "python"
            env = _pip_env()
            if not py.exists() or any(have.get(k) != want[k] for k in ("python", "version", "meta")):
                print(f"bench: building the CLI venv {venv} (pip install of {REPO_DIR}, non-editable)",
                      file=sys.stderr, flush=True)
                if venv.exists():
                    shutil.rmtree(venv)
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
                subprocess.run([str(py), "-m", "pip", "install", "-q", str(src)], check=True, env=env)
            elif have.get("sources") != want["sources"]:
                print(f"bench: sources changed since the CLI venv was built; reinstalling into {venv}",
                      file=sys.stderr, flush=True)
                subprocess.run([str(py), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(src)],
                               check=True, env=env)
            else:
                _cli["ready"] = True
                return venv
            (venv / STAMP_NAME).write_text(json.dumps(want, indent=2) + "\n")
    _cli["ready"] = True
    return venv


def in_cli_venv(executable: str | os.PathLike[str]) -> bool:
    """Whether ``executable`` is one of the CLI venv's (its python or a console script)."""
    path = os.path.abspath(os.fspath(executable))
    return path.startswith(os.path.abspath(_cli["venv"]) + os.sep)


def e2fs_tool(name: str) -> str:
    """Path of an e2fsprogs tool (mkfs.ext4, mke2fs, debugfs...)."""
    for candidate in (shutil.which(name), f"/sbin/{name}", f"/usr/sbin/{name}"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise SystemExit(f"bench: {name} is not installed (apt-get install e2fsprogs)")


def venv_python() -> str | None:
    """The benchmark-only venv's interpreter (bench/.venv: python-ext4, dissect.extfs), if it exists."""
    py = VENV_DIR / "bin" / "python"
    return str(py) if py.exists() else None


def ensure_venv(packages: Sequence[str] = ("ext4", "dissect.extfs", "py-spy")) -> str:
    """Create bench/.venv with the peer libraries (never project dependencies) and return its python."""
    py = venv_python()
    if py is None:
        print(f"bench: creating {VENV_DIR} with {' '.join(packages)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
        py = venv_python()
        assert py is not None
    missing = [p for p in packages if not _venv_has(py, p)]
    if missing:
        subprocess.run([py, "-m", "pip", "install", "-q", *missing], check=True)
    return py


def _venv_has(py: str, package: str) -> bool:
    result = subprocess.run([py, "-m", "pip", "show", "-q", package], capture_output=True)
    return result.returncode == 0


# ------------------------------------------------------------ running
def bench_env(executable: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The environment for every timed subprocess: bytecode cached, as for an installed package.

    This machine sets PYTHONDONTWRITEBYTECODE=1, which makes every start-up
    compile pyext4 from source (an editable install has no .pyc otherwise).
    The benchmarks unset it.  For the development interpreter they keep the
    bytecode under PYTHONPYCACHEPREFIX (in the work directory, so nothing is
    written into the repository).  For a program of the CLI venv
    (``executable`` in it) the prefix is left out: pip compiled the installed
    package into its __pycache__ directories, and with a prefix set the
    interpreter would look for .pyc only under the prefix.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("SOURCE_DATE_EPOCH", None)
    if executable is not None and in_cli_venv(executable):
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_DIR)
    return env


@dataclass
class RunResult:
    """One subprocess run: wall seconds, exit status, peak RSS in KiB (when asked for) and output."""

    wall: float
    returncode: int
    maxrss_kib: int | None
    stdout: str = ""
    stderr: str = ""


GNU_TIME = "/usr/bin/time"


def rss_available() -> bool:
    """Whether GNU time is there to report a child's own peak RSS."""
    return os.access(GNU_TIME, os.X_OK)


def run(cmd: Sequence[str | os.PathLike[str]], *, env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None, check: bool = True, capture_stdout: bool = False,
        rss: bool = False) -> RunResult:
    """Run ``cmd``; wall time from just before the fork to the reaping of the child.

    Peak RSS (``rss=True``): a child forked from this (large) Python process
    inherits its high-water mark at exec, so ``os.wait4``'s ru_maxrss of a
    direct child is really max(our RSS, its RSS).  The command is therefore run
    under GNU time (``/usr/bin/time -f %M``, a ~1 MiB process whose wait4 sees
    the command's own peak), which adds about a millisecond to the wall:
    compare walls only between runs made the same way.  Without GNU time the
    wait4 figure is reported, an upper bound.
    """
    argv = [os.fspath(x) for x in cmd]
    use_time = rss and rss_available()
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out, \
            tempfile.NamedTemporaryFile(prefix="rss-") as rss_file:
        if use_time:
            argv = [GNU_TIME, "-q", "-f", "%M", "-o", rss_file.name, *argv]
        child_env = env if env is not None else bench_env(cmd[0])
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                stdout=out if capture_stdout else subprocess.DEVNULL,
                                stderr=err, env=child_env, cwd=cwd)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        out.seek(0)
        stdout = out.read().decode(errors="replace") if capture_stdout else ""
        maxrss: int | None = None
        if use_time:
            text = Path(rss_file.name).read_text().split()
            maxrss = int(text[-1]) if text and text[-1].isdigit() else None
        elif rss:
            maxrss = usage.ru_maxrss
    result = RunResult(wall, proc.returncode, maxrss, stdout, stderr)
    if check and result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed with status {result.returncode}:\n{stderr}")
    return result


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, with time.perf_counter."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


# --------------------------------------------------------- alternation
@dataclass
class Sample:
    """One measured run of a contender: seconds (the figure compared), peak RSS when known, extras."""

    seconds: float
    maxrss_kib: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Contender:
    """A named job: ``setup`` (untimed, before every run) then ``measure`` -> Sample or seconds."""

    name: str
    measure: Callable[[], Sample | float]
    setup: Callable[[], None] | None = None
    teardown: Callable[[], None] | None = None
    runs: int | None = None  # None: the common count
    check: Callable[[], None] | None = None  # untimed, once, after the contender's first run


def _one(c: Contender) -> Sample:
    if c.setup is not None:
        c.setup()
    try:
        value = c.measure()
    finally:
        if c.teardown is not None:
            c.teardown()
    return value if isinstance(value, Sample) else Sample(float(value))


def alternate(contenders: Sequence[Contender], runs: int, *, warmup: int = 1, slow_seconds: float = 20.0,
              slow_runs: int = 3, progress: bool = True) -> dict[str, list[Sample]]:
    """Run the contenders in alternation: round i runs each once, the order reversed every other round.

    ``warmup`` untimed rounds come first (page cache, imports).  A contender
    whose warm-up took longer than ``slow_seconds`` gets only ``slow_runs`` runs.
    """
    samples: dict[str, list[Sample]] = {c.name: [] for c in contenders}
    planned = {c.name: (c.runs if c.runs is not None else runs) for c in contenders}
    checked: set[str] = set()

    def check(c: Contender) -> None:
        # The contender's ``check`` (e.g. e2fsck -fn of what it wrote) once, untimed, after its first run.
        if c.check is not None and c.name not in checked:
            checked.add(c.name)
            c.check()

    for _ in range(warmup):
        for c in contenders:
            s = _one(c)
            if progress:
                print(f"  warm-up {c.name}: {fmt_s(s.seconds)}", file=sys.stderr, flush=True)
            check(c)
            if s.seconds > slow_seconds:
                planned[c.name] = min(planned[c.name], slow_runs)
    for i in range(max(planned.values(), default=0)):
        order = list(contenders) if i % 2 == 0 else list(reversed(contenders))
        for c in order:
            if len(samples[c.name]) >= planned[c.name]:
                continue
            s = _one(c)
            samples[c.name].append(s)
            check(c)
        if progress:
            line = ", ".join(f"{n} {fmt_s(v[-1].seconds)}" for n, v in samples.items() if len(v) > i)
            print(f"  run {i + 1}: {line}", file=sys.stderr, flush=True)
    return samples


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else float("nan")


def med_s(samples: Sequence[Sample]) -> float:
    return median(s.seconds for s in samples)


def max_rss(samples: Sequence[Sample]) -> int | None:
    values = [s.maxrss_kib for s in samples if s.maxrss_kib is not None]
    return max(values) if values else None


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# ------------------------------------------------------------- formats
def fmt_s(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "n/a"
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}x"


def fmt_rss(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def verdict(value: float, target: float, *, at_most: bool = True) -> str:
    """'ok' or 'MISSED' for a ratio (or any figure) against its target."""
    if value != value:
        return "n/a"
    ok = value <= target if at_most else value >= target
    return "ok" if ok else "MISSED"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


# ------------------------------------------------------------- checking
@dataclass
class FsckResult:
    """``e2fsck -fn`` of an image: exit status, inodes and blocks in use (from its summary line)."""

    returncode: int
    inodes_used: int | None
    blocks_used: int | None
    output: str


def fsck(img: str | os.PathLike[str]) -> FsckResult:
    """``e2fsck -fn IMG`` (read-only, forced full check)."""
    r = run([e2fs_tool("e2fsck"), "-fn", img], check=False, capture_stdout=True)
    inodes = blocks = None
    for line in r.stdout.splitlines():
        # "IMG: 1034/131072 files (0.0% non-contiguous), 109576/524288 blocks"
        if " files (" in line and line.rstrip().endswith(" blocks"):
            try:
                inodes = int(line.split(": ", 1)[1].split("/", 1)[0])
                blocks = int(line.rsplit(", ", 1)[1].split("/", 1)[0])
            except (IndexError, ValueError):
                pass
    return FsckResult(r.returncode, inodes, blocks, r.stdout + r.stderr)


def verify_image(img: str | os.PathLike[str], what: str) -> FsckResult:
    """``e2fsck -fn`` must exit 0, else the benchmark stops (never time something broken)."""
    f = fsck(img)
    if f.returncode != 0:
        raise SystemExit(f"bench: {what}: e2fsck -fn {img} exited {f.returncode}:\n{f.output[-4000:]}")
    print(f"  checked {what}: e2fsck -fn exit 0 ({f.inodes_used} inodes, {f.blocks_used} blocks in use)",
          file=sys.stderr, flush=True)
    return f


Manifest = dict[str, tuple[Any, ...]]


def _digest_stream(read: Callable[[int], bytes]) -> str:
    h = hashlib.sha256()
    while True:
        chunk = read(MiB)
        if not chunk:
            return h.hexdigest()[:16]
        h.update(chunk)


def file_digest(path: str | os.PathLike[str]) -> str:
    """The short content digest the manifests use."""
    with open(path, "rb") as f:
        return _digest_stream(f.read)


def host_manifest(root: str | os.PathLike[str], *, owner: tuple[int, int] | None = None,
                  content: bool = True) -> Manifest:
    """path (relative, "/" for the root) -> (mode, uid, gid, size or None, sha256/target/rdev) of a host tree.

    ``owner`` replaces every uid:gid (what a tool that squashes owners should produce).
    Directory sizes are left out (they depend on the filesystem).
    """
    out: Manifest = {}
    root = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            if name == "" and dirpath != root:
                continue
            full = os.path.join(dirpath, name) if name else dirpath
            rel = "/" + os.path.relpath(full, root) if full != root else "/"
            st = os.lstat(full)
            uid, gid = owner if owner is not None else (st.st_uid, st.st_gid)
            if _stat.S_ISREG(st.st_mode):
                extra: Any = file_digest(full) if content else None
                size: int | None = st.st_size
            elif _stat.S_ISLNK(st.st_mode):
                extra, size = os.readlink(full), None
            elif _stat.S_ISCHR(st.st_mode) or _stat.S_ISBLK(st.st_mode):
                extra, size = (os.major(st.st_rdev), os.minor(st.st_rdev)), None
            else:
                extra, size = None, None
            out[rel] = (_stat.filemode(st.st_mode), uid, gid, size, extra)
    return out


def image_manifest(img: str | os.PathLike[str], top: str = "/", *, owner: tuple[int, int] | None = None,
                   content: bool = True, skip: Iterable[str] = ("/lost+found",)) -> Manifest:
    """The same as host_manifest for the tree under ``top`` in an ext4 image, read with pyext4's reader."""
    import pyext4

    skipped = set(skip)
    out: Manifest = {}
    top_clean = "/" + top.strip("/") if top.strip("/") else "/"
    with pyext4.Filesystem.open(os.fspath(img)) as fs:
        entries = [(top_clean, fs.resolve(top_clean))]
        entries += [(e.path, e.ino) for e in fs.walk_entries(top_clean)]
        for path, ino in entries:
            rel = path[len(top_clean):] if top_clean != "/" else path
            rel = rel or "/"
            if rel in skipped or any(rel.startswith(s + "/") for s in skipped):
                continue
            st = fs.stat_ino(ino)
            uid, gid = owner if owner is not None else (st.st_uid, st.st_gid)
            mode = st.st_mode
            if _stat.S_ISREG(mode):
                if content:
                    with fs.open_file(ino) as f:
                        extra: Any = _digest_stream(f.read)
                else:
                    extra = None
                size: int | None = st.st_size
            elif _stat.S_ISLNK(mode):
                extra, size = fs.readlink(path), None
            elif _stat.S_ISCHR(mode) or _stat.S_ISBLK(mode):
                extra, size = (os.major(st.st_rdev), os.minor(st.st_rdev)), None
            else:
                extra, size = None, None
            out[rel] = (_stat.filemode(mode), uid, gid, size, extra)
    return out


def manifest_diff(expected: Manifest, got: Manifest, *, limit: int = 12) -> list[str]:
    """Human-readable differences between two manifests (at most ``limit`` lines, then a count)."""
    lines: list[str] = []
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    changed = sorted(p for p in set(expected) & set(got) if expected[p] != got[p])
    lines += [f"missing {p} {expected[p]}" for p in missing]
    lines += [f"unexpected {p} {got[p]}" for p in extra]
    lines += [f"differs {p}: expected {expected[p]}, got {got[p]}" for p in changed]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... {len(lines) - limit} more"]
    return lines


def report_diff(what: str, expected: Manifest, got: Manifest, *, ignore: Iterable[str] = ()) -> list[str]:
    """Compare two manifests (paths in ``ignore`` left out); print the outcome; return the differences."""
    ignored = set(ignore)
    exp = {k: v for k, v in expected.items() if k not in ignored}
    have = {k: v for k, v in got.items() if k not in ignored}
    diff = manifest_diff(exp, have)
    if diff:
        print(f"  WARNING {what}: tree differs from the expected one:\n    " + "\n    ".join(diff),
              file=sys.stderr, flush=True)
    else:
        print(f"  checked {what}: {len(have)} entries as expected (mode, owner, size, content/target)",
              file=sys.stderr, flush=True)
    return diff


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync ``path`` (so that a timed tool's own fsync does not pay for an untimed setup's writes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -------------------------------------------------------------- context
def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    e2fs = ""
    try:
        out = subprocess.run([e2fs_tool("mke2fs"), "-V"], capture_output=True, text=True)
        e2fs = (out.stderr or out.stdout).splitlines()[0].strip()
    except (SystemExit, OSError, IndexError):
        pass
    commit = dirty = ""
    try:
        commit = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "pyext4", "banger_disk"],
                                capture_output=True, text=True).stdout.split("\n")
        dirty = " ".join(line[3:] for line in status if line.strip())
    except OSError:
        pass
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": commit,
        "uncommitted": dirty,
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory": fmt_bytes(mem) if mem else "",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "e2fsprogs": e2fs,
        "loadavg": os.getloadavg(),
    }


def machine_line(info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in info["loadavg"])
    return (f"{info['date']} · {info['cores']} cores ({info['cpu']}), {info['memory']} · Linux {info['kernel']}"
            f" · Python {info['python']} · {info['e2fsprogs']} · load {load}"
            f" · pyext4 at {info['commit']}" + (f" + uncommitted {info['uncommitted']}" if info["uncommitted"] else "")
            + (f"\n\n{cli_line(info['cli'])}" if info.get("cli") else ""))


def cli_line(cli: dict[str, Any]) -> str:
    """The run header's line on where the CLIs ran from."""
    if cli.get("cli_env") == "venv":
        return (f"CLIs from the CLI venv {cli['venv']} (checkout pip-installed, non-editable, sources "
                f"{cli.get('sources_sha256', '')[:12]}); --cli-env dev for the development interpreter's")
    return f"CLIs from the development interpreter ({cli.get('python')}, --cli-env dev)"


def fs_type(path: str | os.PathLike[str]) -> str:
    """The mount's filesystem type for ``path`` (from /proc/self/mounts, longest prefix)."""
    target = os.path.realpath(path)
    best, best_type = "", "?"
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, best_type = mnt, parts[2]
    except OSError:
        pass
    return best_type


def tmpfs_dir(name: str, work_dir: Path) -> Path | None:
    """A fresh directory on a tmpfs: /dev/shm when it is one, else a tmpfs mounted under ``work_dir``
    (root only); None when neither is possible."""
    shm = Path("/dev/shm")
    if shm.is_dir() and fs_type(shm) == "tmpfs" and os.access(shm, os.W_OK):
        d = shm / f"pyext4-bench-{name}"
        d.mkdir(exist_ok=True)
        return d
    mnt = work_dir / "tmpfs"
    mnt.mkdir(parents=True, exist_ok=True)
    if fs_type(mnt) == "tmpfs":
        d = mnt / name
        d.mkdir(exist_ok=True)
        return d
    if os.geteuid() != 0:
        return None
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=90%", "pyext4-bench", str(mnt)],
                         capture_output=True)
    if res.returncode != 0:
        return None
    d = mnt / name
    d.mkdir(exist_ok=True)
    return d


def fresh_dir(path: Path) -> Path:
    """``path`` as an empty directory."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def pretouch_memory(directory: Path, gib: int) -> float:
    """Write and delete ``gib`` GiB of zeros in ``directory`` (a tmpfs); returns the seconds it took.

    On this VM (Firecracker) the first write to a guest page that was never touched costs a host
    page fault: ~3 s per GiB against ~0.5 s per GiB afterwards (measured 2026-12-05). Extraction
    into a tmpfs allocates a GiB per run, so without this whichever contender happened to get fresh
    pages ran 2-3x slower (runs of 0.34 s and 1.1 s for the same extract)."""
    start = time.perf_counter()
    path = directory / ".pretouch"
    chunk = bytes(1 << 24)
    try:
        with open(path, "wb") as f:
            for _ in range(gib * 64):
                f.write(chunk)
    except OSError:
        pass  # a full tmpfs: what was written is touched
    finally:
        drop_file(path)
    return time.perf_counter() - start


def fresh_sparse(path: Path, size: int) -> None:
    """``path`` as a new, empty sparse file of ``size`` bytes (the state both tools start from)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    with open(path, "wb") as f:
        f.truncate(size)


def drop_file(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# -------------------------------------------------------------- results
def save_results(name: str, data: dict[str, Any]) -> Path:
    """Write bench/results/<name>-<timestamp>.json and <name>-latest.json; returns the first."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    text = json.dumps(data, indent=2, default=_json_default)
    path.write_text(text)
    (RESULTS_DIR / f"{name}-latest.json").write_text(text)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Sample):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def samples_json(samples: dict[str, list[Sample]]) -> dict[str, Any]:
    return {
        name: {
            "median_s": med_s(v),
            "runs_s": [s.seconds for s in v],
            "max_rss_kib": max_rss(v),
            "extra": [s.extra for s in v if s.extra] or None,
        }
        for name, v in samples.items()
    }


def wait_quiet(max_load: float, max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) until the 1-minute load average is below ``max_load``; returns it.

    The machine has 2 cores and may be shared: a busy neighbour skews every figure.
    """
    deadline = time.monotonic() + max_wait
    load = os.getloadavg()[0]
    announced = False
    while load >= max_load and time.monotonic() < deadline:
        if not announced:
            print(f"bench: load average {load:.2f} >= {max_load}; waiting up to {max_wait:.0f} s",
                  file=sys.stderr, flush=True)
            announced = True
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


def base_parser(description: str, *, runs: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=runs, help=f"timed runs per contender (default {runs})")
    parser.add_argument("--dir", type=Path, default=DEFAULT_WORK_DIR,
                        help=f"work directory for images (default {DEFAULT_WORK_DIR}; $PYEXT4_BENCH_DIR)")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS for the 1-min load average to drop below 0.5")
    parser.add_argument("--cli-env", choices=CLI_ENVS, default="venv",
                        help="where the pyext4 / banger-disk CLIs run from: 'venv' (default), a clean venv "
                             "under the work dir with the checkout pip-installed (non-editable), as a user "
                             "runs them; 'dev', the console scripts next to this interpreter")
    return parser


def start(args: argparse.Namespace) -> dict[str, Any]:
    """Wait for a quiet machine when asked; the machine description for the report."""
    cli = set_cli_env(args.cli_env, args.dir)  # before the load check: building the venv is busy work
    if args.wait_quiet:
        wait_quiet(0.5, args.wait_quiet)
    info = machine_info()
    info["cli"] = cli
    return info


def section(title: str) -> None:
    print(f"\n### {title}\n", flush=True)
