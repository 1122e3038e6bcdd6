"""The non-public ranges `intercept run` and `intercept gateway` let Envoy reach: the lab's
with a lab, the operator's (`--upstream-private-range`), nothing else; a bad one is refused
before anything starts."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from intercept_proxy.lab.addresses import LAB_RANGES
from intercept_proxy.runtime.network import NetworkError, private_ranges


def ranges(lab: bool, *given: str, lab_log: str | None = None) -> tuple[str, ...]:
    args = argparse.Namespace(
        lab="lab.yaml" if lab else None, lab_log=lab_log, upstream_private_range=list(given)
    )
    return private_ranges(args)


def test_the_lab_s_and_the_operator_s_only():
    assert ranges(False) == ()
    assert ranges(True) == LAB_RANGES
    assert ranges(False, "10.20.0.0/16", "fd12::/64") == ("10.20.0.0/16", "fd12::/64")
    with pytest.raises(NetworkError, match=re.escape("--upstream-private-range 10.0.0.0/33")):
        ranges(False, "10.0.0.0/33")
    with pytest.raises(NetworkError, match="--lab-log needs --lab"):
        ranges(False, lab_log="receipts.jsonl")


@pytest.mark.parametrize("command", [["run", "--", "true"], ["gateway", "--policy", "/dev/null"]])
def test_a_range_that_is_no_cidr_is_a_usage_error(command):
    name, *rest = command
    argv = [sys.executable, "-m", "intercept_proxy", name, "--upstream-private-range", "x/8"]
    done = subprocess.run([*argv, *rest], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--upstream-private-range x/8" in done.stderr
