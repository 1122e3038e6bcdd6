"""`intercept policy ...` as a policy author or a CI job uses it."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

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
    result = intercept("policy", "compile", str(policy), "--bundle", str(bundle))
    assert result.returncode == 0, result.stderr
    assert (
        json.loads((bundle / "intercept_policy" / "data.json").read_text())
        == data["intercept_policy"]
    )
    assert json.loads((bundle / ".manifest").read_text())["roots"] == [
        "intercept",
        "intercept_policy",
    ]
    assert (bundle / "intercept.rego").read_text().startswith("# intercept-proxy egress policy")


def test_compile_bundle_replaces_its_own_bundle_only(policy, tmp_path):
    """A module dropped from the policy must not stay behind in the bundle (OPA would load
    it); a directory that holds something else is not touched."""
    module = tmp_path / "extra.rego"
    module.write_text("package intercept.custom\n\ndeny if false\n")
    with_module = tmp_path / "with_module.yaml"
    with_module.write_text(POLICY + "rego_modules: [extra.rego]\n")
    bundle = tmp_path / "bundle"
    assert intercept("policy", "compile", str(with_module), "--bundle", str(bundle)).returncode == 0
    assert (bundle / "custom" / "0_extra.rego").exists()
    assert intercept("policy", "compile", str(policy), "--bundle", str(bundle)).returncode == 0
    assert not (bundle / "custom").exists()

    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    result = intercept("policy", "compile", str(policy), "--bundle", str(other))
    assert result.returncode == 2
    assert "holds no bundle written by `intercept policy compile`" in result.stderr
    assert [p.name for p in other.iterdir()] == ["mine.txt"]


def test_compile_bundle_as_a_tarball(policy, tmp_path):
    tarball = tmp_path / "bundle.tar.gz"
    written = []
    for _ in range(2):
        result = intercept("policy", "compile", str(policy), "--bundle", str(tarball))
        assert result.returncode == 0, result.stderr
        written.append(tarball.read_bytes())
    assert written[0] == written[1]  # reproducible: no times, no owners
    with tarfile.open(tarball) as tar:
        assert sorted(tar.getnames()) == [
            "/.manifest",
            "/intercept.rego",
            "/intercept_policy/data.json",
        ]


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
