"""bench/populate: `pyext4 mkfs -d SRC IMAGE SIZE` against `mke2fs -t ext4 -d SRC IMAGE SIZE` (issue 5, item 8).

Trees (bench/trees.py): the Python standard library, a Debian minbase root filesystem (--rootfs DIR,
e.g. made by `debootstrap --variant=minbase bookworm DIR`; else a synthetic ~7,000-entry tree),
4 x 256 MiB files, 70,000 small files (one directory of 20,000).  Every run writes a fresh sparse
image of the same size (twice the data + 256 MiB, at least 1 GiB: mke2fs's default type).

Each tool's image is checked once, untimed: `e2fsck -fn` (must exit 0 for pyext4) and the tree read
back against the host source (type, mode, owner, size, content, symlink target, device numbers).

Targets: pyext4 <= 1.0x mke2fs -d on the stdlib and Debian trees, <= 0.5x on the big files,
<= 0.1x on the 70,000 small files.

    python bench/populate.py [--runs 3] [--trees stdlib,rootfs,big,small] [--rootfs DIR] [--no-reference]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import common as c
import trees

TARGETS = {"stdlib": 1.0, "rootfs": 1.0, "big": 0.5, "small": 0.1}
REF = "mke2fs -d"
CLI = "pyext4 mkfs -d (CLI)"


def main() -> None:
    parser = c.base_parser(__doc__.splitlines()[0], runs=3)
    parser.add_argument("--trees", default="stdlib,rootfs,big,small")
    parser.add_argument("--rootfs", type=Path, help="a Debian minbase tree to use instead of the synthetic one")
    parser.add_argument("--no-reference", action="store_true", help="skip mke2fs -d (no ratios)")
    args = parser.parse_args()
    work: Path = args.dir
    work.mkdir(parents=True, exist_ok=True)
    info = c.start(args)
    print(f"# bench/populate\n\n{c.machine_line(info)}\n\nwork dir: {work} ({c.fs_type(work)})")
    mke2fs = c.e2fs_tool("mke2fs")
    pyext4 = c.console_script("pyext4")
    results: dict[str, Any] = {"machine": info, "trees": {}}
    rows = []
    for name in args.trees.split(","):
        if name == "rootfs" and args.rootfs is not None:
            src, stats = args.rootfs, trees.tree_stats(args.rootfs)
            label = f"Debian rootfs ({args.rootfs})"
        else:
            src, stats = trees.tree(name, work)
            label = trees.TREES[name][0]
        size = trees.image_size(stats)
        size_arg = f"{size // 1024}k"
        img = work / f"populate-{name}.img"
        checks: dict[str, Any] = {}
        expected: dict[str, c.Manifest] = {}

        def setup(img: Path = img, size: int = size) -> None:
            c.fresh_sparse(img, size)

        def check(tool: str, gate: bool, img: Path = img, src: Path = src, checks: dict[str, Any] = checks,
                  expected: dict[str, c.Manifest] = expected) -> Any:
            def run_check() -> None:
                if not expected:
                    expected["tree"] = c.host_manifest(src)
                if gate:
                    f = c.verify_image(img, f"{tool} ({src.name})")
                else:
                    f = c.fsck(img)
                    print(f"  {tool} result: e2fsck -fn exit {f.returncode}, {f.inodes_used} inodes in use",
                          file=sys.stderr)
                # The root directory: mke2fs -d and pyext4 both give it the source's mode and owner.
                diff = c.report_diff(f"{tool} ({src.name})", expected["tree"], c.image_manifest(img))
                checks[tool] = {"fsck": f.returncode, "inodes_used": f.inodes_used, "blocks_used": f.blocks_used,
                                "tree_diff": diff}
            return run_check

        contenders = []
        if not args.no_reference:
            contenders.append(c.Contender(REF, lambda src=src, img=img, size_arg=size_arg: c.run(
                [mke2fs, "-t", "ext4", "-q", "-F", "-d", src, img, size_arg]).wall, setup, check=check(REF, False)))
        contenders.append(c.Contender(CLI, lambda src=src, img=img, size_arg=size_arg: c.run(
            [pyext4, "mkfs", "-q", "-F", "-d", src, img, size_arg]).wall, setup, check=check(CLI, True)))
        print(f"\n{name}:", file=sys.stderr)
        samples = c.alternate(contenders, args.runs, slow_seconds=60.0, slow_runs=min(args.runs, 2))
        c.drop_file(img)
        ref = c.med_s(samples[REF]) if REF in samples else float("nan")
        for cname, v in samples.items():
            r = c.ratio(c.med_s(v), ref)
            target = f"<= {TARGETS[name]}x {c.verdict(r, TARGETS[name])}" if cname != REF else "-"
            rows.append([label, f"{stats['entries']:,}", c.fmt_bytes(stats["bytes"]), c.fmt_bytes(size), cname,
                         c.fmt_s(c.med_s(v)), c.fmt_ratio(r), target, len(v)])
        results["trees"][name] = {"stats": stats, "size": size, "samples": c.samples_json(samples),
                                  "checks": checks}
    c.section("Wall time (medians; ratio = contender / mke2fs -d)")
    print(c.markdown_table(["tree", "entries", "data", "image", "contender", "median", "ratio", "target", "runs"],
                           rows))
    if not args.no_save:
        print(f"\nsaved {c.save_results('populate', results)}")


if __name__ == "__main__":
    main()
