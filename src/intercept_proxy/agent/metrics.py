"""The agent's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from intercept_proxy import ports
from intercept_proxy.decision import COUNTED, counted_labels
from intercept_proxy.dns import QueryEvent
from intercept_proxy.pki import LeafCache
from intercept_proxy.policy.engine import Decision
from intercept_proxy.policy.limits import Budget
from intercept_proxy.xds.server import XdsEvents

# Decisions take tens of microseconds to a few milliseconds.
_LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.envoy_decisions = EnvoyDecisions()
        r.register(self.envoy_decisions)
        self.decision_seconds = Histogram(
            "intercept_decision_seconds",
            "Policy evaluation time of the decisions the agent makes",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.policy_reloads = Counter(
            "intercept_policy_reloads", "Policy reloads", ["result"], registry=r
        )
        self.certificates_minted = Counter(
            "intercept_certificates_minted", "Leaf certificates minted", registry=r
        )
        self.certificate_mint_seconds = Histogram(
            "intercept_certificate_mint_seconds",
            "Time to mint a leaf certificate",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.certificates_cached = Gauge(
            "intercept_certificates_cached", "Leaf certificates in the cache", registry=r
        )
        self.dns_queries = Counter(
            "intercept_dns_queries", "DNS queries answered", ["type", "outcome"], registry=r
        )
        self.xds_pushes = Counter(
            "intercept_xds_pushes", "xDS responses sent", ["type"], registry=r
        )
        self.xds_acks = Counter(
            "intercept_xds_acks", "xDS responses accepted", ["type"], registry=r
        )
        self.xds_nacks = Counter(
            "intercept_xds_nacks", "xDS responses rejected by Envoy", ["type"], registry=r
        )
        # Few values: the policy's budgets' hosts.
        self.budget_spent = Gauge(
            "intercept_budget_spent",
            "What each budget of the policy has spent (requests, bytes uploaded)",
            ["host", "kind"],
            registry=r,
        )

    def observe_dns(self, event: QueryEvent) -> None:
        self.dns_queries.labels(event.qtype or "none", event.outcome).inc()

    def observe_decision(self, _decision: Decision, seconds: float) -> None:
        self.decision_seconds.observe(seconds)

    def observe_budget(self, budget: Budget, requests: int, sent: int) -> None:
        self.budget_spent.labels(budget.host, "requests").set(requests)
        self.budget_spent.labels(budget.host, "upload_bytes").set(sent)

    def observe_reload(self, ok: bool) -> None:
        self.policy_reloads.labels("ok" if ok else "error").inc()

    def observe_mint(self, seconds: float) -> None:
        self.certificates_minted.inc()
        self.certificate_mint_seconds.observe(seconds)

    def track_certificates(self, cache: LeafCache) -> None:
        self.certificates_cached.set_function(lambda: len(cache))

    def xds_events(self) -> XdsEvents:
        return XdsEvents(
            on_push=lambda t: self.xds_pushes.labels(t).inc(),
            on_ack=lambda t: self.xds_acks.labels(t).inc(),
            on_nack=lambda t: self.xds_nacks.labels(t).inc(),
        )


# Envoy counts every decision, its own and the agent's (xds/resources.py: decision_counter).
_ENVOY_STATS = "/stats/prometheus?usedonly&filter=^intercept\\.decisions"


_ENVOY_TIMEOUT = 1.0  # for the whole exchange: a scrape must not wait on a stuck Envoy
Sample = tuple[dict[str, str], float]


def _envoy_decisions(admin: tuple[str, int]) -> list[Sample]:
    """Envoy's decision counters, from its admin interface (blocking: run in a thread)."""
    connection = http.client.HTTPConnection(*admin, timeout=_ENVOY_TIMEOUT)
    try:
        connection.request("GET", _ENVOY_STATS)
        response = connection.getresponse()
        text = response.read().decode() if response.status == 200 else ""
    finally:
        connection.close()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        if family.name == "envoy_intercept_decisions"
        for sample in family.samples
    ]


class EnvoyDecisions:
    """`intercept_decisions_total{judge,result,rule}`, read from Envoy's statistics at each
    scrape: one place to scrape, whoever decided. Absent while Envoy does not answer."""

    def __init__(self, admin: tuple[str, int] = ("127.0.0.1", ports.ENVOY_ADMIN)) -> None:
        self._admin = admin
        self._samples: list[Sample] = []

    async def refresh(self) -> None:
        try:
            self._samples = await asyncio.wait_for(
                asyncio.to_thread(_envoy_decisions, self._admin), _ENVOY_TIMEOUT
            )
        except (OSError, http.client.HTTPException, TimeoutError, ValueError):
            self._samples = []  # Envoy not (yet) answering, or not with its statistics

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "intercept_decisions", "Policy decisions", labels=["judge", "result", "rule"]
        )
        for labels, value in self._samples:
            family.add_metric(list(counted_labels(labels.get(COUNTED, ""))), value)
        yield family
