"""`intercept proxy-init`: capture a pod's egress (IPv4 and IPv6) with iptables.

Run by the pod's init container in its own network namespace, as root or with CAP_NET_ADMIN.
The rules it installs always go to stdout, so `kubectl logs -c proxy-init` shows them. In CNI
mode the node installs them, and the init container only checks them, as any user (`--check`).
"""

from __future__ import annotations

import argparse
import sys

from intercept_proxy.netfilter.apply import NetfilterError, apply, verify
from intercept_proxy.netfilter.builder import FAMILIES, Rules, render
from intercept_proxy.netfilter.check import CHECK_FLAG, CheckError, check
from intercept_proxy.netfilter.config import CaptureConfig, CaptureConfigError
from intercept_proxy.options import add_arguments, flag_of, from_arguments

_PROG = "intercept proxy-init"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "proxy-init",
        help="capture the workload's traffic: iptables and ip6tables rules",
        description="Replace the nat and filter tables (IPv4 and IPv6) so that the workload's "
        "DNS goes to the agent, its TLS and HTTP to Envoy, and nothing else leaves; then check "
        "the rules in force. Needs root or CAP_NET_ADMIN in the network namespace.",
    )
    add_arguments(parser, CaptureConfig)
    parser.add_argument(
        "--netns", metavar="NAME", help="a named network namespace (default: this one)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print both rule sets, change nothing")
    mode.add_argument(
        "--verify",
        action="store_true",
        help="change nothing; exit 1 listing how the rules in force differ from the intended",
    )
    mode.add_argument(
        CHECK_FLAG,
        action="store_true",
        help="change nothing, need no privilege (CNI mode, as any user but the sidecars'): "
        "prove the capture by its effect, before the sidecars start; exit 1 naming what is "
        "not captured",
    )
    parser.set_defaults(func=_proxy_init)


def _proxy_init(args: argparse.Namespace) -> int:
    try:
        rules = render(from_arguments(CaptureConfig, args))
    except CaptureConfigError as e:
        raise SystemExit(
            f"{_PROG}: {flag_of(CaptureConfig, e.field) or e.field}: {e.problem}"
        ) from None
    if args.dry_run:
        _print(rules)
        return 0
    if args.check:
        return _check(from_arguments(CaptureConfig, args))
    try:
        if not args.verify:
            _print(rules)  # before applying: the log shows what was attempted, even on failure
            apply(rules, args.netns)
        differences = verify(rules, args.netns)
    except NetfilterError as e:
        raise SystemExit(f"{_PROG}: {e}") from None
    if differences:
        print(f"{_PROG}: the rules in force differ from the intended ones:", file=sys.stderr)
        for difference in differences:
            print(f"  {difference}", file=sys.stderr)
        return 1
    done = "verified" if args.verify else "applied and verified"
    print(f"{_PROG}: rules {done} ({', '.join(FAMILIES)}: nat, filter)", flush=True)
    return 0


def _check(config: CaptureConfig) -> int:
    try:
        results = check(config)
    except CheckError as e:
        raise SystemExit(f"{_PROG}: {e}") from None
    failed = [r for r in results if r.problem is not None]
    for result in results:
        print(result, file=sys.stderr if result.problem else sys.stdout, flush=True)
    if failed:
        print(f"{_PROG}: the capture is not in force: the pod must not start", file=sys.stderr)
        return 1
    print(f"{_PROG}: capture checked ({', '.join(FAMILIES)})", flush=True)
    return 0


def _print(rules: Rules) -> None:
    # Every table starts with a comment line naming its family and table.
    for family in FAMILIES:
        print(rules.of(family), flush=True)
