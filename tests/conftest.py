"""Fixtures shared across test folders.

Every network namespace and interface a session creates carries one prefix, and everything
carrying it is removed at the end, however the tests ended. These tests need root: without it
they fail, they are never skipped."""

from __future__ import annotations

import os

import pytest

from intercept_proxy import netns
from tests.sandbox.harness import Sandbox, start_lab


@pytest.fixture(scope="session")
def netns_prefix():
    if os.geteuid() != 0:
        pytest.fail("these tests need root: network namespaces, iptables, setpriv")
    prefix = netns.unique_prefix("ipt")
    yield prefix
    netns.cleanup(prefix)


@pytest.fixture(scope="module")
def sandbox_lab(netns_prefix):
    lab = start_lab(netns_prefix)
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def sandbox(sandbox_lab):
    """`intercept run`'s pod with a workload that waits, one per module."""
    box = Sandbox(sandbox_lab).start()
    try:
        yield box
    finally:
        box.close()
