"""Source trees and mke2fs-made images shared by the benchmarks (built once, reused while the recipe holds).

Trees:
  stdlib  the running Python's standard library directory (site-packages left out)
  big     4 x 256 MiB files of random data
  small   70,000 small files: 20,000 in one directory, 50,000 over 500 directories of 100
  rootfs  a synthetic Debian-minbase-like tree (~7,000 entries: /etc of 300+ entries, bin, lib with
          .so symlinks, share/doc, var, device nodes when root)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import sysconfig
from collections.abc import Callable
from pathlib import Path

import common as c

RECIPE_VERSION = 1


# ---------------------------------------------------------------- trees
def _stdlib(dest: Path) -> None:
    src = Path(sysconfig.get_paths()["stdlib"])

    def ignore(directory: str, names: list[str]) -> list[str]:
        return ["site-packages"] if Path(directory) == src else []

    shutil.copytree(src, dest, symlinks=True, ignore=ignore)


def _big(dest: Path, count: int = 4, size: int = 256 * c.MiB) -> None:
    dest.mkdir(parents=True)
    for i in range(count):
        with open(dest / f"big{i}.bin", "wb") as f:
            left = size
            while left:
                n = min(left, 4 * c.MiB)
                f.write(os.urandom(n))
                left -= n


def _small(dest: Path, total: int = 70_000, big_dir: int = 20_000, per_dir: int = 100) -> None:
    rng = random.Random(70_000)
    dest.mkdir(parents=True)
    big = dest / "big"
    big.mkdir()
    for i in range(big_dir):
        (big / f"entry-{i:05d}.txt").write_bytes(rng.randbytes(rng.randint(0, 3000)))
    rest = total - big_dir
    for d in range(-(-rest // per_dir)):
        sub = dest / "tree" / f"d{d // 50:02d}" / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(min(per_dir, rest - d * per_dir)):
            (sub / f"f{i:03d}.dat").write_bytes(rng.randbytes(rng.randint(0, 3000)))


def _rootfs(dest: Path) -> None:
    """A synthetic root filesystem shaped like Debian minbase (sizes drawn from a fixed seed)."""
    rng = random.Random(7000)

    def f(path: Path, size: int, mode: int = 0o644) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        os.chmod(path, mode)

    for top in ("bin", "boot", "dev", "etc", "home", "lib", "media", "mnt", "opt", "proc", "root", "run",
                "sbin", "srv", "sys", "tmp", "usr", "var"):
        (dest / top).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    os.chmod(dest / "root", 0o700)
    for i in range(320):  # /etc: an htree-sized directory once written by the kernel
        f(dest / "etc" / f"conf{i:03d}.conf", rng.randint(20, 4000))
    for sub in ("apt/apt.conf.d", "default", "init.d", "pam.d", "security", "ssh", "systemd/system",
                "cron.daily", "logrotate.d", "profile.d", "skel", "network"):
        for i in range(12):
            f(dest / "etc" / sub / f"{sub.split('/')[-1]}-{i}", rng.randint(50, 3000))
    (dest / "etc" / "fstab").write_text("# /etc/fstab\nproc /proc proc defaults 0 0\n")
    for i in range(450):
        f(dest / "usr" / "bin" / f"tool{i:03d}", rng.randint(8_000, 400_000), 0o755)
    for i in range(60):
        f(dest / "usr" / "sbin" / f"admin{i:02d}", rng.randint(8_000, 200_000), 0o755)
    libdir = dest / "usr" / "lib" / "x86_64-linux-gnu"
    for i in range(300):
        real = libdir / f"libthing{i}.so.{i % 7}.{i % 3}.0"
        f(real, rng.randint(10_000, 2_000_000))
        (libdir / f"libthing{i}.so.{i % 7}").symlink_to(real.name)
    for i in range(900):
        pkg = f"pkg{i // 6:03d}"
        f(dest / "usr" / "share" / "doc" / pkg / f"file{i % 6}", rng.randint(100, 20_000))
    for i in range(2200):
        f(dest / "usr" / "share" / "locale" / f"l{i % 110:03d}" / "LC_MESSAGES" / f"m{i // 110:02d}.mo",
          rng.randint(500, 60_000))
    for i in range(1400):
        f(dest / "usr" / "lib" / "python3" / f"mod{i // 40:02d}" / f"m{i % 40:02d}.py", rng.randint(200, 30_000))
    for i in range(400):
        f(dest / "var" / "lib" / "dpkg" / "info" / f"pkg{i:03d}.list", rng.randint(100, 8_000))
    for i in range(60):
        f(dest / "var" / "cache" / "debconf" / f"c{i}", rng.randint(100, 50_000))
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        p = dest / link
        p.rmdir()
        p.symlink_to(target)
    if os.geteuid() == 0:
        for name, kind, major, minor in (("null", stat.S_IFCHR, 1, 3), ("zero", stat.S_IFCHR, 1, 5),
                                         ("console", stat.S_IFCHR, 5, 1), ("loop0", stat.S_IFBLK, 7, 0)):
            os.mknod(dest / "dev" / name, kind | 0o666, os.makedev(major, minor))
        os.mkfifo(dest / "dev" / "initctl", 0o600)


TREES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "stdlib": ("Python standard library", _stdlib),
    "big": ("4 x 256 MiB files", _big),
    "small": ("70,000 small files (one directory of 20,000)", _small),
    "rootfs": ("synthetic Debian-minbase-like root filesystem", _rootfs),
}


def tree_stats(root: Path) -> dict[str, int]:
    """Entries, regular files, directories, apparent bytes and 4 KiB-block bytes of a host tree."""
    entries = files = dirs = apparent = blocks = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            entries += 1
            if stat.S_ISREG(st.st_mode):
                files += 1
                apparent += st.st_size
                blocks += -(-st.st_size // 4096) * 4096
            elif stat.S_ISDIR(st.st_mode):
                dirs += 1
                blocks += 4096
    return {"entries": entries, "files": files, "dirs": dirs, "bytes": apparent, "block_bytes": blocks}


def tree(name: str, work: Path, *, rebuild: bool = False) -> tuple[Path, dict[str, int]]:
    """The source tree ``name`` under ``work`` (built when missing or stale) and its stats."""
    root = work / f"tree-{name}"
    marker = work / f"tree-{name}.json"
    recipe = {"tree": name, "version": RECIPE_VERSION}
    if not rebuild and root.is_dir() and marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("recipe") == recipe:
            return root, saved["stats"]
    if root.exists():
        shutil.rmtree(root)
    c.drop_file(marker)
    print(f"bench: building tree {name} ({TREES[name][0]}) in {root}", flush=True)
    TREES[name][1](root)
    stats = tree_stats(root)
    marker.write_text(json.dumps({"recipe": recipe, "stats": stats}))
    return root, stats


def image_size(stats: dict[str, int]) -> int:
    """mke2fs size with headroom: twice the data plus 256 MiB, at least 1 GiB (mke2fs's 'default'
    type: 4 KiB blocks, 16 KiB per inode) and enough inodes for 1.5x the entries."""
    size = max(c.GiB, 2 * stats["block_bytes"] + 256 * c.MiB, stats["entries"] * 3 // 2 * 16384)
    step = 256 * c.MiB
    return -(-size // step) * step


def mke2fs_image(name: str, work: Path, *, rebuild: bool = False) -> tuple[Path, dict[str, object]]:
    """``mke2fs -t ext4 -d TREE`` image of tree ``name`` (ext4 defaults, sized by image_size)."""
    src, stats = tree(name, work, rebuild=rebuild)
    img = work / f"image-{name}.img"
    marker = work / f"image-{name}.json"
    size = image_size(stats)
    recipe = {"tree": name, "version": RECIPE_VERSION, "size": size, "stats": stats}
    if not rebuild and img.exists() and marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("recipe") == recipe:
            return img, saved
    c.drop_file(marker)
    print(f"bench: mke2fs -d {src} -> {img} ({c.fmt_bytes(size)})", flush=True)
    c.fresh_sparse(img, size)
    r = c.run([c.e2fs_tool("mke2fs"), "-t", "ext4", "-q", "-F", "-d", src, img, str(size // 1024) + "k"])
    info = {"recipe": recipe, "size": size, "mke2fs_d_seconds": r.wall}
    marker.write_text(json.dumps(info))
    return img, info


def host_tree_summary(root: Path) -> dict[str, int]:
    """Counts and bytes of an extracted host tree (to check two extractions agree)."""
    out = {"files": 0, "dirs": 0, "symlinks": 0, "other": 0, "bytes": 0}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                out["files"] += 1
                out["bytes"] += st.st_size
            elif stat.S_ISDIR(st.st_mode):
                out["dirs"] += 1
            elif stat.S_ISLNK(st.st_mode):
                out["symlinks"] += 1
            else:
                out["other"] += 1
    return out
