"""`intercept envoy`: Envoy's bootstrap, and Envoy itself started with it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from intercept_proxy import ports
from intercept_proxy.argv import after_separator
from intercept_proxy.xds.bootstrap import Bootstrap, bootstrap
from intercept_proxy.xds.envoy import DRAIN_MARGIN_S, drain, envoy_command

# How long the agent's hook waits for Envoy's to say the pod is stopping: the kubelet runs both
# at once; a hook run alone (a liveness restart of the agent) finds nothing and drains nothing.
WHEN_WAIT_S = 2.0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("envoy", help="Envoy's bootstrap and launcher")
    sub = parser.add_subparsers(dest="envoy_command", metavar="COMMAND", required=True)
    for name, func, help_ in (
        ("bootstrap", _bootstrap, "print Envoy's bootstrap (JSON)"),
        ("run", _run, "run the pinned Envoy with the bootstrap (extra args after --)"),
    ):
        cmd = sub.add_parser(name, help=help_, description=help_)
        cmd.add_argument("--node-id", default=os.uname().nodename, help="Envoy's node id")
        cmd.add_argument("--admin-port", type=int, default=ports.ENVOY_ADMIN)
        cmd.add_argument("--xds-address", default="127.0.0.1", help="the agent's address")
        cmd.add_argument("--xds-port", type=int, default=ports.AGENT_XDS)
        cmd.add_argument(
            "--gateway", action="store_true", help="for an agent that serves the egress gateway"
        )
        cmd.set_defaults(func=func)
    sub.choices["run"].add_argument("envoy_args", nargs=argparse.REMAINDER)
    drain = sub.add_parser(
        "drain",
        help="drain Envoy's listeners and wait for its clients to leave (a preStop hook)",
        description="Ask Envoy (its admin interface, on loopback) to drain its listeners "
        "gracefully, then wait until no client connection is left: streams under way finish. "
        "Exits 0 once drained (or once Envoy has gone), 1 at the timeout.",
    )
    drain.add_argument("--admin-port", type=int, default=ports.ENVOY_ADMIN)
    drain.add_argument(
        "--grace",
        type=float,
        required=True,
        metavar="SECONDS",
        help=f"the pod's grace period: the drain waits all of it but {DRAIN_MARGIN_S:g} s",
    )
    drain.add_argument(
        "--when",
        type=Path,
        help=f"drain only if this file appears within {WHEN_WAIT_S:g} s (the pod is stopping, "
        "not one container restarting)",
    )
    drain.add_argument("--done", type=Path, help="a file written once it is over, whatever the end")
    drain.set_defaults(func=_drain)


def _config(args: argparse.Namespace) -> str:
    b = Bootstrap(
        node_id=args.node_id,
        admin_port=args.admin_port,
        xds_address=args.xds_address,
        xds_port=args.xds_port,
        gateway=args.gateway,
    )
    return json.dumps(bootstrap(b), indent=2)


def _bootstrap(args: argparse.Namespace) -> int:
    sys.stdout.write(_config(args) + "\n")
    return 0


def _drain(args: argparse.Namespace) -> int:
    if args.when is not None and not _appears(args.when, WHEN_WAIT_S):
        return 0  # the hook of a container restarting alone: Envoy goes on serving
    drained = False
    try:
        drained = drain(args.admin_port, max(args.grace - DRAIN_MARGIN_S, 1.0))
    finally:
        if args.done is not None:
            args.done.write_text("drained\n" if drained else "not drained\n")
    return 0 if drained else 1


def _appears(path: Path, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while not path.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _run(args: argparse.Namespace) -> int:
    argv = envoy_command(_config(args), after_separator(args.envoy_args))
    os.execv(argv[0], argv)
