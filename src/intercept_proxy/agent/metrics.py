"""The agent's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from intercept_proxy.dns import QueryEvent
from intercept_proxy.pki import LeafCache
from intercept_proxy.policy.engine import Decision
from intercept_proxy.xds.server import XdsEvents

# Decisions take tens of microseconds to a few milliseconds.
_LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "intercept_decisions", "Policy decisions", ["result", "rule"], registry=r
        )
        self.decision_seconds = Histogram(
            "intercept_decision_seconds",
            "Policy evaluation time",
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

    def observe_dns(self, event: QueryEvent) -> None:
        self.dns_queries.labels(event.qtype or "none", event.outcome).inc()

    def observe_decision(self, decision: Decision, seconds: float) -> None:
        self.decisions.labels("allow" if decision.allow else "deny", decision.rule).inc()
        self.decision_seconds.observe(seconds)

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
