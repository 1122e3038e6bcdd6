"""Fixtures shared across test folders.

Every network namespace and interface a session creates carries one prefix, and everything
carrying it is removed at the end, however the tests ended. These tests need root: without it
they fail, they are never skipped."""

from __future__ import annotations

import os
import time

import pytest

from intercept_proxy import netns
from intercept_proxy.cluster.cluster import Cluster, unique_name
from intercept_proxy.cluster.tools import ToolsError
from tests.cluster.harness import LAB_SPEC, MEASUREMENTS, Kube
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


# -- a real cluster (etcd, kube-apiserver, kube-controller-manager, Kyverno and our node, its
# pods attached to a lab): one for the whole session, whichever folders use it.


@pytest.fixture(scope="session")
def cluster():
    if os.geteuid() != 0:
        pytest.fail("the cluster tests need root: network namespaces, iptables, pods' users")
    try:
        c = Cluster(unique_name("t"), LAB_SPEC)
    except ToolsError as e:
        pytest.fail(str(e))
    c.up()
    MEASUREMENTS["cluster start (session fixture), s"] = c.start_seconds
    for step, seconds in c.timings.items():
        MEASUREMENTS[f"  ready: {step}, s after start"] = seconds
    try:
        yield c
    finally:
        c.down()


@pytest.fixture(scope="session")
def kube(cluster):
    return Kube(cluster)


@pytest.fixture
def namespace(kube, request):
    """A namespace of the test's own, deleted at the end (not waited for: the namespace
    controller takes 10 s with pods in it; test_pods waits for one and measures it)."""
    name = (
        f"{request.node.name.replace('_', '-')[:40].strip('-')}-{int(time.time() * 1000) % 100000}"
    )
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false")


def pytest_terminal_summary(terminalreporter):
    if MEASUREMENTS:
        terminalreporter.section("cluster measurements")
        for key, value in MEASUREMENTS.items():
            terminalreporter.write_line(f"{key}: {value}")
