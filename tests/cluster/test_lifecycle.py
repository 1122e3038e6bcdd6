"""`scripts/cluster up` and `down` end to end: the printed assignments work, and `down` leaves
nothing of the cluster (namespaces, interfaces, rules, processes, files), also after the
supervisor was SIGKILLed and after an `up` killed half-way."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from intercept_proxy.cluster.cluster import Cluster, unique_name
from intercept_proxy.cluster.layout import POD_SUBNETS
from tests.cluster.harness import LAB_SPEC, MEASUREMENTS, alive, footprint

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "cluster"
LAB = "hosts: [{name: pypi.org}]\n"
# An in-memory emptyDir is a tmpfs mount on this machine while the pod runs.
SLEEPER = """\
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  securityContext: {runAsUser: 12345}
  containers:
    - name: s
      image: busybox:1.36
      command: [sleep, "600"]
      volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes: [{name: scratch, emptyDir: {medium: Memory, sizeLimit: 1Mi}}]
"""


def shell(assignments: str, script: str) -> subprocess.CompletedProcess[str]:
    """`script` in a shell that evaluated `assignments`, with no kubectl of its own."""
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        ["bash", "-c", f'eval "$1"\n{script}', "bash", assignments],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def cluster_down(name: str) -> subprocess.CompletedProcess[str]:
    """`scripts/cluster down --name NAME`, as a person would run it."""
    return subprocess.run(
        [str(SCRIPT), "down", "--name", name], capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip


def assert_gone(cluster: Cluster, pids: set[str]) -> None:
    left = {k: v for k, v in footprint(cluster).items() if v}
    assert not left, f"left behind: {left}"
    assert not alive(pids), f"processes left: {alive(pids)}"


def running_sleeper(cluster: Cluster) -> set[str]:
    """A pod that waits, once Ready; the cluster's processes and the pod's, by pid."""
    cluster.kubectl("apply", "-f", "-", input=SLEEPER)
    cluster.kubectl("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=90s")
    used = footprint(cluster)
    assert used["mounts"], "the pod's in-memory emptyDir"
    assert len(used["processes"]) > 6  # engines, node agent, lab server, the pod's processes
    return used["processes"]


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(LAB)
    return path


def test_up_prints_assignments_that_work_and_down_leaves_nothing(spec_file):
    name = unique_name("s")
    cluster = Cluster(name)
    try:
        start = time.monotonic()
        up = subprocess.run(
            [str(SCRIPT), "up", "--name", name, "--lab", str(spec_file)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        MEASUREMENTS["scripts/cluster up (wall clock), s"] = round(time.monotonic() - start, 2)
        assert up.returncode == 0, up.stderr
        assert f"cluster {name}: ready in" in up.stderr
        lines = up.stdout.splitlines()
        assert len(lines) == 3, up.stdout  # assignments only
        assert lines[0] == f"KUBECONFIG={cluster.kubeconfig}"
        assert lines[1].startswith(f"PATH={cluster.tools.bin}:")  # $INTERCEPT_TOOLS honoured
        assert lines[2] == "export KUBECONFIG PATH"

        used = shell(up.stdout, "kubectl get nodes -o name; command -v kubectl helm")
        assert used.returncode == 0, used.stderr
        assert used.stdout.splitlines() == [
            f"node/{name}-node",
            str(cluster.tools.binary("kubectl")),
            str(cluster.tools.binary("helm")),
        ]
        ready = shell(up.stdout, "kubectl get node -o jsonpath='{.items[0].status.conditions}'")
        assert '"type":"Ready"' in ready.stdout and '"status":"True","type":"Ready"' in ready.stdout

        pids = running_sleeper(cluster)
        names = footprint(cluster)["netns"]
        assert f"{cluster.prefix}l-lab" in names  # the lab, and the pod's namespace
        assert any(n.startswith(cluster.prefix + "p") for n in names), names
        start = time.monotonic()
        down = cluster_down(name)
        MEASUREMENTS["scripts/cluster down (a pod running), s"] = round(time.monotonic() - start, 2)
        assert down.returncode == 0, down.stderr
        assert down.stdout == ""
        assert "removed leftovers" not in down.stderr  # the supervisor stopped everything itself
        assert_gone(cluster, pids)
    finally:
        cluster.down()


def test_down_cleans_up_after_the_supervisor_was_killed():
    cluster = Cluster(unique_name("k"), LAB_SPEC)
    try:
        cluster.up()
        pids = running_sleeper(cluster)
        supervisor = int((cluster.state_dir / "supervisor.pid").read_text())
        os.kill(supervisor, signal.SIGKILL)
        time.sleep(1)
        assert footprint(cluster)["netns"], "the pods' and lab's namespaces outlive the supervisor"
        down = cluster_down(cluster.name)
        assert down.returncode == 0, down.stderr
        assert "removed leftovers" in down.stderr
        assert_gone(cluster, pids)
    finally:
        cluster.down()


def test_down_cleans_up_after_up_was_killed_half_way(spec_file):
    name = unique_name("h")
    cluster = Cluster(name)
    up = subprocess.Popen(
        [str(SCRIPT), "up", "--name", name, "--lab", str(spec_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        apiserver = cluster.state_dir / "logs" / "kube-apiserver.log"
        deadline = time.monotonic() + 60
        while not apiserver.exists():
            assert up.poll() is None, up.communicate()
            assert time.monotonic() < deadline, "the API server never started"
            time.sleep(0.1)
        time.sleep(2)  # the lab, etcd and the API server are up, Kyverno is on its way
        pids = footprint(cluster)["processes"]
        supervisor = int((cluster.state_dir / "supervisor.pid").read_text())
        up.kill()
        os.kill(supervisor, signal.SIGKILL)
        up.wait()
        down = cluster_down(name)
        assert down.returncode == 0, down.stderr
        assert_gone(cluster, pids)
    finally:
        if up.poll() is None:
            up.kill()
        cluster.down()


def test_without_a_lab_the_node_uses_the_host_uplink_and_down_removes_it():
    """No lab: the node's pod network reaches out through the host (veth, NAT and forwarding
    rules). The pod sends nothing; after a SIGKILL of the supervisor, `down` removes the rules
    and restores forwarding."""
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    cluster = Cluster(unique_name("u"))
    try:
        cluster.up()
        pids = running_sleeper(cluster)
        pod = cluster.client.get("/api/v1/namespaces/default/pods/sleeper")
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(POD_SUBNETS[0])
        used = footprint(cluster)
        assert used["iptables"], "the node's host uplink has rules carrying its name"
        assert used["links"], "and a veth on the host"
        os.kill(int((cluster.state_dir / "supervisor.pid").read_text()), signal.SIGKILL)
        down = cluster_down(cluster.name)
        assert down.returncode == 0, down.stderr
        assert "host uplink" in down.stderr
        assert_gone(cluster, pids)
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forwarding
    finally:
        cluster.down()
