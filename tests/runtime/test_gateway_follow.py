"""`intercept gateway` follows its policy files: an edit that loads is given to the agent, one
that does not is said once and changes nothing."""

from __future__ import annotations

from intercept_proxy.lab.interceptor import Interceptor
from intercept_proxy.runtime.gateway import _Followed, _policy_files


def test_an_edit_is_followed_and_a_problem_said_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FOLLOW_TEST_KEY", "sk-follow-0123456789")
    policy = tmp_path / "policy.yaml"
    policy.write_text("allowed_domains: [pypi.org]\n")
    upstream_ca = tmp_path / "ca.pem"
    upstream_ca.write_text("-----BEGIN CERTIFICATE-----\n")
    followed = _Followed(policy, *_policy_files(policy, {}))
    icp = Interceptor("follow-test", policy.read_text(), upstream_ca, ("198.18.0.53",))
    try:
        # A variable the agent was not given at the start (set here or not): refused, once.
        policy.write_text(
            "credentials: [{host: api.example.com, header: x-api-key, env: FOLLOW_TEST_KEY}]\n"
        )
        followed.reload(icp)
        followed.reload(icp)
        said = capsys.readouterr().err
        assert said.count("FOLLOW_TEST_KEY, which its agent got no value of") == 1, said
        assert icp.policy_path.read_text() == "allowed_domains: [pypi.org]\n"
        policy.write_text("allowed_domains: [")  # does not load
        followed.reload(icp)
        assert "the policy in force stays" in capsys.readouterr().err
        (tmp_path / "mine.rego").write_text("package intercept.custom\n")
        policy.write_text("allowed_domains: [files.example]\nrego_modules: [mine.rego]\n")
        followed.reload(icp)
        assert "changed: reloaded" in capsys.readouterr().err
        assert icp.policy_path.read_text() == policy.read_text()
        assert icp.policy_path.with_name("mine.rego").read_text() == "package intercept.custom\n"
    finally:
        icp.close()
