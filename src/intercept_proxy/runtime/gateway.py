"""`intercept gateway`: the interceptor as a shared explicit proxy on this machine.

The agent and Envoy run as their own users in a network namespace of their own, whose uplink
is this machine's network or a lab. Clients set `HTTPS_PROXY`/`HTTP_PROXY` to the listen
addresses, which are bound here, in this machine's namespace, and relayed into the gateway's
(`relay.py`). Everything made is removed on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from intercept_proxy import netns, ports
from intercept_proxy.lab import LabError, LabSpecError
from intercept_proxy.lab.interceptor import Interceptor, InterceptorError
from intercept_proxy.netns import NetnsError
from intercept_proxy.policy.model import PolicyError, parse_policy
from intercept_proxy.runtime import state
from intercept_proxy.runtime.containers import as_user
from intercept_proxy.runtime.network import (
    NetworkError,
    add_uplink_options,
    private_ranges,
    uplink,
)
from intercept_proxy.runtime.pod import cleanup_stale

DEFAULT_LISTEN = (f"127.0.0.1:{ports.ENVOY_GATEWAY}", f"[::1]:{ports.ENVOY_GATEWAY}")
SYSTEM_TRUST = Path("/etc/ssl/certs/ca-certificates.crt")
RELAY_UID = 65534  # nobody: the relay holds its sockets, it needs no right of its own
USAGE_ERROR = 2


class GatewayError(Exception):
    """A problem with what `intercept gateway` was asked to do; the message says what."""


def parse_listen(text: str) -> tuple[str, int]:
    """`ADDRESS:PORT`, an IPv6 address in brackets."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise GatewayError(f"--listen {text}: expected ADDRESS:PORT ([ADDRESS]:PORT for IPv6)")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise GatewayError(f"--listen {text}: {host!r} is not an IP address") from None
    if address.version == 6 and not bracketed:
        raise GatewayError(f"--listen {text}: write an IPv6 address in brackets")
    return str(address), int(port)


def shown(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((address, port))
    except OSError as e:
        sock.close()
        raise GatewayError(f"--listen {shown(address, port)}: {e.strerror}") from None
    sock.listen(512)
    return sock


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gateway = commands.add_parser(
        "gateway",
        help="serve the interceptor as an explicit proxy (HTTPS_PROXY) on this machine",
        description="Judge the requests of clients that set HTTPS_PROXY/HTTP_PROXY to the listen "
        "addresses: CONNECT tunnels to port 443 are terminated with a certificate of the "
        "gateway's CA, printed on the ready line, which clients must trust. Prints `ready "
        "listen=ADDRESSES ca=PATH` when it serves; SIGINT or SIGTERM stops it.",
    )
    gateway.add_argument("--policy", type=Path, required=True, help="policy file")
    gateway.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS:PORT",
        help=f"where clients reach it (repeatable; default: {' and '.join(DEFAULT_LISTEN)})",
    )
    gateway.add_argument(
        "--decision-log",
        type=Path,
        metavar="FILE",
        help="append decisions here (default: a file of the gateway's, removed when it stops)",
    )
    add_uplink_options(gateway)
    gateway.set_defaults(func=_gateway)


def _checked_policy(path: Path, text: str | None = None) -> str:
    """The policy's text (`text`, else the file's), once it loads (its errors named) and needs
    no file beside it."""
    if text is None:
        try:
            text = path.read_text()
        except (OSError, ValueError) as e:
            raise GatewayError(f"{path}: cannot read the policy: {e}") from None
    if parse_policy(text, str(path), path.parent).rego_modules:
        raise GatewayError(f"{path}: rego_modules are not available to the gateway yet")
    return text


@contextlib.contextmanager
def _relay(netns_name: str, sockets: list[socket.socket]) -> Iterator[subprocess.Popen[bytes]]:
    """relay.py in the gateway's namespace, as nobody, with the listening sockets. Isolated
    (-I, from /): nothing in the caller's directory or environment is imported."""
    fds = [s.fileno() for s in sockets]
    argv = [sys.executable, "-I", "-m", "intercept_proxy.runtime.relay", str(ports.ENVOY_GATEWAY)]
    relay = subprocess.Popen(
        netns.exec_argv(netns_name, as_user(RELAY_UID, [*argv, *map(str, fds)])),
        pass_fds=fds,
        cwd="/",
        start_new_session=True,
    )
    try:
        yield relay
    finally:
        relay.kill()
        relay.wait()


def _serve(args: argparse.Namespace, ranges: tuple[str, ...], stop: threading.Event) -> None:
    """`ranges`: the non-public ranges its upstreams may be in (`private_ranges`)."""
    listen = [parse_listen(t) for t in args.listen or DEFAULT_LISTEN]
    text = _checked_policy(args.policy)
    cleanup_stale()  # what a gateway or a run killed without warning left behind
    with contextlib.ExitStack() as made:  # undone in reverse, each step even if one fails
        sockets = [made.enter_context(bind(a, p)) for a, p in listen]
        prefix = netns.unique_prefix("igw")
        name = f"{prefix}-gw"
        # Recorded first, forgotten last: if this process dies, the next run or gateway (or
        # `intercept cleanup`) removes everything named after the prefix.
        state.register(prefix, name)
        made.callback(state.release, prefix)
        up = made.enter_context(uplink(args.lab, args.lab_log, prefix))
        made.callback(up.detach)
        netns.create(name)
        made.callback(netns.delete, name)
        up.attach(name)
        icp = Interceptor(
            name,
            text,
            up.extra_trust or SYSTEM_TRUST,
            up.nameservers,
            decision_log=args.decision_log,
            gateway_port=ports.ENVOY_GATEWAY,
            gateway_clients_from="proxy-protocol",  # the relay's word: it alone reaches it
            upstream_private_ranges=ranges,
        )
        made.callback(icp.close)
        icp.start()
        relay = made.enter_context(_relay(name, sockets))
        if stop.is_set():
            return
        addresses = ",".join(shown(a, p) for a, p in listen)
        print(f"ready listen={addresses} ca={icp.ca_cert}", flush=True)
        print(f"intercept gateway: decisions go to {icp.decision_log}", file=sys.stderr)
        while not stop.wait(0.5):
            icp.check_alive()
            if relay.poll() is not None:
                raise InterceptorError(f"the relay exited {relay.returncode}")
            text = _reload(args.policy, text, icp)


def _reload(path: Path, text: str, icp: Interceptor) -> str:
    """The operator's policy file, given to the agent again when it changed and loads; else
    the policy in force stays (and the problem is said once)."""
    try:
        new = path.read_text()
    except (OSError, ValueError):  # unreadable for now, or not UTF-8: said once it loads
        return text
    if new != text:
        try:
            icp.write_policy(_checked_policy(path, new))
            print(f"intercept gateway: {path} changed: reloaded", file=sys.stderr)
        except (GatewayError, PolicyError, OSError) as e:
            print(f"intercept gateway: {e} (the policy in force stays)", file=sys.stderr)
    return new


def _gateway(args: argparse.Namespace) -> int:
    try:
        ranges = private_ranges(args)
    except NetworkError as e:
        print(f"intercept gateway: {e}", file=sys.stderr)
        return USAGE_ERROR
    if os.geteuid() != 0:
        print("intercept gateway: needs root (network namespaces, users)", file=sys.stderr)
        return USAGE_ERROR
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        _serve(args, ranges, stop)
        return 0
    except (GatewayError, PolicyError, LabSpecError) as e:
        print(f"intercept gateway: {e}", file=sys.stderr)
        return USAGE_ERROR
    except (
        LabError, NetworkError, NetnsError, InterceptorError, subprocess.CalledProcessError, OSError
    ) as e:  # fmt: skip
        print(f"intercept gateway: {e}", file=sys.stderr)
        return 1
