"""`intercept proxy-init`: capture a pod's egress (IPv4 and IPv6) with iptables; and
`intercept cni-node`, CNI mode's node agent (`cninode`), which has the node install the same.

Run by the pod's init container in its own network namespace, as root or with CAP_NET_ADMIN.
The rules it installs always go to stdout, so `kubectl logs -c proxy-init` shows them. In CNI
mode the node installs them, and the init container only checks them, as any user (`--check`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from intercept_proxy import signals
from intercept_proxy.cluster.client import KubeClient
from intercept_proxy.cluster.kubeconfig import credentials, in_cluster
from intercept_proxy.netfilter.apply import NetfilterError, apply, verify
from intercept_proxy.netfilter.builder import FAMILIES, Rules, render
from intercept_proxy.netfilter.check import CHECK_FLAG, CheckError, check
from intercept_proxy.netfilter.cninode import (
    DEFAULT_SOCKET,
    WATCH_INTERVAL,
    InstallError,
    Node,
    Server,
    daemonset_exists,
    installed_plugin,
    supported_versions,
)
from intercept_proxy.netfilter.config import CaptureConfig, CaptureConfigError
from intercept_proxy.netfilter.plugin import PLUGIN, plugin_config, pod_reader
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
    _register_cni_node(commands)


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


def _register_cni_node(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "cni-node",
        help="CNI mode's node agent: install the CNI plugin and capture the pods it attaches",
        description="Put intercept-proxy-cni into the node's CNI binary directory and last in "
        "its network configuration list, then answer the plugin's calls: each pod injected in "
        "CNI mode gets its capture in its network namespace. Runs as root with NET_ADMIN, "
        "NET_RAW and SYS_ADMIN (to enter pods' namespaces).",
    )
    parser.add_argument(
        "--socket",
        default=DEFAULT_SOCKET,
        help="the abstract Unix socket the plugin calls, in this network namespace: this "
        "name and a random suffix, written into the plugin's entry (default: %(default)s)",
    )
    parser.add_argument(
        "--cni-bin-dir", type=Path, required=True, help="the node's CNI plugins, as mounted here"
    )
    parser.add_argument(
        "--cni-conf-dir", type=Path, required=True, help="the node's CNI configuration lists"
    )
    parser.add_argument(
        "--plugin",
        type=Path,
        default=installed_plugin(),
        help="the plugin program to install (default: %(default)s)",
    )
    parser.add_argument(
        "--exclude-namespace",
        action="append",
        default=[],
        metavar="NAMESPACE",
        help="pods of NAMESPACE are never read nor captured (the agent's own; repeatable)",
    )
    parser.add_argument(
        "--kubeconfig", type=Path, help="the API server's (default: this pod's service account)"
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="a file that exists while the plugin is installed (a readiness probe's)",
    )
    parser.add_argument(
        "--daemonset",
        metavar="NAMESPACE/NAME",
        help="this agent's DaemonSet: stopping while it exists leaves the plugin installed",
    )
    parser.set_defaults(func=_cni_node)


def _cni_node(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        found = credentials(args.kubeconfig) if args.kubeconfig else in_cluster()
    except (OSError, ValueError) as e:
        raise SystemExit(f"intercept cni-node: the API server's credentials: {e}") from None
    node = Node(args.cni_bin_dir, args.cni_conf_dir)
    try:
        versions = supported_versions(args.plugin)
        server = Server(args.socket, pod_reader(KubeClient(found, timeout=10)))
    except (InstallError, OSError) as e:
        raise SystemExit(f"intercept cni-node: {e}") from None
    entry = plugin_config(server.name, args.exclude_namespace)
    stop = threading.Event()
    try:
        with signals.setting(stop, (signal.SIGTERM, signal.SIGINT)):
            server.serve()
            installed = False
            while not stop.is_set():
                try:
                    if node.install(args.plugin, entry, versions) or not installed:
                        print(f"installed: {args.cni_bin_dir / PLUGIN} ({server.name})", flush=True)
                    installed = True
                except (InstallError, OSError) as e:
                    installed = False
                    print(f"intercept cni-node: not installed: {e}", file=sys.stderr, flush=True)
                if args.ready_file is not None:
                    if installed and server.serving:
                        args.ready_file.touch()
                    else:
                        args.ready_file.unlink(missing_ok=True)
                stop.wait(WATCH_INTERVAL)
    finally:
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
        server.close()
        # Quickly: the grace period is short, and an entry left with no agent blocks the node.
        if args.daemonset and daemonset_exists(KubeClient(found, timeout=3), args.daemonset):
            print(f"stopped; {args.daemonset} remains: the plugin stays", flush=True)
        else:
            node.uninstall()
            print("stopped; the plugin removed", flush=True)
    return 0
