"""The chart rendered by real Helm (helm-python-sdk), for named sets of values."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import helm_python
import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "intercept-proxy"
NAMESPACE = "intercept-system"
NOTES = "intercept-proxy/templates/NOTES.txt"

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
            },
            "dns": {"forwardSuffixes": ["cluster.local", "corp.example"]},
            # A limit without a request is requested too, as the API server defaults it.
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
            # Written back by the API server as 1 and 1Gi: the injection writes them so.
            "proxyInit": {
                "resources": {
                    "requests": {"cpu": "500m"},
                    "limits": {"cpu": "1000m", "memory": "1024Mi"},
                }
            },
            "clone": {"namespaceSelector": {"matchLabels": {"sandbox": "agents"}}},
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
    "telepresence": (
        "intercept-proxy",
        yaml.safe_load((CHART_DIR / "examples" / "telepresence-values.yaml").read_text()),
    ),
}


@functools.cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART_DIR)


def release(case: str) -> str:
    return CASES[case][0]


@functools.cache
def _values(case: str) -> dict[str, Any]:
    return chart().merge_values(CASES[case][1])


def values(case: str) -> dict[str, Any]:
    """The values the templates see: the chart's defaults with the case's on top."""
    return copy.deepcopy(_values(case))


@functools.cache
def rendered(case: str) -> dict[str, str]:
    """Template path -> rendered text, as `helm install` would render it offline."""
    name, overrides = CASES[case]
    return chart().render(overrides, name=name, namespace=NAMESPACE, is_install=True)


@functools.cache
def _objects(case: str) -> tuple[dict[str, Any], ...]:
    out = []
    for path, text in sorted(rendered(case).items()):
        if path != NOTES:
            out.extend(d for d in yaml.safe_load_all(text) if d is not None)
    return tuple(out)


def objects(case: str) -> list[dict[str, Any]]:
    """Every manifest the release would create (hooks and tests included)."""
    return copy.deepcopy(list(_objects(case)))


def find(case: str, kind: str, name: str) -> dict[str, Any]:
    """The object of that kind named `<release>-<name>`."""
    full = f"{release(case)}-{name}"
    found = [o for o in _objects(case) if o["kind"] == kind and o["metadata"]["name"] == full]
    assert len(found) == 1, f"{kind} {full}: {len(found)} found"
    return copy.deepcopy(found[0])
