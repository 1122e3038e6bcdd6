"""Figures for the core data path, printed (not asserted):

- requests decided by Envoy's routes, then by the agent, and the authorization call's latency
  as Envoy sees it (its ext_authz cluster's request time),
- the time to mint a leaf certificate (in-process, and in the agent under a flood),
- the agent's and Envoy's memory after a flood of distinct server names.

Run as root: `.venv/bin/python -m benchmarks.core [--names 10000] [--requests 2000]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

from intercept_proxy import netns, procfs
from intercept_proxy.bench.configs import CUSTOM_REGO
from intercept_proxy.bench.results import envoy_quantiles, percentile
from intercept_proxy.lab import Lab, LabSpec
from intercept_proxy.lab.interceptor import Interceptor
from intercept_proxy.pki import CertificateAuthority
from intercept_proxy.policy.model import parse_policy
from intercept_proxy.runtime.containers import as_user

HERE = Path(__file__).parent
FLOOD = HERE.parent / "tests" / "integration" / "sni_flood.py"  # a script, run as the client
WORKLOAD_UID = 12345
LAB_SPEC = {"hosts": [{"name": "pypi.org"}]}
POLICY = "allowed_domains: [pypi.org]\n"


def proc_status(pid: int) -> dict[str, float]:
    fields = procfs.status(pid)
    return {name: procfs.memory_mib(fields, name) for name in ("VmRSS", "VmHWM")}


def envoy_histogram(icp: Interceptor, name: str) -> dict[str, float]:
    return envoy_quantiles(icp.envoy_stats(name), name)


def mint_figures(count: int = 1000) -> dict[str, float]:
    ca = CertificateAuthority.generate()
    times = []
    for i in range(count):
        started = time.perf_counter()
        ca.issue([f"host{i}.bench.test"], validity=dt.timedelta(hours=12))
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(times), "p99_ms": percentile(times, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    print("leaf certificate mint time (in-process, ECDSA P-256):", mint_figures())
    prefix = netns.unique_prefix("ipb")
    with Lab(LabSpec.from_dict(LAB_SPEC), prefix=prefix) as lab:
        ns = f"{prefix}-client"
        netns.create(ns)
        icp = Interceptor(ns, POLICY, lab.ca_cert_path, lab.dns_servers)
        try:
            lab.connect(ns)
            icp.start()
            client = [sys.executable, str(HERE / "keepalive_client.py"), str(icp.ca_cert)]
            module = icp.dir / "agent_only.rego"
            module.write_text(CUSTOM_REGO)
            # Decided by Envoy's routes, then by the agent (a custom module needs it).
            for judge, policy in (
                ("envoy", POLICY),
                ("agent", f"{POLICY}rego_modules: [{module}]\n"),
            ):
                icp.write_policy(policy)
                icp.wait_ready(judged_by=judge, revision=parse_policy(policy).revision)
                argv = [*client, "pypi.org", str(args.requests)]
                latencies = json.loads(netns.run(ns, as_user(WORKLOAD_UID, argv)).stdout)
                print(
                    f"{args.requests} keep-alive requests judged by {judge}, client-side latency:"
                    f" median {statistics.median(latencies):.2f} ms,"
                    f" p99 {percentile(latencies, 0.99):.2f} ms"
                )
            time.sleep(5.5)  # Envoy computes histogram quantiles when it flushes stats (5 s)
            print(
                "ext_authz call as Envoy sees it (ms):",
                envoy_histogram(icp, "cluster.intercept_authz.upstream_rq_time"),
            )
            agent, envoy = icp.agent.pid, icp.envoy.pid  # type: ignore[union-attr]
            print("before the flood: agent", proc_status(agent), "envoy", proc_status(envoy))
            started = time.monotonic()
            flood = netns.run(
                ns,
                as_user(
                    WORKLOAD_UID, [sys.executable, str(FLOOD), str(icp.ca_cert), str(args.names)]
                ),
                timeout=3600,
            )
            elapsed = time.monotonic() - started
            print(
                f"flood of {flood.stdout.strip()} distinct names in {elapsed:.1f} s "
                f"({args.names / elapsed:.0f} handshakes/s)"
            )
            print("after the flood (MiB): agent", proc_status(agent), "envoy", proc_status(envoy))
            minted = icp.metric("intercept_certificates_minted_total")
            mint_sum = icp.metric("intercept_certificate_mint_seconds_sum")
            print(
                f"agent: {minted:.0f} minted, {icp.metric('intercept_certificates_cached'):.0f} "
                f"cached, mean mint time {mint_sum / minted * 1000:.2f} ms"
            )
        finally:
            icp.close()
            netns.delete(ns)


if __name__ == "__main__":
    main()
