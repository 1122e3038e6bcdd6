"""Namespace fixtures: every name carries one session prefix and is removed at the end, however
the tests ended."""

import itertools

import pytest

from intercept_proxy import netns


@pytest.fixture(scope="session")
def prefix(netns_prefix):
    return netns_prefix


@pytest.fixture(scope="session")
def _numbers():
    return itertools.count()


@pytest.fixture
def fresh_netns(prefix, _numbers):
    """An empty namespace of this test's own, deleted afterwards."""
    name = f"{prefix}f{next(_numbers)}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)


def run_in(name, *argv):
    """Run a command inside a namespace; its stdout (the command must succeed)."""
    result = netns.run(name, argv)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout
