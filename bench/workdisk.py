"""bench/workdisk: a seed image -> 8 GiB work disk, banger_disk against the e2fsprogs pipeline
(issue 6, item 10); and `banger-disk patch-rootfs` on a root filesystem image.

The seed: `mke2fs -d` of a dotfiles tree of ~40 entries owned by uid 1000 (modes 0600/0700/0755),
512 MiB.  The pipeline the daemon used to run, every entry owned 0:0 with its mode kept:

    truncate -s 8G work.img
    mkfs.ext4 -q -F -E root_owner=0:0 work.img
    debugfs -R "rdump / TMP" seed.img
    debugfs -w ...  mkdir/write/symlink + sif uid 0, gid 0, mode per entry
                    batched: one process with the whole script;
                    per entry: one process per entry (as the original daemon did)

against `ensure_work_disk(vm, image)` in-process and `banger-disk work-disk OUT --size 8G --seed SEED`.

patch-rootfs: the synthetic Debian-like root filesystem of bench/trees.py (/etc of 300+ entries,
~7,000 entries, made by mke2fs -d), copied afresh (untimed, fsynced) before every run;
`banger-disk patch-rootfs IMAGE --name N --guest-ip IP --bridge-ip IP --dns IP` (every installed
capability applied), in-process `patch_root_overlay`, and for context the same files written by
debugfs (`debugfs -R "cat /etc/fstab"` then one `debugfs -w -f SCRIPT`).

Every banger_disk result is checked once, untimed: `e2fsck -fn` exits 0 and the tree read back is
the expected one (work disk: the seed's tree, owners 0:0, modes kept, root 0755; patched rootfs:
the original tree plus exactly the written files, with their content).

Targets: in-process ensure_work_disk <= 0.5x the batched pipeline; `banger-disk work-disk` CLI
<= 0.5x the per-entry pipeline; `banger-disk patch-rootfs` < 250 ms.

    python bench/workdisk.py [--runs 7] [--no-reference] [--no-patch]
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common as c
import trees

SIZE = "8G"


def make_seed(work: Path) -> Path:
    """The seed image: a dotfiles tree (uid 1000 when root), 512 MiB, made by mke2fs -d (built once)."""
    img = work / "workdisk-seed.img"
    done = work / "workdisk-seed.done"
    if img.exists() and done.exists():
        return img
    src = c.fresh_dir(work / "tree-dotfiles")
    rng = random.Random(40)
    layout = {
        ".bashrc": 0o644, ".profile": 0o644, ".bash_logout": 0o644, ".inputrc": 0o644, ".vimrc": 0o644,
        ".gitconfig": 0o644, ".tmux.conf": 0o644, ".ssh/config": 0o600, ".ssh/known_hosts": 0o600,
        ".ssh/id_ed25519": 0o600, ".ssh/id_ed25519.pub": 0o644, ".ssh/authorized_keys": 0o600,
        ".config/git/ignore": 0o644, ".config/htop/htoprc": 0o644, ".config/nvim/init.lua": 0o644,
        ".local/bin/dev-setup": 0o755, ".local/bin/sync-notes": 0o755, ".local/bin/backup": 0o755,
        ".local/share/notes/todo.md": 0o644, ".local/share/notes/ideas.md": 0o644,
        "work/README.md": 0o644, "work/Makefile": 0o644, "work/src/main.c": 0o644, "work/src/util.c": 0o644,
        "work/src/util.h": 0o644, "work/scripts/run.sh": 0o755, ".cache/motd.legal-displayed": 0o644,
    }
    for rel, mode in layout.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(0, 6000)))
        os.chmod(p, mode)
    os.symlink("work/scripts/run.sh", src / "run")
    for d in (".ssh", ".local", ".local/bin", ".cache"):
        os.chmod(src / d, 0o700)
    if os.geteuid() == 0:
        for dirpath, dirnames, filenames in os.walk(src):
            for name in [*dirnames, *filenames, ""]:
                os.lchown(os.path.join(dirpath, name), 1000, 1000)
    c.fresh_sparse(img, 512 * c.MiB)
    c.run([c.e2fs_tool("mke2fs"), "-t", "ext4", "-q", "-F", "-d", src, img])
    done.write_text("ok\n")
    return img


def entry_commands(tmp: Path) -> list[list[str]]:
    """The debugfs requests per entry that recreate the rdump'd tree owned 0:0, modes kept."""
    out: list[list[str]] = []
    for dirpath, dirnames, filenames in os.walk(tmp):
        dirnames.sort()
        rel = os.path.relpath(dirpath, tmp)
        base = "" if rel == "." else "/" + rel
        for name in sorted(dirnames) + sorted(filenames):
            host = os.path.join(dirpath, name)
            st = os.lstat(host)
            p = f"{base}/{name}"
            if name == "lost+found" and not base:
                continue  # mkfs made one already
            if stat.S_ISDIR(st.st_mode):
                first = f"mkdir {p}"
            elif stat.S_ISLNK(st.st_mode):
                first = f"symlink {p} {os.readlink(host)}"
            else:
                first = f"write {host} {p}"
            cmds = [first, f"sif {p} uid 0", f"sif {p} gid 0"]
            if not stat.S_ISLNK(st.st_mode):
                cmds.append(f"sif {p} mode 0{st.st_mode:o}")
            out.append(cmds)
    return out


def pipeline(seed: Path, out: Path, *, batched: bool) -> None:
    """The e2fsprogs pipeline, as the daemon ran it (every step a process)."""
    debugfs = c.e2fs_tool("debugfs")
    c.run(["truncate", "-s", SIZE, out])
    c.run([c.e2fs_tool("mkfs.ext4"), "-q", "-F", "-E", "root_owner=0:0", out])
    tmp = Path(tempfile.mkdtemp(prefix="rdump-", dir=out.parent))
    try:
        c.run([debugfs, "-R", f"rdump / {tmp}", seed])
        entries = entry_commands(tmp)
        script = out.parent / (out.name + ".debugfs")
        if batched:
            script.write_text("\n".join(cmd for cmds in entries for cmd in cmds) + "\n")
            c.run([debugfs, "-w", "-f", script, out])
        else:
            for cmds in entries:
                script.write_text("\n".join(cmds) + "\n")
                c.run([debugfs, "-w", "-f", script, out])
        script.unlink()
    finally:
        shutil.rmtree(tmp)


BATCHED = "e2fsprogs pipeline, batched"
PER_ENTRY = "e2fsprogs pipeline, per entry"
CLI = "banger-disk work-disk (CLI)"
INPROC = "ensure_work_disk() in-process"

PATCH_CLI = "banger-disk patch-rootfs (CLI)"
PATCH_INPROC = "patch_root_overlay() in-process"
PATCH_REF = "debugfs: cat fstab + -w -f SCRIPT"
VM_NAME, GUEST_IP, BRIDGE_IP, DNS = "bench-vm", "172.16.0.2", "172.16.0.1", "1.1.1.1"


def bench_work_disk(args: Any, work: Path, results: dict[str, Any]) -> list[list[Any]]:
    seed = make_seed(work)
    out = work / "workdisk-out.img"
    probe = Path(tempfile.mkdtemp(prefix="rdump-", dir=work))
    c.run([c.e2fs_tool("debugfs"), "-R", f"rdump / {probe}", seed])
    n_entries = len(entry_commands(probe))
    shutil.rmtree(probe)
    # What every contender must produce: the seed's tree, owners 0:0, modes kept; the root 0755 root:root.
    expected = c.image_manifest(seed, owner=(0, 0))
    expected["/"] = ("drwxr-xr-x", 0, 0, None, None)
    checks: dict[str, Any] = {}
    results["work_disk_checks"] = checks

    def check(name: str, gate: bool) -> Any:
        def run_check() -> None:
            if gate:
                f = c.verify_image(out, name)
            else:
                f = c.fsck(out)
                print(f"  {name} result: e2fsck -fn exit {f.returncode}, {f.inodes_used} inodes in use",
                      file=sys.stderr)
            diff = c.report_diff(name, expected, c.image_manifest(out))
            size_ok = out.stat().st_size == c.GiB * 8
            if not size_ok:
                print(f"  WARNING {name}: {out} is {out.stat().st_size} bytes, not 8 GiB", file=sys.stderr)
            checks[name] = {"fsck": f.returncode, "inodes_used": f.inodes_used, "blocks_used": f.blocks_used,
                            "tree_diff": diff, "size_ok": size_ok}
        return run_check

    def reset() -> None:
        c.drop_file(out)

    def inproc() -> float:
        from banger_disk import VM, Image, VMRuntime, VMSpec, ensure_work_disk

        vm = VM(id="bench", name="bench", spec=VMSpec(work_disk_size=8 * c.GiB),
                runtime=VMRuntime(work_disk_path=str(out)))
        seconds, prep = c.timed(lambda: ensure_work_disk(vm, Image(work_seed_path=str(seed))))
        if not (prep.created and prep.cloned_from_seed):
            raise SystemExit(f"bench: ensure_work_disk returned {prep}")
        return seconds

    cli = c.console_script("banger-disk")
    contenders = []
    if not args.no_reference:
        contenders += [
            c.Contender(BATCHED, lambda: c.timed(lambda: pipeline(seed, out, batched=True))[0], reset,
                        check=check(BATCHED, False)),
            c.Contender(PER_ENTRY, lambda: c.timed(lambda: pipeline(seed, out, batched=False))[0], reset,
                        check=check(PER_ENTRY, False)),
        ]
    contenders += [
        c.Contender(CLI, lambda: c.run([cli, "work-disk", out, "--size", SIZE, "--seed", seed]).wall, reset,
                    check=check(CLI, True)),
        c.Contender(INPROC, inproc, reset, check=check(INPROC, True)),
    ]
    print("\nwork disk:", file=sys.stderr)
    samples = c.alternate(contenders, args.runs)
    c.drop_file(out)
    results["work_disk"] = c.samples_json(samples)

    batched = c.med_s(samples[BATCHED]) if BATCHED in samples else float("nan")
    per_entry = c.med_s(samples[PER_ENTRY]) if PER_ENTRY in samples else float("nan")
    rows: list[list[Any]] = []
    for name, v in samples.items():
        m = c.med_s(v)
        rb, rp = c.ratio(m, batched), c.ratio(m, per_entry)
        if name == INPROC:
            target = f"<= 0.5x batched: {c.verdict(rb, 0.5)}"
        elif name == CLI:
            target = f"<= 0.5x per entry: {c.verdict(rp, 0.5)}"
        else:
            target = "-"
        rows.append([name, c.fmt_s(m), c.fmt_ratio(rb), c.fmt_ratio(rp), target, len(v)])
    c.section(f"Seed ({n_entries} entries, uid 1000, 512 MiB) -> {SIZE} work disk (medians)")
    print(c.markdown_table(["contender", "median", "vs batched", "vs per entry", "target", "runs"], rows))
    return rows


def bench_patch_rootfs(args: Any, work: Path, results: dict[str, Any]) -> list[list[Any]]:
    from banger_disk import VM, DaemonConfig, Image, VMRuntime, build_guest_config, patch_root_overlay

    pristine, _info = trees.mke2fs_image("rootfs", work)
    tree_dir, stats = trees.tree("rootfs", work)
    etc_entries = len(os.listdir(tree_dir / "etc"))
    img = work / "patch-rootfs.img"
    vm = VM(id=VM_NAME, name=VM_NAME, runtime=VMRuntime(guest_ip=GUEST_IP))
    config = DaemonConfig(default_dns=DNS, bridge_ip=BRIDGE_IP)
    before = c.image_manifest(pristine, content=False)
    fstab_text = (tree_dir / "etc" / "fstab").read_text()
    files = build_guest_config(vm, config).files(fstab_text)
    # The expected tree: the original plus the written files (root:root) and their missing parents.
    new_dirs: list[str] = []
    for f in files:
        parts = f.path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in before and d not in new_dirs:
                new_dirs.append(d)
    expected = dict(before)
    for d in new_dirs:
        expected[d] = ("drwxr-xr-x", 0, 0, None, None)
    for f in files:
        expected[f.path] = (stat.filemode(stat.S_IFREG | f.mode), 0, 0, len(f.data), None)
    checks: dict[str, Any] = {}
    results["patch_rootfs_checks"] = checks

    def setup() -> None:
        c.drop_file(img)
        c.run(["cp", "--sparse=always", pristine, img])
        c.fsync_file(img)  # the tools' own fsync must not pay for the copy

    def check(name: str, gate: bool) -> Any:
        def run_check() -> None:
            import pyext4

            if gate:
                fr = c.verify_image(img, name)
            else:
                fr = c.fsck(img)
                print(f"  {name} result: e2fsck -fn exit {fr.returncode}", file=sys.stderr)
            diff = c.report_diff(name, expected, c.image_manifest(img, content=False))
            with pyext4.Filesystem.open(str(img)) as fs:
                wrong = [f.path for f in files if fs.read_bytes(f.path) != f.data]
            if wrong:
                print(f"  WARNING {name}: wrong content in {wrong}", file=sys.stderr)
            checks[name] = {"fsck": fr.returncode, "tree_diff": diff, "wrong_content": wrong}
        return run_check

    cli = c.console_script("banger-disk")
    debugfs = c.e2fs_tool("debugfs")
    host_dir = c.fresh_dir(work / "patch-files")
    script = work / "patch-rootfs.debugfs"

    def reference() -> float:
        start = time.perf_counter()
        fstab = c.run([debugfs, "-R", "cat /etc/fstab", img], capture_stdout=True).stdout
        lines: list[str] = []
        for d in new_dirs:
            lines += [f"mkdir {d}", f"sif {d} mode 040755", f"sif {d} uid 0", f"sif {d} gid 0"]
        for i, f in enumerate(build_guest_config(vm, config).files(fstab)):
            host = host_dir / f"f{i}"
            host.write_bytes(f.data)
            if f.path in before:
                lines.append(f"rm {f.path}")
            lines += [f"write {host} {f.path}", f"sif {f.path} mode 0{stat.S_IFREG | f.mode:o}",
                      f"sif {f.path} uid 0", f"sif {f.path} gid 0"]
        script.write_text("\n".join(lines) + "\n")
        c.run([debugfs, "-w", "-f", script, img])
        return time.perf_counter() - start

    def inproc() -> float:
        return c.timed(lambda: patch_root_overlay(vm, Image(rootfs_path=str(img)), str(img), config))[0]

    contenders = []
    if not args.no_reference:
        contenders.append(c.Contender(PATCH_REF, reference, setup, check=check(PATCH_REF, False)))
    contenders += [
        c.Contender(PATCH_CLI, lambda: c.run([cli, "patch-rootfs", img, "--name", VM_NAME, "--guest-ip", GUEST_IP,
                                              "--bridge-ip", BRIDGE_IP, "--dns", DNS]).wall,
                    setup, check=check(PATCH_CLI, True)),
        c.Contender(PATCH_INPROC, inproc, setup, check=check(PATCH_INPROC, True)),
    ]
    print("\npatch-rootfs:", file=sys.stderr)
    samples = c.alternate(contenders, args.runs)
    c.drop_file(img)
    shutil.rmtree(host_dir)
    c.drop_file(script)
    results["patch_rootfs"] = c.samples_json(samples)
    results["patch_rootfs_image"] = {"entries": stats["entries"], "etc_entries": etc_entries,
                                     "size": pristine.stat().st_size, "files_written": [f.path for f in files],
                                     "dirs_created": new_dirs}
    ref = c.med_s(samples[PATCH_REF]) if PATCH_REF in samples else float("nan")
    rows: list[list[Any]] = []
    for name, v in samples.items():
        m = c.med_s(v)
        target = f"< 250 ms {c.verdict(m, 0.250)}" if name == PATCH_CLI else "-"
        rows.append([name, c.fmt_s(m), c.fmt_ratio(c.ratio(m, ref)), target, len(v)])
    c.section(f"patch-rootfs: {len(files)} files + {len(new_dirs)} directories into a "
              f"{c.fmt_bytes(pristine.stat().st_size)} root filesystem ({stats['entries']:,} entries, "
              f"/etc of {etc_entries}) (medians; ratio = contender / debugfs)")
    print(c.markdown_table(["contender", "median", "vs debugfs", "target", "runs"], rows))
    return rows


def main() -> None:
    parser = c.base_parser(__doc__.splitlines()[0], runs=7)
    parser.add_argument("--no-reference", action="store_true", help="skip the e2fsprogs side (no ratios)")
    parser.add_argument("--no-patch", action="store_true", help="skip the patch-rootfs benchmark")
    parser.add_argument("--no-work-disk", action="store_true", help="skip the work disk benchmark")
    args = parser.parse_args()
    work: Path = args.dir
    work.mkdir(parents=True, exist_ok=True)
    info = c.start(args)
    print(f"# bench/workdisk\n\n{c.machine_line(info)}\n\nwork dir: {work} ({c.fs_type(work)})")
    results: dict[str, Any] = {"machine": info}
    if not args.no_work_disk:
        bench_work_disk(args, work, results)
    if not args.no_patch:
        bench_patch_rootfs(args, work, results)
    if not args.no_save:
        print(f"\nsaved {c.save_results('workdisk', results)}")


if __name__ == "__main__":
    main()
