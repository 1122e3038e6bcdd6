"""A person's approval written into the policy file: one entry more, nothing else changed."""

from __future__ import annotations

import re

import pytest

from intercept_proxy.policy.edit import add_entry, diff, write
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


def test_diff_and_write_keep_the_files_mode(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("allowed_domains: [a.test]\n")
    path.chmod(0o640)
    after = add_entry(path.read_text(), "allowed_domains", "new.test")
    shown = diff(path, path.read_text(), after)
    assert "-allowed_domains: [a.test]\n+allowed_domains: [a.test, new.test]\n" in shown
    write(path, after)
    assert path.read_text() == after and path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["policy.yaml"]
