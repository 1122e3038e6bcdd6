"""The examples the README points at are valid."""

from __future__ import annotations

from pathlib import Path

from intercept_proxy.lab import LabSpec
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.input import url_input
from intercept_proxy.policy.model import load_policy

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_example_policy_decides_as_the_readme_says():
    engine = RegorusEngine(load_policy(EXAMPLES / "policy.yaml"))
    d = engine.evaluate(url_input("POST", "https://api.github.com/repos/octo/other/issues"))
    assert (d.allow, d.rule) == (False, "github_write_not_allowed")
    assert engine.evaluate(url_input("GET", "https://files.pythonhosted.org/x")).allow
    assert engine.evaluate(url_input("POST", "https://api.anthropic.com/v1/messages")).allow


def test_example_lab_spec_is_valid():
    spec = LabSpec.load(EXAMPLES / "lab.yaml")
    assert "github.com" in [h.name for h in spec.hosts]
