"""Liveness, readiness and metrics over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def health_app(
    readiness: Callable[[], dict[str, Any]], registry: CollectorRegistry
) -> web.Application:
    """`readiness()` returns a JSON-able status whose "ready" key decides 200 or 503."""

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        status = readiness()
        return web.json_response(status, status=200 if status["ready"] else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", live)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/metrics", metrics)
    return app
