"""`intercept`: a thin shell over the library; each subcommand is a component's `cli` module."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from intercept_proxy import __version__
from intercept_proxy.agent import cli as agent_cli
from intercept_proxy.authz import cli as decisions_cli
from intercept_proxy.bench import cli as bench_cli
from intercept_proxy.injector import cli as inject_cli
from intercept_proxy.lab import cli as lab_cli
from intercept_proxy.netfilter import cli as netfilter_cli
from intercept_proxy.pki import cli as pki_cli
from intercept_proxy.policy import cli as policy_cli
from intercept_proxy.runtime import cli as run_cli
from intercept_proxy.xds import cli as envoy_cli

COMPONENTS = (
    run_cli,
    inject_cli,
    decisions_cli,
    policy_cli,
    agent_cli,
    envoy_cli,
    netfilter_cli,
    pki_cli,
    lab_cli,
    bench_cli,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intercept",
        description="Egress sandbox: every outbound HTTP(S) request is intercepted and judged "
        "by a policy.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for component in COMPONENTS:
        component.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)
