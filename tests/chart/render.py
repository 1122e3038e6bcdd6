"""The chart rendered by real Helm (the pinned CLI scripts/install-tools builds), for named sets of
values: what `helm install` would create, hooks and tests included, and its notes."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.tools import tool

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "intercept-proxy"
NAMESPACE = "intercept-system"

# name: (release, values given to helm install)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("intercept-proxy", {}),
    "secret-ca": (
        "sandbox",
        {
            "ca": {"mode": "secret"},
            "policy": {
                "podOverride": "replace",
                "default": {"allowed_domains": ["pypi.org", "*.pythonhosted.org"]},
            },
            "capture": {
                "tlsPorts": [443, 8443],
                "httpPorts": [80, 8080],
                "allowedCidrs": ["10.96.0.0/12", "fd00:10:96::/112"],
                "inboundPorts": [8080, 15022],
            },
            "dns": {"forwardSuffixes": ["cluster.local", "corp.example"]},
            "envoy": {
                "uid": 1001,
                "resources": {"limits": {"cpu": 2, "memory": "1Gi", "ephemeral-storage": "1Gi"}},
            },
            "agent": {"uid": 1002, "certValidityHours": 0.5},
            "serviceAccountToken": {"automount": True},
            "networkPolicy": {"enabled": False},
            "kyverno": {"validationFailureAction": "Audit"},
            "cleanup": {"enabled": False},
        },
    ),
    "cert-manager": (
        "agents",
        {
            "image": {"tag": "0.1.1", "pullPolicy": "Always"},
            "proxyInit": {
                "resources": {
                    "requests": {"cpu": "500m"},
                    "limits": {"cpu": "1000m", "memory": "1024Mi"},
                }
            },
            "clone": {"namespaceSelector": {"matchLabels": {"sandbox": "agents"}}},
            # CNI mode: proxy-init only checks the node's capture, as an ordinary user.
            "capture": {"mode": "cni"},
            "ca": {"mode": "certManager", "certManager": {"issuerRef": {"name": "corp-ca"}}},
            "policy": {"podOverride": "none"},
            "dns": {"forwardSuffixes": []},
            "networkPolicy": {
                "kubernetesApiCidrs": ["10.96.0.1/32", "172.18.0.2/32", "fd00::1/128"],
            },
            "kyverno": {"namespace": "policy-engine", "policyException": {"enabled": False}},
            "helmTest": {"enabled": False},
        },
    ),
    "gateway": (
        "egress",
        {
            "gateway": {
                "enabled": True,
                "namespace": "proxies",
                "uid": 20001,
                "replicas": 3,
                "autoscaling": {"enabled": False},
                "podDisruptionBudget": {"minAvailable": 2},
                "topologySpread": False,
                "clients": {
                    "namespaceSelector": {"matchLabels": {"egress": "gateway"}},
                    "proxyEnv": True,
                    "noProxy": [".svc", "10.96.0.0/12"],
                },
            },
            "monitoring": {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "observability"}
                }
            },
            "upstream": {"privateRanges": ["10.20.0.0/16"]},
            "policy": {"default": {"allowed_domains": ["pypi.org"]}},
            "networkPolicy": {"kubernetesApiCidrs": ["10.96.0.1/32", "fd00::1/128"]},
        },
    ),
    "telepresence": (
        "intercept-proxy",
        yaml.safe_load((CHART_DIR / "examples" / "telepresence-values.yaml").read_text()),
    ),
}
# The gateway's CA issued by cert-manager (its clients' copies then come from the Secret).
CASES["gateway-cert-manager"] = (
    "egress",
    {
        **copy.deepcopy(CASES["gateway"][1]),
        "gateway": {
            **copy.deepcopy(CASES["gateway"][1]["gateway"]),
            "ca": {"mode": "certManager", "certManager": {"issuerRef": {"name": "corp-ca"}}},
            # Clients' pods' own policies ignored: the gateway reads no pod.
            "podPolicy": "none",
        },
    },
)


class HelmError(RuntimeError):
    """Helm refused: its message (a schema violation names the value: `at '/capture/...'`)."""


def helm(*args: str, values: dict[str, Any] | None = None) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(values or {}, file)
        file.flush()
        result = subprocess.run(
            [str(tool("helm")), *args, "-f", file.name],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise HelmError(result.stderr.strip())
    return result.stdout


def release(case: str) -> str:
    return CASES[case][0]


def given(case: str) -> dict[str, Any]:
    """The values the case gives (the rest are the chart's defaults)."""
    return copy.deepcopy(CASES[case][1])


def install_dry_run(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """What `helm install` would do, as Helm reports it: the release with its manifest, hooks
    and notes."""
    out = helm(
        "install", name, str(CHART_DIR), "-n", NAMESPACE, "--dry-run=client", "-o", "json",
        values=overrides,
    )  # fmt: skip
    return json.loads(out)


@functools.cache
def _values(case: str) -> dict[str, Any]:
    name, overrides = CASES[case]
    text = helm(
        "install", name, str(CHART_DIR), "-n", NAMESPACE, "--dry-run=client", "--debug",
        values=overrides,
    )  # fmt: skip
    computed = text.partition("\nCOMPUTED VALUES:\n")[2].partition("\nHOOKS:\n")[0]
    return dict(yaml.safe_load(computed))


def values(case: str) -> dict[str, Any]:
    """The values the templates see, as Helm computes them (the chart's, the case's on top)."""
    return copy.deepcopy(_values(case))


@functools.cache
def _release(case: str) -> dict[str, Any]:
    return install_dry_run(*CASES[case])


def notes(case: str) -> str:
    return str(_release(case)["info"]["notes"])


def _sources(manifest: str) -> dict[str, str]:
    """`# Source: PATH` sections of a manifest, by path."""
    out: dict[str, str] = {}
    for part in manifest.split("---\n"):
        header, _, body = part.partition("\n")
        if header.startswith("# Source: "):
            path = header.removeprefix("# Source: ")
            out[path] = f"{out[path]}---\n{body}" if path in out else body
    return out


@functools.cache
def rendered(case: str) -> dict[str, str]:
    """Template path -> rendered text, hooks included."""
    found = _release(case)
    out = _sources(found["manifest"])
    for hook in found.get("hooks") or []:
        before = out.get(hook["path"])
        out[hook["path"]] = f"{before}---\n{hook['manifest']}" if before else hook["manifest"]
    return out


@functools.cache
def _objects(case: str) -> tuple[dict[str, Any], ...]:
    out = []
    for _, text in sorted(rendered(case).items()):
        out.extend(d for d in yaml.safe_load_all(text) if d is not None)
    return tuple(out)


def objects(case: str) -> list[dict[str, Any]]:
    """Every manifest the release would create (hooks and tests included)."""
    return copy.deepcopy(list(_objects(case)))


def find_in(release: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    """The object of that kind named `<release>-<name>` in what `install_dry_run` returned."""
    full = f"{release['name']}-{name}"
    objects = [d for d in yaml.safe_load_all(release["manifest"]) if d]
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == full]
    return dict(found)


def find(case: str, kind: str, name: str) -> dict[str, Any]:
    """The object of that kind named `<release>-<name>`."""
    full = f"{release(case)}-{name}"
    found = [o for o in _objects(case) if o["kind"] == kind and o["metadata"]["name"] == full]
    assert len(found) == 1, f"{kind} {full}: {len(found)} found"
    return copy.deepcopy(found[0])
