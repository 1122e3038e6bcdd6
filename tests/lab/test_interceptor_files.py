"""The interceptor's policy files (lab/interceptor.py): a policy and its modules are replaced
all at once, so the agent never reads a new policy beside an old module."""

from __future__ import annotations

from pathlib import Path

from intercept_proxy.lab.interceptor import Interceptor
from intercept_proxy.policy.model import POLICY_FILE_NAME


def test_each_version_of_the_policy_and_its_modules_is_swapped_in_whole(tmp_path):
    upstream_ca = tmp_path / "ca.pem"
    upstream_ca.write_text("-----BEGIN CERTIFICATE-----\n")
    icp = Interceptor("files-test", "{}\n", upstream_ca, ("198.18.0.53",))
    try:
        link = icp.policy_path.parent
        first = link.resolve()
        assert link.is_symlink() and (first / POLICY_FILE_NAME).read_text() == "{}\n"
        icp.write_policy("rego_modules: [a.rego]\n", {"a.rego": "package intercept.custom\n"})
        second = link.resolve()
        assert second != first and first.exists()  # the one before stays, an agent may read it
        assert {p.name for p in second.iterdir()} == {POLICY_FILE_NAME, "a.rego"}
        icp.write_policy("{}\n")
        third = link.resolve()
        assert not first.exists() and second.exists()
        assert {p.name for p in third.iterdir()} == {POLICY_FILE_NAME}  # a.rego went with it
        assert icp.policy_path.read_text() == "{}\n"
        assert sorted(p.name for p in icp.dir.glob(".policy-*")) == [second.name, third.name]
    finally:
        icp.close()
    assert not Path(icp.dir).exists()
