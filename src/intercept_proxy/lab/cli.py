"""`intercept lab`: start, inspect and stop a named lab that outlives the command."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from intercept_proxy.lab.control import Lab, LabError
from intercept_proxy.lab.spec import LabSpec, LabSpecError

STATE_ROOT = Path("/run/intercept-proxy/lab")
DEFAULT_NAME = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "lab",
        help="a fake internet in a network namespace, for tests and demos",
        description="Run lab hosts (HTTPS, HTTP, DNS, git) in a network namespace of their own. "
        f"A named lab keeps its state in {STATE_ROOT}/NAME/.",
    )
    sub = parser.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)

    up = sub.add_parser(
        "up",
        help="start a lab and leave it running",
        description="Start the lab described by a spec file, print a JSON summary (hosts and "
        "their addresses, DNS servers, CA certificate, receipt log) and return; the lab keeps "
        "running until `intercept lab down`.",
    )
    up.add_argument("--spec", type=Path, required=True, help="the lab spec (YAML)")
    up.add_argument(
        "--log",
        type=Path,
        help="the receipt log, emptied at start (default: receipts.jsonl in the state "
        "directory, which `down` removes)",
    )
    _name_argument(up)
    up.add_argument(
        "--prefix",
        help="prefix of the lab's namespace and interface names (default: random)",
    )
    up.set_defaults(func=_up)

    down = sub.add_parser(
        "down",
        help="stop a lab completely",
        description="Kill the lab server, delete its namespace and veth pairs, and remove its "
        "state directory.",
    )
    _name_argument(down)
    down.set_defaults(func=_down)

    status = sub.add_parser(
        "status",
        help="show a lab and whether its server runs",
        description="Print the lab's JSON summary with `running`; exit status 0 only when the "
        "lab is up and its server alive.",
    )
    _name_argument(status)
    status.set_defaults(func=_status)


def _name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name",
        type=_lab_name,
        default=DEFAULT_NAME,
        help=f"the lab's name (default: {DEFAULT_NAME})",
    )


def _lab_name(value: str) -> str:
    if not _NAME.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: use letters, digits, '.', '_' and '-' (at most 64, no leading symbol)"
        )
    return value


def _up(args: argparse.Namespace) -> int:
    state_dir = STATE_ROOT / args.name
    if state_dir.exists():
        raise SystemExit(
            f"intercept lab up: lab {args.name!r} is already up ({state_dir}); "
            f"run `intercept lab down --name {args.name}` first"
        )
    try:
        lab = Lab(
            LabSpec.load(args.spec), prefix=args.prefix, log_path=args.log, state_dir=state_dir
        )
        lab.start()
    except (LabSpecError, LabError) as e:
        raise SystemExit(f"intercept lab up: {e}") from e
    print(json.dumps({"name": args.name, **lab.summary()}, indent=2))
    return 0


def _down(args: argparse.Namespace) -> int:
    state_dir = STATE_ROOT / args.name
    if not state_dir.exists():
        print(f"intercept lab down: lab {args.name!r} is not up", file=sys.stderr)
        return 1
    try:
        Lab.from_state(state_dir).stop()
    except LabError as e:
        raise SystemExit(f"intercept lab down: {e}") from e
    print(f"lab {args.name!r} is down")
    return 0


def _status(args: argparse.Namespace) -> int:
    state_dir = STATE_ROOT / args.name
    if not state_dir.exists():
        print(f"intercept lab status: lab {args.name!r} is not up", file=sys.stderr)
        return 1
    try:
        lab = Lab.from_state(state_dir)
    except LabError as e:
        raise SystemExit(f"intercept lab status: {e}") from e
    running = lab.is_running()
    print(json.dumps({"name": args.name, "running": running, **lab.summary()}, indent=2))
    return 0 if running else 1
