"""Named network namespaces (`ip netns`) and veth pairs: the plumbing shared by the lab and pods.

Every name created for one run starts with one short prefix, so `cleanup(prefix)` can remove
everything a run left behind, whatever state it stopped in.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from intercept_proxy import resolvconf

NETNS_RUN_DIR = Path("/run/netns")
# `ip netns exec` bind-mounts /etc/netns/NAME/* over /etc/*, e.g. a per-namespace resolv.conf.
NETNS_ETC_DIR = Path("/etc/netns")
IFNAME_MAX = 15
_LIBC = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits


class NetnsError(RuntimeError):
    """An `ip` command that failed; the message holds the command and its stderr."""


def unique_prefix(stem: str = "ipx", random_chars: int = 4) -> str:
    """A short random prefix (e.g. `ipxk3q9`) leaving room in a 15-character interface name."""
    return stem + "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(random_chars))


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """The argv running `argv` inside `netns`: a name (`ip netns exec` execs it: same pid, no
    fork), or a namespace's path, as a container runtime gives it (`CNI_NETNS`)."""
    if "/" in netns:
        return ["nsenter", f"--net={netns}", "--", *argv]
    return ["ip", "netns", "exec", netns, *argv]


def socket_in(name: str, family: socket.AddressFamily, kind: socket.SocketKind) -> socket.socket:
    """A socket of namespace `name`, used from this one: a thread enters `name` (setns changes
    only the calling thread's namespace), makes the socket and ends; the socket keeps its
    namespace wherever it is used."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            fd = os.open(NETNS_RUN_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns into {name}: {os.strerror(error)}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind))
        except BaseException as e:
            made.append(e)

    thread = threading.Thread(target=make, name=f"socket-in-{name}")
    thread.start()
    thread.join()
    (result,) = made
    if isinstance(result, BaseException):
        raise NetnsError(f"a socket in network namespace {name}: {result}")
    return result


def run(
    netns: str, argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside `netns`, capturing text output; the caller checks the return code."""
    return subprocess.run(
        exec_argv(netns, argv),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ip(*args: str, input: str | None = None) -> str:
    """Run `ip ARGS` (e.g. `ip("-n", ns, "-batch", "-", input=...)`) and return its stdout."""
    argv = ["ip", *args]
    result = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit status {result.returncode}"
        raise NetnsError(f"{' '.join(argv)}: {detail}")
    return result.stdout


def namespaces() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def exists(name: str) -> bool:
    return (NETNS_RUN_DIR / name).exists()


def create(name: str) -> None:
    """Create namespace `name` with its loopback up; fails if it already exists."""
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")


def pids(name: str) -> list[int]:
    """Processes whose network namespace is `name`."""
    if not exists(name):
        return []
    return [int(pid) for pid in ip("netns", "pids", name).split()]


def delete(name: str) -> None:
    """Kill every process inside `name`, then delete it and its /etc/netns files; missing is fine.

    A process left inside would keep the namespace (and its interfaces) alive after the name is
    gone, so the processes go first.
    """
    victims = pids(name)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_left_namespace(victims)
    if exists(name):
        ip("netns", "delete", name)
    shutil.rmtree(NETNS_ETC_DIR / name, ignore_errors=True)


def _wait_left_namespace(victims: Sequence[int], timeout: float = 5.0) -> None:
    """Wait until killed processes have dropped their namespaces (a zombie already has)."""
    deadline = time.monotonic() + timeout
    for pid in victims:
        while time.monotonic() < deadline:
            try:
                Path(f"/proc/{pid}/ns/net").readlink()
            except OSError:
                break
            time.sleep(0.01)


def set_nameservers(name: str, servers: Sequence[str]) -> Path:
    """Give commands run with `ip netns exec name` a resolv.conf naming `servers`."""
    path = NETNS_ETC_DIR / name / "resolv.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(resolvconf.text(servers))
    return path


def add_veth(name: str, netns: str | None, peer: str, peer_netns: str | None) -> None:
    """Create a veth pair with each end created directly in its namespace (None: this one).

    Creating the ends in place means a failure never leaves a half-moved pair behind.
    """
    for ifname in (name, peer):
        if len(ifname) > IFNAME_MAX:
            raise NetnsError(f"interface name {ifname!r} is longer than {IFNAME_MAX} characters")
    argv = ["link", "add", name]
    if netns is not None:
        argv += ["netns", netns]
    argv += ["type", "veth", "peer", "name", peer]
    if peer_netns is not None:
        argv += ["netns", peer_netns]
    ip(*argv)


def links(netns: str | None = None) -> list[str]:
    """Interface names in `netns` (None: this namespace)."""
    scope = ["-n", netns] if netns is not None else []
    names = []
    for line in ip(*scope, "-o", "link", "show").splitlines():
        # "7: name@peer: <FLAGS> ..." -- the "@peer" suffix names the other end, not this one.
        names.append(line.split(":", 2)[1].strip().split("@", 1)[0])
    return names


def cleanup(prefix: str) -> list[str]:
    """Delete every namespace and every interface of this namespace named `prefix*`.

    Returns what was removed, so a test can report what a run leaked.
    """
    if not prefix:
        raise ValueError("cleanup needs a non-empty prefix")
    removed = []
    # Links first: deleting one end of a pair takes the other along at once, whereas the ends
    # inside a deleted namespace only go when the kernel gets round to it.
    for ifname in links():
        if ifname.startswith(prefix):
            try:
                ip("link", "delete", ifname)
            except NetnsError:
                continue  # deleting the other end of its pair already took this one with it
            removed.append(f"link {ifname}")
    for name in namespaces():
        if name.startswith(prefix):
            delete(name)
            removed.append(f"netns {name}")
    return removed
