"""bench/mkfs: `pyext4 mkfs` and in-process `pyext4.mkfs()` against `mkfs.ext4 -q -F` (issue 2, item 5).

Every run of every contender starts from the same state of the target: a
fresh, just-truncated sparse file of the final size ("fresh"), or, reported
separately, a file that already holds an image made by mkfs.ext4 ("reused":
mke2fs discards the device, pyext4 punches holes).  Runs alternate between
the contenders; medians and ratios are reported.  Each pyext4 contender's image
is checked once, untimed, with `e2fsck -fn` (exit 0 or the benchmark stops).

    python bench/mkfs.py [--runs 9] [--sizes 8G,1T] [--dir /tmp/pyext4-bench]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import common as c

DEV_SUFFIX = " (dev interpreter)"
DEV_CLI = "pyext4 mkfs (CLI, dev interpreter)"

TARGETS = {
    # (figure, target ratio or value, description)
    "inproc_8G": 0.5,
    "inproc_1T": 1.0,
    "cli_1T": 1.5,
    "help_s": 0.100,
    "rss_mib": 64,
}


def bench_size(size_text: str, size: int, work: Path, runs: int, *, reused: bool) -> dict[str, Any]:
    from pyext4.mkfs import mkfs  # the module, not pyext4.mkfs (that name is the function)

    mke2fs = c.e2fs_tool("mkfs.ext4")
    pyext4 = c.console_script("pyext4")
    img = work / f"mkfs-{size_text}.img"
    # The same CLI from the development interpreter (editable install, sandbox .pth files), once:
    # 1T into a fresh file, when the CLI row above is the venv's.
    dev_row = c.cli_env() == "venv" and size_text.upper() == "1T" and not reused

    def setup() -> None:
        c.fresh_sparse(img, size)
        if reused:
            c.run([mke2fs, "-q", "-F", img, size_text])

    def tool(argv: list[Any]) -> Any:
        def measure() -> c.Sample:
            return c.Sample(c.run(argv).wall)
        return measure

    def inproc(sync: bool) -> Any:
        def measure() -> float:
            seconds, _ = c.timed(lambda: mkfs(str(img), size_text, sync=sync))
            return seconds
        return measure

    def check(name: str) -> Any:
        # Untimed, once per contender: never time a tool whose image e2fsck rejects.
        return lambda: c.verify_image(img, f"{name}, {size_text}{', reused' if reused else ''}")

    contenders = [
        c.Contender("mkfs.ext4", tool([mke2fs, "-q", "-F", img, size_text]), setup),
        c.Contender("pyext4 mkfs (CLI)", tool([pyext4, "mkfs", "-q", "-F", img, size_text]), setup,
                    check=check("pyext4 mkfs (CLI)")),
        *([c.Contender(DEV_CLI, tool([c.console_script("pyext4", "dev"), "mkfs", "-q", "-F", img, size_text]),
                       setup, check=check(DEV_CLI))] if dev_row else []),
        c.Contender("pyext4.mkfs() in-process", inproc(False), setup, check=check("pyext4.mkfs()")),
        c.Contender("pyext4.mkfs(sync=True) in-process", inproc(True), setup, check=check("pyext4.mkfs(sync=True)")),
    ]
    samples = c.alternate(contenders, runs)
    c.drop_file(img)
    return {"size": size_text, "reused": reused, "samples": samples}


def bench_rss(size_text: str, size: int, where: Path, runs: int) -> dict[str, Any]:
    """Peak RSS (and wall) of both tools on ``size`` in ``where`` (fresh sparse file each run)."""
    mke2fs = c.e2fs_tool("mkfs.ext4")
    pyext4 = c.console_script("pyext4")
    img = where / f"rss-{size_text}.img"

    def setup() -> None:
        c.fresh_sparse(img, size)

    def tool(argv: list[Any]) -> Any:
        def measure() -> c.Sample:
            r = c.run(argv, rss=True)
            return c.Sample(r.wall, r.maxrss_kib)
        return measure

    samples = c.alternate([
        c.Contender("mkfs.ext4", tool([mke2fs, "-q", "-F", img, size_text]), setup),
        c.Contender("pyext4 mkfs (CLI)", tool([pyext4, "mkfs", "-q", "-F", img, size_text]), setup,
                    check=lambda: c.verify_image(img, f"pyext4 mkfs (CLI), {size_text} on {c.fs_type(where)}")),
    ], runs, warmup=0)
    c.drop_file(img)
    return {"size": size_text, "where": str(where), "fs": c.fs_type(where), "samples": samples}


def bench_help(runs: int) -> dict[str, c.Sample | list[c.Sample]]:
    """Start-up of the CLIs' interpreter (and, when that is the CLI venv's, of the development one too)."""

    def rows(env: str, suffix: str) -> list[c.Contender]:
        python, pyext4 = c.cli_python(env), c.console_script("pyext4", env)
        return [
            c.Contender(f"python -c pass{suffix}", lambda: c.Sample(c.run([python, "-c", "pass"]).wall)),
            c.Contender(f"python -c 'import pyext4'{suffix}",
                        lambda: c.Sample(c.run([python, "-c", "import pyext4"]).wall)),
            c.Contender(f"pyext4 --help{suffix}", lambda: c.Sample(c.run([pyext4, "--help"]).wall)),
        ]

    contenders = rows(c.cli_env(), "")
    if c.cli_env() == "venv":
        contenders += rows("dev", DEV_SUFFIX)
    samples = c.alternate(contenders, runs, progress=False)
    return samples  # type: ignore[return-value]


def main() -> None:
    parser = c.base_parser(__doc__.splitlines()[0], runs=9)
    parser.add_argument("--sizes", default="8G,1T", help="comma-separated sizes (default 8G,1T)")
    parser.add_argument("--no-reused", action="store_true", help="skip the 'target holds an image' case")
    parser.add_argument("--no-16t", action="store_true", help="skip the 16T RSS run (needs a tmpfs)")
    args = parser.parse_args()
    from pyext4.mkfs import parse_size

    work = args.dir
    work.mkdir(parents=True, exist_ok=True)
    info = c.start(args)
    print(f"# bench/mkfs\n\n{c.machine_line(info)}\n\nwork dir: {work} ({c.fs_type(work)})")
    results: dict[str, Any] = {"machine": info, "work_dir": str(work), "work_fs": c.fs_type(work), "cases": []}

    rows = []
    ratio_rows = []
    cases = [(s, False) for s in args.sizes.split(",")]
    if not args.no_reused:
        cases += [(s, True) for s in args.sizes.split(",")]
    for size_text, reused in cases:
        state = "holds an image" if reused else "fresh sparse"
        print(f"\n{size_text}, target {state}:", file=sys.stderr)
        res = bench_size(size_text, parse_size(size_text), work, args.runs, reused=reused)
        s = res["samples"]
        ref = c.med_s(s["mkfs.ext4"])
        for name, v in s.items():
            rows.append([size_text, state, name, c.fmt_s(c.med_s(v)), c.fmt_ratio(c.ratio(c.med_s(v), ref)),
                         len(v)])
        cli = c.ratio(c.med_s(s["pyext4 mkfs (CLI)"]), ref)
        inp = c.ratio(c.med_s(s["pyext4.mkfs() in-process"]), ref)
        target_inp = TARGETS["inproc_8G"] if size_text.upper() == "8G" else TARGETS["inproc_1T"]
        ratio_rows.append([size_text, state, c.fmt_ratio(inp),
                           f"<= {target_inp}x {c.verdict(inp, target_inp)}" if not reused else "-",
                           c.fmt_ratio(cli),
                           f"<= 1.5x {c.verdict(cli, 1.5)}" if size_text.upper() == "1T" and not reused else "-"])
        results["cases"].append({"size": size_text, "reused": reused, "samples": c.samples_json(s)})

    c.section("Wall time (medians; ratio = contender / mkfs.ext4 process wall)")
    print(c.markdown_table(["size", "target file", "contender", "median", "ratio", "runs"], rows))
    c.section("Against the targets")
    print(c.markdown_table(["size", "target file", "in-process ratio", "target", "CLI ratio", "target"],
                           ratio_rows))

    # Peak RSS at 1T (work dir) and 16T (tmpfs only: the host's ext4 caps files at 16 TiB - 1 block).
    rss_rows = []
    print("\npeak RSS 1T:", file=sys.stderr)
    r1 = bench_rss("1T", parse_size("1T"), work, 3)
    rss_cases = [r1]
    if not args.no_16t:
        tdir = c.tmpfs_dir("mkfs", work)
        if tdir is None:
            print("bench: no tmpfs available (not root, no /dev/shm): 16T RSS skipped", file=sys.stderr)
        else:
            print(f"\npeak RSS 16T on {tdir}:", file=sys.stderr)
            try:
                rss_cases.append(bench_rss("16T", parse_size("16T"), tdir, 3))
            except SystemExit as exc:
                print(f"bench: 16T run failed: {exc}", file=sys.stderr)
    for rc in rss_cases:
        for name, v in rc["samples"].items():
            rss_rows.append([rc["size"], rc["fs"], name, c.fmt_s(c.med_s(v)), c.fmt_rss(c.max_rss(v)),
                             f"<= 64 MiB {c.verdict((c.max_rss(v) or 0) / 1024, 64)}" if "pyext4" in name else "-"])
        results.setdefault("rss", []).append({"size": rc["size"], "fs": rc["fs"], "samples": c.samples_json(rc["samples"])})
    c.section("Peak RSS (max over runs; GNU time's %M, whose wall includes its ~1 ms)")
    print(c.markdown_table(["size", "on", "tool", "median wall", "peak RSS", "target"], rss_rows))

    print("\n--help:", file=sys.stderr)
    h = bench_help(max(args.runs, 15))
    help_s = c.med_s(h["pyext4 --help"])  # type: ignore[arg-type]
    primary = "CLI venv" if c.cli_env() == "venv" else "dev interpreter"
    help_rows = [[name.removesuffix(DEV_SUFFIX), "dev interpreter" if name.endswith(DEV_SUFFIX) else primary,
                  c.fmt_s(c.med_s(v)),  # type: ignore[arg-type]
                  f"< 100 ms {c.verdict(help_s, TARGETS['help_s'])}" if name == "pyext4 --help" else "-"]
                 for name, v in h.items()]
    c.section("Start-up (medians)")
    print(c.markdown_table(["command", "interpreter", "median wall", "target"], help_rows))
    results["startup"] = c.samples_json(h)  # type: ignore[arg-type]

    if not args.no_save:
        print(f"\nsaved {c.save_results('mkfs', results)}")


if __name__ == "__main__":
    os.environ.pop("SOURCE_DATE_EPOCH", None)
    try:
        main()
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench: {exc}") from None
