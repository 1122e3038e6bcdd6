"""The xDS protocol as Envoy speaks it (incremental, delta ADS): per-resource versions, nonces,
ACK, NACK, removals, pushes, and resources resolved on demand by name, released when idle."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from intercept_proxy.pki import CertificateAuthority, LeafCache
from intercept_proxy.xds import protos
from intercept_proxy.xds.certificates import certificate_resolver
from intercept_proxy.xds.resources import (
    HTTP_LISTENER,
    NO_SNI_SECRET,
    TLS_LISTENER,
    DataPlane,
    clusters,
    listeners,
    route_configurations,
)
from intercept_proxy.xds.server import (
    ADS_SERVICE,
    AggregatedDiscoveryService,
    OnDemand,
    Resource,
    Snapshot,
    SnapshotCache,
    XdsEvents,
)
from intercept_proxy.xds.types import CLUSTER, LISTENER, ROUTE, SECRET

PEM = "-----BEGIN CERTIFICATE-----\n(bundle)\n-----END CERTIFICATE-----\n"


def snapshot(connect_timeout: float = 10.0) -> Snapshot:
    dp = DataPlane(upstream_connect_timeout_s=connect_timeout)
    return Snapshot(
        {
            CLUSTER: {c["name"]: protos.to_message(CLUSTER, c) for c in clusters(dp, PEM)},
            LISTENER: {lst["name"]: protos.to_message(LISTENER, lst) for lst in listeners(dp)},
            ROUTE: {r["name"]: protos.to_message(ROUTE, r) for r in route_configurations("r1")},
        }
    )


def names(response) -> list[str]:
    return [r.name for r in response.resources]


def secret_names(response) -> list[str]:
    out = []
    for resource in response.resources:
        secret = secret_pb2.Secret()
        resource.resource.Unpack(secret)
        assert secret.name == resource.name
        out.append(secret.name)
    return out


def resource(name: str, version: str, renew_at=None) -> Resource:
    return Resource(protos.leaf_secret(name, version.encode(), b"key"), version, renew_at)


class Envoy:
    """One side of a stream: requests go in, the server's responses come out."""

    def __init__(self, method) -> None:
        self.requests: asyncio.Queue = asyncio.Queue()
        self.responses: asyncio.Queue = asyncio.Queue()
        self._pump = asyncio.create_task(self._collect(method(self._iterate(), None)))

    async def _iterate(self):
        while (item := await self.requests.get()) is not None:
            yield item

    async def _collect(self, responses) -> None:
        async for response in responses:
            self.responses.put_nowait(response)

    def send(self, **fields) -> None:
        self.requests.put_nowait(discovery_pb2.DeltaDiscoveryRequest(**fields))

    def ack(self, response, **fields) -> None:
        self.send(type_url=response.type_url, response_nonce=response.nonce, **fields)

    async def receive(self, timeout: float = 1.0):
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def silent(self) -> bool:
        await asyncio.sleep(0.1)
        return self.responses.empty()

    async def close(self) -> None:
        self.requests.put_nowait(None)
        await asyncio.wait_for(self._pump, 1.0)
        assert self.responses.empty()


def counting_events():
    counts: dict[str, list[str]] = {"push": [], "ack": [], "nack": []}
    events = XdsEvents(
        on_push=counts["push"].append, on_ack=counts["ack"].append, on_nack=counts["nack"].append
    )
    return events, counts


def test_snapshot_types_ack_nack_and_pushes(caplog):
    async def scenario():
        cache = SnapshotCache()
        cache.set(snapshot())
        events, counts = counting_events()
        ads = AggregatedDiscoveryService(
            cache, events=events, redact=lambda text: text.replace("s3cr3t", "<aws key>")
        )
        envoy = Envoy(ads.DeltaAggregatedResources)

        envoy.send(type_url=CLUSTER)  # a first request naming nothing: the whole type
        first = await envoy.receive()
        assert (first.type_url, len(first.resources)) == (CLUSTER, 3)
        assert all(r.version for r in first.resources)
        envoy.ack(first)
        assert await envoy.silent()
        assert not ads.in_sync()  # listeners not subscribed yet
        envoy.send(type_url=LISTENER, resource_names_subscribe=["*"])
        envoy.ack(await envoy.receive())
        assert await envoy.silent()
        assert not ads.in_sync()  # routes not subscribed yet
        # Routes are subscribed by name: each response holds the names newly asked for.
        envoy.send(type_url=ROUTE, resource_names_subscribe=[TLS_LISTENER])
        routes = await envoy.receive()
        assert names(routes) == [TLS_LISTENER]
        envoy.ack(routes, resource_names_subscribe=[HTTP_LISTENER])
        routes = await envoy.receive()
        assert names(routes) == [HTTP_LISTENER]  # not the one Envoy holds
        envoy.ack(routes)
        assert await envoy.silent()
        assert ads.in_sync()

        # An unchanged snapshot set again pushes nothing; a changed one pushes what changed.
        cache.set(snapshot())
        assert await envoy.silent()
        cache.set(snapshot(connect_timeout=3.0))
        second = await envoy.receive()
        assert second.type_url == CLUSTER
        assert names(second) == ["upstream_plain", "upstream_tls"]  # not the authz cluster
        assert second.nonce != first.nonce
        assert await envoy.silent()
        assert not ads.in_sync()

        # NACK: logged with Envoy's error (what it quotes of a secret redacted), not pushed
        # again, not in sync.
        refusal = status_pb2.Status(code=3, message="bad cluster {key: s3cr3t}")
        envoy.ack(second, error_detail=refusal)
        assert await envoy.silent()
        assert not ads.in_sync()
        # An answer to a response already answered changes nothing.
        envoy.ack(second)
        assert await envoy.silent()
        assert not ads.in_sync()
        # A new snapshot is pushed (whatever Envoy refused before), and its ACK restores the sync.
        cache.set(snapshot(connect_timeout=4.0))
        third = await envoy.receive()
        assert names(third) == ["upstream_plain", "upstream_tls"]
        envoy.ack(third)
        assert await envoy.silent()
        assert ads.in_sync()
        await envoy.close()
        return counts

    counts = asyncio.run(scenario())
    assert counts["nack"] == ["Cluster"]
    routes = ["RouteConfiguration"] * 2
    assert counts["ack"] == ["Cluster", "Listener", *routes, "Cluster"]
    assert counts["push"] == ["Cluster", "Listener", *routes, "Cluster", "Cluster"]
    rejected = "Envoy rejected Cluster upstream_plain, upstream_tls: bad cluster {key: <aws key>}"
    assert rejected in caplog.text and "s3cr3t" not in caplog.text


def test_resources_gone_from_the_snapshot_are_removed():
    async def scenario():
        cache = SnapshotCache()
        cache.set(snapshot())
        ads = AggregatedDiscoveryService(cache)
        envoy = Envoy(ads.DeltaAggregatedResources)
        envoy.send(type_url=ROUTE, resource_names_subscribe=[TLS_LISTENER, HTTP_LISTENER])
        envoy.ack(await envoy.receive())
        smaller = dict(snapshot().resources)
        smaller[ROUTE] = {TLS_LISTENER: smaller[ROUTE][TLS_LISTENER]}
        cache.set(Snapshot(smaller))
        removal = await envoy.receive()
        # Unsubscribing needs no answer.
        envoy.ack(removal, resource_names_unsubscribe=[TLS_LISTENER])
        silent = await envoy.silent()
        await envoy.close()
        return removal, silent

    removal, silent = asyncio.run(scenario())
    assert (list(removal.removed_resources), names(removal)) == ([HTTP_LISTENER], [])
    assert silent


def test_a_reconnecting_envoy_gets_only_what_it_lacks():
    async def scenario():
        cache = SnapshotCache()
        cache.set(snapshot())
        ads = AggregatedDiscoveryService(cache)
        envoy = Envoy(ads.DeltaAggregatedResources)
        envoy.send(type_url=CLUSTER)
        held = {r.name: r.version for r in (await envoy.receive()).resources}
        await envoy.close()
        cache.set(snapshot(connect_timeout=3.0))
        # The same Envoy on a new stream: what it holds comes with its first request.
        envoy = Envoy(ads.DeltaAggregatedResources)
        envoy.send(type_url=CLUSTER, initial_resource_versions=held | {"gone": "1"})
        again = await envoy.receive()
        envoy.ack(again)
        silent = await envoy.silent()
        await envoy.close()
        return again, silent

    again, silent = asyncio.run(scenario())
    assert names(again) == ["upstream_plain", "upstream_tls"]
    assert list(again.removed_resources) == ["gone"]
    assert silent


def test_on_demand_resources_are_sent_once_each():
    resolved: list[str] = []

    def resolver(name: str) -> Resource | None:
        resolved.append(name)
        return None if name.endswith(".missing") else resource(name, "v1")

    async def scenario():
        events, counts = counting_events()
        ads = AggregatedDiscoveryService(SnapshotCache(), {SECRET: resolver}, events)
        envoy = Envoy(ads.DeltaAggregatedResources)

        envoy.send(type_url=SECRET, resource_names_subscribe=["a.test"])
        first = await envoy.receive()
        assert secret_names(first) == ["a.test"]
        # A new name: only it is sent; what Envoy holds stays in force without a resend.
        envoy.ack(first, resource_names_subscribe=["b.test", "x.missing"])
        second = await envoy.receive()
        assert secret_names(second) == ["b.test"]
        envoy.ack(second, resource_names_unsubscribe=["a.test", "x.missing"])
        assert await envoy.silent()  # unsubscribing needs no answer
        # Subscribing again after an unsubscribe sends the resource again.
        envoy.send(type_url=SECRET, resource_names_subscribe=["a.test"])
        third = await envoy.receive()
        assert secret_names(third) == ["a.test"]
        assert ads.held(SECRET) == 2
        await envoy.close()
        return counts

    counts = asyncio.run(scenario())
    assert resolved == ["a.test", "b.test", "x.missing", "a.test"]
    assert counts["ack"] == ["Secret", "Secret"]


def test_each_on_demand_response_is_answered_on_its_own(caplog):
    """Two responses in flight: Envoy NACKs the first and ACKs the second. The first's names
    return to what Envoy held before, and the refused version is not sent again."""
    versions = {"a.test": "good", "b.test": "v1"}

    def resolver(name: str) -> Resource:
        return resource(name, versions[name], renew_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))

    async def scenario():
        ads = AggregatedDiscoveryService(SnapshotCache(), {SECRET: resolver})
        envoy = Envoy(ads.DeltaAggregatedResources)
        envoy.send(type_url=SECRET, resource_names_subscribe=["a.test"])
        held = await envoy.receive()
        envoy.ack(held)
        versions["a.test"] = "bad"
        ads.renew()
        refused = await envoy.receive()
        assert secret_names(refused) == ["a.test"]
        envoy.send(type_url=SECRET, resource_names_subscribe=["b.test"])
        accepted = await envoy.receive()
        assert secret_names(accepted) == ["b.test"]
        envoy.ack(refused, error_detail=status_pb2.Status(code=3, message="bad certificate"))
        envoy.ack(accepted)
        ads.renew()  # a.test resolves to the refused version: not sent again
        assert await envoy.silent()
        versions["a.test"] = "fixed"
        ads.renew()
        fixed = await envoy.receive()
        await envoy.close()
        return secret_names(fixed)

    assert asyncio.run(scenario()) == ["a.test"]
    assert "Envoy rejected Secret a.test: bad certificate" in caplog.text


def test_due_resources_are_renewed():
    versions = {"a.test": "v1", "b.test": "v1"}
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    future = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)

    def resolver(name: str) -> Resource:
        return resource(name, versions[name], past if name == "a.test" else future)

    async def scenario():
        ads = AggregatedDiscoveryService(SnapshotCache(), {SECRET: resolver})
        envoy = Envoy(ads.DeltaAggregatedResources)
        envoy.send(type_url=SECRET, resource_names_subscribe=["a.test", "b.test"])
        first = await envoy.receive()
        envoy.ack(first)
        ads.renew()  # a.test is due but resolves to the same version: nothing to send
        assert await envoy.silent()
        versions.update({"a.test": "v2", "b.test": "v2"})
        ads.renew()  # b.test changed too, but it is not due
        renewed = await envoy.receive()
        await envoy.close()
        return secret_names(first), secret_names(renewed)

    assert asyncio.run(scenario()) == (["a.test", "b.test"], ["a.test"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_idle_on_demand_resources_are_released():
    """Envoy keeps a certificate until it is told to drop it: the server removes what Envoy has
    not asked for in `release_after`. Envoy then unsubscribes, and asks again when it needs it."""
    clock = Clock()
    spec = OnDemand(lambda n: resource(n, "v1"), release_after=dt.timedelta(minutes=10))

    async def scenario():
        ads = AggregatedDiscoveryService(SnapshotCache(), {SECRET: spec}, clock=clock)
        envoy = Envoy(ads.DeltaAggregatedResources)
        envoy.send(type_url=SECRET, resource_names_subscribe=["a.test"])
        envoy.ack(await envoy.receive())
        clock.now += 300
        envoy.send(type_url=SECRET, resource_names_subscribe=["b.test"])
        envoy.ack(await envoy.receive())
        clock.now += 301  # a.test asked for 601 s ago, b.test 301 s ago
        ads.renew()
        released = await envoy.receive()
        assert (list(released.removed_resources), names(released)) == (["a.test"], [])
        assert ads.held(SECRET) == 1
        # Envoy's selector drops it and unsubscribes; a later handshake subscribes again.
        envoy.ack(released, resource_names_unsubscribe=["a.test"])
        assert await envoy.silent()
        envoy.send(type_url=SECRET, resource_names_subscribe=["a.test"])
        again = await envoy.receive()
        await envoy.close()
        return secret_names(again)

    assert asyncio.run(scenario()) == ["a.test"]


def test_secrets_of_the_snapshot_are_never_resolved_nor_released():
    """A credential's secret is the snapshot's: Envoy gets it when it subscribes, gets it again
    when the snapshot changes it, and it is never released however long it goes unasked."""
    clock = Clock()
    resolved = []

    def resolve(name):
        resolved.append(name)
        return resource(name, "v1")

    spec = OnDemand(resolve, max_held=1, release_after=dt.timedelta(minutes=10))

    def with_secret(value: str) -> Snapshot:
        return Snapshot({SECRET: {"credential 0": protos.generic_secret("credential 0", value)}})

    async def scenario():
        cache = SnapshotCache()
        cache.set(with_secret("one"))
        ads = AggregatedDiscoveryService(cache, {SECRET: spec}, clock=clock)
        envoy = Envoy(ads.DeltaAggregatedResources)
        envoy.send(type_url=SECRET, resource_names_subscribe=["credential 0", "a.test"])
        first = await envoy.receive()
        envoy.ack(first)
        assert await envoy.silent()
        clock.now += 601  # neither asked for since
        envoy.send(type_url=SECRET, resource_names_subscribe=["b.test"])
        second = await envoy.receive()  # b.test; a.test goes, the credential stays
        envoy.ack(second)
        assert await envoy.silent()  # max_held counts certificates only
        cache.set(with_secret("two"))
        third = await envoy.receive()
        envoy.ack(third)
        assert await envoy.silent()
        await envoy.close()
        return first, second, third

    first, second, third = asyncio.run(scenario())
    assert secret_names(first) == ["a.test", "credential 0"]
    assert (secret_names(second), list(second.removed_resources)) == (["b.test"], ["a.test"])
    secret = secret_pb2.Secret()
    third.resources[0].resource.Unpack(secret)
    assert (secret.name, secret.generic_secret.secret.inline_string) == ("credential 0", "two")
    assert resolved == ["a.test", "b.test"]


def test_envoy_holds_at_most_max_held():
    """Beyond the bound, the least recently asked-for go, in the response that sends the new
    ones (never one being sent)."""
    clock = Clock()
    spec = OnDemand(lambda n: resource(n, "v1"), max_held=3)

    async def scenario():
        ads = AggregatedDiscoveryService(SnapshotCache(), {SECRET: spec}, clock=clock)
        envoy = Envoy(ads.DeltaAggregatedResources)
        for name in ("a.test", "b.test", "c.test"):
            clock.now += 1
            envoy.send(type_url=SECRET, resource_names_subscribe=[name])
            response = await envoy.receive()
            assert not response.removed_resources
            envoy.ack(response)
        clock.now += 1
        envoy.send(type_url=SECRET, resource_names_subscribe=["d.test", "e.test"])
        bounded = await envoy.receive()
        held = ads.held(SECRET)
        await envoy.close()
        return bounded, held

    bounded, held = asyncio.run(scenario())
    assert secret_names(bounded) == ["d.test", "e.test"]
    assert list(bounded.removed_resources) == ["a.test", "b.test"]
    assert held == 3


def test_a_failing_resolver_does_not_end_the_stream(caplog):
    def resolver(name: str) -> Resource:
        if name == "boom.test":
            raise ValueError("the CA has expired")
        return resource(name, "v1")

    async def scenario():
        ads = AggregatedDiscoveryService(SnapshotCache(), {SECRET: resolver})
        envoy = Envoy(ads.DeltaAggregatedResources)
        envoy.send(type_url=SECRET, resource_names_subscribe=["boom.test", "ok.test"])
        response = await envoy.receive()
        await envoy.close()
        return secret_names(response)

    assert asyncio.run(scenario()) == ["ok.test"]
    assert "cannot resolve Secret 'boom.test'" in caplog.text


def test_clusters_are_pushed_before_listeners():
    async def scenario():
        cache = SnapshotCache()
        cache.set(Snapshot({CLUSTER: {}, LISTENER: {}}))
        ads = AggregatedDiscoveryService(cache)
        envoy = Envoy(ads.DeltaAggregatedResources)
        # Envoy subscribed to listeners first; a snapshot changing both still leads with clusters.
        for type_url in (LISTENER, CLUSTER):
            envoy.send(type_url=type_url)
            envoy.ack(await envoy.receive())
        cache.set(snapshot())
        order = [(await envoy.receive()).type_url, (await envoy.receive()).type_url]
        await envoy.close()
        return order

    assert asyncio.run(scenario()) == [CLUSTER, LISTENER]


@contextlib.asynccontextmanager
async def served(ads: AggregatedDiscoveryService) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to `ads`, served as the agent serves it (`add_to_server`)."""
    server = grpc.aio.server()
    ads.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


def _not_utf8(request: discovery_pb2.DeltaDiscoveryRequest, placeholder: str, name: bytes) -> bytes:
    """`request` serialized, with `placeholder` (of the same length) replaced by raw bytes."""
    assert len(placeholder.encode()) == len(name)
    return request.SerializeToString().replace(placeholder.encode(), name)


def test_a_name_that_is_not_utf8_affects_only_itself(caplog):
    """Envoy sends a TLS server name as it is, and a proto3 string must be UTF-8: served with
    `add_to_server`, such a name is dropped and the stream carries on (a strict server ends it,
    and Envoy subscribes to the same name again whenever it reconnects)."""
    bad = b"bad\xff\xfe.test1"

    async def scenario():
        ads = AggregatedDiscoveryService(SnapshotCache(), {SECRET: lambda n: resource(n, "v1")})
        async with served(ads) as channel:
            call = channel.stream_stream(
                f"/{ADS_SERVICE}/DeltaAggregatedResources",
                request_serializer=None,  # raw bytes, as Envoy sends them
                response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
            )()
            first = discovery_pb2.DeltaDiscoveryRequest(
                type_url=SECRET, resource_names_subscribe=["PLACEHOLDER", "good.test"]
            )
            await call.write(_not_utf8(first, "PLACEHOLDER", bad))
            good = await asyncio.wait_for(call.read(), 5)
            # Envoy's NACK or later request may quote it too: still no harm.
            later = discovery_pb2.DeltaDiscoveryRequest(
                type_url=SECRET,
                response_nonce=good.nonce,
                resource_names_subscribe=["new.test"],
                initial_resource_versions={"PLACEHOLDER": "1"},
            )
            await call.write(_not_utf8(later, "PLACEHOLDER", bad))
            new = await asyncio.wait_for(call.read(), 5)
            await call.done_writing()
            return secret_names(good), secret_names(new)

    assert asyncio.run(scenario()) == (["good.test"], ["new.test"])
    assert "ignoring a resource name that is not UTF-8: b'bad\\xff\\xfe.test1'" in caplog.text


@pytest.fixture(scope="module")
def ca():
    return CertificateAuthority.generate()


def test_certificate_resolver(ca):
    cache = LeafCache(ca, validity=dt.timedelta(hours=4), max_entries=300)
    spec = certificate_resolver(cache)
    # Envoy holds no more certificates than the agent keeps leaves, none idle for long.
    assert (spec.max_held, spec.release_after) == (300, dt.timedelta(minutes=10))
    resolved = spec.resolve("API.GitHub.com")
    assert resolved is not None
    secret = resolved.message
    assert secret.name == "API.GitHub.com"
    cert = x509.load_pem_x509_certificate(secret.tls_certificate.certificate_chain.inline_bytes)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.github.com"]
    assert b"PRIVATE KEY" in secret.tls_certificate.private_key.inline_bytes
    # Renewed when the cache renews it: half of the validity after minting.
    assert resolved.renew_at == cert.not_valid_after_utc - dt.timedelta(hours=2)
    assert spec.resolve("api.github.com").version == resolved.version  # cached, same leaf

    # No host name, no certificate for it: the placeholder, which no client accepts.
    placeholder = spec.resolve("1.2.3.4").message
    assert placeholder.name == "1.2.3.4"
    cert = x509.load_pem_x509_certificate(
        placeholder.tls_certificate.certificate_chain.inline_bytes
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [NO_SNI_SECRET]
    # A name with a space is no server name: a credential's, which only the snapshot holds.
    assert spec.resolve("credential 0123abcd") is None


def test_state_of_the_world_is_refused_with_an_explanation(caplog):
    """An Envoy with an older bootstrap (api_type GRPC) is told what to change."""

    async def scenario():
        ads = AggregatedDiscoveryService(SnapshotCache())
        async with served(ads) as channel:
            call = channel.stream_stream(
                f"/{ADS_SERVICE}/StreamAggregatedResources",
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )()
            await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER))
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call.read()
            return error.value

    error = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "DELTA_GRPC" in error.details()
    assert "Envoy asked for state-of-the-world ADS" in caplog.text


def test_the_xds_server_does_not_load_the_policy_engine():
    """The control plane serves what it is given: importing it loads no policy code."""
    code = (
        "import sys, intercept_proxy.xds.server\n"
        "print(sorted(m for m in sys.modules if m == 'regorus' or m.startswith("
        "'intercept_proxy.policy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
