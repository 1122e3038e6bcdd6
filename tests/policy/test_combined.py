"""A pod's own policy beside the default: narrow (both must allow), replace, or none."""

from __future__ import annotations

import pytest

from intercept_proxy.policy.combined import CombinedEngine, OverrideMode
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.input import url_input
from intercept_proxy.policy.model import PolicyError, parse_policy
from intercept_proxy.policy.store import PolicyStore

DEFAULT = RegorusEngine(parse_policy("allowed_domains: [pypi.org, github.com]"))
POD = RegorusEngine(parse_policy("allowed_domains: [pypi.org, example.com]"))


def decide(mode, pod, url):
    return CombinedEngine(DEFAULT, pod, mode).evaluate(url_input("GET", url))


def test_narrow_needs_both():
    assert decide(OverrideMode.NARROW, POD, "https://pypi.org/").allow
    d = decide(OverrideMode.NARROW, POD, "https://github.com/")
    assert (d.allow, d.rule) == (False, "pod:default_deny")
    assert "this pod's own policy" in d.reason
    # A pod cannot add to the default: example.com stays denied, by the default policy.
    d = decide(OverrideMode.NARROW, POD, "https://example.com/")
    assert (d.allow, d.rule) == (False, "default_deny")


def test_replace_and_none():
    assert decide(OverrideMode.REPLACE, POD, "https://example.com/").allow
    assert not decide(OverrideMode.REPLACE, POD, "https://github.com/").allow
    assert decide(OverrideMode.NONE, POD, "https://github.com/").allow
    assert not decide(OverrideMode.NONE, POD, "https://example.com/").allow


def test_without_a_pod_policy_the_default_decides():
    for mode in OverrideMode:
        assert decide(mode, None, "https://github.com/").allow
        assert CombinedEngine(DEFAULT, None, mode).revision == DEFAULT.revision


def test_pod_policy_store(tmp_path):
    path = tmp_path / "policy.yaml"
    store = PolicyStore(path, optional=True)  # no annotation: no file
    assert store.engine is None
    path.write_text("")  # an empty annotation
    assert store.reload() and store.engine is None
    path.write_text("allowed_domains: [pypi.org]\n")
    assert store.reload() and store.engine is not None
    path.write_text("allowed_domains: [pypi.org]\nrego_modules: [x.rego]\n")
    assert store.reload() is False  # no files from an annotation
    assert store.engine is not None
    path.write_text("rego_modules: [x.rego]\n")
    with pytest.raises(PolicyError, match="not allowed in a pod's policy"):
        PolicyStore(path, optional=True)


def test_narrow_a_person_may_lift_the_defaults_denial_never_the_pods():
    asking = RegorusEngine(parse_policy("approvals: {hosts: ['*']}"))
    pod = RegorusEngine(parse_policy("allowed_domains: [example.com]"))
    narrowed = CombinedEngine(asking, pod, OverrideMode.NARROW)
    asked = narrowed.evaluate(url_input("GET", "https://example.com/"))
    assert (asked.rule, asked.grant) == ("approval_required", asked.grant)
    assert asked.grant is not None and asked.grant.entry == "example.com"
    refused = narrowed.evaluate(url_input("GET", "https://elsewhere.test/"))
    assert (refused.allow, refused.rule, refused.grant) == (False, "pod:default_deny", None)
