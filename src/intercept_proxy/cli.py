"""`intercept`: a thin shell over the library; each subcommand is a component's `cli` module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from intercept_proxy import __version__

# Each command is a component's `cli` module, in the order `intercept --help` lists them.
COMPONENTS = (
    "runtime", "injector", "authz", "policy", "agent", "xds", "netfilter", "pki", "lab", "bench",
)  # fmt: skip
# Packages the sidecar image leaves out (images/Dockerfile): a command that needs one is offered
# only where it is installed.
NOT_IN_IMAGE = ("lab", "bench")


def components() -> list[ModuleType]:
    found = []
    for name in COMPONENTS:
        try:
            found.append(importlib.import_module(f"intercept_proxy.{name}.cli"))
        except ModuleNotFoundError as e:
            if e.name not in {f"intercept_proxy.{p}" for p in NOT_IN_IMAGE}:
                raise
    return found


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
    for component in components():
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
