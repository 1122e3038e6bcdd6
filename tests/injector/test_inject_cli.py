"""`intercept inject -f`: labelled workloads of every kind injected, the rest untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from intercept_proxy.injector.pod import inject_pod
from intercept_proxy.injector.values import settings_from_values

CHART_VALUES = Path(__file__).parent.parent.parent / "charts" / "intercept-proxy" / "values.yaml"
LABELS = {"intercept-proxy/enabled": "true"}
TEMPLATE = {
    "metadata": {"labels": LABELS},
    "spec": {
        "securityContext": {"runAsUser": 1000},
        "containers": [{"name": "app", "image": "python:3.12-slim", "command": ["python"]}],
    },
}


def manifests() -> list[dict]:
    def workload(kind: str, spec: dict) -> dict:
        return {
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": kind.lower()},
            "spec": spec,
        }

    return [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": LABELS}}
        | {"spec": TEMPLATE["spec"]},
        workload("Deployment", {"replicas": 1, "template": TEMPLATE}),
        workload("StatefulSet", {"serviceName": "s", "template": TEMPLATE}),
        workload("DaemonSet", {"template": TEMPLATE}),
        workload("Job", {"template": TEMPLATE}),
        workload(
            "CronJob", {"schedule": "@hourly", "jobTemplate": {"spec": {"template": TEMPLATE}}}
        ),
        # Not labelled, and not a workload: unchanged.
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "plain"},
            "spec": TEMPLATE["spec"],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}},
    ]


def inject(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "intercept_proxy", "inject", *args],
        input=stdin,
        capture_output=True,
        text=True,
    )


def pod_of(obj: dict) -> dict:
    holder = obj
    for key in {"Pod": [], "CronJob": ["spec", "jobTemplate", "spec", "template"]}.get(
        obj["kind"], ["spec", "template"]
    ):
        holder = holder[key]
    return holder


def test_every_kind_from_stdin_with_the_charts_values():
    docs = manifests()
    result = inject("-f", "-", "--values", str(CHART_VALUES), stdin=yaml.safe_dump_all(docs))
    assert result.returncode == 0, result.stderr
    out = list(yaml.safe_load_all(result.stdout))
    settings = settings_from_values(yaml.safe_load(CHART_VALUES.read_text()), "intercept-proxy")
    for before, after in zip(docs[:6], out[:6], strict=True):
        expected = inject_pod(
            {"metadata": pod_of(before)["metadata"], "spec": pod_of(before)["spec"]}, settings
        )
        assert pod_of(after)["spec"] == expected["spec"], before["kind"]
        assert pod_of(after)["metadata"]["annotations"]["intercept-proxy/injected"] == "true"
    assert out[6:] == docs[6:]


def test_refusals_are_reported(tmp_path):
    container = {"name": "a", "securityContext": {"runAsUser": 0}}
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": LABELS}}
    bad["spec"] = {"containers": [container]}
    result = inject("-f", "-", stdin=yaml.safe_dump(bad))
    assert result.returncode == 2
    assert "runAsUser 0 is reserved" in result.stderr
    assert result.stdout == ""


def test_a_partial_values_file_falls_back_to_the_charts_defaults(tmp_path):
    values = tmp_path / "my-values.yaml"
    values.write_text("ca: {mode: secret, secretName: corp-ca}\n")
    result = inject("-f", "-", "--values", str(values), stdin=yaml.safe_dump(manifests()[0]))
    assert result.returncode == 0, result.stderr
    spec = next(yaml.safe_load_all(result.stdout))["spec"]
    ca = next(v for v in spec["volumes"] if v["name"] == "intercept-ca")
    assert ca["secret"]["secretName"] == "corp-ca"


def test_a_wrong_value_is_named(tmp_path):
    values = tmp_path / "my-values.yaml"
    values.write_text("capture: {tlsPort: [443]}\n")
    result = inject("-f", "-", "--values", str(values), stdin=yaml.safe_dump(manifests()[0]))
    assert result.returncode == 2
    assert result.stderr == (
        "intercept inject: values: capture.tlsPort: the chart has no such value\n"
    )
