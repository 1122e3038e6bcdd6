"""`intercept agent`: run the sidecar agent. Its options are AgentSettings' (settings.py)."""

from __future__ import annotations

import argparse
import sys

from intercept_proxy.agent.main import AgentError, run
from intercept_proxy.agent.settings import AgentSettings
from intercept_proxy.options import add_arguments, from_arguments
from intercept_proxy.pki import PkiError
from intercept_proxy.policy.model import PolicyError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("agent", help="the sidecar agent (xDS, certificates, ext_authz)")
    sub = parser.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)
    run_ = sub.add_parser(
        "run",
        help="serve xDS, on-demand certificates and ext_authz to one Envoy",
        description="Serve Envoy's configuration (ADS), its certificates (on-demand SDS) and "
        "its authorization checks (ext_authz). Refuses to start without a valid policy and CA.",
    )
    add_arguments(run_, AgentSettings)
    run_.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        run(from_arguments(AgentSettings, args))
    except (PolicyError, PkiError, AgentError) as e:
        print(f"intercept agent: {e}", file=sys.stderr)
        return 2
    return 0
