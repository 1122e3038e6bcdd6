"""`intercept gateway`: the interceptor as a shared explicit proxy on this machine.

One agent and Envoy per policy (the default's, and each named client's), as their own users,
each pair in a network namespace of its own whose uplink is this machine's network or a lab,
all with one CA and one decision log. Clients set `HTTPS_PROXY`/`HTTP_PROXY` to the listen
addresses, which are bound here, in this machine's namespace; the dispatcher hands each
connection to the relay of its client's policy, which connects to that policy's Envoy
(`relay.py`). Everything made is removed on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intercept_proxy import netns, ports, signals
from intercept_proxy.lab import LabError, LabSpecError
from intercept_proxy.lab.interceptor import Interceptor, InterceptorError
from intercept_proxy.netns import NetnsError
from intercept_proxy.pki.ca import CertificateAuthority
from intercept_proxy.pki.files import SYSTEM_TRUST
from intercept_proxy.policy.model import (
    POLICY_FILE_NAME,
    PolicyError,
    module_paths,
    parse_policy,
    policy_files,
)
from intercept_proxy.runtime import state
from intercept_proxy.runtime.containers import as_user
from intercept_proxy.runtime.credentials import operator_secrets
from intercept_proxy.runtime.network import (
    NetworkError,
    add_uplink_options,
    for_namespace,
    private_ranges,
    uplink,
)
from intercept_proxy.runtime.pod import cleanup_stale
from intercept_proxy.watch import Signature, signature
from intercept_proxy.xds.resources import cidr

DEFAULT_LISTEN = (f"127.0.0.1:{ports.ENVOY_GATEWAY}", f"[::1]:{ports.ENVOY_GATEWAY}")
RELAY_UID = 65534  # nobody: the relays hold their sockets, they need no right of their own
USAGE_ERROR = 2
CLIENT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")
DEFAULT = "default"  # the policy of clients no --client names
# How long a policy change may take its agent (it looks at its files five times a second).
RELOAD_WAIT_S = 15.0


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


@dataclass(frozen=True)
class Policy:
    """One policy the gateway serves, with its own agent and Envoy: to the clients of
    `ranges` (none: every client that no other policy names)."""

    name: str
    path: Path
    ranges: tuple[str, ...] = ()


def _pair(option: str, text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not value:
        raise GatewayError(f"{option} {text}: expected NAME=VALUE")
    if not CLIENT_NAME.fullmatch(name) or name == DEFAULT:
        raise GatewayError(
            f"{option} {text}: {name!r} is not a client name (lower-case letters, digits and "
            f"'-', at most 32, not {DEFAULT!r})"
        )
    return name, value


def policies(
    default: Path | None, clients: Sequence[str], policy_for: Sequence[str]
) -> list[Policy]:
    """What `--policy`, `--client NAME=CIDR` and `--policy-for NAME=FILE` ask for, checked: each
    client named has one policy and a range, no range is two clients', some policy is given."""
    ranges: dict[str, list[str]] = {}
    owner: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str] = {}
    for text in clients:
        name, value = _pair("--client", text)
        try:
            network = ipaddress.ip_network(cidr(value))
        except ValueError as e:
            raise GatewayError(f"--client {text}: {e}") from None
        if owner.setdefault(network, name) != name:
            raise GatewayError(f"--client {text}: {network} is {owner[network]}'s already")
        if str(network) not in ranges.setdefault(name, []):
            ranges[name].append(str(network))
    paths: dict[str, Path] = {}
    for text in policy_for:
        name, value = _pair("--policy-for", text)
        if name in paths:
            raise GatewayError(f"--policy-for {text}: {name} has a policy already")
        if name not in ranges:
            raise GatewayError(f"--policy-for {text}: no --client {name}=CIDR says who {name} is")
        paths[name] = Path(value)
    if missing := sorted(ranges.keys() - paths.keys()):
        raise GatewayError(f"--client {missing[0]}: no --policy-for {missing[0]}=FILE")
    named = [Policy(n, paths[n], tuple(ranges[n])) for n in sorted(paths)]
    if default is None and not named:
        raise GatewayError("no policy: give --policy, or --client and --policy-for")
    return ([Policy(DEFAULT, default)] if default else []) + named


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gateway = commands.add_parser(
        "gateway",
        help="serve the interceptor as an explicit proxy (HTTPS_PROXY) on this machine",
        description="Judge the requests of clients that set HTTPS_PROXY/HTTP_PROXY to the listen "
        "addresses: CONNECT tunnels to port 443 are terminated with a certificate of the "
        "gateway's CA, printed on the ready line, which clients must trust. Prints `ready "
        "listen=ADDRESSES ca=PATH` when it serves; SIGINT or SIGTERM stops it.",
    )
    gateway.add_argument(
        "--policy",
        type=Path,
        help="the policy file of every client that no --client names (without it, they are "
        "refused)",
    )
    gateway.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME=CIDR",
        help="the clients at these addresses are NAME (repeatable; the most specific range wins)",
    )
    gateway.add_argument(
        "--policy-for",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="the policy file of the clients named NAME (repeatable)",
    )
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


def _policy_files(path: Path, environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The policy file's text and its custom modules' (`policy_files`), and the variables of
    `environ` its credentials and AWS signings name, once it loads: its errors named."""
    try:
        text = path.read_text()
    except (OSError, ValueError) as e:
        raise PolicyError(str(path), None, f"cannot read the policy: {e}") from None
    policy = parse_policy(text, str(path), path.parent)  # what is checked is what is sent
    return policy_files(policy, text), operator_secrets(policy, environ)


@contextlib.contextmanager
def _relay(
    netns_name: str, args: list[str], sockets: list[socket.socket]
) -> Iterator[subprocess.Popen[bytes]]:
    """relay.py `args` in `netns_name`, as nobody, with `sockets`. Isolated (-I, from /):
    nothing in the caller's directory or environment is imported."""
    fds = [s.fileno() for s in sockets]
    argv = as_user(RELAY_UID, [sys.executable, "-I", "-m", "intercept_proxy.runtime.relay", *args])
    relay = subprocess.Popen(
        netns.exec_argv(netns_name, argv),
        pass_fds=fds,
        cwd="/",
        env={"PATH": os.environ.get("PATH", os.defpath)},  # nothing of the operator's
        start_new_session=True,
    )
    try:
        yield relay
    finally:
        relay.kill()
        relay.wait()


def dispatch_args(
    listening: list[socket.socket], served: list[tuple[Policy, socket.socket]]
) -> list[str]:
    """relay.py's `dispatch` arguments: each policy's ranges to the channel of its relay, the
    rest to the default's (else to the first's, whose Envoy refuses a client it does not know)."""
    routes = [f"{r}={ch.fileno()}" for policy, ch in served for r in policy.ranges]
    fallback = next((ch for p, ch in served if not p.ranges), served[0][1])
    listen = ",".join(str(s.fileno()) for s in listening)
    return ["dispatch", listen, *routes, f"*={fallback.fileno()}"]


def _parts(files: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The policy's text, and its modules' by file name."""
    modules = dict(files)
    return modules.pop(POLICY_FILE_NAME), modules


@dataclass
class _Followed:
    """A policy file the gateway follows: the files in force, the last problem it said."""

    path: Path
    files: dict[str, str]
    # The agent's environment: the variables the policy names, given when it starts.
    environ: dict[str, str]
    problem: str = ""
    seen: Signature = ()

    def reload(self, icp: Interceptor) -> None:
        """The policy file and its modules given to the agent again when they changed and
        load; else the policy in force stays (and the problem is said once). Read and checked
        only when one of the files changed (their stat: watch.py, as the agent does)."""
        seen = signature([self.path, *module_paths(self.path)])
        if seen == self.seen:
            return
        self.seen = seen
        try:
            new, needed = _policy_files(self.path, os.environ)
            if missing := sorted(needed.keys() - self.environ.keys()):
                raise PolicyError(
                    str(self.path),
                    None,
                    f"it names {missing[0]}, which its agent got no value of when the gateway "
                    "started (restart the gateway)",
                )
        except (PolicyError, OSError, ValueError) as e:
            if str(e) != self.problem:
                self.problem = str(e)
                print(f"intercept gateway: {e} (the policy in force stays)", file=sys.stderr)
            return
        self.problem = ""
        if new != self.files:
            before = icp.readiness()
            icp.write_policy(*_parts(new))
            self.files = new
            print(
                f"intercept gateway: {self.path} changed: {_outcome(icp, before)}", file=sys.stderr
            )


def _outcome(icp: Interceptor, before: Mapping[str, Any]) -> str:
    """What the agent made of the policy files just written, once it says (its readiness counts
    its reloads): its check goes further than the gateway's (custom Rego modules compiled)."""
    deadline = time.monotonic() + RELOAD_WAIT_S
    while True:
        now = icp.readiness()
        revision = now.get("policy_revision")
        if now.get("policy_reloads", 0) > before.get("policy_reloads", 0):
            return f"reloaded (revision {revision})"
        if now.get("policy_rejections", 0) > before.get("policy_rejections", 0):
            return f"refused by its agent, revision {revision} stays in force ({icp.agent_log})"
        if time.monotonic() > deadline:
            return f"written, not yet applied by its agent after {RELOAD_WAIT_S:.0f} s"
        time.sleep(0.1)


def _serve(args: argparse.Namespace, ranges: tuple[str, ...], stop: threading.Event) -> None:
    """`ranges`: the non-public ranges its upstreams may be in (`private_ranges`)."""
    listen = [parse_listen(t) for t in args.listen or DEFAULT_LISTEN]
    served = policies(args.policy, args.client, args.policy_for)
    # The agents get what their policies name of the operator's environment, nothing else.
    followed = [_Followed(p.path, *_policy_files(p.path, os.environ)) for p in served]
    cleanup_stale()  # what a gateway or a run killed without warning left behind
    with contextlib.ExitStack() as made:  # undone in reverse, each step even if one fails
        sockets = [made.enter_context(bind(a, p)) for a, p in listen]
        prefix = netns.unique_prefix("igw")
        # Recorded first, forgotten last: if this process dies, the next run or gateway (or
        # `intercept cleanup`) removes everything named after the prefix.
        state.register(prefix, f"{prefix}0-gw")
        made.callback(state.release, prefix)
        up = made.enter_context(uplink(args.lab, args.lab_log, prefix))
        pairs: list[Interceptor] = []
        relays, channels = [], []
        ca = CertificateAuthority.generate()  # one for every pair: clients trust one
        for index, (served_to, policy) in enumerate(zip(served, followed, strict=True)):
            text, modules = _parts(policy.files)
            name = f"{prefix}{index}"
            state.register(name, f"{name}-gw")  # its host uplink's rules, if it has one
            made.callback(state.release, name)
            link = for_namespace(up, name)
            made.callback(link.detach)
            netns.create(f"{name}-gw")
            made.callback(netns.delete, f"{name}-gw")
            link.attach(f"{name}-gw")
            others = tuple(r for p in served if p is not served_to for r in p.ranges)
            icp = Interceptor(
                f"{name}-gw",
                text,
                up.extra_trust or SYSTEM_TRUST,
                up.nameservers,
                modules=modules,
                agent_env={"PATH": os.environ.get("PATH", os.defpath), **policy.environ},
                control=True,  # pending approvals: intercept approvals list|allow|deny
                # One decision log: the operator's, else the first pair's.
                decision_log=args.decision_log or (pairs[0].decision_log if pairs else None),
                ca=ca,
                gateway_port=ports.ENVOY_GATEWAY,
                gateway_clients_from="proxy-protocol",  # the relay's word: it alone reaches it
                gateway_clients=served_to.ranges,
                gateway_other_clients=others,
                upstream_private_ranges=ranges,
            )
            made.callback(icp.close)
            state.register(name, f"{name}-gw", icp.control_socket)
            # Forgotten before its directory goes: no one finds a socket there meanwhile.
            made.callback(state.register, name, f"{name}-gw")
            # Ready once Envoy has the policy: compiled into its routes, unless the agent judges
            # (custom modules are Rego only the agent runs).
            pairs.append(icp.start(judged_by="agent" if modules else "envoy"))
            clients = ", ".join(served_to.ranges) or "every client no other policy names"
            print(
                f"intercept gateway: {served_to.name}: {clients}: {policy.path} "
                f"(revision {icp.readiness().get('policy_revision')})",
                file=sys.stderr,
            )
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            made.callback(ours.close)
            channels.append(ours)
            with theirs:
                relay = ["relay", str(ports.ENVOY_GATEWAY), str(theirs.fileno())]
                relays.append(made.enter_context(_relay(f"{name}-gw", relay, [theirs])))
        dispatch = dispatch_args(sockets, list(zip(served, channels, strict=True)))
        # In an empty namespace of its own (it needs no network, and reaches no sidecar's
        # port), named after the gateway: it goes with it.
        netns.create(f"{prefix}-d")
        made.callback(netns.delete, f"{prefix}-d")
        relays.append(made.enter_context(_relay(f"{prefix}-d", dispatch, [*sockets, *channels])))
        for channel in channels:  # the dispatcher's alone: its end closes with it
            channel.close()
        if stop.is_set():
            return
        addresses = ",".join(shown(a, p) for a, p in listen)
        print(f"ready listen={addresses} ca={pairs[0].ca_cert}", flush=True)
        print(f"intercept gateway: decisions go to {pairs[0].decision_log}", file=sys.stderr)
        while not stop.wait(0.5):
            for policy, icp in zip(followed, pairs, strict=True):
                icp.check_alive()
                policy.reload(icp)
            if any(relay.poll() is not None for relay in relays):
                raise InterceptorError("a relay of the gateway exited")


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
    with signals.setting(stop, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
        try:
            _serve(args, ranges, stop)
            return 0
        except (GatewayError, PolicyError, LabSpecError) as e:
            print(f"intercept gateway: {e}", file=sys.stderr)
            return USAGE_ERROR
        except (
            LabError, NetworkError, NetnsError, InterceptorError, subprocess.CalledProcessError,
            OSError,
        ) as e:  # fmt: skip
            print(f"intercept gateway: {e}", file=sys.stderr)
            return 1
