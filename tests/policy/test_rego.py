"""The Rego policy's own unit tests, and custom Rego modules."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from intercept_proxy.policy import engine as engine_module
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.input import url_input
from intercept_proxy.policy.model import (
    POLICY_FILE_NAME,
    PolicyError,
    RegoModule,
    load_policy,
    policy_files,
)
from intercept_proxy.policy.testing import builtin_tests, run_tests

BUILTIN_RESULTS = run_tests([builtin_tests()])


def test_builtin_rego_tests_were_found():
    assert len(BUILTIN_RESULTS) >= 30


@pytest.mark.parametrize("result", BUILTIN_RESULTS, ids=lambda r: r.name)
def test_builtin_rego_test(result):
    assert result.passed, result.error


def test_runner_reports_failing_and_broken_tests():
    module = RegoModule(
        "mine_test.rego",
        "package mine_test\n"
        "test_passes if true\n"
        "test_fails if false\n"
        "test_errors if 1 / 0 == 1\n"
        "test_not_boolean := 5\n",
    )
    results = {r.name: r for r in run_tests([module])}
    assert results["test_passes"].passed
    assert not results["test_fails"].passed
    assert not results["test_errors"].passed
    assert not results["test_not_boolean"].passed
    assert "expected true" in results["test_not_boolean"].error


CUSTOM = """
package intercept.custom

allow contains {"rule": "internal_mirror", "reason": "the internal mirror"} if {
    data.intercept.request.host == "mirror.corp.example"
    data.intercept.request.method == "GET"
}

deny contains {"rule": "no_uploads", "reason": "uploads are forbidden"} if {
    data.intercept.request.segments[0] == "upload"
}
"""


def write_policy(tmp_path, module_text, policy="unrestricted_domains: [api.example.com]\n"):
    (tmp_path / "custom.rego").write_text(module_text)
    path = tmp_path / "p.yaml"
    path.write_text(policy + "rego_modules: [custom.rego]\n")
    return path


def test_custom_modules_extend_and_restrict(tmp_path):
    engine = RegorusEngine(load_policy(write_policy(tmp_path, CUSTOM)))
    d = engine.evaluate(url_input("GET", "https://mirror.corp.example/pkg"))
    assert (d.allow, d.rule) == (True, "internal_mirror")
    assert not engine.evaluate(url_input("POST", "https://mirror.corp.example/pkg")).allow
    d = engine.evaluate(url_input("POST", "https://api.example.com/upload/x"))
    assert (d.allow, d.rule, d.reason) == (False, "no_uploads", "uploads are forbidden")
    assert engine.evaluate(url_input("POST", "https://api.example.com/other")).allow


def test_custom_allow_cannot_override_request_checks(tmp_path):
    engine = RegorusEngine(load_policy(write_policy(tmp_path, CUSTOM)))
    d = engine.evaluate(url_input("GET", "https://evil.test/", ["Host: mirror.corp.example"]))
    assert (d.allow, d.rule) == (False, "sni_mismatch")


def test_custom_modules_must_use_the_custom_package(tmp_path):
    path = write_policy(tmp_path, "package intercept\nallow := true\n")
    with pytest.raises(PolicyError, match="package intercept is not allowed"):
        RegorusEngine(load_policy(path))


def test_custom_module_syntax_errors_reject_the_policy(tmp_path):
    path = write_policy(tmp_path, "package intercept.custom\nallow contains if {\n")
    with pytest.raises(PolicyError) as e:
        RegorusEngine(load_policy(path))
    assert e.value.key == "rego_modules[0]"
    assert "custom.rego" in str(e.value)


def test_custom_module_runtime_errors_reject_the_policy_at_load(tmp_path):
    path = write_policy(
        tmp_path, 'package intercept.custom\ndeny contains {"rule": "x", "reason": 1 / 0}\n'
    )
    with pytest.raises(PolicyError, match="evaluation fails"):
        RegorusEngine(load_policy(path))


@pytest.mark.parametrize(
    "module",
    [
        'deny contains "pypi is blocked" if data.intercept.request.host == "pypi.org"',
        'deny contains {"rule": "no_pypi", "why": 1} if data.intercept.request.host == "pypi.org"',
        'default deny := false\ndeny if data.intercept.request.host == "pypi.org"',
        'deny := {"pypi.org"} if data.intercept.request.host == "pypi.org"',
    ],
)
def test_any_custom_deny_denies(tmp_path, module):
    """A deny written in another shape than the documented one must still deny."""
    path = write_policy(
        tmp_path, f"package intercept.custom\n{module}\n", "allowed_domains: [pypi.org]\n"
    )
    engine = RegorusEngine(load_policy(path))
    d = engine.evaluate(url_input("GET", "https://pypi.org/"))
    assert d.allow is False, d
    assert d.rule in ("custom_deny", "no_pypi")
    assert engine.evaluate(url_input("GET", "https://other.test/")).rule == "default_deny"


@pytest.mark.parametrize(
    "module",
    ['allow contains "x" if true', 'allow contains {"rule": "r"} if true', "allow := true"],
)
def test_malformed_custom_allow_grants_nothing(tmp_path, module):
    path = write_policy(tmp_path, f"package intercept.custom\n{module}\n", "allowed_domains: []\n")
    engine = RegorusEngine(load_policy(path))
    assert engine.evaluate(url_input("GET", "https://other.test/")).rule == "default_deny"


@pytest.mark.parametrize(
    "module", ["deny(x) := x == 1", "default deny(_) := false", "allow(x) := true if x"]
)
def test_deny_or_allow_as_a_function_is_refused(tmp_path, module):
    """regorus would read such a `deny` as undefined (denying nothing), OPA refuses to compile
    it: the agent refuses it too, saying what to write instead."""
    path = write_policy(tmp_path, f"package intercept.custom\n{module}\n")
    with pytest.raises(PolicyError, match="is a function; define it as a rule") as e:
        RegorusEngine(load_policy(path))
    assert e.value.key == "rego_modules[0]"


def test_other_functions_are_helpers(tmp_path):
    module = (
        "package intercept.custom\n"
        'blocked(h) if h == "pypi.org"\n'
        'deny contains {"rule": "b", "reason": "r"} if blocked(data.intercept.request.host)\n'
    )
    engine = RegorusEngine(load_policy(write_policy(tmp_path, module)))
    assert engine.evaluate(url_input("GET", "https://pypi.org/")).rule == "b"


def test_a_module_that_depends_on_the_decision_is_refused_readably(tmp_path):
    path = write_policy(tmp_path, "package intercept.custom\ndeny if data.intercept.allow\n")
    with pytest.raises(PolicyError, match="evaluation fails") as e:
        RegorusEngine(load_policy(path))
    assert "recursion" in str(e.value)
    assert "backtrace" not in str(e.value) and len(str(e.value).splitlines()) <= 6


def test_mistyped_input_is_denied_not_an_evaluation_error(tmp_path):
    engine = RegorusEngine(load_policy(write_policy(tmp_path, CUSTOM)))
    for doc in ("GET /", [], {"attributes": {"request": {"http": {"host": 7}}}}):
        assert engine.evaluate(doc).rule == "invalid_request"


def test_http_send_is_refused(tmp_path):
    """regorus reads http.send as undefined: a deny that asks a service would never deny."""
    module = (
        "package intercept.custom\n"
        "deny if {\n"
        '\tr := http.send({"method": "GET", "url": "http://allowlist.corp/check"})\n'
        "\tr.status_code != 200\n"
        "}\n"
    )
    with pytest.raises(PolicyError, match=r"http\.send is not available"):
        RegorusEngine(load_policy(write_policy(tmp_path, module)))


def test_a_policy_goes_with_its_modules_beside_it(tmp_path):
    """What an agent reads (the chart's ConfigMap, the gateway's files): the policy and its
    modules by file name; a module elsewhere would lose its place."""
    path = write_policy(tmp_path, CUSTOM)
    assert policy_files(load_policy(path), path.read_text()) == {
        POLICY_FILE_NAME: path.read_text(),
        "custom.rego": CUSTOM,
    }
    (tmp_path / "elsewhere").mkdir()
    for name, module in (
        ("elsewhere/x.rego", CUSTOM),
        (str(tmp_path / "custom.rego"), CUSTOM),  # beside it, but the agent would read this one
        ("policy.yaml", CUSTOM),
        (".hidden.rego", CUSTOM),
    ):
        (tmp_path / name).write_text(module)
        path.write_text(f"rego_modules: [custom.rego, {name!r}]\n")
        with pytest.raises(PolicyError, match=r"p.yaml: rego_modules\[1\]: .*by its file name"):
            policy_files(load_policy(path), path.read_text())
    path.write_text("rego_modules: [./custom.rego]\n")
    assert set(policy_files(load_policy(path), path.read_text())) == {
        POLICY_FILE_NAME,
        "custom.rego",
    }


@pytest.mark.parametrize("operators", [None, "1"])
def test_regorus_commits_memory_on_use_and_the_environment_is_left_as_found(operators):
    """In the agent's process, mimalloc (regorus's allocator) says which option it took; the
    environment a child inherits is as it was."""
    script = (
        "import subprocess, intercept_proxy.agent.main;"
        "print(subprocess.run(['env'], capture_output=True, text=True).stdout)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMALLOC_")}
    env["MIMALLOC_VERBOSE"] = "1"
    if operators is not None:
        env["MIMALLOC_ARENA_EAGER_COMMIT"] = operators
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    inherited = [line for line in result.stdout.splitlines() if "ARENA_EAGER" in line]
    assert inherited == ([] if operators is None else [f"MIMALLOC_ARENA_EAGER_COMMIT={operators}"])
    taken = "0" if operators is None else operators
    assert f"option 'arena_eager_commit': {taken}" in result.stderr


def test_regorus_is_loaded_by_the_engine_module_alone():
    """Its allocator's setting is made where it loads (policy/engine.py). (The bench's mitmproxy
    addon, a competitor's, imports it in text it writes out.)"""
    source = Path(engine_module.__file__).parent.parent

    def imports_regorus(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "regorus" for a in node.names):
                return True
            if isinstance(node, ast.ImportFrom) and node.module == "regorus":
                return True
        return False

    importers = [str(p.relative_to(source)) for p in source.rglob("*.py") if imports_regorus(p)]
    assert importers == ["policy/engine.py"]
