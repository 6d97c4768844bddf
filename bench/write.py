"""bench/write: bulk put into an existing image and replacing one file, against `debugfs -w -f SCRIPT`
(issue 4, item 8).

  bulk     1,000 small files (10 directories of 100) and 10 x 32 MiB files written into an existing
           2 GiB image (made by mkfs.ext4, fresh for every run): one `pyext4 put -r --owner 0:0` against
           one `debugfs -w -f SCRIPT` doing the same writes (mkdir, write, sif mode/uid/gid per entry);
           also shown: the 1,000 small files alone (no target; per-entry cost without 320 MiB to write).
  replace  one file replaced in a 1 GiB image: `debugfs -w -f` (rm + write + sif) against
           `pyext4 put` (CLI, target < 150 ms) and in-process write_file (target < 10 ms).

Every pyext4 contender's result is checked once, untimed: `e2fsck -fn` exits 0 and the tree read
back matches the host source (modes, owners 0:0, sizes, content).

Targets: bulk put <= 0.5x the debugfs wall; replace: CLI < 150 ms, in-process write_file() < 10 ms.

    python bench/write.py [--runs 5] [--no-reference]
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import common as c

UUID = "0b1e5c0d-1111-4222-8333-944445555666"
HASH_SEED = "5eed5eed-1111-4222-8333-944445555666"


def make_source(work: Path) -> Path:
    """1,000 small files in 10 directories and 10 x 32 MiB files (built once)."""
    src = work / "tree-write"
    done = work / "tree-write.done"
    if src.is_dir() and done.exists():
        return src
    c.fresh_dir(src)
    rng = random.Random(1000)
    for d in range(10):
        sub = src / "small" / f"dir{d}"
        sub.mkdir(parents=True)
        for i in range(100):
            (sub / f"file{i:03d}.txt").write_bytes(rng.randbytes(rng.randint(0, 8000)))
    (src / "big").mkdir()
    for i in range(10):
        with open(src / "big" / f"blob{i}.bin", "wb") as f:
            for _ in range(8):
                f.write(os.urandom(4 * c.MiB))
    done.write_text("ok\n")
    return src


def debugfs_script(src: Path, dest: str, *, uid: int = 0, gid: int = 0) -> str:
    """debugfs requests that recreate ``src`` under ``dest``: mkdir/write, then sif mode, uid, gid."""
    lines = [f"mkdir {dest}", f"sif {dest} uid {uid}", f"sif {dest} gid {gid}"]
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = os.path.relpath(dirpath, src)
        base = dest if rel == "." else f"{dest}/{rel}"
        for name in sorted(dirnames):
            p = f"{base}/{name}"
            lines += [f"mkdir {p}", f"sif {p} mode 040755", f"sif {p} uid {uid}", f"sif {p} gid {gid}"]
        for name in sorted(filenames):
            p = f"{base}/{name}"
            lines += [f"write {os.path.join(dirpath, name)} {p}", f"sif {p} mode 0100644",
                      f"sif {p} uid {uid}", f"sif {p} gid {gid}"]
    return "\n".join(lines) + "\n"


def fresh_image(img: Path, size: str) -> None:
    c.fresh_sparse(img, 0)
    c.run([c.e2fs_tool("mkfs.ext4"), "-q", "-F", "-U", UUID, "-E", f"hash_seed={HASH_SEED}", img, size])


BULK_REF = "debugfs -w -f SCRIPT"
BULK_CLI = "pyext4 put -r (CLI)"
REP_REF = "debugfs -w (rm + write + sif)"
REP_CLI = "pyext4 put (CLI)"
REP_INPROC = "pyext4 write_file() in-process"
REPLACED = "/data/small/dir0/file000.txt"


def main() -> None:
    parser = c.base_parser(__doc__.splitlines()[0], runs=5)
    parser.add_argument("--no-reference", action="store_true", help="skip the debugfs side (no ratios)")
    args = parser.parse_args()
    work: Path = args.dir
    work.mkdir(parents=True, exist_ok=True)
    info = c.start(args)
    print(f"# bench/write\n\n{c.machine_line(info)}\n\nwork dir: {work} ({c.fs_type(work)})")
    debugfs = c.e2fs_tool("debugfs")
    pyext4 = c.console_script("pyext4")
    src = make_source(work)
    results: dict[str, Any] = {"machine": info, "checks": {}}

    # ----------------------------------------------------------------- bulk
    img = work / "write-bulk.img"
    script = work / "write-bulk.debugfs"
    script.write_text(debugfs_script(src, "/data"))

    def check_reference(image: Path, name: str, expected: c.Manifest) -> Any:
        def check() -> None:
            # Not a gate (the reference is e2fsprogs): report what its output looks like.
            f = c.fsck(image)
            print(f"  {name} result: e2fsck -fn exit {f.returncode}, {f.inodes_used} inodes in use",
                  file=sys.stderr)
            diff = c.report_diff(name, expected, c.image_manifest(image, "/data"))
            results["checks"][name] = {"fsck": f.returncode, "inodes_used": f.inodes_used,
                                       "blocks_used": f.blocks_used, "tree_diff": diff}
        return check

    def check_pyext4(image: Path, name: str, expected: c.Manifest) -> Any:
        def check() -> None:
            f = c.verify_image(image, name)
            diff = c.report_diff(name, expected, c.image_manifest(image, "/data"))
            results["checks"][name] = {"fsck": f.returncode, "inodes_used": f.inodes_used,
                                       "blocks_used": f.blocks_used, "tree_diff": diff}
        return check

    def run_debugfs(script: Path, image: Path) -> float:
        r = c.run([debugfs, "-w", "-f", script, image])
        if "error" in r.stderr.lower() or "not found" in r.stderr.lower():
            print(f"bench: debugfs reported problems:\n{r.stderr[:2000]}", file=sys.stderr)
        return r.wall

    def bulk_case(tree: Path, script: Path, tag: str) -> dict[str, list[c.Sample]]:
        expected = c.host_manifest(tree, owner=(0, 0))
        contenders = []
        if not args.no_reference:
            contenders.append(c.Contender(BULK_REF, lambda: run_debugfs(script, img), lambda: fresh_image(img, "2G"),
                                          check=check_reference(img, f"{BULK_REF} ({tag})", expected)))
        # pyext4 put IMAGE SRC DEST -r --owner 0:0 (modes kept from the host: 0644 files, 0755 directories).
        contenders.append(c.Contender(BULK_CLI, lambda: c.run(
            [pyext4, "put", "-r", "--owner", "0:0", img, tree, "/data"]).wall, lambda: fresh_image(img, "2G"),
            check=check_pyext4(img, f"{BULK_CLI} ({tag})", expected)))
        print(f"\nbulk, {tag}:", file=sys.stderr)
        return c.alternate(contenders, args.runs)

    bulk = bulk_case(src, script, "all")
    results["bulk"] = c.samples_json(bulk)
    # The same without the 320 MiB of big files: per-entry costs, not the disk's write speed.
    small_script = work / "write-bulk-small.debugfs"
    small_script.write_text(debugfs_script(src / "small", "/data"))
    bulk_small = bulk_case(src / "small", small_script, "small files only")
    results["bulk_small_only"] = c.samples_json(bulk_small)

    # -------------------------------------------------------------- replace
    img1 = work / "write-replace.img"
    host_file = work / "write-replacement.bin"
    host_file.write_bytes(random.Random(4).randbytes(6000))  # differs from the file it replaces
    rscript = work / "write-replace.debugfs"
    rscript.write_text(f"rm {REPLACED}\nwrite {host_file} {REPLACED}\n"
                       f"sif {REPLACED} mode 0100644\nsif {REPLACED} uid 0\nsif {REPLACED} gid 0\n")
    expected_rep = c.host_manifest(src, owner=(0, 0))
    rel = REPLACED[len("/data"):]
    mode, uid, gid, _size, _digest = expected_rep[rel]
    expected_rep[rel] = (mode, uid, gid, host_file.stat().st_size, c.file_digest(host_file))

    def setup_replace() -> None:
        fresh_image(img1, "1G")
        c.run([debugfs, "-w", "-f", script, img1])  # debugfs closes with an fsync: nothing left dirty

    def check_replace(name: str) -> Any:
        def check() -> None:
            f = c.verify_image(img1, name)
            diff = c.report_diff(name, expected_rep, c.image_manifest(img1, "/data"))
            results["checks"][f"replace {name}"] = {"fsck": f.returncode, "tree_diff": diff}
        return check

    def inproc() -> c.Sample:
        import pyext4 as p

        data = host_file.read_bytes()
        start = time.perf_counter()
        with p.Filesystem.open(str(img1), writable=True) as fs:
            opened = time.perf_counter()
            fs.write_file(REPLACED, data, mode=0o644, uid=0, gid=0)
            written = time.perf_counter()
        closed = time.perf_counter()
        return c.Sample(written - opened, extra={"open": opened - start, "close_flush_fsync": closed - written,
                                                  "open_write_close": closed - start})

    rcont = []
    if not args.no_reference:
        rcont.append(c.Contender(REP_REF, lambda: c.run([debugfs, "-w", "-f", rscript, img1]).wall,
                                 setup_replace, check=check_reference(img1, REP_REF, expected_rep)))
    rcont.append(c.Contender(REP_CLI, lambda: c.run([pyext4, "put", img1, host_file, REPLACED]).wall,
                             setup_replace, check=check_replace(REP_CLI)))
    rcont.append(c.Contender(REP_INPROC, inproc, setup_replace, check=check_replace(REP_INPROC)))
    print("\nreplace one file:", file=sys.stderr)
    rep = c.alternate(rcont, args.runs)
    results["replace"] = c.samples_json(rep)

    rows = []
    for label, samples, has_target in (("bulk (1,000 small + 10 x 32 MiB into 2 GiB)", bulk, True),
                                       ("bulk, the 1,000 small files only", bulk_small, False)):
        ref = c.med_s(samples[BULK_REF]) if BULK_REF in samples else float("nan")
        for name, v in samples.items():
            r = c.ratio(c.med_s(v), ref)
            target = f"<= 0.5x {c.verdict(r, 0.5)}" if name == BULK_CLI and has_target else "-"
            rows.append([label, name, c.fmt_s(c.med_s(v)), c.fmt_ratio(r), target, len(v)])
    rep_case = "replace one file (1 GiB image)"
    ref = c.med_s(rep[REP_REF]) if REP_REF in rep else float("nan")
    for name, v in rep.items():
        m = c.med_s(v)
        if name == REP_CLI:
            target = f"< 150 ms {c.verdict(m, 0.150)}"
        elif name == REP_INPROC:
            target = f"< 10 ms {c.verdict(m, 0.010)}"
        else:
            target = "-"
        rows.append([rep_case, name, c.fmt_s(m), c.fmt_ratio(c.ratio(m, ref)), target, len(v)])
        if name == REP_INPROC:
            for key, label in (("open", "  (open, writable)"), ("close_flush_fsync", "  (close: flush + fsync)"),
                               ("open_write_close", "  (open + write_file + close)")):
                mk = c.median(s.extra[key] for s in v)
                rows.append([rep_case, label, c.fmt_s(mk), c.fmt_ratio(c.ratio(mk, ref)), "-", len(v)])
    c.section("Wall time (medians; ratio = contender / debugfs)")
    print(c.markdown_table(["case", "contender", "median", "ratio", "target", "runs"], rows))
    print("\nthe in-process figure is the write_file() call in an open writable session (the changes are "
          "written and fsynced at close, shown apart)")
    for p in (img, img1):
        c.drop_file(p)
    if not args.no_save:
        print(f"\nsaved {c.save_results('write', results)}")


if __name__ == "__main__":
    main()
