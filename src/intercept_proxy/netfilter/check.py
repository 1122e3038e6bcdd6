"""`intercept proxy-init --check`: prove, without any privilege, that the capture is in force.

In CNI mode the rules are installed by the node (the CNI plugin), and the pod's first init
container runs this check as an ordinary user: reading the rules needs CAP_NET_ADMIN, so it
proves them by their effect instead, as the workload would meet them. It listens where Envoy and
the agent will (their ports are free: the sidecars start after it), and for each family:
- connects to a documentation address on every TLS and HTTP port: each connection must arrive at
  its redirect port, with the original destination the kernel recorded;
- sends DNS (UDP and TCP) there: it must arrive at the agent's DNS port;
- connects to a port nothing redirects, TCP and UDP, and to Envoy's port while it listens
  there itself: each must be refused at once.
Any failure fails the pod, so a pod whose node has not installed the rules never runs.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from intercept_proxy.netfilter.builder import FAMILIES, Family
from intercept_proxy.netfilter.config import DNS, CaptureConfig

# Documentation ranges (RFC 5737, RFC 3849): never anyone's real address.
TARGETS: dict[Family, tuple[str, ...]] = {
    "ipv4": ("192.0.2.1", "198.51.100.1", "203.0.113.1"),
    "ipv6": ("2001:db8::1", "2001:db8:1::1"),
}
LOOPBACK: dict[Family, str] = {"ipv4": "127.0.0.1", "ipv6": "::1"}
_AF: dict[Family, socket.AddressFamily] = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
# Ports a workload may never reach directly: none of them is TLS, HTTP or DNS.
REFUSED_PORT = 9  # discard
SO_ORIGINAL_DST = 80  # the same number for IPv4 (SOL_IP) and IPv6 (SOL_IPV6, IP6T_...)
TIMEOUT = 1.0  # a redirected connection is local: it is there at once
CHECK_FLAG = "--check"  # proxy-init's option running it


class CheckError(RuntimeError):
    pass


@dataclass(frozen=True)
class Result:
    family: Family
    what: str
    problem: str | None  # None: as it should be

    def __str__(self) -> str:
        return f"{self.family} {self.what}: {self.problem or 'ok'}"


def target(config: CaptureConfig, family: Family) -> str:
    """A documentation address outside the CIDRs the workload may reach directly (pure)."""
    allowed = [ipaddress.ip_network(c) for c in config.allowed_cidrs]
    for address in TARGETS[family]:
        if not any(ipaddress.ip_address(address) in net for net in allowed):
            return address
    raise CheckError(
        f"every {family} documentation address is in an allowed CIDR: nothing to check with"
    )


def _original_destination(conn: socket.socket, family: Family) -> tuple[str, int]:
    if family == "ipv4":
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, packed = struct.unpack_from("!2xH4s", raw)
        return socket.inet_ntop(socket.AF_INET, packed), port
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    port, packed = struct.unpack_from("!2xH4x16s", raw)
    return socket.inet_ntop(socket.AF_INET6, packed), port


@contextlib.contextmanager
def _listening(family: Family, kind: socket.SocketKind, port: int) -> Iterator[socket.socket]:
    sock = socket.socket(_AF[family], kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK[family], port))
        except OSError as e:
            raise CheckError(
                f"cannot listen on {LOOPBACK[family]} port {port} ({e.strerror}): the check "
                "runs before the sidecars, on their ports"
            ) from None
        if kind == socket.SOCK_STREAM:
            sock.listen(8)
        sock.settimeout(TIMEOUT)
        yield sock
    finally:
        sock.close()


def _redirected(family: Family, address: str, port: int, listener: socket.socket) -> str | None:
    """Connect to address:port; None if the connection arrived at `listener` from there."""
    with socket.socket(_AF[family], socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        try:
            client.connect((address, port))
        except OSError as e:
            return f"the connection failed ({e.strerror or e}): not redirected"
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return "connected elsewhere: not redirected"
        with conn:
            original = _original_destination(conn, family)
    if original != (address, port):
        return f"arrived from {original[0]} port {original[1]}, not the probe's"
    return None


def _dns_redirected(family: Family, address: str, listener: socket.socket) -> str | None:
    nonce = secrets.token_bytes(12)
    with socket.socket(_AF[family], socket.SOCK_DGRAM) as client:
        try:
            client.sendto(nonce, (address, DNS))
        except OSError as e:
            return f"cannot send ({e.strerror or e})"
        try:
            while True:
                received, _ = listener.recvfrom(64)
                if received == nonce:
                    return None
        except TimeoutError:
            return "nothing arrived at the agent's DNS port: not redirected"


def _refused(family: Family, kind: socket.SocketKind, address: str, port: int) -> str | None:
    """A connection (TCP), or a datagram and its answer (UDP), the rules must refuse at once:
    a reset, an unreachable, or the kernel's own refusal to send."""
    with socket.socket(_AF[family], kind) as client:
        client.settimeout(TIMEOUT)
        try:
            client.connect((address, port))
            if kind == socket.SOCK_DGRAM:
                client.send(b"x")
                client.recv(1)
        except (ConnectionRefusedError, PermissionError):
            return None
        except TimeoutError:
            return "not refused (timed out): the filter rules are missing"
        except OSError as e:
            return f"failed otherwise than refused ({e.strerror or e})"
    return "not refused: the workload could reach it"


def _routed(family: Family, address: str) -> bool:
    """Whether the pod routes `address` at all (a family without any route has no egress)."""
    with socket.socket(_AF[family], socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, DNS))
        except OSError as e:
            if e.errno in (errno.ENETUNREACH, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


def check_family(config: CaptureConfig, family: Family) -> list[Result] | None:
    """None: the family has no route, so no egress to capture."""
    address = target(config, family)
    if not _routed(family, address):
        return None
    results = []
    stream, datagram = socket.SOCK_STREAM, socket.SOCK_DGRAM
    with (
        _listening(family, stream, config.tls_redirect_port) as tls,
        _listening(family, stream, config.http_redirect_port) as http,
        _listening(family, stream, config.dns_port) as dns_tcp,
        _listening(family, datagram, config.dns_port) as dns_udp,
    ):
        for ports, listener, name in (
            (config.tls_ports, tls, "TLS"),
            (config.http_ports, http, "HTTP"),
            ((DNS,), dns_tcp, "DNS"),
        ):
            for port in ports:
                what = f"tcp/{port} ({name})"
                results.append(Result(family, what, _redirected(family, address, port, listener)))
        results.append(
            Result(family, f"udp/{DNS} (DNS)", _dns_redirected(family, address, dns_udp))
        )
        # Envoy's port itself, while something listens there: the workload may not reach it.
        sidecar = f"tcp/{config.tls_redirect_port} on {LOOPBACK[family]} (a sidecar's)"
        direct = _refused(family, stream, LOOPBACK[family], config.tls_redirect_port)
        results.append(Result(family, sidecar, direct))
    results += [
        Result(
            family, f"tcp/{REFUSED_PORT} (other)", _refused(family, stream, address, REFUSED_PORT)
        ),
        Result(family, "udp/443 (other)", _refused(family, datagram, address, 443)),
    ]
    return results


def check(config: CaptureConfig) -> list[Result]:
    """Every probe's result, both families. CheckError when the check cannot run at all."""
    uid = os.geteuid()
    if uid in (config.envoy_uid, config.agent_uid):
        raise CheckError(f"runs as UID {uid}, a sidecar's, which the capture leaves alone")
    out: list[Result] = []
    routed = False
    for family in FAMILIES:
        found = check_family(config, family)
        routed = routed or found is not None
        out += found if found is not None else [Result(family, "no route: nothing leaves", None)]
    if not routed:
        raise CheckError("the pod routes nothing, in either family: nothing proves the capture")
    return out
