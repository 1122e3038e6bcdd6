"""The egress gateway's clients in a cluster, each judged by its own pod's policy.

A client is known by its address (the gateway's listener writes it for the agent): the agent
keeps a copy of the client pods (the API server's list, then watch, of the pods labelled as
the gateway's clients: no other pod may reach it) and, for each address a pod holds, that pod
and the policy of its annotation `intercept-proxy/opa-data`, which narrows the default one as a
sidecar's pod policy does (policy/combined.py). Only narrowing: the gateway is shared, and no
client may widen what it grants to the others.

What is refused rather than guessed:
- an annotation that has never been valid refuses the pod's requests (a sidecar's pod would not
  start); a later invalid one keeps the last valid policy in force, as a sidecar's agent does;
- an address two live pods claim (one stopping, one new, as addresses are reused) is judged by
  every claimant's policy, so neither gets more than its own;
- policies beyond `MAX_POLICIES` distinct ones are not compiled: their pods are refused.
An address no pod holds is a client the gateway does not know: judged by the default policy
(the most any pod's policy allows) or refused, as the operator chose. A pod can send before the
API server tells the gateway its address, so an unknown address waits a little first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from intercept_proxy.decision import ErrorCode
from intercept_proxy.injector.settings import POLICY_ANNOTATION
from intercept_proxy.policy.combined import CombinedEngine, OverrideMode, UnknownClients
from intercept_proxy.policy.engine import Decision, PolicyEngine, RegorusEngine
from intercept_proxy.policy.model import PolicyError, parse_policy
from intercept_proxy.xds.gateway import UNKNOWN_CLIENT_RULE

log = logging.getLogger(__name__)

# The pods the gateway's NetworkPolicy lets in (the chart's clients' side labels them so).
CLIENT_SELECTOR = "networking/allow-egress=true"
INVALID_POLICY_RULE = "gateway_pod_policy_invalid"
# Distinct pod policies compiled at once (about a megabyte each): beyond, pods are refused.
MAX_POLICIES = 100
# How long a request from an address no pod holds waits, at most, for the API server to name
# its pod (less than ext_authz's timeout, which would fail it: the agent is given half of it).
UNKNOWN_WAIT_S = 0.5
_POLL_S = 0.05
# Pods whose addresses are no longer theirs.
_FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Refusal:
    """An engine that refuses every request, for one reason."""

    revision: str
    decision: Decision

    def evaluate(self, input_doc: dict[str, Any]) -> Decision:
        return self.decision


@dataclass(frozen=True)
class ClientPod:
    uid: str
    name: str  # namespace/name
    addresses: tuple[str, ...]
    annotation: str | None
    policy: RegorusEngine | None  # its own (None: it has none, or none was ever valid)
    error: str | None = None  # why its annotation never gave a valid policy


def canonical(address: str) -> str:
    """One spelling of an address, as Envoy and the API server may write it differently."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


def addresses(pod: dict[str, Any]) -> tuple[str, ...]:
    """The addresses that are the pod's own: none on the node's network (shared with every pod
    there), before it has any, or once it has finished (they may be another pod's)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") in _FINISHED:
        return ()
    return tuple(canonical(a["ip"]) for a in status.get("podIPs") or () if a.get("ip"))


def _annotation(pod: dict[str, Any]) -> str | None:
    text = (pod["metadata"].get("annotations") or {}).get(POLICY_ANNOTATION)
    return text if isinstance(text, str) and text.strip() else None


class ClientPods:
    """The client pods by address, from the API server's list and watch events. Only the
    agent's loop may call it: a policy engine (regorus) must stay on the thread that made it."""

    def __init__(self, unknown: UnknownClients, wait_s: float = UNKNOWN_WAIT_S) -> None:
        self.unknown = unknown
        self.wait_s = wait_s
        self._pods: dict[str, ClientPod] = {}  # by uid
        self._claims: dict[str, tuple[ClientPod, ...]] = {}  # by address
        # Each annotation's policy, compiled once, kept while a pod has it: (engine, error).
        self._policies: dict[str, tuple[RegorusEngine | None, str | None]] = {}
        self._uses: Counter[str] = Counter()
        self.listed = False  # at least once

    def resync(self, pods: Iterable[dict[str, Any]]) -> None:
        """A fresh list: every pod it does not hold is gone."""
        listed = list(pods)
        seen = {p["metadata"]["uid"] for p in listed}
        for uid in [uid for uid in self._pods if uid not in seen]:
            self._forget(uid)
        for pod in listed:
            self._keep(pod)
        self.listed = True

    def handle(self, kind: str, pod: dict[str, Any]) -> None:
        """An event of the watch (ADDED, MODIFIED, DELETED)."""
        if kind == "DELETED":
            self._forget(pod["metadata"]["uid"])
        else:
            self._keep(pod)

    def _policy(self, text: str, source: str) -> tuple[RegorusEngine | None, str | None]:
        if text in self._policies:
            return self._policies[text]
        if len(self._policies) >= MAX_POLICIES:  # not kept: tried again at its next event
            return None, f"the gateway holds {MAX_POLICIES} distinct pods' policies already"
        try:
            found: tuple[RegorusEngine | None, str | None] = (
                RegorusEngine(parse_policy(text, source, modules=False)),
                None,
            )
        except Exception as e:  # whatever an author's mistake does, the watch goes on
            found = (None, str(e) if isinstance(e, PolicyError) else f"{type(e).__name__}: {e}")
        self._policies[text] = found
        return found

    def _client_pod(self, pod: dict[str, Any], previous: ClientPod | None) -> ClientPod:
        meta = pod["metadata"]
        uid, name = meta["uid"], f"{meta.get('namespace')}/{meta['name']}"
        text, found = _annotation(pod), addresses(pod)
        if text is None:
            return ClientPod(uid, name, found, None, None)
        source = f"pod {name}, annotation {POLICY_ANNOTATION}"
        policy, error = self._policy(text, source)
        if error is None:
            return ClientPod(uid, name, found, text, policy)
        changed = previous is None or previous.annotation != text
        if previous is not None and previous.policy is not None:
            if changed:
                log.error("%s: its last valid policy stays in force: %s", source, error)
            return ClientPod(uid, name, found, text, previous.policy)
        if changed:
            log.error("%s: its requests are refused: %s", source, error)
        return ClientPod(uid, name, found, text, None, error)

    def _keep(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        previous = self._pods.get(uid)
        current = self._client_pod(pod, previous)
        self._pods[uid] = current
        self._count(current.annotation, 1)  # before the previous one's: the same text stays
        old = () if previous is None else previous.addresses
        if previous is not None:
            self._count(previous.annotation, -1)
        for address in dict.fromkeys((*old, *current.addresses)):
            self._claim(address, uid, current if address in current.addresses else None)

    def _forget(self, uid: str) -> None:
        gone = self._pods.pop(uid, None)
        if gone is None:
            return
        for address in gone.addresses:
            self._claim(address, uid, None)
        self._count(gone.annotation, -1)

    def _claim(self, address: str, uid: str, pod: ClientPod | None) -> None:
        """`pod` (None: no longer) claims `address`."""
        others = tuple(p for p in self._claims.get(address, ()) if p.uid != uid)
        claims = others if pod is None else (*others, pod)
        if claims:
            self._claims[address] = claims
        else:
            self._claims.pop(address, None)

    def _count(self, text: str | None, change: int) -> None:
        """A policy is kept while some pod has its annotation."""
        if text is None:
            return
        self._uses[text] += change
        if self._uses[text] <= 0:
            del self._uses[text]
            self._policies.pop(text, None)

    def pods(self, address: str) -> tuple[ClientPod, ...]:
        """The live pods claiming `address` (more than one only while it changes hands)."""
        return self._claims.get(canonical(address), ())

    def judge(self, default: PolicyEngine, address: str) -> PolicyEngine | None:
        """The engine for a client at `address`; None if no pod holds it."""
        claimants = self.pods(address)
        if not claimants:
            return None
        engine = default
        for pod in sorted(claimants, key=lambda p: p.name):
            if pod.annotation is None:
                continue
            if pod.policy is None:
                reason = (
                    f"the gateway refuses pod {pod.name}'s requests: its annotation "
                    f"{POLICY_ANNOTATION} is not a policy it can apply ({pod.error})"
                )
                decision = Decision(False, INVALID_POLICY_RULE, reason)
                return Refusal(f"{default.revision}+invalid", decision)
            engine = CombinedEngine(engine, pod.policy, OverrideMode.NARROW, f"pod {pod.name}")
        return engine

    def unknown_engine(self, default: PolicyEngine, address: str) -> PolicyEngine:
        if self.unknown is UnknownClients.DEFAULT:
            return default
        reason = f"the gateway knows no pod at {address}, and refuses clients it does not know"
        return Refusal(
            f"{default.revision}+unknown",
            Decision(False, UNKNOWN_CLIENT_RULE, reason, ErrorCode.POLICY_BLOCKED),
        )

    async def __call__(self, default: PolicyEngine, address: str) -> PolicyEngine:
        """The engine for a client at `address`, waiting a little for an address no pod holds
        yet."""
        for _ in range(round(self.wait_s / _POLL_S)):
            engine = self.judge(default, address)
            if engine is not None:
                return engine
            await asyncio.sleep(_POLL_S)
        return self.judge(default, address) or self.unknown_engine(default, address)
