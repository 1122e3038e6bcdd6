"""The real OPA, as the policy's tests run it: the pinned build `scripts/install-tools` makes
(`make install`). A missing binary fails the test that needs it, naming that command; it is
never a reason to skip.

Evaluation is batched: one `opa eval` process judges a whole list of inputs (`with input as`
each), so a corpus of thousands costs one OPA start-up, not thousands."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regorus

from intercept_proxy.policy.bundle import write_bundle
from intercept_proxy.policy.engine import BUILTIN_MODULE, RegorusEngine, builtin_rego
from intercept_proxy.policy.model import Policy
from intercept_proxy.policy.testing import BUILTIN_TESTS, builtin_tests
from tests.tools import tool

REPO = Path(__file__).resolve().parents[2]
PIN = REPO / "tools" / "opa" / "go.mod"

# What the differential compares, evaluated once per input in both engines (one rule, so each
# engine computes the decision once for the three).
HARNESS_PACKAGE = "intercept_harness"
HARNESS = f"""package {HARNESS_PACKAGE}

results := {{
\t"decision": data.intercept.decision,
\t"allow": data.intercept.allow,
\t"envoy_response": data.intercept.envoy_response,
}}
"""
HARNESS_RULE = f"data.{HARNESS_PACKAGE}.results"
_BATCH_KEY = "intercept_harness_inputs"


def opa() -> Path:
    return tool("opa")


def pinned_version() -> str:
    """The OPA release tools/opa pins (its go.mod's require line), e.g. '1.22.4'."""
    match = re.search(r"github\.com/open-policy-agent/opa v(\S+)", PIN.read_text())
    assert match, f"{PIN} pins no github.com/open-policy-agent/opa"
    return match.group(1)


def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [opa(), *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
    )


def write_modules(directory: Path, modules: dict[str, str]) -> list[Path]:
    paths = []
    for name, text in modules.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path)
    return paths


def builtin_modules(tests: bool = False) -> dict[str, str]:
    """intercept.rego, and with `tests` its unit tests, as `intercept policy test` reads them."""
    modules = {BUILTIN_MODULE: builtin_rego()}
    if tests:
        modules[BUILTIN_TESTS] = builtin_tests().text
    return modules


def check(paths: list[Path], *, strict: bool = False) -> tuple[bool, str]:
    """`opa check`: parse, compile and type-check; (ok, OPA's errors)."""
    result = run("check", *(["--strict"] if strict else []), *paths)
    return result.returncode == 0, (result.stdout + result.stderr).strip()


@dataclass(frozen=True)
class OpaTest:
    package: str
    name: str
    passed: bool
    detail: str


def run_tests(paths: list[Path]) -> list[OpaTest]:
    """`opa test` over these files or directories: every test_* rule, passed or not. A module
    that does not compile is an AssertionError with OPA's message."""
    result = run("test", "--format", "json", *paths)
    try:
        reports = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"opa test did not run: {result.stdout}{result.stderr}") from None
    assert isinstance(reports, list), reports
    tests = []
    for r in reports:
        failed = r.get("fail") or r.get("error") or r.get("skip")
        detail = json.dumps(r.get("error")) if r.get("error") else "fail" if failed else ""
        name = r["name"]
        tests.append(OpaTest(r["package"].removeprefix("data."), name, not failed, detail))
    # OPA's exit status agrees with the reports: 0 only when every test passed.
    assert (result.returncode == 0) == all(t.passed for t in tests), result.stderr
    return tests


class OpaEvalError(AssertionError):
    """OPA refused the policy or failed to evaluate it."""


def bundle_for(policy: Policy, directory: Path) -> Path:
    """The bundle `intercept policy compile --bundle` writes, in `directory`/bundle."""
    bundle = directory / "bundle"
    write_bundle(policy, bundle)
    return bundle


def evaluate(bundle: Path, inputs: list[Any], rule: str = HARNESS_RULE) -> list[Any]:
    """`rule` for every input, by one `opa eval -b BUNDLE` process; raises OpaEvalError with
    OPA's message when it refuses the bundle or an evaluation fails."""
    with tempfile.TemporaryDirectory(prefix="opa-batch-") as tmp:
        harness, batch = Path(tmp) / "harness.rego", Path(tmp) / "inputs.json"
        harness.write_text(HARNESS)
        batch.write_text(json.dumps({_BATCH_KEY: inputs}))
        query = f"[r | some i in data.{_BATCH_KEY}; r := {rule} with input as i]"
        result = run("eval", "--format", "json", "-b", bundle, "-d", harness, "-d", batch, query)
    if result.returncode != 0:
        raise OpaEvalError((result.stdout + result.stderr).strip())
    out = json.loads(result.stdout)
    if out.get("errors") or not out.get("result"):
        raise OpaEvalError(json.dumps(out)[:3000])
    values = out["result"][0]["expressions"][0]["value"]
    # A rule undefined for one input would shorten the list and misalign every later result.
    assert len(values) == len(inputs), f"{len(values)} results for {len(inputs)} inputs"
    return values


def regorus_results(policy: Policy, inputs: list[Any]) -> list[Any]:
    """HARNESS_RULE for every input on regorus, the policy loaded as the agent loads it (a
    policy the agent refuses raises its PolicyError). A failed evaluation is {"error": ...}."""
    RegorusEngine(policy)
    engine = regorus.Engine()
    engine.add_policy(BUILTIN_MODULE, builtin_rego())
    for module in policy.rego_modules:
        engine.add_policy(module.path, module.text)
    engine.add_policy("harness.rego", HARNESS)
    engine.add_data(policy.to_data())
    results = []
    for doc in inputs:
        engine.set_input(doc)
        try:
            results.append(engine.eval_rule(HARNESS_RULE))
        except RuntimeError as e:
            results.append({"error": str(e).split("Stack backtrace:")[0].strip()})
    return results


def comparable(result: Any) -> Any:
    """A result as both engines must agree on it: OPA-Envoy's `body` parsed (json.marshal
    escapes differ: OPA writes `<` as \\u003c, regorus as it is; the JSON is the same)."""
    if not isinstance(result, dict) or "envoy_response" not in result:
        return result
    envoy = dict(result["envoy_response"])
    if "body" in envoy:
        envoy["body"] = json.loads(envoy["body"])
    return {**result, "envoy_response": envoy}
