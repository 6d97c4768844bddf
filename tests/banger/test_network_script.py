"""The guest network bootstrap script: POSIX sh syntax, exactly the three changes, and a real run in a netns."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from banger_disk.guest import GuestNetwork, render_network_conf, render_network_script

SHELLS = [s for s in ("dash", "sh", "bash", "busybox") if shutil.which(s)]


def write_inputs(tmp_path: Path, conf_text: str | None = None) -> tuple[Path, Path, Path]:
    script = tmp_path / "banger-network"
    script.write_text(render_network_script())
    script.chmod(0o755)
    conf = tmp_path / "network.conf"
    net = GuestNetwork.from_strings("172.16.0.2", "172.16.0.1", "1.1.1.1")
    conf.write_text(conf_text if conf_text is not None else render_network_conf(net))
    sysnet = tmp_path / "sys-class-net"
    for name, kind in (("lo", "772"), ("eth0", "1"), ("eth1", "1")):
        (sysnet / name).mkdir(parents=True)
        (sysnet / name / "type").write_text(kind + "\n")
    return script, conf, sysnet


def fake_ip(tmp_path: Path, existing_addr: str = "") -> tuple[Path, Path]:
    """An `ip` that logs its arguments; `ip addr show` prints ``existing_addr``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "ip.log"
    ip = bindir / "ip"
    ip.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >>"{log}"\n'
        'if [ "$1 $2" = "addr show" ]; then\n'
        f"    printf '%s\\n' '2: eth0: <BROADCAST> mtu 1500' '{existing_addr}'\n"
        "fi\n"
    )
    ip.chmod(0o755)
    return bindir, log


def run_script(
    shell: str, script: Path, conf: Path, sysnet: Path, bindir: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "BANGER_NETWORK_CONF": str(conf),
        "BANGER_SYS_CLASS_NET": str(sysnet),
    }
    argv = [shell, "sh", str(script)] if shell == "busybox" else [shell, str(script)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("shell", SHELLS)
def test_syntax(shell: str, tmp_path: Path) -> None:
    script, _, _ = write_inputs(tmp_path)
    argv = [shell, "sh", "-n", str(script)] if shell == "busybox" else [shell, "-n", str(script)]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_posix_mode_of_bash(tmp_path: Path) -> None:
    if not shutil.which("bash"):
        pytest.skip("bash not installed")
    script, _, _ = write_inputs(tmp_path)
    result = subprocess.run(["bash", "--posix", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shell", [s for s in SHELLS if s != "busybox"])
def test_address_link_route_and_nothing_else(shell: str, tmp_path: Path) -> None:
    script, conf, sysnet = write_inputs(tmp_path)
    bindir, log = fake_ip(tmp_path)
    result = run_script(shell, script, conf, sysnet, bindir)
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "addr show dev eth0",
        "addr add 172.16.0.2/24 dev eth0",
        "link set dev eth0 up",
        "route replace default via 172.16.0.1 dev eth0",
    ]


def test_rerun_does_not_add_the_address_twice(tmp_path: Path) -> None:
    script, conf, sysnet = write_inputs(tmp_path)
    bindir, log = fake_ip(tmp_path, existing_addr="    inet 172.16.0.2/24 scope global eth0")
    result = run_script("sh", script, conf, sysnet, bindir)
    assert result.returncode == 0, result.stderr
    assert "addr add 172.16.0.2/24 dev eth0" not in log.read_text().splitlines()


def test_loopback_detected_by_type_not_name(tmp_path: Path) -> None:
    script, conf, sysnet = write_inputs(tmp_path)
    # "aaa" sorts first but is a loopback; "eth0" is the first real interface.
    (sysnet / "aaa").mkdir()
    (sysnet / "aaa" / "type").write_text("772\n")
    bindir, log = fake_ip(tmp_path)
    assert run_script("sh", script, conf, sysnet, bindir).returncode == 0
    assert log.read_text().splitlines()[1] == "addr add 172.16.0.2/24 dev eth0"


@pytest.mark.parametrize(
    ("conf_text", "message"),
    [
        (None, None),
        ("PREFIX=24\nGATEWAY=172.16.0.1\n", "GUEST_IP '' is not an IPv4 address"),
        ("GUEST_IP=172.16.0.2\nGATEWAY=$(reboot)\n", "GATEWAY '$(reboot)' is not an IPv4 address"),
        ("GUEST_IP=172.16.0.2\nGATEWAY=172.16.0.1\nPREFIX=x\n", "PREFIX 'x' is not a number"),
        ("GUEST_IP=172.16.0.2\nGATEWAY=172.16.0.1", None),  # no final newline: still read
    ],
)
def test_config_parsing(tmp_path: Path, conf_text: str | None, message: str | None) -> None:
    script, conf, sysnet = write_inputs(tmp_path, conf_text)
    bindir, log = fake_ip(tmp_path)
    result = run_script("sh", script, conf, sysnet, bindir)
    if message is None:
        assert result.returncode == 0, result.stderr
        assert "route replace default via 172.16.0.1 dev eth0" in log.read_text()
    else:
        assert result.returncode == 1
        assert message in result.stderr
        assert not log.exists()


def test_missing_conf_and_no_interface(tmp_path: Path) -> None:
    script, conf, sysnet = write_inputs(tmp_path)
    bindir, _ = fake_ip(tmp_path)
    conf.unlink()
    result = run_script("sh", script, conf, sysnet, bindir)
    assert result.returncode == 1 and "cannot read the network configuration" in result.stderr
    (tmp_path / "again").mkdir()
    script, conf, sysnet = write_inputs(tmp_path / "again")
    for name in ("eth0", "eth1"):
        shutil.rmtree(sysnet / name)
    result = run_script("sh", script, conf, sysnet, bindir)
    assert result.returncode == 1 and "no network interface other than loopback" in result.stderr


def test_real_network_namespace(tmp_path: Path) -> None:
    """Run the script for real in a fresh network namespace with one interface (root only)."""
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace and an interface needs root")
    if not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("unshare or ip (iproute2) not installed")
    script, conf, _ = write_inputs(tmp_path)
    inner = (
        "set -e\n"
        "ip link add eth0 type bridge 2>/dev/null || ip link add eth0 type dummy\n"
        f"BANGER_NETWORK_CONF={conf} sh {script}\n"
        f"BANGER_NETWORK_CONF={conf} sh {script}\n"  # a second run changes nothing
        "echo ADDR; ip -o -4 addr show\n"
        "echo ROUTE; ip route show\n"
        "echo LINK; ip -o link show\n"
    )
    result = subprocess.run(["unshare", "--net", "sh", "-c", inner], capture_output=True, text=True)
    if result.returncode != 0 and (
        "Operation not permitted" in result.stderr or "Unknown device type" in result.stderr
    ):
        pytest.skip(f"no network namespace with an interface here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    addr = out.split("ADDR\n")[1].split("ROUTE\n")[0]
    route = out.split("ROUTE\n")[1].split("LINK\n")[0]
    link = out.split("LINK\n")[1]
    assert [line.split()[1:4] for line in addr.splitlines()] == [["eth0", "inet", "172.16.0.2/24"]]
    assert "default via 172.16.0.1 dev eth0" in route
    assert len([line for line in route.splitlines() if line.startswith("default")]) == 1
    eth0 = next(line for line in link.splitlines() if " eth0" in line)
    lo = next(line for line in link.splitlines() if " lo:" in line)
    assert ",UP" in eth0
    assert ",UP" not in lo, "the loopback is not the script's business"
