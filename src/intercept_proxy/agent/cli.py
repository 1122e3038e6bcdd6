"""`intercept agent`: run the sidecar agent."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from intercept_proxy import ports
from intercept_proxy.agent.main import SYSTEM_CA_BUNDLE, AgentError, AgentSettings, run
from intercept_proxy.pki import PkiError
from intercept_proxy.policy.combined import OverrideMode
from intercept_proxy.policy.model import PolicyError
from intercept_proxy.xds.resources import DataPlane


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("agent", help="the sidecar agent (xDS, certificates, ext_authz)")
    sub = parser.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)
    run_ = sub.add_parser(
        "run",
        help="serve xDS, on-demand certificates and ext_authz to one Envoy",
        description="Serve Envoy's configuration (ADS), its certificates (on-demand SDS) and "
        "its authorization checks (ext_authz). Refuses to start without a valid policy and CA.",
    )
    run_.add_argument("--policy", type=Path, required=True, help="policy file (watched)")
    run_.add_argument(
        "--pod-policy",
        type=Path,
        metavar="FILE",
        help="the pod's own policy (watched; empty or missing: none), e.g. from the "
        "intercept-proxy/opa-data annotation",
    )
    run_.add_argument(
        "--pod-policy-mode",
        choices=[m.value for m in OverrideMode],
        default=OverrideMode.NARROW.value,
        help="replace the default policy, narrow it (both must allow), or ignore the pod's "
        "(default: %(default)s)",
    )
    run_.add_argument("--ca-cert", type=Path, required=True, help="CA certificate (PEM)")
    run_.add_argument(
        "--ca-key",
        type=Path,
        required=True,
        help="CA private key (PEM); when neither CA file exists, a CA is generated there",
    )
    run_.add_argument(
        "--upstream-ca",
        type=Path,
        default=SYSTEM_CA_BUNDLE,
        help="CA bundle that upstream servers are verified against (watched; default: %(default)s)",
    )
    run_.add_argument(
        "--trust-bundle",
        type=Path,
        help="write the workload's CA bundle here: the sandbox CA, then the system roots",
    )
    run_.add_argument(
        "--dns-resolver",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="DNS server for Envoy's upstream lookups (repeatable; default: resolv.conf)",
    )
    run_.add_argument(
        "--decision-log",
        help="the file Envoy appends decisions to, one JSON line per request (default: Envoy's"
        " stdout)",
    )
    run_.add_argument("--bind", default="127.0.0.1", help="address of the agent's listeners")
    run_.add_argument(
        "--health-address",
        action="append",
        metavar="ADDRESS",
        help="where health and metrics listen (repeatable; default: 127.0.0.1)",
    )
    run_.add_argument("--xds-port", type=int, default=ports.AGENT_XDS)
    run_.add_argument("--authz-port", type=int, default=ports.AGENT_AUTHZ)
    run_.add_argument("--http-port", type=int, default=ports.AGENT_HTTP, help="health (probes)")
    run_.add_argument("--metrics-port", type=int, default=ports.AGENT_METRICS, help="metrics")
    run_.add_argument("--tls-port", type=int, default=ports.ENVOY_TLS, help="Envoy's TLS listener")
    run_.add_argument(
        "--plain-port", type=int, default=ports.ENVOY_HTTP, help="Envoy's plain-HTTP listener"
    )
    run_.add_argument(
        "--dns-port",
        type=int,
        default=ports.AGENT_DNS,
        help="the DNS sinkhole's port on 127.0.0.1 and ::1 (0: no sinkhole)",
    )
    run_.add_argument(
        "--dns-forward-suffix",
        action="append",
        default=[],
        metavar="SUFFIX",
        help="names under SUFFIX are resolved for real (repeatable, e.g. cluster.local)",
    )
    run_.add_argument(
        "--dns-upstream",
        action="append",
        metavar="ADDRESS",
        help="resolver for forwarded names (repeatable; default: resolv.conf)",
    )
    run_.add_argument(
        "--cert-validity-hours", type=float, default=12.0, help="leaf certificate validity"
    )
    run_.add_argument(
        "--cert-cache-size",
        type=int,
        default=1024,
        help="leaf certificates kept in memory, and held by Envoy (beyond, the least recently "
        "used are released)",
    )
    run_.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = AgentSettings(
        policy=args.policy,
        ca_cert=args.ca_cert,
        ca_key=args.ca_key,
        upstream_ca=args.upstream_ca,
        trust_bundle=args.trust_bundle,
        pod_policy=args.pod_policy,
        pod_policy_mode=OverrideMode(args.pod_policy_mode),
        health_addresses=tuple(args.health_address or ["127.0.0.1"]),
        bind_address=args.bind,
        xds_port=args.xds_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        cert_validity=dt.timedelta(hours=args.cert_validity_hours),
        cert_cache_size=args.cert_cache_size,
        dns_port=args.dns_port,
        dns_forward_suffixes=tuple(args.dns_forward_suffix),
        dns_upstream=tuple(args.dns_upstream) if args.dns_upstream else None,
        data_plane=DataPlane(
            tls_port=args.tls_port,
            http_port=args.plain_port,
            authz_address=args.bind,
            authz_port=args.authz_port,
            dns_resolvers=tuple(args.dns_resolver),
            decision_log_path=args.decision_log,
        ),
    )
    try:
        run(settings)
    except (PolicyError, PkiError, AgentError) as e:
        print(f"intercept agent: {e}", file=sys.stderr)
        return 2
    return 0
