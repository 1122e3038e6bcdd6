"""The agent's health and metrics server, over real sockets: what the kubelet and a scraper
get, and what anything else gets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from intercept_proxy.agent import health
from intercept_proxy.agent.health import MAX_HEAD, health_routes, metrics_routes, serve
from intercept_proxy.agent.metrics import EnvoyDecisions


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)  # the server closes after one answer
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: pod\r\nUser-Agent: kube-probe/1.37\r\n\r\n".encode()


@pytest.fixture
def ready():
    return {"ready": False, "policy": "unloaded"}


@pytest.fixture
def scrapes():
    return []


@contextlib.asynccontextmanager
async def running(ready, scrapes):
    """The server on a free port of 127.0.0.1, stopped afterwards."""
    registry = CollectorRegistry()
    Counter("intercept_things", "Things", registry=registry).inc()

    async def before_scrape():
        scrapes.append(1)
        if len(scrapes) == 2:
            raise RuntimeError("Envoy's admin went away")

    routes = {**health_routes(lambda: dict(ready)), **metrics_routes(registry, before_scrape)}
    (server,) = await serve(routes, ["127.0.0.1"], 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def test_probes_and_metrics_are_answered(ready, scrapes):
    async def scenario():
        async with running(ready, scrapes) as port:
            status, headers, body = await exchange(port, get("/healthz"))
            assert (status, json.loads(body)) == (200, {"live": True})
            assert headers["connection"] == "close"
            status, _, body = await exchange(port, get("/readyz"))
            assert (status, json.loads(body)) == (503, ready)
            ready["ready"] = True
            status, headers, body = await exchange(port, get("/readyz?verbose=1", "HEAD"))
            assert (status, body) == (200, b"")
            assert int(headers["content-length"]) == len(json.dumps(ready))
            status, headers, body = await exchange(port, get("/metrics"))
            assert status == 200 and headers["content-type"].startswith("text/plain")
            assert b"intercept_things_total 1.0" in body and scrapes == [1]
            # A failing scrape is one failed answer; the server goes on.
            status, _, _ = await exchange(port, get("/metrics"))
            assert status == 500
            assert (await exchange(port, get("/metrics")))[0] == 200

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (get("/other"), 404),
        (get("/healthz", "POST"), 405),
        (get("/healthz", "get"), 405),
        (b"GET /healthz\r\n\r\n", 400),
        (b"hello there\r\n\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),
    ],
)
def test_anything_else_is_refused_and_named(ready, scrapes, request_, status):
    async def scenario():
        async with running(ready, scrapes) as port:
            assert (await exchange(port, request_))[0] == status
            # A client that leaves without a request costs nothing; the next one is answered.
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            assert (await exchange(port, get("/healthz")))[0] == 200

    asyncio.run(scenario())


def test_a_client_that_stalls_is_dropped(ready, scrapes, monkeypatch):
    monkeypatch.setattr(health, "TIMEOUT", 0.2)

    async def scenario():
        async with running(ready, scrapes) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: po")  # and nothing more
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, unanswered
            writer.close()
            assert (await exchange(port, get("/healthz")))[0] == 200

    asyncio.run(scenario())


def test_envoys_counters_are_absent_while_envoy_does_not_answer():
    """Nothing listening, or a listener that never answers: the scrape goes on without them,
    within the timeout. (With Envoy answering: tests/integration/test_data_path.py.)"""

    async def scenario():
        closed = socket.create_server(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        silent = socket.create_server(("127.0.0.1", 0))
        try:
            for admin in (("127.0.0.1", port), silent.getsockname()):
                decisions = EnvoyDecisions(admin)
                begun = time.monotonic()
                await decisions.refresh()
                assert time.monotonic() - begun < 3
                family = next(iter(decisions.collect()))
                assert family.samples == []
        finally:
            silent.close()

    asyncio.run(scenario())


def test_envoys_counter_is_served_with_three_labels():
    """Envoy's one tag (decision.counted) becomes the metric's judge, result and rule; a request
    no route took (an empty value) is nobody's decision."""
    decisions = EnvoyDecisions()
    decisions._samples = [
        ({"counted": "agent|true|allowed_domains"}, 1.0),
        ({"counted": "envoy|false|pod:a|b"}, 2.0),
        ({"counted": ""}, 3.0),
        ({}, 4.0),
    ]
    family = next(iter(decisions.collect()))
    labels = [
        (s.labels["judge"], s.labels["result"], s.labels["rule"], s.value) for s in family.samples
    ]
    assert labels == [
        ("agent", "allow", "allowed_domains", 1.0),
        ("envoy", "deny", "pod:a|b", 2.0),
        ("none", "deny", "", 3.0),
        ("none", "deny", "", 4.0),
    ]
