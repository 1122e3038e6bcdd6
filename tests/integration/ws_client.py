"""Run inside the client namespace: open a WebSocket through Envoy's TLS listener (or through
the gateway, `--proxy URL`, as a proxy's client) to each host named on the command line; print
{host: echoed text, or the HTTP status of the refusal}."""

import asyncio
import json
import socket
import ssl
import sys

import aiohttp
from aiohttp.abc import AbstractResolver


class ToEnvoy(AbstractResolver):
    """Every name resolves to Envoy's TLS listener; Host and SNI stay the name."""

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": 15001,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self):
        pass


async def main(ca_file, hosts, proxy=None):
    context = ssl.create_default_context(cafile=ca_file)
    results = {}
    connector = aiohttp.TCPConnector(resolver=None if proxy else ToEnvoy(), ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        for host in hosts:
            try:
                async with session.ws_connect(f"wss://{host}/ws", proxy=proxy) as ws:
                    await ws.send_str("hello")
                    message = await ws.receive(timeout=5)
                    results[host] = f"echo:{message.data}"
            except aiohttp.WSServerHandshakeError as e:
                results[host] = e.status
            except aiohttp.ClientHttpProxyError as e:  # the gateway refused the tunnel
                results[host] = f"tunnel:{e.status}"
    print(json.dumps(results))


if sys.argv[2] == "--proxy":
    asyncio.run(main(sys.argv[1], sys.argv[4:], proxy=sys.argv[3]))
else:
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
