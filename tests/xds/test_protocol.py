"""The xDS protocol as Envoy speaks it: versions, nonces, ACK, NACK, pushes, and resources
resolved on demand by name."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from intercept_proxy.pki import CertificateAuthority, LeafCache
from intercept_proxy.xds import protos
from intercept_proxy.xds.certificates import certificate_resolver
from intercept_proxy.xds.resources import (
    CLUSTER,
    HTTP_LISTENER,
    LISTENER,
    NO_SNI_SECRET,
    SECRET,
    TLS_LISTENER,
    DataPlane,
    clusters,
    listeners,
    route_configurations,
)
from intercept_proxy.xds.routes import ROUTE
from intercept_proxy.xds.server import (
    AggregatedDiscoveryService,
    Resource,
    Snapshot,
    SnapshotCache,
    XdsEvents,
)

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


def secret_names(response) -> list[str]:
    names = []
    for packed in response.resources:
        secret = secret_pb2.Secret()
        packed.Unpack(secret)
        names.append(secret.name)
    return names


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
        self.requests.put_nowait(discovery_pb2.DiscoveryRequest(**fields))

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


def test_wildcard_types_ack_nack_and_pushes(caplog):
    async def scenario():
        cache = SnapshotCache()
        cache.set(snapshot())
        events, counts = counting_events()
        ads = AggregatedDiscoveryService(cache, events=events)
        envoy = Envoy(ads.StreamAggregatedResources)

        envoy.send(type_url=CLUSTER)
        first = await envoy.receive()
        assert (first.type_url, len(first.resources)) == (CLUSTER, 3)
        # ACK: same version and nonce; nothing is sent again.
        envoy.send(type_url=CLUSTER, version_info=first.version_info, response_nonce=first.nonce)
        assert await envoy.silent()
        assert not ads.in_sync()  # listeners not subscribed yet
        envoy.send(type_url=LISTENER)
        listeners_response = await envoy.receive()
        envoy.send(
            type_url=LISTENER,
            version_info=listeners_response.version_info,
            response_nonce=listeners_response.nonce,
        )
        assert await envoy.silent()
        assert not ads.in_sync()  # routes not subscribed yet
        # Routes are subscribed by name (one per listener, as Envoy's RDS asks): each response
        # holds the names asked for, and a changed subscription is answered at once.
        envoy.send(type_url=ROUTE, resource_names=[TLS_LISTENER])
        routes_response = await envoy.receive()
        assert len(routes_response.resources) == 1

        def ack_routes(response, names: list[str]) -> None:
            envoy.send(
                type_url=ROUTE,
                version_info=response.version_info,
                response_nonce=response.nonce,
                resource_names=names,
            )

        both = [TLS_LISTENER, HTTP_LISTENER]
        ack_routes(routes_response, both)  # and subscribe to both
        routes_response = await envoy.receive()
        assert len(routes_response.resources) == 2
        ack_routes(routes_response, both)
        assert await envoy.silent()
        assert ads.in_sync()

        # An unchanged snapshot set again pushes nothing; a changed one pushes that type only.
        cache.set(snapshot())
        assert await envoy.silent()
        cache.set(snapshot(connect_timeout=3.0))
        second = await envoy.receive()
        assert second.type_url == CLUSTER
        assert (second.version_info, second.nonce) != (first.version_info, first.nonce)
        assert await envoy.silent()
        assert not ads.in_sync()

        # A stale nonce (answering the first response) is ignored.
        envoy.send(type_url=CLUSTER, version_info=first.version_info, response_nonce=first.nonce)
        assert await envoy.silent()

        # NACK: logged with Envoy's error, not pushed again, not in sync.
        envoy.send(
            type_url=CLUSTER,
            version_info=first.version_info,
            response_nonce=second.nonce,
            error_detail=status_pb2.Status(code=3, message="bad cluster for testing"),
        )
        assert await envoy.silent()
        assert not ads.in_sync()
        cache.set(snapshot(connect_timeout=3.0))
        assert await envoy.silent()
        # A fixed snapshot is pushed, and its ACK restores the sync.
        cache.set(snapshot(connect_timeout=4.0))
        third = await envoy.receive()
        envoy.send(type_url=CLUSTER, version_info=third.version_info, response_nonce=third.nonce)
        assert await envoy.silent()
        assert ads.in_sync()
        await envoy.close()
        return counts

    counts = asyncio.run(scenario())
    assert counts["nack"] == ["Cluster"]
    routes = ["RouteConfiguration"] * 2
    assert counts["ack"] == ["Cluster", "Listener", *routes, "Cluster"]
    assert counts["push"] == ["Cluster", "Listener", *routes, "Cluster", "Cluster"]
    assert "Envoy rejected Cluster version" in caplog.text
    assert "bad cluster for testing" in caplog.text


def test_on_demand_resources_are_sent_once_each(caplog):
    resolved: list[str] = []

    def resolver(name: str) -> Resource | None:
        resolved.append(name)
        return None if name.endswith(".missing") else resource(name, "v1")

    async def scenario():
        events, counts = counting_events()
        ads = AggregatedDiscoveryService(SnapshotCache(), {SECRET: resolver}, events)
        envoy = Envoy(ads.StreamAggregatedResources)

        envoy.send(type_url=SECRET, resource_names=["a.test"])
        first = await envoy.receive()
        assert secret_names(first) == ["a.test"]
        # A new name: only it is sent; what Envoy holds stays in force without a resend.
        envoy.send(
            type_url=SECRET,
            response_nonce=first.nonce,
            version_info=first.version_info,
            resource_names=["a.test", "b.test", "x.missing"],
        )
        second = await envoy.receive()
        assert secret_names(second) == ["b.test"]
        envoy.send(
            type_url=SECRET,
            response_nonce=second.nonce,
            version_info=second.version_info,
            resource_names=["b.test"],
        )
        assert await envoy.silent()  # unsubscribing needs no answer
        # Subscribing again after an unsubscribe sends the resource again.
        envoy.send(
            type_url=SECRET,
            response_nonce=second.nonce,
            version_info=second.version_info,
            resource_names=["a.test", "b.test"],
        )
        third = await envoy.receive()
        assert secret_names(third) == ["a.test"]
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
        envoy = Envoy(ads.StreamAggregatedResources)
        envoy.send(type_url=SECRET, resource_names=["a.test"])
        held = await envoy.receive()
        envoy.send(type_url=SECRET, response_nonce=held.nonce, resource_names=["a.test"])
        versions["a.test"] = "bad"
        ads.renew()
        refused = await envoy.receive()
        assert secret_names(refused) == ["a.test"]
        envoy.send(type_url=SECRET, response_nonce=held.nonce, resource_names=["a.test", "b.test"])
        accepted = await envoy.receive()
        assert secret_names(accepted) == ["b.test"]
        envoy.send(
            type_url=SECRET,
            response_nonce=refused.nonce,
            resource_names=["a.test", "b.test"],
            error_detail=status_pb2.Status(code=3, message="bad certificate for testing"),
        )
        envoy.send(
            type_url=SECRET, response_nonce=accepted.nonce, resource_names=["a.test", "b.test"]
        )
        ads.renew()  # a.test resolves to the refused version: not sent again
        assert await envoy.silent()
        versions["a.test"] = "fixed"
        ads.renew()
        fixed = await envoy.receive()
        await envoy.close()
        return secret_names(fixed)

    assert asyncio.run(scenario()) == ["a.test"]
    assert "Envoy rejected Secret a.test: bad certificate for testing" in caplog.text


def test_due_resources_are_renewed():
    versions = {"a.test": "v1", "b.test": "v1"}
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    future = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)

    def resolver(name: str) -> Resource:
        return resource(name, versions[name], past if name == "a.test" else future)

    async def scenario():
        ads = AggregatedDiscoveryService(SnapshotCache(), {SECRET: resolver})
        envoy = Envoy(ads.StreamAggregatedResources)
        envoy.send(type_url=SECRET, resource_names=["a.test", "b.test"])
        first = await envoy.receive()
        envoy.send(
            type_url=SECRET,
            response_nonce=first.nonce,
            version_info=first.version_info,
            resource_names=["a.test", "b.test"],
        )
        ads.renew()  # a.test is due but resolves to the same version: nothing to send
        assert await envoy.silent()
        versions.update({"a.test": "v2", "b.test": "v2"})
        ads.renew()  # b.test changed too, but it is not due
        renewed = await envoy.receive()
        await envoy.close()
        return secret_names(first), secret_names(renewed)

    assert asyncio.run(scenario()) == (["a.test", "b.test"], ["a.test"])


def test_a_failing_resolver_does_not_end_the_stream(caplog):
    def resolver(name: str) -> Resource:
        if name == "boom.test":
            raise ValueError("the CA has expired")
        return resource(name, "v1")

    async def scenario():
        ads = AggregatedDiscoveryService(SnapshotCache(), {SECRET: resolver})
        envoy = Envoy(ads.StreamAggregatedResources)
        envoy.send(type_url=SECRET, resource_names=["boom.test", "ok.test"])
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
        envoy = Envoy(ads.StreamAggregatedResources)
        # Envoy subscribed to listeners first; a snapshot changing both still leads with clusters.
        for type_url in (LISTENER, CLUSTER):
            envoy.send(type_url=type_url)
            await envoy.receive()
        cache.set(snapshot())
        order = [(await envoy.receive()).type_url, (await envoy.receive()).type_url]
        await envoy.close()
        return order

    assert asyncio.run(scenario()) == [CLUSTER, LISTENER]


@pytest.fixture(scope="module")
def ca():
    return CertificateAuthority.generate()


def test_certificate_resolver(ca):
    cache = LeafCache(ca, validity=dt.timedelta(hours=4))
    resolve = certificate_resolver(cache)
    resource = resolve("API.GitHub.com")
    secret = resource.message
    assert secret.name == "API.GitHub.com"
    cert = x509.load_pem_x509_certificate(secret.tls_certificate.certificate_chain.inline_bytes)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.github.com"]
    assert b"PRIVATE KEY" in secret.tls_certificate.private_key.inline_bytes
    # Renewed when the cache renews it: half of the validity after minting.
    assert resource.renew_at == cert.not_valid_after_utc - dt.timedelta(hours=2)
    assert resolve("api.github.com").version == resource.version  # cached, same leaf

    # No host name, no certificate for it: the placeholder, which no client accepts.
    placeholder = resolve("1.2.3.4").message
    assert placeholder.name == "1.2.3.4"
    cert = x509.load_pem_x509_certificate(
        placeholder.tls_certificate.certificate_chain.inline_bytes
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [NO_SNI_SECRET]
