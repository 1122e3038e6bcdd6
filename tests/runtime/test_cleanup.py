"""Clean-up is total: whatever way `intercept run` ends (exit, error, Ctrl-C, SIGTERM), nothing it
made is left: no namespace, interface, rule, process, mount point or temporary file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from intercept_proxy import netns

pytestmark = pytest.mark.netns

LAB = "hosts: [{name: pypi.org}]\n"
FAILING_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: failing, labels: {intercept-proxy/enabled: "true"}}
spec:
  securityContext: {runAsUser: 12345}
  initContainers: [{name: broken, image: busybox:1.36, command: [sh, -c, "exit 3"]}]
  containers: [{name: app, image: busybox:1.36, command: ["true"]}]
"""


def snapshot() -> dict[str, set[str]]:
    def lines(argv: list[str]) -> set[str]:
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        return {line for line in out.splitlines() if line.startswith("-A")}

    processes = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(k in cmdline for k in ("agent run", "_bin/envoy", "lab.server", "sleep 600")):
            processes.add(cmdline)
    return {
        "netns": set(netns.namespaces()),
        "links": set(netns.links()),
        "iptables": lines(["iptables-save"]) | lines(["ip6tables-save"]),
        "processes": processes,
        "tmp": {p.name for p in Path("/tmp").glob("intercept-*")},
        # Records, not the directories holding them (made on first use, kept like /run/netns).
        "run": {
            str(p)
            for p in Path("/run/intercept-proxy").rglob("*")
            if p.is_file() and not p.name.startswith(".")
        },
        "etc": {p.name for p in Path("/etc/netns").glob("*")}
        if Path("/etc/netns").exists()
        else set(),
        "mountpoints": {p for p in ("/var/run/intercept", "/etc/intercept") if Path(p).exists()},
        "forwarding": {Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()},
    }


def intercept_run(tmp_path, *args: str) -> subprocess.Popen[str]:
    (tmp_path / "lab.yaml").write_text(LAB)
    return subprocess.Popen(
        [sys.executable, "-m", "intercept_proxy", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


def start_sleeping(workdir: Path, timeout: float = 60) -> subprocess.Popen[str]:
    """`intercept run` of a workload that sleeps, once the workload runs."""
    marker = workdir / "running"
    process = intercept_run(
        workdir, "--lab", "lab.yaml", "--user", "12345", "--",
        "sh", "-c", f"touch {marker}; sleep 600",
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the workload never started"
        time.sleep(0.1)
    return process


@pytest.fixture
def workdir():
    # Not pytest's tmp_path: its parents are root's alone, and the workload (UID 12345) writes
    # its marker here.
    path = Path(tempfile.mkdtemp(prefix="cleanup-test-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def assert_nothing_left(before: dict[str, set[str]]) -> None:
    after = snapshot()
    for key, values in after.items():
        assert values <= before[key], f"left behind ({key}): {sorted(values - before[key])}"


def test_normal_exit_status_and_nothing_left(workdir):
    before = snapshot()
    process = intercept_run(
        workdir, "--lab", "lab.yaml", "--user", "12345", "--", "sh", "-c", "exit 7"
    )
    process.wait(120)
    assert process.returncode == 7, process.stderr.read() if process.stderr else ""
    assert_nothing_left(before)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_running(workdir, sig):
    before = snapshot()
    process = start_sleeping(workdir)
    os.kill(process.pid, sig)
    process.wait(60)
    assert process.returncode != 0
    assert_nothing_left(before)


def test_error_half_way(workdir):
    before = snapshot()
    (workdir / "pod.yaml").write_text(FAILING_POD)
    process = intercept_run(workdir, "--lab", "lab.yaml", "--pod", "pod.yaml")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "init container 'broken' exited 3" in err
    assert_nothing_left(before)


def test_host_uplink_leaves_the_host_as_it_was(workdir):
    """The real-internet uplink changes the host (veth, NAT, forwarding): all of it reverts.
    The workload sends nothing."""
    before = snapshot()
    process = intercept_run(
        workdir, "--user", "12345", "--", "sh", "-c", "ip -br addr | grep -c UP"
    )
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out.strip() == "1"  # the uplink was there
    assert_nothing_left(before)


def test_a_killed_runtime_is_cleaned_up_by_the_next(workdir):
    """SIGKILL gives no chance to clean up: the sandbox's processes die with the runtime, and
    `intercept cleanup` (which every `intercept run` starts with) removes the rest."""
    before = snapshot()
    process = start_sleeping(workdir)
    process.kill()
    process.wait(30)
    cleanup = subprocess.run(
        [sys.executable, "-m", "intercept_proxy", "cleanup"], capture_output=True, text=True
    )
    assert cleanup.returncode == 0, cleanup.stderr
    assert "removed" in cleanup.stdout
    assert_nothing_left(before)
