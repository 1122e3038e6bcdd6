"""Merging an xDS stream's requests with events from elsewhere (new snapshots, renewals)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


async def merged(
    requests: AsyncIterator[object], events: asyncio.Queue[object]
) -> AsyncIterator[object]:
    """Yield Envoy's requests and the items others put on `events`, until Envoy closes."""

    async def read() -> None:
        try:
            async for request in requests:
                events.put_nowait(request)
        finally:
            events.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (item := await events.get()) is not None:
            yield item
    finally:
        reader.cancel()
