"""Envoy's own lookups of upstream names survive a DNS server that does not answer and a lost
reply: the next server, or the next try, answers within the lookup's budget. (With one try per
server as long as the whole budget, one lost reply was a 502 `upstream_dns_failure`.)

The lab's resolvers lose the replies: iptables in the lab's own namespace, so the workload's
lookups (answered by the agent's sinkhole) are not touched."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from intercept_proxy import netns
from intercept_proxy.lab.addresses import RESOLVER_V4, RESOLVER_V6
from tests.sandbox.harness import Sandbox, sandbox_in_own_lab

pytestmark = pytest.mark.netns

NAMES = ("silent.example", "lost.example")
LAB = {"hosts": [{"name": n} for n in NAMES]}
POLICY = f"allowed_domains: [{', '.join(NAMES)}]\n"
# iptables' nth match counts per rule: packet 0 of every 1,000,000 is the first reply only.
FIRST_ONLY = ["-m", "statistic", "--mode", "nth", "--every", "1000000", "--packet", "0"]


@pytest.fixture(scope="module")
def box(netns_prefix):
    with sandbox_in_own_lab(LAB, f"{netns_prefix}d", POLICY) as sandbox:
        yield sandbox


@contextlib.contextmanager
def replies_dropped(box: Sandbox, resolvers: dict[str, list[str]]) -> Iterator[None]:
    """The lab's DNS replies from each resolver address (iptables or ip6tables by its family)
    matching the extra arguments are dropped while the block runs."""
    added = []
    try:
        for resolver, extra in resolvers.items():
            tool = "ip6tables" if ":" in resolver else "iptables"
            rule = ["OUTPUT", "-p", "udp", "-s", resolver, "--sport", "53", *extra, "-j", "DROP"]
            result = netns.run(box.lab.netns, [tool, "-w", "-I", *rule])
            assert result.returncode == 0, result.stderr
            added.append((tool, rule))
        yield
    finally:
        for tool, rule in added:
            netns.run(box.lab.netns, [tool, "-w", "-D", *rule])


def fetch(box: Sandbox, name: str) -> str:
    result = box.sh(f"curl -sS -o /dev/null -w '%{{http_code}}' https://{name}/")
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def queries(box: Sandbox, name: str) -> dict[str, int]:
    """How many lookups of `name` each lab resolver received."""
    counts = {str(RESOLVER_V4): 0, str(RESOLVER_V6): 0}
    for receipt in box.lab.receipts():
        if receipt["protocol"] == "dns" and receipt["query_name"] == name:
            counts[receipt["address"]] += 1
    return counts


def test_a_silent_first_server_leaves_the_next_to_answer(box):
    with replies_dropped(box, {str(RESOLVER_V4): []}):
        assert fetch(box, "silent.example") == "200"
    asked = queries(box, "silent.example")
    # A and AAAA went to the silent server first, then to the next.
    assert asked[str(RESOLVER_V4)] >= 2 and asked[str(RESOLVER_V6)] >= 2, asked


def test_a_lost_reply_is_asked_again(box):
    with replies_dropped(box, {str(RESOLVER_V4): FIRST_ONLY, str(RESOLVER_V6): FIRST_ONLY}):
        assert fetch(box, "lost.example") == "200"
    asked = queries(box, "lost.example")
    assert sum(asked.values()) >= 3, asked  # A, AAAA and the question whose reply was lost
