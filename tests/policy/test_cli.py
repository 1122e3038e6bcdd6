"""`intercept policy ...` as a policy author or a CI job uses it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

POLICY = "allowed_domains: [pypi.org]\ngithub_read_access_enabled: true\n"


def intercept(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "intercept_proxy", *args], capture_output=True, text=True
    )


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    return path


@pytest.mark.parametrize(
    ("method", "url", "extra", "allow", "rule"),
    [
        ("GET", "https://pypi.org/simple/", [], True, "allowed_domains"),
        ("POST", "https://pypi.org/simple/", [], False, "method_not_allowed"),
        ("GET", "https://unknown.test/", [], False, "default_deny"),
        ("GET", "https://pypi.org/", ["--header", "Host: github.com"], False, "sni_mismatch"),
        (
            "GET",
            "https://evil.test/",
            ["--sni", "pypi.org", "--header", "Host: pypi.org"],
            True,
            "allowed_domains",
        ),
        ("GET", "https://pypi.org/", ["--sni", ""], False, "missing_sni"),
    ],
)
def test_eval_prints_one_json_decision_and_exits_0(policy, method, url, extra, allow, rule):
    result = intercept(
        "policy", "eval", "--policy", str(policy), "--method", method, "--url", url, *extra
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["allow"], out["rule"]) == (allow, rule)
    assert out["reason"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "GET", "--url", "ftp://pypi.org/"], "must start with http:// or https://"),
        (["--method", "GET", "--url", "https:///x"], "has no host"),
        (["--method", "G E T", "--url", "https://pypi.org/"], "not an HTTP method"),
        (["--method", "GET", "--url", "https://pypi.org/", "--header", "nocolon"], "Name: value"),
        (["--method", "GET", "--url", "http://pypi.org/", "--sni", "x"], "only applies to https"),
    ],
)
def test_eval_invalid_request_exits_2(policy, args, message):
    result = intercept("policy", "eval", "--policy", str(policy), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_eval_invalid_policy_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("allowed_domains: ['pypi.org/simple']\n")
    result = intercept(
        "policy", "eval", "--policy", str(bad), "--method", "GET", "--url", "https://pypi.org/"
    )
    assert result.returncode == 2
    assert f"{bad}: allowed_domains[0]: " in result.stderr


def test_check(policy, tmp_path):
    result = intercept("policy", "check", str(policy))
    assert result.returncode == 0
    assert "valid" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("alowed_domains: []\n")
    result = intercept("policy", "check", str(bad))
    assert result.returncode == 2
    assert "alowed_domains: unknown key" in result.stderr


def test_compile_bundle_holds_data_and_rego(policy, tmp_path):
    result = intercept("policy", "compile", str(policy))
    data = json.loads(result.stdout)
    assert data["intercept_policy"]["allowed_domains"][0]["host"] == "pypi.org"
    bundle = tmp_path / "bundle"
    assert intercept("policy", "compile", str(policy), "--bundle", str(bundle)).returncode == 0
    assert json.loads((bundle / "data.json").read_text()) == data
    assert (bundle / "intercept.rego").read_text().startswith("# intercept-proxy egress policy")


def test_test_command_runs_builtin_and_user_tests(tmp_path):
    mine = tmp_path / "mine_test.rego"
    mine.write_text("package mine_test\ntest_ok if true\ntest_bad if false\n")
    result = intercept("policy", "test", str(mine))
    assert result.returncode == 1
    assert "FAIL " in result.stdout and "test_bad" in result.stdout
    assert "1 failed" in result.stdout
    assert intercept("policy", "test").returncode == 0


def test_every_level_has_help():
    for args in (
        ["--help"],
        ["policy", "--help"],
        ["policy", "eval", "--help"],
        ["agent", "run", "--help"],
        ["envoy", "bootstrap", "--help"],
        ["pki", "init-ca", "--help"],
    ):
        result = intercept(*args)
        assert result.returncode == 0, args
        assert "usage:" in result.stdout
