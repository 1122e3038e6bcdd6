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
- beyond `MAX_POLICIES` distinct policies in force, or `MAX_POLICY_BYTES`, a pod's policy is
  not applied: its requests are refused (until another policy goes);
- before the pods are first listed, every client is refused.
An address no pod holds is a client the gateway does not know: judged by the default policy
(the most any pod's policy allows) or refused, as the operator chose. A pod can send before the
API server tells the gateway its address, so an unknown address waits a little first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from intercept_proxy.injector.settings import POLICY_ANNOTATION
from intercept_proxy.policy.combined import CombinedEngine, OverrideMode, UnknownClients
from intercept_proxy.policy.engine import Decision, PolicyEngine, RegorusEngine
from intercept_proxy.policy.model import Policy, PolicyError, parse_policy
from intercept_proxy.xds.gateway import UNKNOWN_CLIENT_RULE

log = logging.getLogger(__name__)

# The pods the gateway's NetworkPolicy lets in (the chart's clients' side labels them so).
CLIENT_SELECTOR = "networking/allow-egress=true"
INVALID_POLICY_RULE = "gateway_pod_policy_invalid"
# Distinct pod policies applied at once (an engine of about a megabyte each): beyond, the
# requests of pods with another are refused until one goes. A longer annotation is refused:
# the agent's loop, which judges every client, compiles it.
MAX_POLICIES = 100
MAX_POLICY_BYTES = 64 * 1024
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
    # The policy in force (its annotation's, or its last valid one's) and the text it was read
    # from; None: it has none, or none was ever valid (`error` says why).
    policy: Policy | None
    policy_text: str | None = None
    error: str | None = None


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
    agent's loop may call it: a policy engine (regorus) must stay on the thread that made it.
    Engines are made at a client's first request, one per distinct policy, kept while a pod
    with an address has it."""

    def __init__(self, unknown: UnknownClients, wait_s: float = UNKNOWN_WAIT_S) -> None:
        self.unknown = unknown
        self.wait_s = wait_s
        self._pods: dict[str, ClientPod] = {}  # by uid: those holding addresses
        self._claims: dict[str, tuple[ClientPod, ...]] = {}  # by address
        self._engines: dict[str, RegorusEngine] = {}  # by policy text
        self._uses: Counter[str] = Counter()  # pods in `_pods` by policy text
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

    def _client_pod(
        self, pod: dict[str, Any], found: tuple[str, ...], previous: ClientPod | None
    ) -> ClientPod:
        """`pod`, holding the addresses `found`, as a client."""
        meta = pod["metadata"]
        uid, name = meta["uid"], f"{meta.get('namespace')}/{meta['name']}"
        text = _annotation(pod)
        if previous is not None and previous.annotation == text:  # read once
            return dataclasses.replace(previous, name=name, addresses=found)
        if text is None:
            return ClientPod(uid, name, found, None, None)
        source = f"pod {name}, annotation {POLICY_ANNOTATION}"
        try:
            if len(text.encode()) > MAX_POLICY_BYTES:
                raise PolicyError(source, None, f"longer than {MAX_POLICY_BYTES} bytes")
            return ClientPod(
                uid, name, found, text, parse_policy(text, source, modules=False), text
            )
        except Exception as e:  # whatever an author's mistake does, the watch goes on
            error = str(e) if isinstance(e, PolicyError) else f"{type(e).__name__}: {e}"
        if previous is not None and previous.policy is not None:
            log.error("%s: its last valid policy stays in force: %s", source, error)
            return dataclasses.replace(previous, name=name, addresses=found, annotation=text)
        log.error("%s: its requests are refused: %s", source, error)
        return ClientPod(uid, name, found, text, None, None, error)

    def _keep(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        previous = self._pods.get(uid)
        found = addresses(pod)
        if not found:  # not yet, or no longer, a client anyone could be
            self._forget(uid)
            return
        current = self._client_pod(pod, found, previous)
        self._pods[uid] = current
        self._count(current.policy_text, 1)  # before the previous one's: the same text stays
        old = () if previous is None else previous.addresses
        if previous is not None:
            self._count(previous.policy_text, -1)
        for address in dict.fromkeys((*old, *current.addresses)):
            self._claim(address, uid, current if address in current.addresses else None)

    def _forget(self, uid: str) -> None:
        gone = self._pods.pop(uid, None)
        if gone is None:
            return
        for address in gone.addresses:
            self._claim(address, uid, None)
        self._count(gone.policy_text, -1)

    def _claim(self, address: str, uid: str, pod: ClientPod | None) -> None:
        """`pod` (None: no longer) claims `address`."""
        others = tuple(p for p in self._claims.get(address, ()) if p.uid != uid)
        claims = others if pod is None else (*others, pod)
        if claims:
            self._claims[address] = claims
        else:
            self._claims.pop(address, None)

    def _count(self, text: str | None, change: int) -> None:
        """An engine is kept while some pod has its policy."""
        if text is None:
            return
        self._uses[text] += change
        if self._uses[text] <= 0:
            del self._uses[text]
            self._engines.pop(text, None)

    def _engine(self, pod: ClientPod) -> RegorusEngine | str:
        """The engine of `pod`'s policy, or why there is none."""
        assert pod.policy is not None and pod.policy_text is not None
        engine = self._engines.get(pod.policy_text)
        if engine is not None:
            return engine
        if len(self._engines) >= MAX_POLICIES:
            return f"the gateway applies {MAX_POLICIES} distinct pods' policies already"
        try:
            engine = RegorusEngine(pod.policy)
        except Exception as e:  # a parsed policy the engine refuses: the pod's mistake
            return f"{type(e).__name__}: {e}"
        self._engines[pod.policy_text] = engine
        return engine

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
            own = self._engine(pod) if pod.policy is not None else pod.error
            if isinstance(own, str) or own is None:
                reason = (
                    f"the gateway refuses pod {pod.name}'s requests: it cannot apply its "
                    f"annotation {POLICY_ANNOTATION} ({own})"
                )
                decision = Decision(False, INVALID_POLICY_RULE, reason)
                return Refusal(f"{default.revision}+refused", decision)
            engine = CombinedEngine(engine, own, OverrideMode.NARROW, f"pod {pod.name}")
        return engine

    def unknown_engine(self, default: PolicyEngine, address: str) -> PolicyEngine:
        if not self.listed:  # whatever the operator chose: nothing is known yet
            reason = "the gateway has not yet listed its clients' pods"
        elif self.unknown is UnknownClients.DEFAULT:
            return default
        else:
            reason = f"the gateway knows no pod at {address}, and refuses clients it does not know"
        return Refusal(
            f"{default.revision}+unknown",
            Decision(False, UNKNOWN_CLIENT_RULE, reason),
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
