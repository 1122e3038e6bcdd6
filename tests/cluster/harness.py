"""Helpers of the cluster tests: kubectl with the cluster's environment, waiting for pods."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from intercept_proxy.cluster.cluster import Cluster
from intercept_proxy.lab.addresses import LAB_RANGES

LAB_SPEC = {
    "hosts": [
        {"name": n}
        for n in ("pypi.org", "example.com", "api.anthropic.com", "exfil.attacker.example")
    ]
}
# Figures printed at the end of the session (pytest's terminal summary).
MEASUREMENTS: dict[str, Any] = {}
WORKLOAD_UID = 12345


CHART = Path(__file__).resolve().parents[2] / "charts" / "intercept-proxy"


# The chart's values that let the pods' Envoy reach the lab's hosts: non-public addresses.
LAB_UPSTREAMS = {"upstream": {"privateRanges": list(LAB_RANGES)}}


class Kube:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def kubectl(self, *args: str, input: str | None = None, check: bool = True):
        return self.cluster.kubectl(*args, input=input, check=check)

    def helm(
        self, *args: str, values: dict[str, Any] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """The real Helm, against this cluster (its own state under the cluster's)."""
        home = self.cluster.state_dir / "helm"
        env = {**os.environ, **self.cluster.env}
        env |= {f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
            yaml.safe_dump(values or {}, file)
            file.flush()
            given = ["-f", file.name] if values is not None else []
            result = subprocess.run(
                [str(self.cluster.tools.binary("helm")), *args, *given],
                capture_output=True, text=True, env=env, timeout=300, check=False,
            )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)}: {result.stderr.strip()}")
        return result

    def install(
        self, release: str, namespace: str, values: dict[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`helm install` of the chart, returning once Kyverno serves its policies. A failed
        install is uninstalled before the error is raised: its policies would refuse the pods of
        every later test."""
        result = self.helm(
            "install", release, str(CHART), "-n", namespace, "--create-namespace",
            values=values or {}, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            self.helm("uninstall", release, "-n", namespace, "--no-hooks", "--wait", check=False)
            raise AssertionError(f"helm install {release}: {result.stderr.strip()}")
        self.wait_policies(release)
        return result

    def policies(self, release: str) -> set[str]:
        """The names of the release's ClusterPolicies."""
        return set(
            self.kubectl(
                "get", "clusterpolicy", "-l", f"app.kubernetes.io/instance={release}",
                "-o", "jsonpath={.items[*].metadata.name}",
            ).stdout.split()
        )  # fmt: skip

    def wait_policies(self, release: str, timeout: float = 60.0) -> None:
        names = sorted(self.policies(release))
        assert names, f"release {release} has no ClusterPolicy"
        for name in names:
            self.kubectl(
                "wait", f"clusterpolicy/{name}", "--for=condition=Ready", f"--timeout={timeout}s"
            )

    def wait_object(
        self, namespace: str, kind: str, name: str, timeout: float = 60.0, gone: bool = False
    ) -> dict:
        """Until the object exists, or with `gone` no longer exists (something else makes and
        removes it: Kyverno's clones, a controller)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.kubectl("get", "-n", namespace, kind, name, "-o", "json", check=False)
            if (result.returncode == 0) != gone:
                return {} if gone else json.loads(result.stdout)
            time.sleep(0.3)
        happened = "still exists after" if gone else "never appeared in"
        raise AssertionError(f"{kind} {namespace}/{name} {happened} {timeout}s")

    def apply(self, namespace: str, *objects: dict[str, Any]) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))

    def get(self, namespace: str, kind: str, name: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout)

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get(namespace, "pod", name)

    def logs(self, namespace: str, pod: str, *args: str) -> str:
        return self.kubectl("logs", "-n", namespace, pod, *args).stdout

    def wait_pod(
        self, namespace: str, name: str, predicate: Any, what: str, timeout: float = 90.0
    ) -> dict[str, Any]:
        """Poll the pod until `predicate(pod)`; the pod's status in the failure otherwise."""
        deadline = time.monotonic() + timeout
        pod: dict[str, Any] = {}
        while time.monotonic() < deadline:
            result = self.kubectl("get", "-n", namespace, "pod", name, "-o", "json", check=False)
            if result.returncode == 0:
                pod = json.loads(result.stdout)
                if predicate(pod):
                    return pod
            time.sleep(0.2)
        raise AssertionError(
            f"pod {namespace}/{name} never {what} in {timeout}s; status:\n"
            + yaml.safe_dump(pod.get("status"))
        )

    def wait_phase(self, namespace: str, name: str, phase: str, timeout: float = 90.0) -> dict:
        return self.wait_pod(
            namespace,
            name,
            lambda p: p["status"].get("phase") == phase,
            f"reached {phase}",
            timeout,
        )

    def wait_ready(self, namespace: str, name: str, timeout: float = 90.0) -> dict:
        def ready(pod: dict[str, Any]) -> bool:
            return any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod["status"].get("conditions") or []
            )

        return self.wait_pod(namespace, name, ready, "became Ready", timeout)


def pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    """A one-container pod running `command` as the workload user."""
    metadata = spec.pop("metadata", {})
    container = {"name": "app", "image": "busybox:1.36", "command": command}
    container.update(spec.pop("container", {}))
    body = {
        "restartPolicy": "Never",
        "securityContext": {"runAsUser": WORKLOAD_UID},
        "containers": [container],
    }
    body.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **metadata},
        "spec": body,
    }


def deployment(name: str, template: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    """A Deployment of `replicas` copies of the pod `template`, selecting them by app=<name>."""
    labels = {**template["metadata"].get("labels", {}), "app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": labels}, "spec": template["spec"]},
        },
    }


def footprint(cluster: Cluster) -> dict[str, set[str]]:
    """What of the cluster exists on this machine, found by its names: namespaces, interfaces,
    host rules, processes (naming its state dir, or inside its namespaces), files."""
    import subprocess
    from pathlib import Path

    from intercept_proxy import netns
    from intercept_proxy.cluster.cleanup import processes_of

    prefix, state = cluster.prefix, str(cluster.state_dir)
    rules = set()
    for tool in ("iptables-save", "ip6tables-save"):
        out = subprocess.run([tool], capture_output=True, text=True, check=False).stdout
        rules |= {line for line in out.splitlines() if prefix in line}
    namespaces = {n for n in netns.namespaces() if n.startswith(prefix)}
    processes = {str(p) for p in processes_of(cluster.state_dir)}
    for name in namespaces:
        processes |= {str(p) for p in netns.pids(name)}
    run = Path("/run/intercept-proxy")
    mounts = {
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if prefix in line.split()[4] or state in line.split()[4]
    }
    return {
        "mounts": mounts,
        "netns": namespaces,
        "links": {n for n in netns.links() if n.startswith(prefix)},
        "iptables": rules,
        "processes": processes,
        "tmp": {str(p) for p in Path("/tmp").iterdir() if prefix in p.name or str(p) == state},
        "run": {str(p) for p in run.rglob("*") if prefix in p.name} if run.exists() else set(),
        "etc": {str(p) for p in Path("/etc/netns").glob(f"{prefix}*")},
    }


def alive(pids: set[str]) -> set[str]:
    """Those of `pids` still running (a zombie has died)."""
    from pathlib import Path

    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out.add(pid)
    return out
