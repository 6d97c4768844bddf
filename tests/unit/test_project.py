"""Project-wide habits: layering, module banners, lean imports on the CLI paths."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted([*ROOT.joinpath("pyext4").glob("*.py"), *ROOT.joinpath("banger_disk").glob("*.py")])


def test_layers_contract() -> None:
    pytest.importorskip("importlinter")
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken" in proc.stdout and "0 broken" in proc.stdout


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_module_opens_with_a_one_line_purpose(path: Path) -> None:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc, f"{path} has no module docstring"
    first = doc.splitlines()[0]
    assert first.strip() and len(first) <= 120


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


def test_cli_and_mkfs_paths_do_not_import_construct() -> None:
    # construct costs ~50 ms to import: only layout.py (documentation, tests) may use it.
    modules = _imported_after("import pyext4.cli, pyext4.mkfs, pyext4.reader, pyext4.writer, pyext4.populate")
    assert "construct" not in modules
    assert "crc32c" not in modules  # only its C extension, loaded directly


def test_help_does_not_load_the_engines() -> None:
    modules = _imported_after("import pyext4.cli")
    assert "pyext4.reader" not in modules and "pyext4.writer" not in modules and "pyext4.populate" not in modules


def test_cli_paths_leave_out_stdlib_modules_they_do_not_need() -> None:
    # Each costs 1-3 ms of every CLI start (logging with traceback, secrets with hashlib/random,
    # ipaddress): imported where used instead.
    before = _imported_after("pass")
    modules = _imported_after(
        "import banger_disk.cli, banger_disk.disks, pyext4.cli, pyext4.mkfs, pyext4.reader, pyext4.writer, "
        "pyext4.populate"
    ) - before
    assert not modules & {"logging", "secrets", "ipaddress"}


def test_mkfs_command_path_defines_no_dataclasses() -> None:
    # The mkfs command's modules use plain classes: importing dataclasses and creating each one
    # costs start-up time (the reader and writer, not on this path, may use them).
    modules = _imported_after("import pyext4.cli, pyext4.mkfs") - _imported_after("import click")
    assert "dataclasses" not in modules
