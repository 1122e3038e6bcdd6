"""A state-of-the-world ADS server: snapshots and on-demand resources in, the xDS protocol out.

The application builds resources and sets snapshots (`SnapshotCache.set`), and may resolve
resources of named types on demand (certificates for any SNI); this module owns the protocol.
Versions are content digests, so an unchanged type is never pushed again; every response has a
fresh nonce; ACKs and NACKs are told apart by the nonce and `error_detail`; a NACK is logged with
Envoy's error and the rejected version is not pushed again; a new snapshot reaches every stream,
clusters before listeners.

Wildcard types (clusters, listeners) are sent whole. Named types (secrets) carry only what
changed: resources a response leaves out stay in force in Envoy, which keeps the response for a
newly requested certificate small however many Envoy already holds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.message import Message

from intercept_proxy.xds.protos import pack
from intercept_proxy.xds.resources import CLUSTER, LISTENER, SECRET
from intercept_proxy.xds.streams import merged

log = logging.getLogger(__name__)

# Make-before-break: clusters (and their secrets) before the listeners that route to them.
PUSH_ORDER = (CLUSTER, SECRET, LISTENER)
# Types Envoy subscribes to by name; the others are wildcard (all resources of the type).
NAMED_TYPES = frozenset({SECRET})


def short_type(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def digest(message: Message) -> str:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()[:16]


@dataclass(frozen=True)
class Resource:
    message: Message
    version: str
    # For resources resolved on demand: when to resolve the name again (e.g. renew a leaf).
    renew_at: dt.datetime | None = None


# Resolves a name of a named type that the snapshot does not hold; None: no such resource.
Resolver = Callable[[str], Resource | None]


@dataclass(frozen=True)
class Snapshot:
    resources: Mapping[str, Mapping[str, Message]]

    def version(self, type_url: str) -> str:
        h = hashlib.sha256()
        for name, message in sorted(self.resources.get(type_url, {}).items()):
            h.update(name.encode())
            h.update(message.SerializeToString(deterministic=True))
        return h.hexdigest()[:16]


@dataclass
class XdsEvents:
    """Callbacks for metrics; each receives the short type name."""

    on_push: Callable[[str], None] = lambda t: None
    on_ack: Callable[[str], None] = lambda t: None
    on_nack: Callable[[str], None] = lambda t: None


_UPDATE = object()  # the snapshot changed
_RENEW = object()  # time to re-resolve on-demand resources that are due


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


@dataclass(frozen=True)
class _Held:
    """What Envoy holds for one name: kept small, Envoy may hold thousands of certificates."""

    version: str
    renew_at: dt.datetime | None


@dataclass
class _TypeState:
    names: frozenset[str] = frozenset()
    nonce: str | None = None
    acked: bool = False
    # Wildcard types: the version last sent and a version Envoy rejected.
    sent_version: str | None = None
    nacked_version: str | None = None
    # Named types: what Envoy holds per name (from our responses), and rejected versions.
    held: dict[str, _Held] = field(default_factory=dict)
    nacked: set[tuple[str, str]] = field(default_factory=set)
    pending: dict[str, _Held] = field(default_factory=dict)


class _Stream:
    def __init__(
        self,
        cache: SnapshotCache,
        resolvers: Mapping[str, Resolver],
        events: XdsEvents,
        nonces: itertools.count[int],
    ) -> None:
        self.cache = cache
        self.resolvers = resolvers
        self.events = events
        self.nonces = nonces
        self.types: dict[str, _TypeState] = {}
        self.responses = itertools.count(1)

    def _respond(
        self, type_url: str, version: str, resources: list[Message]
    ) -> discovery_pb2.DiscoveryResponse:
        state = self.types[type_url]
        state.nonce = str(next(self.nonces))
        state.acked = False
        self.events.on_push(short_type(type_url))
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=state.nonce,
            resources=[pack(m) for m in resources],
        )

    # -- wildcard types ----------------------------------------------------------------------

    def _wildcard(self, type_url: str, *, force: bool) -> discovery_pb2.DiscoveryResponse | None:
        state = self.types[type_url]
        snapshot = self.cache.snapshot
        version = snapshot.version(type_url)
        if not force and version in (state.sent_version, state.nacked_version):
            return None
        state.sent_version = version
        available = snapshot.resources.get(type_url, {})
        return self._respond(type_url, version, [available[n] for n in sorted(available)])

    # -- named types -------------------------------------------------------------------------

    def _resolve(self, type_url: str, name: str) -> Resource | None:
        message = self.cache.snapshot.resources.get(type_url, {}).get(name)
        if message is not None:
            return Resource(message, digest(message))
        resolver = self.resolvers.get(type_url)
        return resolver(name) if resolver else None

    def _named(self, type_url: str, names: list[str]) -> discovery_pb2.DiscoveryResponse | None:
        """Send the resources for `names` whose version differs from what Envoy holds."""
        state = self.types[type_url]
        changed: dict[str, Resource] = {}
        for name in names:
            resource = self._resolve(type_url, name)
            if resource is None or (name, resource.version) in state.nacked:
                continue
            held = state.held.get(name)
            if held is None or held.version != resource.version:
                changed[name] = resource
        if not changed:
            return None
        state.pending = {n: _Held(r.version, r.renew_at) for n, r in changed.items()}
        state.held.update(state.pending)
        version = f"{next(self.responses)}"
        return self._respond(type_url, version, [r.message for r in changed.values()])

    def _due(self, type_url: str) -> list[str]:
        now = dt.datetime.now(dt.UTC)
        state = self.types[type_url]
        return [n for n, r in state.held.items() if r.renew_at is not None and r.renew_at <= now]

    # -- events ------------------------------------------------------------------------------

    def handle(
        self, request: discovery_pb2.DiscoveryRequest
    ) -> discovery_pb2.DiscoveryResponse | None:
        type_url = request.type_url
        state = self.types.setdefault(type_url, _TypeState())
        names = frozenset(request.resource_names)
        if request.response_nonce:
            if request.response_nonce != state.nonce:
                return None  # answers a response that a newer one superseded
            if request.HasField("error_detail"):
                self._nack(type_url, state, request.error_detail.message)
            else:
                state.acked = True
                self.events.on_ack(short_type(type_url))
        added = names - state.names
        for name in state.names - names:
            state.held.pop(name, None)
        state.names = names
        if type_url in NAMED_TYPES:
            return self._named(type_url, sorted(added))
        # The first request of a stream gets the type whole; ACKs need no answer.
        return None if request.response_nonce else self._wildcard(type_url, force=True)

    def _nack(self, type_url: str, state: _TypeState, error: str) -> None:
        self.events.on_nack(short_type(type_url))
        if type_url in NAMED_TYPES:
            rejected = sorted(state.pending)
            state.nacked.update((n, r.version) for n, r in state.pending.items())
            for name in rejected:  # Envoy keeps what it held before
                state.held.pop(name, None)
            what = f"{', '.join(rejected)}"
        else:
            state.nacked_version = state.sent_version
            what = f"version {state.sent_version}"
        log.error("Envoy rejected %s %s: %s", short_type(type_url), what, error)

    def updates(self, renew: bool) -> list[discovery_pb2.DiscoveryResponse]:
        ordered = sorted(self.types, key=lambda t: PUSH_ORDER.index(t) if t in PUSH_ORDER else 99)
        responses = []
        for type_url in ordered:
            if type_url in NAMED_TYPES:
                if renew:
                    names = self._due(type_url)
                else:  # only the snapshot's resources can have changed
                    in_snapshot = self.cache.snapshot.resources.get(type_url, {})
                    names = sorted(n for n in self.types[type_url].names if n in in_snapshot)
                response = self._named(type_url, names)
            else:
                response = None if renew else self._wildcard(type_url, force=False)
            if response is not None:
                responses.append(response)
        return responses

    def in_sync(self) -> bool:
        """Envoy accepted our last response of every type, and holds the current snapshot."""
        snapshot = self.cache.snapshot
        for type_url, state in self.types.items():
            if state.nonce is not None and not state.acked:
                return False
            if type_url not in NAMED_TYPES and state.sent_version != snapshot.version(type_url):
                return False
        return all(t in self.types for t in (CLUSTER, LISTENER))


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
        self._nonces = itertools.count(1)
        self._streams: list[_Stream] = []

    def in_sync(self) -> bool:
        """The most recent Envoy stream holds the current configuration."""
        return bool(self._streams) and self._streams[-1].in_sync()

    def renew(self) -> None:
        """Re-resolve on-demand resources that are due (e.g. certificates at half-life)."""
        self.cache.notify(_RENEW)

    async def StreamAggregatedResources(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: object,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        self.cache.subscribe(queue)
        stream = _Stream(self.cache, self.resolvers, self.events, self._nonces)
        self._streams.append(stream)
        try:
            async for item in merged(request_iterator, queue):
                if item is _UPDATE or item is _RENEW:
                    for response in stream.updates(renew=item is _RENEW):
                        yield response
                    continue
                assert isinstance(item, discovery_pb2.DiscoveryRequest)
                response = stream.handle(item)
                if response is not None:
                    yield response
        finally:
            self.cache.unsubscribe(queue)
            self._streams.remove(stream)
