"""The real Kyverno engine, offline: `kubectl-kyverno apply` of the chart's rendered policies to
a batch of pods, as admission would apply them (mutations, then validations of the mutated pod),
without an API server around it (that is tests/kubernetes, on a real control plane)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.tools import tool


@dataclass(frozen=True)
class Applied:
    """What Kyverno made of each pod (by name): the pod as mutated, and the rules it failed."""

    mutated: dict[str, dict[str, Any]]
    failed: dict[str, list[str]]
    messages: dict[str, list[str]]


def apply(policies: list[dict[str, Any]], pods: list[dict[str, Any]]) -> Applied:
    names = [p["metadata"]["name"] for p in pods]
    assert len(set(names)) == len(names), "pod names must be unique in a batch"
    with tempfile.TemporaryDirectory(prefix="kyverno-apply-") as work:
        directory = Path(work)
        (directory / "policies.yaml").write_text(yaml.safe_dump_all(policies))
        (directory / "pods.yaml").write_text(yaml.safe_dump_all(pods))
        argv = [str(tool("kubectl-kyverno")), "apply", str(directory / "policies.yaml")]
        argv += ["--resource", str(directory / "pods.yaml"), "-o", str(directory / "out")]
        argv += ["--policy-report", "--output-format", "json", "--remove-color"]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        report = result.stdout[result.stdout.find("{") :]
        try:
            results = json.loads(report)["results"]
        except ValueError:
            raise AssertionError(
                f"kyverno apply failed:\n{result.stdout}\n{result.stderr}"
            ) from None
        mutated = {}
        for name in names:
            path = directory / "out" / f"{name}-mutated.yaml"
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d] if path.exists() else []
            mutated[name] = (
                docs[-1] if docs else next(p for p in pods if p["metadata"]["name"] == name)
            )
    failed: dict[str, list[str]] = defaultdict(list)
    messages: dict[str, list[str]] = defaultdict(list)
    for r in results:
        if r["result"] in ("fail", "error"):
            for resource in r["resources"]:
                failed[resource["name"]].append(r["rule"])
                messages[resource["name"]].append(r.get("message", ""))
    return Applied(mutated, {n: failed.get(n, []) for n in names}, dict(messages))
