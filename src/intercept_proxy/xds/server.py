"""An incremental (delta) ADS server: snapshots and on-demand resources in, the xDS protocol out.

The application builds resources and sets snapshots (`SnapshotCache.set`), and resolves the
resources Envoy asks for by name on demand (certificates for any SNI); this module owns the
protocol (Envoy's `DeltaAggregatedResources`, `api_type: DELTA_GRPC`):

- Every resource has its own version, a digest of its content. A response carries only the
  resources that are new or changed for Envoy, and the names Envoy must drop: an unchanged
  resource is never sent again, whatever else changes.
- Snapshot types (clusters, listeners: all of the type; routes: the names subscribed) follow
  the snapshot; a new snapshot reaches every stream, clusters before listeners before routes.
- On-demand types (secrets) are resolved when Envoy subscribes to a name, in a worker thread (a
  burst of mints never stalls the event loop that answers ext_authz), and resolved again when
  due (a certificate at half-life). Envoy keeps what it was sent until it is told the resource
  is gone, so the server tells it: a name Envoy has not asked for in `release_after` is removed,
  and so is the least recently asked-for beyond `max_held`. Envoy's on-demand certificate
  selector then releases the certificate (and asks again, on the next handshake that needs it).
  A name the snapshot holds for an on-demand type (a credential's secret) is the snapshot's: it
  is never resolved nor released, and follows the snapshot like any snapshot resource.
  The state-of-the-world protocol has no way to remove such a resource: that is why this server
  speaks delta.
- Each response is answered on its own (ACK or NACK): the server remembers what every
  outstanding nonce carried, a NACK restores what Envoy held before and is logged with Envoy's
  error, and the refused version of a resource is not sent again (for snapshot types, until the
  snapshot changes).
- A request that does not parse (a server name that is not UTF-8 is no proto3 `string`) is
  read leniently (`add_to_server`): the names that cannot be names are dropped, and only their
  handshakes wait; the stream and every other name carry on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.message import Message

from intercept_proxy.xds.protos import pack
from intercept_proxy.xds.streams import merged
from intercept_proxy.xds.types import CLUSTER, LISTENER, ROUTE
from intercept_proxy.xds.wire import lenient_delta_request

log = logging.getLogger(__name__)

# Make-before-break: clusters before the listeners and routes that use them.
PUSH_ORDER = (CLUSTER, LISTENER, ROUTE)
WILDCARD = "*"
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def short_type(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def resource_version(message: Message) -> str:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()[:16]


@dataclass(frozen=True)
class Resource:
    message: Message
    version: str
    # When to resolve the name again (e.g. renew a certificate at half-life); None: never.
    renew_at: dt.datetime | None = None


# Resolves one name of an on-demand type; None when there is no such resource.
Resolver = Callable[[str], Resource | None]


@dataclass(frozen=True)
class OnDemand:
    """An on-demand type: how to resolve a name, and how much of it Envoy may keep."""

    resolve: Resolver
    # At most this many resources held by Envoy (None: no bound); the least recently
    # asked-for go first.
    max_held: int | None = None
    # A resource Envoy has not asked for in this long is removed (None: kept).
    release_after: dt.timedelta | None = None


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
_HOUSEKEEPING = object()  # renew on-demand resources that are due, release idle ones


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
class _TypeState:
    """One resource type on one stream: what Envoy asked for and what it holds."""

    requested: bool = False  # Envoy's first request of the type on this stream came
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    # name -> version Envoy holds (or will, once it accepts what is on its way).
    held: dict[str, str] = field(default_factory=dict)
    # Per outstanding nonce: what each name it carried (or removed) replaced (None: nothing).
    outstanding: dict[str, dict[str, str | None]] = field(default_factory=dict)
    # (name, version) pairs Envoy refused: not sent again.
    rejected: set[tuple[str, str]] = field(default_factory=set)
    # Snapshot types: the snapshot version the rejections were about.
    snapshot_version: str | None = None
    # On-demand types: when each held name is due again, and when Envoy last asked for it.
    renew_at: dict[str, dt.datetime] = field(default_factory=dict)
    asked: dict[str, float] = field(default_factory=dict)


class _Stream:
    def __init__(self, server: AggregatedDiscoveryService) -> None:
        self.server = server
        self.types: dict[str, _TypeState] = {}
        self._versions = itertools.count(1)

    def _response(
        self,
        type_url: str,
        state: _TypeState,
        changed: Mapping[str, tuple[str, Message]],
        removed: list[str],
        *,
        force: bool = False,
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        """Send `changed` (name -> (version, message)) and remove `removed` (with `force`, even
        nothing); remember what they replace until Envoy answers."""
        if not changed and not removed and not force:
            return None
        self.server.events.on_push(short_type(type_url))
        response = discovery_pb2.DeltaDiscoveryResponse(
            type_url=type_url,
            system_version_info=str(next(self._versions)),
            nonce=str(next(self.server.nonces)),
            resources=[
                discovery_pb2.Resource(name=name, version=version, resource=pack(message))
                for name, (version, message) in sorted(changed.items())
            ],
            removed_resources=sorted(removed),
        )
        state.outstanding[response.nonce] = {
            name: state.held.get(name) for name in [*changed, *removed]
        }
        for name, (version, _) in changed.items():
            state.held[name] = version
        for name in removed:
            state.held.pop(name, None)
            state.renew_at.pop(name, None)
        return response

    # -- snapshot types ----------------------------------------------------------------------

    def _snapshot_response(
        self, type_url: str, *, force: bool = False
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        state = self.types[type_url]
        snapshot = self.server.cache.snapshot
        version = snapshot.version(type_url)
        if version != state.snapshot_version:  # a new snapshot: everything may be tried again
            state.snapshot_version, state.rejected = version, set()
        available = snapshot.resources.get(type_url, {})
        wanted = {n: m for n, m in available.items() if state.wildcard or n in state.names}
        changed = {}
        for name, message in wanted.items():
            v = resource_version(message)
            if state.held.get(name) != v and (name, v) not in state.rejected:
                changed[name] = (v, message)
        removed = [n for n in state.held if n not in wanted]
        return self._response(type_url, state, changed, removed, force=force)

    # -- on-demand types ---------------------------------------------------------------------

    def _pinned(self, type_url: str) -> Mapping[str, Message]:
        """The snapshot's resources of an on-demand type (never resolved nor released)."""
        if type_url not in self.server.on_demand:
            return {}
        return self.server.cache.snapshot.resources.get(type_url, {})

    async def _on_demand_response(
        self, type_url: str, names: list[str], removed: list[str] | None = None
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        """The resources for `names` whose version differs from what Envoy holds, with the
        removal of `removed` (by default, of what Envoy need not keep beside them)."""
        state = self.types[type_url]
        pinned = self._pinned(type_url)
        others = [n for n in names if n not in pinned]
        resolved = await self.server.resolve(type_url, others) if others else {}
        resolved.update(
            (n, Resource(pinned[n], resource_version(pinned[n]))) for n in names if n in pinned
        )
        changed = {}
        for name, resource in resolved.items():
            if name not in state.names or (name, resource.version) in state.rejected:
                continue  # unsubscribed meanwhile, or refused before
            if state.held.get(name) != resource.version:
                changed[name] = (resource.version, resource.message)
            if resource.renew_at is not None:
                state.renew_at[name] = resource.renew_at
        if removed is None:
            removed = self._evictions(type_url, state, keep=set(changed))
        return self._response(type_url, state, changed, removed)

    async def _housekeeping(self, type_url: str) -> discovery_pb2.DeltaDiscoveryResponse | None:
        state = self.types[type_url]
        removed = self._evictions(type_url, state, keep=set())
        due = [n for n in self._due(state) if n not in removed]
        return await self._on_demand_response(type_url, due, removed)

    def _evictions(self, type_url: str, state: _TypeState, keep: set[str]) -> list[str]:
        """What Envoy holds that it has not asked for in a while, and the least recently
        asked-for beyond the bound; never what is being sent now."""
        spec = self.server.on_demand[type_url]
        pinned = self._pinned(type_url)
        candidates = [n for n in state.held if n not in keep and n not in pinned]
        out = set()
        if spec.release_after is not None:
            oldest = self.server.clock() - spec.release_after.total_seconds()
            out = {n for n in candidates if state.asked.get(n, 0.0) <= oldest}
        if spec.max_held is not None:
            held_after = len((state.held.keys() | keep) - pinned.keys()) - len(out)
            if held_after > spec.max_held:
                rest = sorted(
                    (n for n in candidates if n not in out), key=lambda n: state.asked.get(n, 0.0)
                )
                out.update(rest[: held_after - spec.max_held])
        return sorted(out)

    def _due(self, state: _TypeState) -> list[str]:
        now = dt.datetime.now(dt.UTC)
        return sorted(n for n in state.held if (r := state.renew_at.get(n)) and r <= now)

    # -- requests ----------------------------------------------------------------------------

    def _answer(self, type_url: str, state: _TypeState, request: Message) -> None:
        replaced = state.outstanding.pop(request.response_nonce, None)
        if replaced is None:
            return  # no answer, or one to a response already answered
        if not request.HasField("error_detail"):
            self.server.events.on_ack(short_type(type_url))
            return
        # Envoy refused the whole response: it keeps what it held before. A snapshot's resource
        # of an on-demand type may have come with a refused certificate: it is not blamed.
        pinned = self._pinned(type_url)
        for name, previous in replaced.items():
            sent = state.held.get(name)
            if sent is not None and sent != previous and name not in pinned:
                state.rejected.add((name, sent))
            if previous is None:
                state.held.pop(name, None)
            else:
                state.held[name] = previous
        self.server.events.on_nack(short_type(type_url))
        log.error(
            "Envoy rejected %s %s: %s",
            short_type(type_url),
            ", ".join(sorted(replaced)),
            self.server.redact(request.error_detail.message),
        )

    def _subscribe(
        self, state: _TypeState, request: Message, *, first: bool, on_demand: bool
    ) -> set[str]:
        """Apply the request's subscription changes; the names to send (again)."""
        if first and request.initial_resource_versions:  # a reconnection: what Envoy holds
            state.held.update(request.initial_resource_versions)
        subscribe = set(request.resource_names_subscribe)
        if WILDCARD in subscribe or (first and not subscribe and not on_demand):
            state.wildcard = True  # explicitly, or a first request naming nothing (legacy)
        subscribe.discard(WILDCARD)
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                state.wildcard = False
                continue
            state.names.discard(name)
            for held in (state.held, state.renew_at, state.asked):
                held.pop(name, None)
        state.names |= subscribe
        now = self.server.clock()
        for name in subscribe:
            state.asked[name] = now
            if name not in request.initial_resource_versions:
                # Asked for again: Envoy dropped it (after a removal, say), whatever we think.
                state.held.pop(name, None)
        return subscribe

    async def handle(
        self, request: discovery_pb2.DeltaDiscoveryRequest
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        type_url = request.type_url
        on_demand = type_url in self.server.on_demand
        state = self.types.setdefault(type_url, _TypeState())
        first, state.requested = not state.requested, True
        self._answer(type_url, state, request)
        subscribed = self._subscribe(state, request, first=first, on_demand=on_demand)
        if on_demand:
            return await self._on_demand_response(type_url, sorted(subscribed))
        if first:  # always an answer, if only to say there is nothing (yet)
            return self._snapshot_response(type_url, force=True)
        if not subscribed and not request.resource_names_unsubscribe:
            return None  # an ACK or NACK, nothing more
        return self._snapshot_response(type_url)

    async def updates(self, event: object) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        responses = []
        if event is _HOUSEKEEPING:
            for type_url in self.types:
                if type_url in self.server.on_demand:
                    responses.append(await self._housekeeping(type_url))
        else:
            # The snapshot's resources of on-demand types that Envoy subscribed to, as changed.
            for type_url in self.types:
                if type_url in self.server.on_demand:
                    pinned = self._pinned(type_url)
                    names = sorted(n for n in self.types[type_url].names if n in pinned)
                    responses.append(await self._on_demand_response(type_url, names, []))
            ordered = sorted(
                (t for t in self.types if t not in self.server.on_demand),
                key=lambda t: PUSH_ORDER.index(t) if t in PUSH_ORDER else len(PUSH_ORDER),
            )
            responses += [self._snapshot_response(t) for t in ordered]
        return [r for r in responses if r is not None]

    def in_sync(self) -> bool:
        """Envoy accepted the current clusters, listeners and routes, and the snapshot's
        resources of on-demand types it asked for (credentials: a listener waits for them; other
        on-demand resources come and go with handshakes and say nothing about readiness)."""
        snapshot = self.server.cache.snapshot
        for type_url, asked in self.types.items():
            pinned = self._pinned(type_url)
            for name in asked.names & pinned.keys():
                if asked.held.get(name) != resource_version(pinned[name]):
                    return False
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if state is None or state.outstanding:
                return False
            available = snapshot.resources.get(type_url, {})
            wanted = {
                n: resource_version(m)
                for n, m in available.items()
                if state.wildcard or n in state.names
            }
            if state.held != wanted:
                return False
        return True

    def held(self, type_url: str) -> int:
        state = self.types.get(type_url)
        return len(state.held) if state is not None else 0


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(
        self,
        cache: SnapshotCache,
        resolvers: Mapping[str, Resolver | OnDemand] | None = None,
        events: XdsEvents | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        """`resolvers`: the on-demand types, each an `OnDemand` or a bare resolver (no
        bounds); `redact` takes secrets out of what Envoy says (its refusals quote the
        configuration) before it is logged."""
        self.cache = cache
        self.redact = redact
        self.on_demand = {
            t: r if isinstance(r, OnDemand) else OnDemand(r) for t, r in (resolvers or {}).items()
        }
        self.events = events or XdsEvents()
        self.clock = clock
        self.nonces = itertools.count(1)
        self._streams: list[_Stream] = []
        # One worker: resolvers (the leaf cache) need not be thread-safe.
        self._resolver_thread = ThreadPoolExecutor(1, thread_name_prefix="xds-resolve")

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Serve ADS on `server`, reading requests leniently: Envoy sends any server name it
        sees as a resource name, and one that is not UTF-8 must not end the stream (the
        generated `add_AggregatedDiscoveryServiceServicer_to_server` would)."""
        handlers = {
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.DeltaAggregatedResources,
                request_deserializer=lenient_delta_request,
                response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
            ),
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.StreamAggregatedResources,
                request_deserializer=None,  # never read
                response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
            ),
        }
        generic = grpc.method_handlers_generic_handler(ADS_SERVICE, handlers)
        server.add_generic_rpc_handlers((generic,))

    def in_sync(self) -> bool:
        """The most recent Envoy stream holds the current configuration."""
        return bool(self._streams) and self._streams[-1].in_sync()

    def held(self, type_url: str) -> int:
        """How many resources of `type_url` the most recent Envoy stream holds."""
        return self._streams[-1].held(type_url) if self._streams else 0

    def renew(self) -> None:
        """Housekeeping of on-demand resources: resolve again those that are due (certificates
        at half-life), remove those Envoy has not asked for in a while. Call it periodically."""
        self.cache.notify(_HOUSEKEEPING)

    async def resolve(self, type_url: str, names: list[str]) -> dict[str, Resource]:
        resolver = self.on_demand[type_url].resolve

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
        self, request_iterator: AsyncIterator[object], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        """State-of-the-world ADS: not served (it cannot release a certificate). An Envoy started
        with an older bootstrap gets told why, and so does whoever reads the agent's log."""
        message = (
            "this agent serves incremental xDS only: Envoy's bootstrap must say"
            " ads_config.api_type DELTA_GRPC (`intercept envoy bootstrap` writes it)"
        )
        log.error("Envoy asked for state-of-the-world ADS: %s", message)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
        yield discovery_pb2.DiscoveryResponse()  # not reached: a generator, as gRPC expects

    async def DeltaAggregatedResources(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: object,
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        self.cache.subscribe(queue)
        stream = _Stream(self)
        self._streams.append(stream)
        try:
            async for item in merged(request_iterator, queue):
                if isinstance(item, discovery_pb2.DeltaDiscoveryRequest):
                    response = await stream.handle(item)
                    responses = [response] if response is not None else []
                else:
                    responses = await stream.updates(item)
                for response in responses:
                    yield response
        finally:
            self.cache.unsubscribe(queue)
            self._streams.remove(stream)
