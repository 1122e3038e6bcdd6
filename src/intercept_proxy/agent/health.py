"""Liveness and readiness, and metrics, over HTTP: two applications on two ports, so that the
probes' port may be open to the kubelet while the metrics stay closed to whoever else can route
to the pod."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def health_app(readiness: Callable[[], dict[str, Any]]) -> web.Application:
    """`readiness()` returns a JSON-able status whose "ready" key decides 200 or 503."""

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        status = readiness()
        return web.json_response(status, status=200 if status["ready"] else 503)

    app = web.Application()
    app.router.add_get("/healthz", live)
    app.router.add_get("/readyz", ready)
    return app


def metrics_app(
    registry: CollectorRegistry,
    before_scrape: Callable[[aiohttp.ClientSession], Awaitable[None]] | None = None,
) -> web.Application:
    """`/metrics`; `before_scrape` gathers what the registry reports from elsewhere (Envoy)."""
    session: aiohttp.ClientSession | None = None

    async def metrics(_: web.Request) -> web.Response:
        nonlocal session
        if before_scrape is not None:
            if session is None:
                session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
            await before_scrape(session)
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def close(_: web.Application) -> None:
        if session is not None:
            await session.close()

    app = web.Application()
    app.on_cleanup.append(close)
    app.router.add_get("/metrics", metrics)
    return app
