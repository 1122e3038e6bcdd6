"""A person's approval written into the policy file: one entry more, nothing else changed."""

from __future__ import annotations

import re

import pytest

from intercept_proxy.policy.edit import add_entry, add_to_file
from intercept_proxy.policy.model import PolicyError


@pytest.mark.parametrize(
    "before, key, after",
    [
        (
            "allowed_domains:\n  - pypi.org   # python\n# the rest\nbudgets: []\n",
            "allowed_domains",
            "allowed_domains:\n  - pypi.org   # python\n  - new.test\n# the rest\nbudgets: []\n",
        ),
        (
            "allowed_domains:\n- a.test\n- b.test",
            "allowed_domains",
            "allowed_domains:\n- a.test\n- b.test\n- new.test\n",
        ),
        (
            "unrestricted_domains: [a.test]  # c\n",
            "unrestricted_domains",
            "unrestricted_domains: [a.test, new.test]  # c\n",
        ),
        (
            "unrestricted_domains: []\n",
            "unrestricted_domains",
            "unrestricted_domains: [new.test]\n",
        ),
        (
            "unrestricted_domains: []\n",
            "allowed_domains",
            "unrestricted_domains: []\nallowed_domains:\n  - new.test\n",
        ),
        ("allowed_domains:\n", "allowed_domains", "allowed_domains:\n  - new.test\n"),
        ("# deny all\n{}\n", "allowed_domains", "# deny all\nallowed_domains:\n  - new.test\n"),
        ("allowed_domains: [new.test]\n", "allowed_domains", "allowed_domains: [new.test]\n"),
    ],
)
def test_add_entry(before, key, after):
    assert add_entry(before, key, "new.test") == after


def test_a_layout_it_cannot_edit_is_refused():
    with pytest.raises(PolicyError, match=re.escape("one {...} mapping; add it by hand")):
        add_entry("{allowed_domains: [a.test]}", "unrestricted_domains", "new.test")
    shared = "allowed_domains: &d [a.test]\nunrestricted_domains: *d\n"
    with pytest.raises(PolicyError, match=re.escape("could not add new.test here; add it by hand")):
        add_entry(shared, "unrestricted_domains", "new.test")


def test_an_invalid_policy_is_not_edited():
    with pytest.raises(PolicyError, match="unknown key"):
        add_entry("allowed: [a.test]\n", "allowed_domains", "new.test")


def test_add_to_file_shows_the_diff_applies_then_writes_into_the_same_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("allowed_domains: [a.test]\nrego_modules: [extra.rego]\n")
    (tmp_path / "extra.rego").write_text("package intercept.custom\n")
    path.chmod(0o640)
    inode = path.stat().st_ino
    events: list[str] = []

    def confirm(shown: str) -> bool:
        events.append(shown)
        return True

    assert add_to_file(
        path, "allowed_domains", "new.test", confirm, lambda: events.append("applied")
    )
    (shown, applied) = events
    assert "-allowed_domains: [a.test]\n+allowed_domains: [a.test, new.test]\n" in shown
    assert applied == "applied"
    assert path.read_text() == "allowed_domains: [a.test, new.test]\nrego_modules: [extra.rego]\n"
    assert (path.stat().st_ino, path.stat().st_mode & 0o777) == (inode, 0o640)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra.rego", "policy.yaml"]


def test_add_to_file_declined_or_raced_changes_nothing(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("allowed_domains: [a.test]\n")
    applied: list[bool] = []
    assert not add_to_file(
        path, "allowed_domains", "n.test", lambda d: False, lambda: applied.append(True)
    )
    assert applied == [] and path.read_text() == "allowed_domains: [a.test]\n"

    def changed_meanwhile(shown: str) -> bool:
        path.write_text("allowed_domains: [b.test]\n")
        return True

    with pytest.raises(PolicyError, match="it changed after the diff was made: not written"):
        add_to_file(path, "allowed_domains", "n.test", changed_meanwhile, lambda: None)
    assert path.read_text() == "allowed_domains: [b.test]\n"


def test_never_through_a_symbolic_link(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("allowed_domains: [a.test]\n")
    link = tmp_path / "policy.yaml"
    link.symlink_to(target)
    applied: list[bool] = []
    with pytest.raises(OSError):
        add_to_file(link, "allowed_domains", "b.test", lambda d: True, lambda: applied.append(True))
    assert applied == []
    assert target.read_text() == "allowed_domains: [a.test]\n"
