"""The Rego policy on the real OPA (the pinned build of scripts/install-tools), beside regorus:
OPA's compiler and type checker accept it, its unit tests pass on OPA as they do on regorus,
custom modules of every shape are accepted (or refused) by both engines alike and decide alike,
and the bundle `intercept policy compile --bundle` writes is what OPA loads.

The corpus-wide differential (thousands of requests, several policies) is
tests/integration/test_opa.py."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from intercept_proxy.policy.bundle import ROOTS, write_bundle
from intercept_proxy.policy.engine import BUILTIN_MODULE
from intercept_proxy.policy.model import Policy, PolicyError, load_policy, parse_policy
from intercept_proxy.policy.testing import BUILTIN_TESTS, builtin_tests
from intercept_proxy.policy.testing import run_tests as regorus_tests
from tests.policy import opa
from tests.policy.custom_shapes import PROBES, SHAPES, write_shape

REGORUS_TESTS = regorus_tests([builtin_tests()])


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rego")
    opa.write_modules(directory, opa.builtin_modules(tests=True))
    return directory


@pytest.fixture(scope="module")
def opa_tests(builtin_dir):
    return {t.name: t for t in opa.run_tests([builtin_dir]) if t.package == "intercept_test"}


def test_opa_is_the_pinned_release():
    result = opa.run("version")
    assert result.returncode == 0, result.stderr
    assert f"Version: {opa.pinned_version()}\n" in result.stdout, result.stdout
    assert "Rego Version: v1" in result.stdout


def test_the_policy_passes_opa_check_in_strict_mode(builtin_dir):
    """Strict mode also refuses unused variables and imports, shadowed names, deprecated
    built-ins: the policy is clean for whoever runs it with `opa check --strict`."""
    ok, errors = opa.check([builtin_dir / BUILTIN_MODULE, builtin_dir / BUILTIN_TESTS], strict=True)
    assert ok, errors


def test_the_policy_is_formatted_as_opa_fmt_writes_it(builtin_dir):
    result = opa.run("fmt", "--list", builtin_dir / BUILTIN_MODULE, builtin_dir / BUILTIN_TESTS)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", f"run `opa fmt -w` on: {result.stdout}"


def test_opa_and_regorus_run_the_same_rego_tests(opa_tests):
    assert len(opa_tests) >= 45
    assert set(opa_tests) == {r.name for r in REGORUS_TESTS}


def assert_passed(tests: dict[str, opa.OpaTest], name: str) -> None:
    assert name in tests, f"OPA did not run {name}"
    assert tests[name].passed, f"{name} fails on OPA: {tests[name].detail}"


@pytest.mark.parametrize("name", [r.name for r in REGORUS_TESTS])
def test_rego_test_passes_on_opa(opa_tests, name):
    assert_passed(opa_tests, name)


def test_a_failing_rego_test_fails_the_suite(tmp_path):
    """What test_rego_test_passes_on_opa relies on: a Rego test that fails, errs or is not true
    on OPA makes its assertion fail (and OPA exit non-zero, checked by run_tests)."""
    (tmp_path / "mine_test.rego").write_text(
        "package mine_test\n\n"
        "test_passes if true\n\n"
        "test_fails if false\n\n"
        'test_errors if to_number("x") == 1\n\n'
        "test_not_boolean := 5\n"
    )
    tests = {t.name: t for t in opa.run_tests([tmp_path])}
    assert_passed(tests, "test_passes")
    for name in ("test_fails", "test_errors", "test_not_boolean", "test_missing"):
        with pytest.raises(AssertionError):
            assert_passed(tests, name)


def test_a_rego_test_that_does_not_compile_fails_the_suite(tmp_path):
    (tmp_path / "broken_test.rego").write_text("package broken_test\n\ntest_x if {\n")
    with pytest.raises(AssertionError, match="rego_parse_error"):
        opa.run_tests([tmp_path])


# --- custom modules of every shape -----------------------------------------------------------


def _opa_results(bundle: Path) -> dict:
    try:
        return {"opa": [opa.comparable(r) for r in opa.evaluate(bundle, list(PROBES.values()))]}
    except opa.OpaEvalError as e:
        return {"opa_refused": str(e)}


def _regorus_results(policy: Policy) -> dict:
    try:
        results = opa.regorus_results(policy, list(PROBES.values()))
        return {"regorus": [opa.comparable(r) for r in results]}
    except PolicyError as e:
        return {"regorus_refused": str(e)}


@pytest.fixture(scope="module")
def shape_results(tmp_path_factory):
    """Every shape through both engines: OPA in its processes, two at a time, while regorus
    runs here (its engines must stay on the thread that made them)."""
    root = tmp_path_factory.mktemp("shapes")
    policies = {name: load_policy(write_shape(s, root / name)) for name, s in SHAPES.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(_opa_results, opa.bundle_for(policy, root / name))
            for name, policy in policies.items()
        }
        return {
            name: _regorus_results(policy) | futures[name].result()
            for name, policy in policies.items()
        }


@pytest.mark.parametrize("name", SHAPES)
def test_custom_module_shape(shape_results, name):
    shape, out = SHAPES[name], shape_results[name]
    if shape.refused:
        assert shape.refused in out.get("regorus_refused", ""), out
        assert shape.opa_refused, "say what OPA's error must say"
        assert shape.opa_refused in out.get("opa_refused", ""), out
        return
    assert "regorus_refused" not in out, out["regorus_refused"]
    assert "opa_refused" not in out, out["opa_refused"]
    assert out["opa"] == out["regorus"]
    decisions = {
        probe: (r["decision"]["allow"], r["decision"]["rule"])
        for probe, r in zip(PROBES, out["regorus"], strict=True)
    }
    assert decisions == shape.expected()
    for r in out["regorus"]:
        assert r["allow"] == r["decision"]["allow"] == r["envoy_response"]["allowed"]


def test_opa_names_the_type_error_the_old_policy_had(tmp_path):
    """`deny if ...` is a boolean; referencing it directly (as intercept.rego once did) and
    iterating it is what OPA's type checker refused. The policy now reads it through
    object.get; this is the refusal it avoids, so that a change back is noticed."""
    (tmp_path / "custom.rego").write_text("package intercept.custom\n\ndeny if true\n")
    (tmp_path / "reader.rego").write_text(
        "package reader\n\nentries contains d if {\n\tsome d in data.intercept.custom.deny\n}\n"
    )
    ok, errors = opa.check([tmp_path / "custom.rego", tmp_path / "reader.rego"])
    assert not ok
    assert "rego_type_error" in errors and "have: boolean" in errors, errors


# --- custom tests, as a policy author writes them --------------------------------------------

AUTHOR_MODULE = """\
package intercept.custom

allow contains {"rule": "internal_mirror", "reason": "the company mirror"} if {
\tdata.intercept.request.host == "mirror.corp.example"
\tdata.intercept.request.method in {"GET", "HEAD"}
}

deny contains {"rule": "no_uploads", "reason": "uploads are forbidden"} if {
\tdata.intercept.request.segments[0] == "upload"
}
"""

AUTHOR_TESTS = """\
package mine_test

import data.intercept

req(method, host, path) := {"attributes": {
\t"request": {"http": {"method": method, "host": host, "path": path, "scheme": "https"}},
\t"tlsSession": {"sni": host},
}}

test_the_mirror_is_readable if {
\tintercept.decision.rule == "internal_mirror" with input as req("GET", "mirror.corp.example", "/")
}

test_the_mirror_is_not_writable if {
\tnot intercept.allow with input as req("PUT", "mirror.corp.example", "/")
}

test_uploads_are_denied_even_where_allowed if {
\td := intercept.decision with input as req("POST", "api.example.com", "/upload/x")
\td == {"allow": false, "rule": "no_uploads", "reason": "uploads are forbidden"}
}

test_the_policy_file_still_decides if {
\td := intercept.decision with input as req("POST", "api.example.com", "/x")
\td.rule == "unrestricted_domains"
}
"""


def test_a_policy_authors_tests_pass_on_both_engines(tmp_path):
    """`intercept policy test --policy P mine_test.rego` (regorus) and `opa test` over the
    policy's bundle and the same test module run the same tests, and all pass."""
    (tmp_path / "custom.rego").write_text(AUTHOR_MODULE)
    (tmp_path / "mine_test.rego").write_text(AUTHOR_TESTS)
    policy = tmp_path / "policy.yaml"
    policy.write_text("unrestricted_domains: [api.example.com]\nrego_modules: [custom.rego]\n")
    result = subprocess.run(
        [sys.executable, "-m", "intercept_proxy", "policy", "test", "--policy", str(policy),
         str(tmp_path / "mine_test.rego")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    regorus_passed = {
        line.split(": ")[-1] for line in result.stdout.splitlines() if "mine_test.rego" in line
    }
    bundle = tmp_path / "bundle"
    write_bundle(load_policy(policy), bundle)
    tests = {t.name: t for t in opa.run_tests([bundle, tmp_path / "mine_test.rego"])}
    names = {word for word in AUTHOR_TESTS.split() if word.startswith("test_")}
    assert set(tests) == regorus_passed == names
    for name in tests:
        assert_passed(tests, name)


# --- the bundle -------------------------------------------------------------------------------


def test_the_bundle_is_what_opa_expects(tmp_path):
    (tmp_path / "custom.rego").write_text(AUTHOR_MODULE)
    policy = load_policy(_policy_file(tmp_path, "rego_modules: [custom.rego]\n"))
    bundle = tmp_path / "bundle"
    write_bundle(policy, bundle)
    files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert files == [
        ".manifest", "custom/0_custom.rego", "intercept.rego", "intercept_policy/data.json"
    ]  # fmt: skip
    manifest = json.loads((bundle / ".manifest").read_text())
    assert manifest["revision"] == policy.revision
    assert manifest["roots"] == list(ROOTS) == ["intercept", "intercept_policy"]
    assert manifest["rego_version"] == 1
    data = json.loads((bundle / "intercept_policy" / "data.json").read_text())
    assert data == policy.to_data()["intercept_policy"]
    # OPA loads it as a bundle (the manifest's roots enforced): the data lands where the
    # policy reads it, and the revision is reported.
    query = "[data.intercept_policy.allowed_domains[0].host, data.system.bundles]"
    result = opa.run("eval", "--format", "json", "-b", bundle, query)
    assert result.returncode == 0, result.stderr
    value = json.loads(result.stdout)["result"][0]["expressions"][0]["value"]
    assert value[0] == "pypi.org"
    ok, errors = opa.check([bundle], strict=False)
    assert ok, errors


def test_opa_refuses_a_bundle_module_outside_its_roots(tmp_path):
    """The roots are enforced: a module that escapes the intercept tree is refused by OPA
    (and by the agent, which wants package intercept.custom)."""
    (tmp_path / "escape.rego").write_text("package elsewhere\n\nx := 1\n")
    policy = parse_policy("rego_modules: [escape.rego]\n", str(tmp_path / "p.yaml"), base=tmp_path)
    bundle = tmp_path / "bundle"
    write_bundle(policy, bundle)
    result = opa.run("eval", "-b", bundle, "data")
    assert result.returncode != 0
    assert "do not permit 'package elsewhere'" in result.stdout + result.stderr
    with pytest.raises(PolicyError, match="package elsewhere is not allowed"):
        opa.regorus_results(policy, [])


def _policy_file(directory: Path, extra: str = "") -> Path:
    path = directory / "policy.yaml"
    path.write_text("allowed_domains: [pypi.org]\n" + extra)
    return path
