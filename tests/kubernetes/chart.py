"""The chart on the session's cluster: installed and uninstalled by the real Helm, pods made with
kubectl and injected by the real Kyverno, run by the cluster's node against its lab."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import yaml

from tests.cluster.harness import CHART, WORKLOAD_UID, Kube

LABEL = {"intercept-proxy/enabled": "true"}
# The chart's objects carry the release as app.kubernetes.io/instance; what Kyverno generates
# from them carries the policy's name.
OWNED_KINDS = (
    "clusterpolicies,policyexceptions,clusterroles,clusterrolebindings,roles,rolebindings,"
    "serviceaccounts,configmaps,secrets,networkpolicies,jobs,pods,certificates"
)
GENERATED_KINDS = "configmaps,secrets,networkpolicies"


def _of_event(docs: list[Any], event: str) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d and event in d["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(",")
    ]


def hooks(kube: Kube, release: str, namespace: str, event: str) -> list[dict[str, Any]]:
    """The release's hook objects for `event` (pre-delete, test), as Helm would create them."""
    out = kube.helm("get", "hooks", release, "-n", namespace).stdout
    return _of_event(list(yaml.safe_load_all(out)), event)


def run_hook(kube: Kube, namespace: str, objects: list[dict[str, Any]]) -> None:
    """A hook whose Job runs kubectl, its pod aside: the Job's commands run here, in the pod's
    order, as the hook's ServiceAccount (impersonated: its RBAC, nothing more), with the
    ServiceAccount and RBAC the hook creates."""
    (job,) = [o for o in objects if o["kind"] == "Job"]
    rbac = yaml.safe_dump_all([o for o in objects if o["kind"] != "Job"])
    kube.kubectl("apply", "-f", "-", input=rbac)
    spec = job["spec"]["template"]["spec"]
    account = f"system:serviceaccount:{namespace}:{spec['serviceAccountName']}"
    try:
        for container in spec.get("initContainers", []) + spec["containers"]:
            kube.kubectl(f"--as={account}", *container["args"])
    finally:
        kube.kubectl("delete", "-f", "-", input=rbac)


def upgrade(kube: Kube, release: str, namespace: str, values: dict[str, Any]) -> list[str]:
    """`helm upgrade` with its pre-upgrade hook run as `run_hook` does, first, as Helm would;
    the policies the hook deleted."""
    dry = kube.helm("upgrade", release, str(CHART), "-n", namespace, "--dry-run=server",
                    "--hide-notes", values=values).stdout  # fmt: skip
    rendered = dry.split("\nHOOKS:\n", 1)[1].split("\nMANIFEST:\n", 1)[0]
    objects = _of_event(list(yaml.safe_load_all(rendered)), "pre-upgrade")
    deleted = []
    if objects:
        run_hook(kube, namespace, objects)
        (role,) = [o for o in objects if o["kind"] == "ClusterRole"]
        deleted = role["rules"][0]["resourceNames"]
    kube.helm("upgrade", release, str(CHART), "-n", namespace, "--no-hooks", values=values)
    kube.wait_policies(release)
    return deleted


def refusal(kube: Kube, namespace: str, *objects: dict[str, Any], settle: float = 10.0) -> str:
    """The API server's answer to creating the objects (a server-side dry run: every admission
    webhook and plugin, nothing stored), which must be a refusal. Asked again for `settle`
    seconds while it is not: Kyverno and PodSecurity see a namespace's new labels through their
    caches."""
    deadline = time.monotonic() + settle
    while True:
        result = kube.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", "-",
            input=yaml.safe_dump_all(objects), check=False,
        )  # fmt: skip
        if result.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode != 0, f"admitted: {result.stdout}"
    return " ".join(result.stderr.split())


def uninstall(kube: Kube, release: str, namespace: str) -> None:
    run_hook(kube, namespace, hooks(kube, release, namespace, "pre-delete"))
    kube.helm("uninstall", release, "-n", namespace, "--wait", "--no-hooks")


def leftovers(kube: Kube, release: str) -> list[str]:
    """What of the release is still in the cluster: its objects and what Kyverno generated."""
    owned = kube.kubectl(
        "get", OWNED_KINDS, "-A", "-l", f"app.kubernetes.io/instance={release}", "-o", "name",
    ).stdout.split()  # fmt: skip
    generated = kube.kubectl(
        "get", GENERATED_KINDS, "-A", "-o", "json",
    ).stdout  # fmt: skip
    names = {f"{release}-policy", f"{release}-ca", f"{release}-egress"}
    found = [
        f"{o['kind']} {o['metadata'].get('namespace')}/{o['metadata']['name']}"
        for o in json.loads(generated)["items"]
        if o["metadata"]["name"] in names
        or o["metadata"]
        .get("labels", {})
        .get("generate.kyverno.io/policy-name", "")
        .startswith(f"{release}-")
    ]
    return sorted(set(owned) | set(found))


@contextlib.contextmanager
def installed(
    kube: Kube, release: str, namespace: str, values: dict[str, Any] | None = None
) -> Iterator[str]:
    """The chart installed for the block; uninstalled after it, leaving nothing."""
    kube.install(release, namespace, values)
    try:
        yield release
    finally:
        uninstall(kube, release, namespace)
        kube.kubectl("delete", "namespace", namespace, "--wait=false")


def labelled_pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    """A pod labelled for injection, not injected: Kyverno does that."""
    metadata = spec.pop("metadata", {})
    labels = {**LABEL, **metadata.pop("labels", {})}
    container = {"name": "app", "image": "python:3.12-slim", "command": command}
    container.update(spec.pop("container", {}))
    body = {
        "restartPolicy": "Never",
        "securityContext": {"runAsUser": WORKLOAD_UID, "runAsGroup": WORKLOAD_UID},
        "containers": [container],
        **spec,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, **metadata},
        "spec": body,
    }


# What a workload sees, one JSON line per check: run in the pod by the machine's python3.
PROBE = r"""
import base64, json, os, socket, ssl, sys, urllib.error, urllib.request

def request(method, url):
    req = urllib.request.Request(url, method=method, data=b"x" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return {"status": r.status, "body": r.read(4000).decode(errors="replace")}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read(4000).decode(errors="replace")}
    except OSError as e:
        return {"status": None, "error": repr(e)}

def certificate(address, name):
    context = ssl.create_default_context()  # the variables the injection set: the pod's bundle
    try:
        with socket.create_connection((address, 443), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                return {"der": base64.b64encode(tls.getpeercert(True)).decode()}
    except OSError as e:
        return {"error": repr(e)}

def connect(address, port):
    try:
        socket.create_connection((address, port), timeout=3).close()
        return "connected"
    except OSError as e:
        return type(e).__name__

bundle = open(os.environ["SSL_CERT_FILE"]).read()
first = bundle.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
print(json.dumps({"check": "bundle", "first": first, "uid": os.getuid()}), flush=True)
for check in json.loads(sys.argv[1]):
    kind, args = check[0], check[1:]
    if kind == "request":
        result = request(*args)
    elif kind == "certificate":
        result = certificate(*args)
    else:
        # The control: a listener of the workload's own, which it must reach.
        control = socket.create_server(("127.0.0.1", 0))
        found = {f"{a}:{p}": connect(a, p) for a, p in args}
        result = {"results": found, "control": connect("127.0.0.1", control.getsockname()[1])}
    print(json.dumps({"check": check, **result}), flush=True)
"""


def probe(*checks: list[Any]) -> list[str]:
    """The command running PROBE with these checks."""
    return ["python3", "-c", PROBE, json.dumps([list(c) for c in checks])]


def results(kube: Kube, namespace: str, pod: str, container: str = "app") -> dict[str, Any]:
    """PROBE's lines from the container's log, by check (as JSON text)."""
    out = {}
    for line in kube.logs(namespace, pod, "-c", container).splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            key = entry.pop("check")
            out[key if isinstance(key, str) else json.dumps(key)] = entry
    return out


def result(found: dict[str, Any], *check: Any) -> dict[str, Any]:
    return found[json.dumps(list(check))]


def der(entry: dict[str, Any]) -> bytes:
    assert "der" in entry, entry
    return base64.b64decode(entry["der"])
