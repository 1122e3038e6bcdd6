"""The gateway's clients in a cluster: pods by address from the API server's events, each judged
by the default policy narrowed by its own; the ext_authz service choosing by the address the
gateway's listener wrote."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from intercept_proxy.agent import clients as cl
from intercept_proxy.agent.clients import ClientPods
from intercept_proxy.authz.service import AuthorizationService, check_input
from intercept_proxy.injector.settings import POLICY_ANNOTATION
from intercept_proxy.policy.combined import UnknownClients
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.model import parse_policy
from intercept_proxy.xds.gateway import UNKNOWN_CLIENT_RULE
from intercept_proxy.xds.routes import CLIENT_HEADER
from tests.authz.test_service import check_request

DEFAULT = RegorusEngine(parse_policy("allowed_domains: [pypi.org, files.pythonhosted.org]"))


def pod(
    name: str,
    ips: tuple[str, ...] = ("10.1.0.5", "fd00:1::5"),
    annotation: str | None = None,
    *,
    uid: str | None = None,
    phase: str = "Running",
    host_network: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "agents", "uid": uid or f"uid-{name}"}
    if annotation is not None:
        meta["annotations"] = {POLICY_ANNOTATION: annotation}
    return {
        "metadata": meta,
        "spec": {"hostNetwork": host_network},
        "status": {"phase": phase, "podIPs": [{"ip": ip} for ip in ips]},
    }


def decide(pods: ClientPods, address: str, host: str) -> tuple[bool, str, str]:
    engine = asyncio.run(pods(DEFAULT, address))
    decision = engine.evaluate(check_input(check_request("GET", host, "/simple/")))
    return decision.allow, decision.rule, engine.revision


def test_a_pods_own_policy_narrows_the_default_on_each_of_its_addresses():
    pods = ClientPods(UnknownClients.DEFAULT)
    pods.resync(
        [pod("narrow", annotation="allowed_domains: [pypi.org]"), pod("plain", ("10.1.0.6",))]
    )
    for address in ("10.1.0.5", "fd00:1::5"):
        allowed, rule, revision = decide(pods, address, "files.pythonhosted.org")
        assert (allowed, rule) == (False, "pod:default_deny")
        assert revision.startswith(f"{DEFAULT.revision}+narrow:")
        assert decide(pods, address, "pypi.org")[:2] == (True, "allowed_domains")
    assert decide(pods, "10.1.0.6", "files.pythonhosted.org") == (
        True,
        "allowed_domains",
        DEFAULT.revision,
    )
    # Narrowing only: what the default denies, a pod's policy cannot allow.
    pods.handle("MODIFIED", pod("narrow", annotation="allowed_domains: [evil.example]"))
    assert decide(pods, "10.1.0.5", "evil.example")[:2] == (False, "default_deny")


def test_a_denial_names_the_pod_whose_policy_it_is():
    pods = ClientPods(UnknownClients.DEFAULT)
    pods.resync([pod("narrow", annotation="allowed_domains: [pypi.org]")])
    engine = asyncio.run(pods(DEFAULT, "10.1.0.5"))
    decision = engine.evaluate(check_input(check_request("GET", "files.pythonhosted.org", "/")))
    assert decision.reason.endswith("(pod agents/narrow's own policy)")


def test_an_annotation_never_valid_refuses_the_pod_and_a_later_invalid_one_keeps_the_last():
    pods = ClientPods(UnknownClients.DEFAULT)
    pods.resync([pod("broken", annotation="allowed_domains: 5")])
    allowed, rule, _ = decide(pods, "10.1.0.5", "pypi.org")
    assert (allowed, rule) == (False, cl.INVALID_POLICY_RULE)
    reason = asyncio.run(pods(DEFAULT, "10.1.0.5")).evaluate({}).reason
    assert "pod agents/broken" in reason and "allowed_domains" in reason
    pods.handle("MODIFIED", pod("broken", annotation="allowed_domains: [pypi.org]"))
    assert decide(pods, "10.1.0.5", "files.pythonhosted.org")[:2] == (False, "pod:default_deny")
    pods.handle("MODIFIED", pod("broken", annotation="unknown_key: 1"))
    assert decide(pods, "10.1.0.5", "files.pythonhosted.org")[:2] == (False, "pod:default_deny")
    assert decide(pods, "10.1.0.5", "pypi.org")[:2] == (True, "allowed_domains")


def test_a_pods_policy_may_name_no_module_and_no_credential():
    pods = ClientPods(UnknownClients.DEFAULT)
    pods.resync([pod("sly", annotation="credentials: [{host: pypi.org, env: X}]")])
    assert decide(pods, "10.1.0.5", "pypi.org")[:2] == (False, cl.INVALID_POLICY_RULE)


def test_an_address_two_live_pods_claim_gets_what_both_policies_allow():
    pods = ClientPods(UnknownClients.REFUSE)
    old = pod("old", annotation="allowed_domains: [pypi.org]")
    pods.resync([old])
    # A new pod is given the address of one still stopping: neither gets more than its own.
    pods.handle("ADDED", pod("new", annotation="allowed_domains: [files.pythonhosted.org]"))
    assert {p.name for p in pods.pods("10.1.0.5")} == {"agents/old", "agents/new"}
    assert decide(pods, "10.1.0.5", "pypi.org")[:2] == (False, "pod:default_deny")
    assert decide(pods, "10.1.0.5", "files.pythonhosted.org")[:2] == (False, "pod:default_deny")
    # The old one finished: the address is the new one's alone.
    pods.handle("MODIFIED", pod("old", annotation="allowed_domains: [pypi.org]", phase="Failed"))
    assert decide(pods, "10.1.0.5", "files.pythonhosted.org")[:2] == (True, "allowed_domains")
    # Its deletion, arriving late, leaves the new one's claim be.
    pods.handle("DELETED", old)
    assert [p.name for p in pods.pods("10.1.0.5")] == ["agents/new"]
    # A claimant whose annotation is no policy refuses the address.
    pods.handle("ADDED", pod("broken", annotation="allowed_domains: 5"))
    assert decide(pods, "10.1.0.5", "files.pythonhosted.org")[:2] == (False, cl.INVALID_POLICY_RULE)
    # A new list that no longer holds them forgets them.
    pods.resync([])
    assert pods.pods("10.1.0.5") == () and pods.listed


def test_addresses_are_compared_in_one_spelling():
    pods = ClientPods(UnknownClients.REFUSE)
    pods.resync([pod("narrow", ("10.1.0.5", "fd00:1:0:0:0:0:0:5"), "allowed_domains: [pypi.org]")])
    for spelling in ("10.1.0.5", "::ffff:10.1.0.5", "fd00:1::5", "FD00:1::0005"):
        assert [p.name for p in pods.pods(spelling)] == ["agents/narrow"], spelling


def test_pod_policies_beyond_the_limit_are_refused_until_one_goes(monkeypatch):
    monkeypatch.setattr(cl, "MAX_POLICIES", 2)
    pods = ClientPods(UnknownClients.DEFAULT)
    texts = ["allowed_domains: [pypi.org]", "allowed_domains: [files.pythonhosted.org]"]
    # Replicas of one Deployment share their annotation: one policy.
    pods.resync([pod(f"a{i}", (f"10.1.0.{i}",), texts[0]) for i in range(5)])
    pods.handle("ADDED", pod("b", ("10.1.1.1",), texts[1]))
    pods.handle("ADDED", pod("c", ("10.1.2.1",), "allowed_domains: [pypi.org, example.com]"))
    for i in range(5):
        assert decide(pods, f"10.1.0.{i}", "pypi.org")[:2] == (True, "allowed_domains")
    assert decide(pods, "10.1.1.1", "pypi.org")[:2] == (False, "pod:default_deny")
    allowed, rule, _ = decide(pods, "10.1.2.1", "pypi.org")
    assert (allowed, rule) == (False, cl.INVALID_POLICY_RULE)
    assert "2 distinct pods' policies" in asyncio.run(pods(DEFAULT, "10.1.2.1")).evaluate({}).reason
    # b's pod goes: its policy with it, and c's applies at its next request.
    pods.handle("DELETED", pod("b", ("10.1.1.1",), texts[1]))
    assert decide(pods, "10.1.2.1", "pypi.org")[:2] == (True, "allowed_domains")
    # A pod that finished holds no address, nor a place among the policies.
    pods.handle(
        "MODIFIED", pod("c", ("10.1.2.1",), "allowed_domains: [x.example]", phase="Succeeded")
    )
    pods.handle("ADDED", pod("d", ("10.1.3.1",), texts[1]))
    assert decide(pods, "10.1.3.1", "pypi.org")[:2] == (False, "pod:default_deny")


def test_a_policy_too_long_to_compile_on_the_loop_is_refused():
    pods = ClientPods(UnknownClients.DEFAULT)
    long = "allowed_domains: [" + ", ".join(f"h{i}.example" for i in range(8000)) + "]"
    pods.resync([pod("long", annotation=long)])
    allowed, rule, _ = decide(pods, "10.1.0.5", "pypi.org")
    assert (allowed, rule) == (False, cl.INVALID_POLICY_RULE)
    assert f"longer than {cl.MAX_POLICY_BYTES} bytes" in pods.pods("10.1.0.5")[0].error


def test_before_the_first_list_every_client_is_refused():
    pods = ClientPods(UnknownClients.DEFAULT, wait_s=0.1)
    allowed, rule, _ = decide(pods, "10.1.0.5", "pypi.org")
    assert (allowed, rule) == (False, UNKNOWN_CLIENT_RULE)
    pods.resync([])
    assert decide(pods, "10.1.0.5", "pypi.org")[:2] == (True, "allowed_domains")


def test_a_pod_on_the_nodes_network_holds_no_address():
    pods = ClientPods(UnknownClients.REFUSE)
    pods.resync([pod("host", ("192.168.1.10",), "allowed_domains: []", host_network=True)])
    assert pods.pods("192.168.1.10") == ()


@pytest.mark.parametrize("unknown", list(UnknownClients))
def test_an_unknown_address_waits_for_its_pod_then_gets_what_the_operator_chose(
    unknown, monkeypatch
):
    pods = ClientPods(unknown)
    pods.resync([])
    monkeypatch.setattr(cl, "UNKNOWN_WAIT_S", 0.2)

    async def late() -> Any:
        # The pod's address arrives while its first request waits.
        async def arrive() -> None:
            await asyncio.sleep(0.05)
            pods.handle("ADDED", pod("late", ("10.1.0.9",), "allowed_domains: [pypi.org]"))

        task = asyncio.create_task(arrive())
        engine = await pods(DEFAULT, "10.1.0.9")
        await task
        return engine

    engine = asyncio.run(late())
    doc = check_input(check_request("GET", "files.pythonhosted.org", "/"))
    assert engine.evaluate(doc).rule == "pod:default_deny"
    allowed, rule, revision = decide(pods, "10.1.0.77", "pypi.org")
    if unknown is UnknownClients.DEFAULT:
        assert (allowed, rule, revision) == (True, "allowed_domains", DEFAULT.revision)
    else:
        assert (allowed, rule) == (False, UNKNOWN_CLIENT_RULE)


def test_the_service_judges_the_client_the_gateways_listener_names():
    pods = ClientPods(UnknownClients.REFUSE)
    pods.resync([pod("narrow", ("10.1.0.5",), "allowed_domains: [pypi.org]")])
    service = AuthorizationService(lambda: DEFAULT, clients=pods)

    def check(client: str | None, peer: str) -> dict[str, Any]:
        request = check_request("GET", "files.pythonhosted.org", "/")
        if client is not None:
            request.attributes.request.http.headers[CLIENT_HEADER] = client
        request.attributes.source.address.socket_address.address = peer
        response = asyncio.run(service.Check(request, None))
        return json.loads(response.denied_response.body or "{}").get("error", {})

    # Inside a tunnel the peer is Envoy's internal address: the listener's header names the client.
    assert check("10.1.0.5", "envoy://internal")["rule"] == "pod:default_deny"
    assert check(None, "10.1.0.5")["rule"] == "pod:default_deny"
    assert check(None, "envoy://internal")["rule"] == UNKNOWN_CLIENT_RULE
