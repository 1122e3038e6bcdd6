"""Envoy's memory for certificates on demand, printed (not asserted): its RSS idle, after TLS
handshakes with N distinct server names, once those names have been idle long enough for the
agent to have Envoy release them, and after another wave of N new names (Envoy's allocator keeps
the memory it freed, and uses it again).

Envoy keeps every certificate it is sent until it is told to drop it. The ADS server removes
the least recently asked-for beyond `--max-held` (the agent: its leaf cache size) and those not
asked for in `--release-after` seconds (the agent: 10 minutes); `--unbounded` measures Envoy
without either, as it was.

Run as root, from the repository: `.venv/bin/python -m tests.integration.envoy_memory
[--names 10000] [--max-held 1024] [--release-after 60] [--unbounded]`. It runs in a network
namespace of its own (removed at the end), with the ADS server in this process and the pinned
Envoy.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc

from intercept_proxy import netns, ports
from intercept_proxy.pki import CertificateAuthority, LeafCache
from intercept_proxy.procfs import memory_mib, status
from intercept_proxy.xds import protos
from intercept_proxy.xds.bootstrap import Bootstrap, bootstrap
from intercept_proxy.xds.certificates import certificate_resolver
from intercept_proxy.xds.envoy import envoy_command
from intercept_proxy.xds.resources import (
    DataPlane,
    clusters,
    listeners,
    route_configurations,
)
from intercept_proxy.xds.server import AggregatedDiscoveryService, OnDemand, Snapshot, SnapshotCache
from intercept_proxy.xds.types import CLUSTER, LISTENER, ROUTE, SECRET

SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")
FLOOD = Path(__file__).with_name("sni_flood.py")


def rss_mib(pid: int) -> float:
    return memory_mib(status(pid))


def admin(path: str) -> str:
    url = f"http://127.0.0.1:{ports.ENVOY_ADMIN}{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def certificates_held() -> int:
    out = admin("/stats?filter=on_demand_secret.cert_active$")
    return sum(int(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line.strip())


def allocated_mib() -> float:
    return int(json.loads(admin("/memory"))["allocated"]) / 2**20


def snapshot() -> Snapshot:
    dp = DataPlane()
    bundle = SYSTEM_CA.read_text()
    return Snapshot(
        {
            CLUSTER: {c["name"]: protos.to_message(CLUSTER, c) for c in clusters(dp, bundle)},
            LISTENER: {item["name"]: protos.to_message(LISTENER, item) for item in listeners(dp)},
            ROUTE: {r["name"]: protos.to_message(ROUTE, r) for r in route_configurations("m")},
        }
    )


async def wait_for(condition, timeout: float, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(step)


async def measure(args: argparse.Namespace) -> None:
    ca = CertificateAuthority.generate()
    ca_file = Path(tempfile.mkdtemp(prefix="intercept-memory-")) / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    cache = LeafCache(ca, max_entries=max(args.max_held, 1))
    spec = certificate_resolver(cache, dt.timedelta(seconds=args.release_after))
    if args.unbounded:
        spec = OnDemand(spec.resolve)
    snapshots = SnapshotCache()
    snapshots.set(snapshot())
    ads = AggregatedDiscoveryService(snapshots, {SECRET: spec})
    server = grpc.aio.server()
    ads.add_to_server(server)
    server.add_insecure_port(f"127.0.0.1:{ports.AGENT_XDS}")
    await server.start()
    config = json.dumps(bootstrap(Bootstrap(node_id="memory")))
    envoy = subprocess.Popen(envoy_command(config, ["-l", "error", "--concurrency", "2"]))
    try:
        await wait_for(ads.in_sync, 30)
        await asyncio.sleep(3)
        print(f"Envoy idle: RSS {rss_mib(envoy.pid):.0f} MiB, {allocated_mib():.0f} MiB allocated")

        for wave in range(1, args.waves + 1):
            started = time.monotonic()
            # In another process: handshakes here would compete with the server for the GIL.
            flood = await asyncio.create_subprocess_exec(
                sys.executable, str(FLOOD), str(ca_file), str(args.names), f"wave{wave}-",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await flood.communicate()
            elapsed = time.monotonic() - started
            await asyncio.sleep(2)
            print(
                f"wave {wave}, {int(out)}/{args.names} new names in {elapsed:.0f} s: RSS"
                f" {rss_mib(envoy.pid):.0f} MiB, {allocated_mib():.0f} MiB allocated, Envoy holds"
                f" {certificates_held()} certificates (the agent's view: {ads.held(SECRET)})"
            )
            if args.unbounded:
                continue
            started = time.monotonic()

            def released() -> bool:
                ads.renew()  # the agent does it every minute
                return certificates_held() == 0

            await wait_for(released, args.release_after * 3 + 60, step=5)
            await asyncio.sleep(5)
            print(
                f"  idle for {time.monotonic() - started:.0f} s, all released: RSS"
                f" {rss_mib(envoy.pid):.0f} MiB, {allocated_mib():.0f} MiB allocated, Envoy holds"
                f" {certificates_held()} certificates"
            )
    finally:
        envoy.terminate()
        envoy.wait(10)
        await server.stop(None)
        shutil.rmtree(ca_file.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=10000)
    parser.add_argument("--max-held", type=int, default=1024)
    parser.add_argument("--release-after", type=float, default=60.0, help="seconds")
    parser.add_argument("--unbounded", action="store_true", help="no removal at all")
    parser.add_argument("--waves", type=int, default=2, help="of N new names each")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        asyncio.run(measure(args))
        return
    prefix = netns.unique_prefix("ipm")
    ns = f"{prefix}-memory"
    netns.create(ns)
    try:
        argv = [sys.executable, "-m", "tests.integration.envoy_memory", "--inside", *sys.argv[1:]]
        subprocess.run(netns.exec_argv(ns, argv), check=True)
    finally:
        netns.cleanup(prefix)


if __name__ == "__main__":
    main()
