"""bench/read: full-tree read by pyext4, python-ext4 and dissect.extfs; `pyext4 extract` against
`debugfs -R "rdump / DIR"` (issue 3, item 7).

Images, made once by `mke2fs -t ext4 -d` (ext4 defaults) and reused:
  (a) stdlib  the running Python's standard library (site-packages left out)
  (b) big     4 x 256 MiB files of random data
  (c) small   70,000 small files, one directory of 20,000

Each read runs in a fresh process (bench/_read_worker.py); the figure compared
is the time of the open plus the walk, inside that process.  The peers are
installed in bench/.venv only (never project dependencies).  Extraction goes
to a tmpfs when there is one, into a fresh empty directory for every run.

    python bench/read.py [--runs 5] [--images stdlib,big,small] [--no-peers] [--no-extract]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import common as c
import trees

WORKER = str(Path(__file__).resolve().parent / "_read_worker.py")
LABELS = {"stdlib": "(a) stdlib", "big": "(b) 4 x 256 MiB", "small": "(c) 70,000 small"}


def worker_contender(name: str, python: str, which: str, image: Path, dest: Path | None = None) -> c.Contender:
    argv: list[Any] = [python, WORKER, which, image]
    if dest is not None:
        argv.append(dest)

    def setup() -> None:
        if dest is not None:
            c.fresh_dir(dest)

    def measure() -> c.Sample:
        r = c.run(argv, capture_stdout=True, rss=True)
        data = json.loads(r.stdout.strip().splitlines()[-1])
        seconds = data.pop("seconds")
        return c.Sample(seconds, r.maxrss_kib, {"wall": r.wall, **data})

    return c.Contender(name, measure, setup)


def cli_contender(name: str, argv: list[Any], dest: Path) -> c.Contender:
    def setup() -> None:
        c.fresh_dir(dest)

    def measure() -> c.Sample:
        r = c.run(argv, rss=True)
        return c.Sample(r.wall, r.maxrss_kib, {"wall": r.wall})

    return c.Contender(name, measure, setup)


def _available_gib() -> int:
    """MemAvailable in whole GiB (0 when /proc/meminfo says nothing)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) >> 20
    except OSError:
        pass
    return 0


def check_same(samples: dict[str, list[c.Sample]], keys: tuple[str, ...] = ("files", "bytes")) -> list[str]:
    """Problems when the contenders did not all see the same files and bytes."""
    seen = {}
    for name, v in samples.items():
        if v and all(k in v[0].extra for k in keys):
            seen[name] = tuple(v[0].extra[k] for k in keys)
    if len(set(seen.values())) > 1:
        return [f"contenders disagree on {keys}: {seen}"]
    return []


def main() -> None:
    parser = c.base_parser(__doc__.splitlines()[0], runs=5)
    parser.add_argument("--images", default="stdlib,big,small", help="which images (default all three)")
    parser.add_argument("--no-peers", action="store_true", help="skip python-ext4 and dissect.extfs")
    parser.add_argument("--no-extract", action="store_true", help="skip the extract comparison")
    parser.add_argument("--no-verify-off", action="store_true", help="skip pyext4 with verify='off'")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the trees and images")
    args = parser.parse_args()

    work: Path = args.dir
    work.mkdir(parents=True, exist_ok=True)
    info = c.start(args)
    peers_py = None if args.no_peers else c.ensure_venv()
    out_root = c.tmpfs_dir("read", work) or (work / "extract")
    out_root.mkdir(parents=True, exist_ok=True)
    print(f"# bench/read\n\n{c.machine_line(info)}\n\nimages in {work} ({c.fs_type(work)}); "
          f"extraction into {out_root} ({c.fs_type(out_root)})")
    results: dict[str, Any] = {"machine": info, "work_dir": str(work), "extract_dir": str(out_root), "images": {}}
    if not args.no_extract and c.fs_type(out_root) == "tmpfs":
        gib = max(1, min(16, _available_gib() - 4))
        seconds = c.pretouch_memory(out_root, gib)
        print(f"pre-touched {gib} GiB of memory through {out_root} in {seconds:.1f} s (first-touch page faults "
              "of the VM, not of any contender)", file=sys.stderr)
        results["pretouch"] = {"gib": gib, "seconds": seconds}

    image_rows = []
    read_rows = []
    extract_rows = []
    problems: list[str] = []
    pyext4_cli = c.console_script("pyext4")
    debugfs = c.e2fs_tool("debugfs")

    for name in args.images.split(","):
        img, meta = trees.mke2fs_image(name, work, rebuild=args.rebuild)
        stats = meta["recipe"]["stats"]  # type: ignore[index]
        image_rows.append([LABELS[name], f"{stats['files']:,}", f"{stats['dirs']:,}",
                           c.fmt_bytes(stats["bytes"]), c.fmt_bytes(meta["size"]),  # type: ignore[arg-type]
                           c.fmt_s(meta["mke2fs_d_seconds"])])  # type: ignore[arg-type]
        entry: dict[str, Any] = {"meta": meta}

        # ------------------------------------------------------------- read
        print(f"\nread {LABELS[name]}:", file=sys.stderr)
        contenders = [worker_contender("pyext4", sys.executable, "pyext4", img)]
        if not args.no_verify_off:
            contenders.append(worker_contender("pyext4 verify=off", sys.executable, "pyext4-verify-off", img))
        if peers_py:
            contenders.append(worker_contender("dissect.extfs", peers_py, "dissect.extfs", img))
            contenders.append(worker_contender("python-ext4", peers_py, "python-ext4", img))
        samples = c.alternate(contenders, args.runs)
        problems += [f"{name}: {p}" for p in check_same(samples)]
        ref = c.med_s(samples["dissect.extfs"]) if "dissect.extfs" in samples else float("nan")
        for cname, v in samples.items():
            med = c.med_s(v)
            speedup = c.ratio(ref, med)
            target = "-"
            if cname == "pyext4" and ref == ref:
                target = f">= 3x {c.verdict(speedup, 3.0, at_most=False)}"
            rss_note = c.fmt_rss(c.max_rss(v))
            if cname == "pyext4":
                rss_note += f" ({c.verdict((c.max_rss(v) or 0) / 1024, 100)})"
            read_rows.append([LABELS[name], cname, c.fmt_s(med),
                              c.fmt_s(c.median(s.extra["wall"] for s in v)),
                              c.fmt_ratio(speedup) if cname != "dissect.extfs" else "1.00x", target, rss_note, len(v)])
        entry["read"] = c.samples_json(samples)

        # ---------------------------------------------------------- extract
        if not args.no_extract:
            print(f"\nextract {LABELS[name]}:", file=sys.stderr)
            dest = out_root / name
            ex = [
                cli_contender("debugfs rdump", [debugfs, "-R", f"rdump / {dest}", img], dest),
                cli_contender("pyext4 extract (CLI)", [pyext4_cli, "extract", img, dest], dest),
                worker_contender("pyext4 extract() in-process", sys.executable, "pyext4-extract", img, dest),
            ]
            # Same result? One run of each into its own directory, compared before timing.
            a_dir, b_dir = out_root / f"{name}-check-debugfs", out_root / f"{name}-check-pyext4"
            c.fresh_dir(a_dir)
            c.fresh_dir(b_dir)
            c.run([debugfs, "-R", f"rdump / {a_dir}", img])
            c.run([pyext4_cli, "extract", img, b_dir])
            sa, sb = trees.host_tree_summary(a_dir), trees.host_tree_summary(b_dir)
            if sa != sb:
                problems.append(f"{name}: extract results differ: debugfs {sa} pyext4 {sb}")
            shutil.rmtree(a_dir)
            shutil.rmtree(b_dir)
            ex_samples = c.alternate(ex, args.runs)
            shutil.rmtree(dest, ignore_errors=True)
            ref_x = c.med_s(ex_samples["debugfs rdump"])
            for cname, v in ex_samples.items():
                med = c.med_s(v)
                r = c.ratio(med, ref_x)
                target = "-"
                if cname == "pyext4 extract (CLI)":
                    target = f"<= 1.0x {c.verdict(r, 1.0)}"
                rss_note = c.fmt_rss(c.max_rss(v))
                if cname.startswith("pyext4"):
                    rss_note += f" ({c.verdict((c.max_rss(v) or 0) / 1024, 100)})"
                extract_rows.append([LABELS[name], cname, c.fmt_s(med), c.fmt_ratio(r), target, rss_note, len(v)])
            entry["extract"] = c.samples_json(ex_samples)
            entry["extract_summary"] = sa
        results["images"][name] = entry

    c.section("Images (mke2fs -t ext4 -d, ext4 defaults)")
    print(c.markdown_table(["image", "files", "dirs", "data", "image size", "mke2fs -d"], image_rows))
    c.section("Full-tree read (median time of open + walk + read inside the process; "
              "speed-up = dissect.extfs / contender)")
    print(c.markdown_table(["image", "reader", "median", "process wall", "speed-up", "target", "peak RSS", "runs"],
                           read_rows))
    if extract_rows:
        c.section("Extract to " + c.fs_type(out_root) + " (median process wall; ratio = contender / debugfs rdump)")
        print(c.markdown_table(["image", "extractor", "median", "ratio", "target", "peak RSS", "runs"], extract_rows))
    if problems:
        c.section("Problems")
        for p in problems:
            print(f"- {p}")
    results["problems"] = problems
    if not args.no_save:
        print(f"\nsaved {c.save_results('read', results)}")
    shutil.rmtree(out_root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.pop("SOURCE_DATE_EPOCH", None)
    main()
