"""Wiring of the agent: policy store, CA, ADS (with on-demand certificates and the compiled
policy's routes), ext_authz, health."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from intercept_proxy.agent.clients import CLIENT_SELECTOR, UNKNOWN_WAIT_S, ClientPods
from intercept_proxy.agent.control import serve_control
from intercept_proxy.agent.health import health_routes, metrics_routes, serve
from intercept_proxy.agent.metrics import Metrics
from intercept_proxy.agent.settings import AgentSettings
from intercept_proxy.authz.approvals import Approvals
from intercept_proxy.authz.budgets import Ledger
from intercept_proxy.authz.service import AuthorizationService
from intercept_proxy.cluster.client import KubeClient, list_watch
from intercept_proxy.cluster.kubeconfig import in_cluster
from intercept_proxy.dns import DnsSinkhole
from intercept_proxy.pki import CertificateAuthority, LeafCache
from intercept_proxy.pki.files import SYSTEM_TRUST, write_public
from intercept_proxy.policy.combined import CombinedEngine, OverrideMode
from intercept_proxy.policy.credentials import Placeholders, placeholders
from intercept_proxy.policy.engine import PolicyEngine, RegorusEngine
from intercept_proxy.policy.model import Policy
from intercept_proxy.policy.native import compile_policy
from intercept_proxy.policy.store import PolicyStore
from intercept_proxy.watch import watch
from intercept_proxy.xds import protos
from intercept_proxy.xds.bootstrap import STATIC_CLUSTERS
from intercept_proxy.xds.certificates import certificate_resolver
from intercept_proxy.xds.consistency import inconsistencies
from intercept_proxy.xds.resources import (
    DataPlane,
    Extras,
    clusters,
    credential_secrets,
    listeners,
    route_configurations,
)
from intercept_proxy.xds.routes import BudgetHosts
from intercept_proxy.xds.server import AggregatedDiscoveryService, Snapshot, SnapshotCache
from intercept_proxy.xds.types import CLUSTER, LISTENER, ROUTE, SECRET

log = logging.getLogger(__name__)


class AgentError(Exception):
    """Settings the agent cannot start with; the message says which."""


def build_snapshot(
    dp: DataPlane,
    upstream_ca_pem: str,
    routes: list[dict[str, Any]],
    extras: Extras,
    secrets: tuple[str, ...],
) -> Snapshot:
    """The resources Envoy gets (with the `secrets` of `extras`' credentials); refused
    (AgentError) if they name one they do not hold."""
    resources = {
        CLUSTER: clusters(dp, upstream_ca_pem),
        LISTENER: listeners(dp, extras),
        ROUTE: routes,
    }
    problems = inconsistencies(
        resources[CLUSTER], resources[LISTENER], resources[ROUTE], STATIC_CLUSTERS
    )
    if problems:
        raise AgentError("inconsistent xDS snapshot, not published: " + "; ".join(problems))
    messages = {
        type_url: {r["name"]: protos.to_message(type_url, r) for r in items}
        for type_url, items in resources.items()
    }
    return Snapshot(
        {**messages, SECRET: {m.name: m for m in credential_secrets(extras.credentials, secrets)}}
    )


def native_routes(
    policy: Policy,
    revision: str,
    credential_headers: Placeholders,
    budget_hosts: BudgetHosts,
    hold_s: int | None = None,
    held_hosts: tuple[str, ...] = (),
    gateway: bool = False,
    per_client: bool = False,
) -> list[dict[str, Any]]:
    """The listeners' routes (the gateway's too, if it serves) with `policy` compiled in
    (seconds for a large policy); `per_client`: the agent judges each client by its own."""
    engine = RegorusEngine(policy)  # its own: the agent's engine serves ext_authz meanwhile
    return route_configurations(
        revision,
        compile_policy(policy, engine, tls=True),
        None if per_client else compile_policy(policy, engine, tls=False),
        credential_headers,
        budget_hosts,
        hold_s,
        held_hosts,
        gateway,
        per_client,
    )


def write_trust_bundle(path: Path, ca: CertificateAuthority) -> None:
    """The sandbox CA first, then the system roots (for destinations reached directly)."""
    try:
        system = SYSTEM_TRUST.read_bytes()
    except OSError:
        system = b""
    write_public(path, ca.cert_pem + b"\n" + system)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        # Both raise on invalid input: without a valid policy and CA the agent does not start.
        self.policy = PolicyStore(settings.policy, self._reloaded)
        self.pod_policy = (
            PolicyStore(settings.pod_policy, self._reloaded, optional=True)
            if settings.pod_policy is not None and settings.pod_policy_mode is not OverrideMode.NONE
            else None
        )
        ca = CertificateAuthority.load_or_generate(settings.ca_cert, settings.ca_key)
        if settings.trust_bundle is not None:
            write_trust_bundle(settings.trust_bundle, ca)
        self.certificates = LeafCache(
            ca,
            max_entries=settings.cert_cache_size,
            validity=settings.cert_validity,
            on_mint=self.metrics.observe_mint,
        )
        self.metrics.track_certificates(self.certificates)
        self.snapshots = SnapshotCache()
        self.ads = AggregatedDiscoveryService(
            self.snapshots,
            {SECRET: certificate_resolver(self.certificates)},
            self.metrics.xds_events(),
            redact=self.redact,
        )
        try:
            self.dns = DnsSinkhole(
                settings.dns_forward_suffixes, settings.dns_upstream, self.metrics.observe_dns
            )
        except ValueError as e:  # HostnameError included: a bad suffix
            raise AgentError(f"DNS sinkhole: {e}") from None
        self.approvals = Approvals(lambda g: self.policy.grant(g.key, g.entry))
        self.clients, self._api = self._gateway_clients(settings)
        self.authz = AuthorizationService(
            self.engine,
            self.metrics.observe_decision,
            self.leak_markers,
            lambda: self.policy.required.policy.budgets,
            Ledger(self.metrics.observe_budget),
            self.approvals,
            self.hold_s,
            self.clients,
        )
        self._bundle: str | None = None
        # Until the policy is compiled (and whenever it cannot be), the agent judges everything.
        self._routes = self.agent_routes(self.engine().revision)
        self._compiled = False
        self._generation = itertools.count()
        self._current = next(self._generation)
        self._compiler = ThreadPoolExecutor(1, thread_name_prefix="compile")
        self._compiling: asyncio.Task[None] | None = None  # referenced: the loop's is weak
        self.update_snapshot()

    def _gateway_clients(self, s: AgentSettings) -> tuple[ClientPods | None, KubeClient | None]:
        """The gateway's clients' pods, and the API server to read them from, if each client is
        judged by its pod's policy too."""
        if s.gateway_pod_policy is OverrideMode.NONE:
            return None, None
        if not self.serves_gateway:
            raise AgentError("--gateway-pod-policy: this agent serves no gateway (--gateway-port)")
        if s.control_socket is not None:  # a held question is rechecked by the default alone
            raise AgentError("--gateway-pod-policy narrow: no approvals (--control-socket)")
        try:
            api = KubeClient(in_cluster())
        except (OSError, ValueError) as e:
            raise AgentError(f"--gateway-pod-policy: cannot reach the API server: {e}") from None
        wait_s = min(UNKNOWN_WAIT_S, s.data_plane.authz_timeout_s / 2)  # Envoy waits longer
        return ClientPods(s.gateway_unknown_clients, wait_s), api

    def _publish(
        self, routes: list[dict[str, Any]] | None = None, *, compiled: bool = False
    ) -> None:
        """Envoy's resources with `routes` (None: those in force, as they are); in force only
        once the snapshot is built (AgentError otherwise, and nothing changes)."""
        if routes is None:
            routes, compiled = self._routes, self._compiled
        if self._bundle is not None:
            extras, secrets = self.extras()
            snapshot = build_snapshot(
                self.settings.data_plane, self._bundle, routes, extras, secrets
            )
            self.snapshots.set(snapshot)
        self._routes, self._compiled = routes, compiled

    def update_snapshot(self) -> None:
        try:
            bundle = self.settings.upstream_ca.read_text()
        except (OSError, ValueError) as e:
            log.error("cannot read the upstream CA bundle, keeping the previous one: %s", e)
            return
        if not bundle.strip():  # caught between truncation and write: the next change completes it
            log.error(
                "the upstream CA bundle %s is empty, keeping the previous one",
                self.settings.upstream_ca,
            )
            return
        self._bundle = bundle
        self._publish()

    def _reloaded(self, ok: bool) -> None:
        self.metrics.observe_reload(ok)
        if ok:
            self.policy_changed()

    def extras(self) -> tuple[Extras, tuple[str, ...]]:
        """What the operator's policy has Envoy do besides deciding, with the credentials'
        secrets. No credential is sent while a pod's own policy replaces the operator's: the
        pod's would choose which requests carry the operator's secrets."""
        default = self.policy.required.policy
        replaced = (
            self.pod_policy is not None
            and self.pod_policy.engine is not None
            and self.settings.pod_policy_mode is OverrideMode.REPLACE
        )
        if replaced:
            return Extras(rate_limits=default.rate_limits), ()
        signing = tuple(zip(default.aws_signing, self.policy.aws_keys, strict=True))
        return Extras(default.credentials, default.rate_limits, signing), self.policy.secrets

    def credential_headers(self) -> Placeholders:
        """The headers the operator's credentials go in, whichever policy decides."""
        policy = self.policy.required.policy
        return placeholders(policy.credentials, policy.aws_signing)

    def budget_hosts(self) -> BudgetHosts:
        """The hosts of the operator's budgets (whichever policy decides), and whether each
        counts bytes."""
        budgets = self.policy.required.policy.budgets
        return tuple((b.host, b.upload_bytes is not None) for b in budgets)

    def hold_s(self) -> int | None:
        """How long a request waits for a person's approval; None: it is refused at once (the
        operator's policy has no approvals, or no one can answer)."""
        approvals = self.policy.required.policy.approvals
        if approvals is None or self.settings.control_socket is None:
            return None
        return approvals.timeout_seconds

    def held_hosts(self) -> tuple[str, ...]:
        """The hosts the operator's approvals may ask about (`*`: any)."""
        approvals = self.policy.required.policy.approvals
        if approvals is None:
            return ()
        named = tuple(f"*.{e.host}" if e.wildcard else e.host for e in approvals.hosts)
        return ("*", *named) if approvals.any_host else named

    @property
    def serves_gateway(self) -> bool:
        return self.settings.data_plane.gateway_port is not None

    def agent_routes(self, revision: str) -> list[dict[str, Any]]:
        """The routes that send everything to the agent (budgeted hosts' bodies read first)."""
        return route_configurations(
            revision,
            budget_hosts=self.budget_hosts(),
            hold_s=self.hold_s(),
            held_hosts=self.held_hosts(),
            gateway=self.serves_gateway,
            per_client=self.clients is not None,
        )

    def leak_markers(self) -> list[tuple[str, str]]:
        """What a request from the workload must not carry: each credential's secret, the
        header value made of it (basic authentication encodes it), and each AWS key."""
        out = []
        credentials = self.policy.required.policy.credentials
        for i, (c, secret) in enumerate(zip(credentials, self.policy.secrets, strict=True)):
            label = f"credentials[{i}] (for {c.host})"
            out += [(secret, label), (c.header_value(secret), label)]
        signings = self.policy.required.policy.aws_signing
        for i, (signing, keys) in enumerate(zip(signings, self.policy.aws_keys, strict=True)):
            out += [(key, f"aws_signing[{i}] (for {signing.host})") for key in keys.values]
        return out

    def redact(self, text: str) -> str:
        """`text` without any of the operator's secrets (what Envoy quotes of its configuration
        when it refuses it)."""
        for secret, source in self.leak_markers():
            text = text.replace(secret, f"<{source}>")
        return text

    def native_policy(self) -> Policy | None:
        """The policy Envoy can apply by itself, if any: not one with custom Rego modules, and
        not two at once (a pod's own narrowing the default)."""
        pod = self.pod_policy.engine if self.pod_policy is not None else None
        if pod is not None and self.settings.pod_policy_mode is OverrideMode.REPLACE:
            return pod.policy
        if pod is not None and self.settings.pod_policy_mode is OverrideMode.NARROW:
            return None
        default = self.policy.required.policy
        return None if default.rego_modules else default

    def policy_changed(self) -> None:
        """The agent judges the new policy at once; Envoy takes over once it is compiled."""
        self._current = next(self._generation)
        self.approvals.recheck(self.engine().evaluate)
        revision = self.engine().revision
        self._publish(self.agent_routes(revision), compiled=False)
        policy = self.native_policy()
        if policy is not None:
            self._compiling = asyncio.create_task(self._compile(self._current, policy, revision))

    async def _compile(self, generation: int, policy: Policy, revision: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            routes = await loop.run_in_executor(
                self._compiler,
                native_routes,
                policy,
                revision,
                self.credential_headers(),
                self.budget_hosts(),
                self.hold_s(),
                self.held_hosts(),
                self.serves_gateway,
                self.clients is not None,
            )
        except Exception:  # the agent keeps judging: correct, only slower
            log.exception("compiling policy %s into Envoy routes failed", revision)
            return
        if generation == self._current:  # not overtaken by a newer policy
            try:
                self._publish(routes, compiled=True)
            except AgentError:  # the agent keeps judging: correct, only slower
                log.exception("the routes of policy %s were not published", revision)
                return
            log.info("policy %s compiled into Envoy routes", revision)

    def engine(self) -> PolicyEngine:
        """The policy in force now: the default one, and the pod's own where it has one."""
        if self.pod_policy is None:
            return self.policy.required
        mode = self.settings.pod_policy_mode
        return CombinedEngine(self.policy.required, self.pod_policy.engine, mode)

    @staticmethod
    def _watch_client_pods(clients: ClientPods, api: KubeClient, stop: threading.Event) -> None:
        """The gateway's client pods, listed and watched by a thread, applied on this loop."""
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=list_watch,
            args=(
                api,
                "/api/v1/pods",
                stop,
                lambda kind, pod: loop.call_soon_threadsafe(clients.handle, kind, pod),
                lambda pods: loop.call_soon_threadsafe(clients.resync, pods),
            ),
            kwargs={"labelSelector": CLIENT_SELECTOR},
            name="client-pods",
            daemon=True,
        ).start()

    def readiness(self) -> dict[str, Any]:
        in_sync = self.ads.in_sync()
        ca_expires = self.certificates.ca.cert.not_valid_after_utc
        ca_valid = ca_expires > dt.datetime.now(dt.UTC)
        # The gateway's clients: judged once their pods have been listed.
        listed = self.clients is None or self.clients.listed
        return {
            "ready": in_sync and ca_valid and listed,
            "envoy_in_sync": in_sync,
            **({} if self.clients is None else {"client_pods_listed": listed}),
            "ca_expires": ca_expires.isoformat(),
            "policy_revision": self.engine().revision,
            # Reloads of the default policy's files since the start: applied, and refused (the
            # revision in force stayed; the log says why).
            "policy_reloads": self.policy.reloads,
            "policy_rejections": self.policy.rejections,
            # "envoy": the policy is compiled into Envoy's routes (the agent judges the rest; all
            # of a gateway's clients' requests when their pods' policies narrow it).
            "judged_by": "envoy" if self._compiled and self.clients is None else "agent",
            "certificates_cached": len(self.certificates),
        }

    async def _renew_certificates(self) -> None:
        """Leaves Envoy holds are renewed at half-life; check often enough to catch it."""
        interval = min(60.0, self.settings.cert_validity.total_seconds() / 8)
        while True:
            await asyncio.sleep(interval)
            self.ads.renew()

    async def _start_dns(self, port: int) -> None:
        try:
            await self.dns.start(["127.0.0.1", "::1"], port)
        except OSError as e:  # no IPv6 in this pod: v6 lookups then fail, they never leak
            log.warning("DNS sinkhole on IPv4 only: %s", e)
            await self.dns.start(["127.0.0.1"], port)

    async def serve(self, stop: asyncio.Event) -> None:
        s = self.settings
        xds = grpc.aio.server()
        self.ads.add_to_server(xds)  # tolerant of names that are not UTF-8 (xds/wire.py)
        xds.add_insecure_port(f"{s.data_plane.authz_address}:{s.xds_port}")
        authz = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self.authz, authz)
        dp = s.data_plane
        authz.add_insecure_port(f"{dp.authz_address}:{dp.authz_port}")
        servers = [
            *await serve(health_routes(self.readiness), s.health_addresses, s.health_port),
            *await serve(
                metrics_routes(self.metrics.registry, self.metrics.envoy_decisions.refresh),
                s.health_addresses,
                s.metrics_port,
            ),
        ]
        if s.control_socket is not None:
            servers.append(await serve_control(s.control_socket, self.approvals))
        await xds.start()
        await authz.start()
        self.policy_changed()
        if s.dns_port:
            await self._start_dns(s.dns_port)
        tasks = [
            asyncio.create_task(watch(self.policy.files, self.policy.reload)),
            *(
                [asyncio.create_task(watch(self.pod_policy.files, self.pod_policy.reload))]
                if self.pod_policy is not None
                else []
            ),
            asyncio.create_task(watch(lambda: [s.upstream_ca], self.update_snapshot)),
            asyncio.create_task(self._renew_certificates()),
        ]
        stop_watching = threading.Event()
        if self.clients is not None and self._api is not None:
            self._watch_client_pods(self.clients, self._api, stop_watching)
        log.info(
            "agent ready: xDS %s:%d, ext_authz %s:%d, health %s:%d, metrics :%d, revision %s",
            s.data_plane.authz_address,
            s.xds_port,
            dp.authz_address,
            dp.authz_port,
            ",".join(s.health_addresses),
            s.health_port,
            s.metrics_port,
            self.engine().revision,
        )
        try:
            await stop.wait()
        finally:
            stop_watching.set()
            for task in tasks:
                task.cancel()
            await self.dns.close()
            await authz.stop(grace=1)
            await xds.stop(grace=1)
            for server in servers:
                server.close()
                await server.wait_closed()
            self._compiler.shutdown(wait=False, cancel_futures=True)


def run(settings: AgentSettings) -> None:
    """Run until SIGTERM or SIGINT."""

    async def main() -> None:
        agent = Agent(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.serve(stop)

    asyncio.run(main())
