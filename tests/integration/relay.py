"""Run inside a namespace: relay TCP from LISTEN_HOST:LISTEN_PORT to TARGET_HOST:TARGET_PORT.

For clients that cannot aim a host name at another port (git's CURLOPT_RESOLVE keeps the port);
prints "ready" once listening."""

import asyncio
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def main(listen_host, listen_port, target_host, target_port):
    async def handle(reader, writer):
        up_reader, up_writer = await asyncio.open_connection(target_host, int(target_port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, listen_host, int(listen_port))
    print("ready", flush=True)
    await server.serve_forever()


asyncio.run(main(*sys.argv[1:]))
