"""A state-of-the-world ADS server: snapshots and on-demand resources in, the xDS protocol out.

The application builds resources and sets snapshots (`SnapshotCache.set`), and resolves the
resources Envoy asks for by name on demand (certificates for any SNI); this module owns the
protocol, in the shape of go-control-plane:

- Snapshot types (clusters, listeners, routes) are sent whole: all of the type for a wildcard
  subscription (clusters, listeners), the names subscribed otherwise (routes), again whenever
  the subscription changes. Their version is a digest of their content, so an unchanged type is
  never pushed again. Every response has a fresh nonce; an ACK or NACK answering an older
  response than the latest is ignored, since the latest replaces it. A NACK is logged with
  Envoy's error, and the rejected version is not pushed again; a new snapshot reaches every
  stream, clusters before listeners before routes.
- On-demand types (secrets) are subscribed by name and sent incrementally: a response carries
  only names that are new or changed, and Envoy keeps the others. Each response is answered on
  its own, so the server tracks what every outstanding nonce carried: a NACK restores what Envoy
  held before, and that exact version is not sent again. Resolving runs in a worker thread, so
  minting a burst of certificates never stalls the event loop that answers ext_authz.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.message import Message

from intercept_proxy.xds.protos import pack
from intercept_proxy.xds.resources import CLUSTER, LISTENER
from intercept_proxy.xds.routes import ROUTE
from intercept_proxy.xds.streams import merged

log = logging.getLogger(__name__)

# Make-before-break: clusters before the listeners and routes that use them.
PUSH_ORDER = (CLUSTER, LISTENER, ROUTE)


def short_type(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Resource:
    message: Message
    version: str
    # When to resolve the name again (e.g. renew a certificate at half-life); None: never.
    renew_at: dt.datetime | None = None


# Resolves one name of an on-demand type; None when there is no such resource.
Resolver = Callable[[str], Resource | None]


@dataclass(frozen=True)
class Snapshot:
    resources: Mapping[str, Mapping[str, Message]]

    def version(self, type_url: str) -> str:
        digest = hashlib.sha256()
        for name, message in sorted(self.resources.get(type_url, {}).items()):
            digest.update(name.encode())
            digest.update(message.SerializeToString(deterministic=True))
        return digest.hexdigest()[:16]


@dataclass
class XdsEvents:
    """Callbacks for metrics; each receives the short type name."""

    on_push: Callable[[str], None] = lambda t: None
    on_ack: Callable[[str], None] = lambda t: None
    on_nack: Callable[[str], None] = lambda t: None


_UPDATE = object()  # the snapshot changed
_RENEW = object()  # time to resolve again the on-demand resources that are due


class SnapshotCache:
    def __init__(self) -> None:
        self._snapshot = Snapshot({})
        self._queues: set[asyncio.Queue[object]] = set()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def set(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self.notify(_UPDATE)

    def notify(self, event: object) -> None:
        for queue in self._queues:
            queue.put_nowait(event)

    def subscribe(self, queue: asyncio.Queue[object]) -> None:
        self._queues.add(queue)

    def unsubscribe(self, queue: asyncio.Queue[object]) -> None:
        self._queues.discard(queue)


@dataclass
class _SnapshotType:
    nonce: str | None = None
    acked: bool = False
    sent_version: str | None = None
    nacked_version: str | None = None
    names: frozenset[str] = frozenset()  # empty: all of the type (a wildcard subscription)


@dataclass(frozen=True)
class _Held:
    """What Envoy holds for one name: small, since Envoy may hold thousands of certificates."""

    version: str
    renew_at: dt.datetime | None


@dataclass
class _OnDemandType:
    names: frozenset[str] = frozenset()
    held: dict[str, _Held] = field(default_factory=dict)
    # Per outstanding nonce: what each name sent under it replaced (None: nothing).
    outstanding: dict[str, dict[str, _Held | None]] = field(default_factory=dict)
    # (name, version) pairs Envoy rejected: never sent again while the name is subscribed.
    rejected: set[tuple[str, str]] = field(default_factory=set)


class _Stream:
    def __init__(self, server: AggregatedDiscoveryService) -> None:
        self.server = server
        self.snapshot_types: dict[str, _SnapshotType] = {}
        self.on_demand: dict[str, _OnDemandType] = {}
        self._versions = itertools.count(1)

    def _response(
        self, type_url: str, version: str, messages: list[Message]
    ) -> discovery_pb2.DiscoveryResponse:
        self.server.events.on_push(short_type(type_url))
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=str(next(self.server.nonces)),
            resources=[pack(m) for m in messages],
        )

    # -- snapshot types ----------------------------------------------------------------------

    def _snapshot_response(
        self, type_url: str, *, force: bool
    ) -> discovery_pb2.DiscoveryResponse | None:
        state = self.snapshot_types[type_url]
        snapshot = self.server.cache.snapshot
        version = snapshot.version(type_url)
        if not force and version in (state.sent_version, state.nacked_version):
            return None
        available = snapshot.resources.get(type_url, {})
        names = sorted(n for n in available if not state.names or n in state.names)
        response = self._response(type_url, version, [available[n] for n in names])
        state.sent_version, state.nonce, state.acked = version, response.nonce, False
        return response

    def _snapshot_request(
        self, request: discovery_pb2.DiscoveryRequest
    ) -> discovery_pb2.DiscoveryResponse | None:
        type_url = request.type_url
        state = self.snapshot_types.setdefault(type_url, _SnapshotType())
        names = frozenset(request.resource_names)
        if not request.response_nonce:  # a stream's first request gets the type whole
            state.names = names
            return self._snapshot_response(type_url, force=True)
        if request.response_nonce != state.nonce:
            return None
        if request.HasField("error_detail"):
            state.nacked_version = state.sent_version
            self._rejected(type_url, f"version {state.sent_version}", request.error_detail.message)
        else:
            state.acked = True
            self.server.events.on_ack(short_type(type_url))
        if names != state.names:  # subscribed to other names: they get what they asked for
            state.names = names
            return self._snapshot_response(type_url, force=True)
        return None

    # -- on-demand types ---------------------------------------------------------------------

    async def _on_demand_response(
        self, type_url: str, names: list[str]
    ) -> discovery_pb2.DiscoveryResponse | None:
        """The resources for `names` whose version differs from what Envoy holds."""
        if not names:
            return None
        resolved = await self.server.resolve(type_url, names)
        state = self.on_demand[type_url]

        def changed_for_envoy(name: str, resource: Resource) -> bool:
            if name not in state.names or (name, resource.version) in state.rejected:
                return False  # unsubscribed meanwhile, or refused before
            held = state.held.get(name)
            return held is None or held.version != resource.version

        changed = {n: r for n, r in resolved.items() if changed_for_envoy(n, r)}
        if not changed:
            return None
        version = str(next(self._versions))
        response = self._response(type_url, version, [r.message for r in changed.values()])
        state.outstanding[response.nonce] = {name: state.held.get(name) for name in changed}
        for name, resource in changed.items():
            state.held[name] = _Held(resource.version, resource.renew_at)
        return response

    async def _on_demand_request(
        self, request: discovery_pb2.DiscoveryRequest
    ) -> discovery_pb2.DiscoveryResponse | None:
        type_url = request.type_url
        state = self.on_demand.setdefault(type_url, _OnDemandType())
        replaced = state.outstanding.pop(request.response_nonce, None)
        if replaced is not None:
            if request.HasField("error_detail"):
                self._restore(type_url, state, replaced, request.error_detail.message)
            else:
                self.server.events.on_ack(short_type(type_url))
        names = frozenset(request.resource_names)
        added = names - state.names
        for name in state.names - names:
            state.held.pop(name, None)
        state.rejected = {(n, v) for n, v in state.rejected if n in names}
        state.names = names
        return await self._on_demand_response(type_url, sorted(added))

    def _restore(
        self,
        type_url: str,
        state: _OnDemandType,
        replaced: dict[str, _Held | None],
        error: str,
    ) -> None:
        """Envoy refused a response: it keeps what it held before."""
        for name, previous in replaced.items():
            sent = state.held.get(name)
            if sent is not None:
                state.rejected.add((name, sent.version))
            if previous is None:
                state.held.pop(name, None)
            else:
                state.held[name] = previous
        self._rejected(type_url, ", ".join(sorted(replaced)), error)

    def _due(self, type_url: str) -> list[str]:
        now = dt.datetime.now(dt.UTC)
        held = self.on_demand[type_url].held
        return sorted(n for n, h in held.items() if h.renew_at is not None and h.renew_at <= now)

    # -- events ------------------------------------------------------------------------------

    def _rejected(self, type_url: str, what: str, error: str) -> None:
        self.server.events.on_nack(short_type(type_url))
        log.error("Envoy rejected %s %s: %s", short_type(type_url), what, error)

    async def handle(
        self, request: discovery_pb2.DiscoveryRequest
    ) -> discovery_pb2.DiscoveryResponse | None:
        if request.type_url in self.server.resolvers:
            return await self._on_demand_request(request)
        return self._snapshot_request(request)

    async def updates(self, event: object) -> list[discovery_pb2.DiscoveryResponse]:
        if event is _RENEW:
            responses = [await self._on_demand_response(t, self._due(t)) for t in self.on_demand]
        else:
            ordered = sorted(
                self.snapshot_types,
                key=lambda t: PUSH_ORDER.index(t) if t in PUSH_ORDER else len(PUSH_ORDER),
            )
            responses = [self._snapshot_response(t, force=False) for t in ordered]
        return [r for r in responses if r is not None]

    def in_sync(self) -> bool:
        """Envoy accepted the current clusters and listeners (on-demand resources come and go
        with handshakes and say nothing about readiness)."""
        snapshot = self.server.cache.snapshot
        return all(
            (state := self.snapshot_types.get(t)) is not None
            and state.acked
            and state.sent_version == snapshot.version(t)
            for t in PUSH_ORDER
        )


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(
        self,
        cache: SnapshotCache,
        resolvers: Mapping[str, Resolver] | None = None,
        events: XdsEvents | None = None,
    ) -> None:
        self.cache = cache
        self.resolvers = dict(resolvers or {})
        self.events = events or XdsEvents()
        self.nonces = itertools.count(1)
        self._streams: list[_Stream] = []
        # One worker: resolvers (the leaf cache) need not be thread-safe.
        self._resolver_thread = ThreadPoolExecutor(1, thread_name_prefix="xds-resolve")

    def in_sync(self) -> bool:
        """The most recent Envoy stream holds the current configuration."""
        return bool(self._streams) and self._streams[-1].in_sync()

    def renew(self) -> None:
        """Resolve again the on-demand resources that are due (certificates at half-life)."""
        self.cache.notify(_RENEW)

    async def resolve(self, type_url: str, names: list[str]) -> dict[str, Resource]:
        resolver = self.resolvers[type_url]

        def resolve_all() -> dict[str, Resource]:
            out = {}
            for name in names:
                try:
                    resource = resolver(name)
                except Exception:  # one bad name must not end the stream
                    log.exception("cannot resolve %s %r", short_type(type_url), name)
                    continue
                if resource is not None:
                    out[name] = resource
            return out

        return await asyncio.get_running_loop().run_in_executor(self._resolver_thread, resolve_all)

    async def StreamAggregatedResources(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: object,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        self.cache.subscribe(queue)
        stream = _Stream(self)
        self._streams.append(stream)
        try:
            async for item in merged(request_iterator, queue):
                if isinstance(item, discovery_pb2.DiscoveryRequest):
                    response = await stream.handle(item)
                    responses = [response] if response is not None else []
                else:
                    responses = await stream.updates(item)
                for response in responses:
                    yield response
        finally:
            self.cache.unsubscribe(queue)
            self._streams.remove(stream)
