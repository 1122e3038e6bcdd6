"""`intercept gateway` follows its policy files: an edit that loads is given to the running agent
and said once it is in force; one that does not load is said once and changes nothing; one only
the agent can refuse (a custom Rego module that does not compile) is said to be refused, with
the revision that stays."""

from __future__ import annotations

import pytest

from intercept_proxy import netns
from intercept_proxy.lab.interceptor import Interceptor
from intercept_proxy.policy.model import parse_policy
from intercept_proxy.runtime.gateway import _Followed, _policy_files

pytestmark = pytest.mark.netns

FIRST = "allowed_domains: [pypi.org]\n"


@pytest.fixture
def agent(netns_prefix, sandbox_lab):
    """A running agent and Envoy (a gateway's pair), in a namespace of the test's own."""
    name = f"{netns_prefix}fw"
    netns.create(name)
    icp = Interceptor(name, FIRST, sandbox_lab.ca_cert_path, sandbox_lab.dns_servers)
    try:
        yield icp.start()
    finally:
        icp.close()
        netns.delete(name)


def test_an_edit_is_followed_and_a_problem_said_once(tmp_path, monkeypatch, capsys, agent):
    monkeypatch.setenv("FOLLOW_TEST_KEY", "sk-follow-0123456789")
    policy = tmp_path / "policy.yaml"
    policy.write_text(FIRST)
    followed = _Followed(policy, *_policy_files(policy, {}))
    first = agent.readiness()["policy_revision"]
    # A variable the agent was not given at the start (set here or not): refused, once.
    policy.write_text(
        "credentials: [{host: api.example.com, header: x-api-key, env: FOLLOW_TEST_KEY}]\n"
    )
    followed.reload(agent)
    followed.reload(agent)
    said = capsys.readouterr().err
    assert said.count("FOLLOW_TEST_KEY, which its agent got no value of") == 1, said
    assert agent.policy_path.read_text() == FIRST
    policy.write_text("allowed_domains: [")  # does not load
    followed.reload(agent)
    assert "the policy in force stays" in capsys.readouterr().err
    # A module only the agent compiles: written, refused by the agent, the first policy stays.
    (tmp_path / "mine.rego").write_text("package intercept.custom\n\nthis is not rego\n")
    policy.write_text("allowed_domains: [files.example]\nrego_modules: [mine.rego]\n")
    followed.reload(agent)
    said = capsys.readouterr().err
    assert f"changed: refused by its agent, revision {first} stays in force" in said, said
    assert str(agent.agent_log) in said
    assert agent.readiness()["policy_revision"] == first
    # Mended: in force, and said with its revision.
    (tmp_path / "mine.rego").write_text("package intercept.custom\n")
    followed.reload(agent)
    revision = parse_policy(policy.read_text(), str(policy), tmp_path).revision
    assert f"changed: reloaded (revision {revision})" in capsys.readouterr().err
    assert agent.readiness()["policy_revision"] == revision != first
    assert agent.policy_path.with_name("mine.rego").read_text() == "package intercept.custom\n"
