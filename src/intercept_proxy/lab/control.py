"""The `Lab`: start the fake internet in its own namespace, attach namespaces to it, tear it down.

Layout of a lab named by `prefix`: the namespace `{prefix}-lab` holds every host address on its
loopback and the one server process; each attached namespace gets a veth pair whose lab end is
`{prefix}l{slot}` and whose other end is `{prefix}-lab`. Deleting the lab namespace therefore
removes every pair too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from intercept_proxy import netns
from intercept_proxy.lab.addresses import MAX_LINKS, RESOLVER_V4, RESOLVER_V6, link_addresses
from intercept_proxy.lab.certs import leaf_paths, write_lab_pki
from intercept_proxy.lab.config import READY, ServedHost, ServerConfig
from intercept_proxy.lab.receipts import read_receipts
from intercept_proxy.lab.repos import create_bare_repo
from intercept_proxy.lab.spec import LabHost, LabSpec

# Not tempfile.gettempdir(): TMPDIR may point into /root, which unprivileged readers of the CA
# cannot enter.
DEFAULT_STATE_PARENT = Path("/tmp")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,8}$")  # leaves 6 characters of an interface name


class LabError(RuntimeError):
    """The lab cannot start, connect or stop; the message says what failed."""


@dataclass(frozen=True)
class LabLink:
    """One attached namespace: its veth ends and the addresses on them."""

    netns: str
    lab_ifname: str
    peer_ifname: str
    lab_ipv4: str
    peer_ipv4: str
    lab_ipv6: str
    peer_ipv6: str


class Lab:
    """A lab from a spec. `with Lab(spec) as lab:` starts it and stops it completely.

    Without `state_dir` the lab keeps its files (CA, certificates, repositories, server config
    and stderr, and by default the receipt log) in /tmp/intercept-lab-PREFIX, removed by stop().
    """

    def __init__(
        self,
        spec: LabSpec,
        *,
        prefix: str | None = None,
        log_path: Path | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.prefix = prefix if prefix is not None else netns.unique_prefix("ipl")
        if not _PREFIX.match(self.prefix):
            raise LabError(
                f"prefix {self.prefix!r}: use 1-9 lower-case letters and digits, a letter first"
            )
        self.netns = f"{self.prefix}-lab"
        # Absolute: the server runs with / as its working directory.
        self.state_dir = (
            state_dir or DEFAULT_STATE_PARENT / f"intercept-lab-{self.prefix}"
        ).absolute()
        self.log_path = (log_path or self.state_dir / "receipts.jsonl").absolute()
        self.ca_cert_path = self.state_dir / "ca.pem"
        self.pid: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._owns_state_dir = False
        self._owns_netns = False
        self._connect_lock = threading.Lock()

    # -- what tests and callers read ---------------------------------------------------------

    @property
    def hosts(self) -> list[LabHost]:
        return list(self.spec.hosts)

    def host(self, name: str) -> LabHost:
        for host in self.spec.hosts:
            if host.name == name:
                return host
        raise KeyError(f"{name!r} is not a lab host ({', '.join(h.name for h in self.hosts)})")

    def leaf(self, name: str) -> tuple[Path, Path]:
        """The certificate and key (root's alone) the lab issued for host `name`."""
        self.host(name)
        return leaf_paths(self._leaf_dir, name)

    @property
    def _leaf_dir(self) -> Path:
        return self.state_dir / "certs"

    @property
    def dns_servers(self) -> tuple[str, str]:
        return (str(RESOLVER_V4), str(RESOLVER_V6))

    def receipts(self) -> list[dict[str, Any]]:
        return read_receipts(self.log_path)

    def wait_for_receipts(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 5.0,
        *,
        count: int = 1,
    ) -> list[dict[str, Any]]:
        """Poll until at least `count` receipts satisfy `predicate` (called on each receipt);
        return all that do. TimeoutError lists the latest receipts when they never arrive."""
        deadline = time.monotonic() + timeout
        while True:
            receipts = self.receipts()
            matching = [r for r in receipts if predicate(r)]
            if len(matching) >= count:
                return matching
            if time.monotonic() >= deadline:
                latest = "\n".join(json.dumps(r) for r in receipts[-10:]) or "(none)"
                raise TimeoutError(
                    f"{len(matching)} of {count} expected receipts after {timeout}s; "
                    f"latest receipts:\n{latest}"
                )
            time.sleep(0.02)

    def summary(self) -> dict[str, Any]:
        """What a user of a running lab needs to know (printed by `intercept lab up`)."""
        return {
            "prefix": self.prefix,
            "netns": self.netns,
            "pid": self.pid,
            "hosts": [host.to_dict() for host in self.spec.hosts],
            "dns_servers": list(self.dns_servers),
            "ca_cert": str(self.ca_cert_path),
            "log": str(self.log_path),
            "state_dir": str(self.state_dir),
        }

    def is_running(self) -> bool:
        return self.pid is not None and _is_server(self.pid, self._config_path)

    # -- life cycle --------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Lab:
        if self.pid is not None or self._owns_netns:
            raise LabError(f"lab {self.prefix} is already started")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        _make_public_dir(self.state_dir.parent)
        try:
            self.state_dir.mkdir()
        except FileExistsError:
            raise LabError(f"{self.state_dir} already exists; is lab {self.prefix} up?") from None
        self._owns_state_dir = True
        self.state_dir.chmod(0o755)
        # Written first and again once the server runs, so `intercept lab down` can clean up
        # after an `up` that was itself killed half-way.
        self._write_state()
        self._prepare_files()
        if netns.exists(self.netns):
            raise LabError(f"network namespace {self.netns} already exists")
        netns.create(self.netns)
        self._owns_netns = True
        self._add_addresses()
        self._spawn()
        (self.state_dir / "server.pid").write_text(f"{self.pid}\n")
        self._write_state()

    def _write_state(self) -> None:
        state = {**self.summary(), "spec": self.spec.to_dict()}
        (self.state_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    @property
    def _config_path(self) -> Path:
        return self.state_dir / "server.json"

    def _prepare_files(self) -> None:
        pki = write_lab_pki(self.spec.hosts, self.ca_cert_path, self._leaf_dir)
        repos_root = self.state_dir / "repos"
        for host in self.spec.hosts:
            for repo in host.git_repos:
                create_bare_repo(repos_root / host.name / f"{repo}.git", host.name, repo)
        # The log holds this lab's receipts only: "nothing arrived" must mean nothing arrived.
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")
        self.log_path.chmod(0o644)
        config = ServerConfig(
            hosts=tuple(ServedHost(h, *pki.leaves[h.name]) for h in self.spec.hosts),
            dns_addresses=self.dns_servers,
            log_path=self.log_path,
            repos_root=repos_root,
        )
        self._config_path.write_text(config.to_json())

    def _add_addresses(self) -> None:
        addresses = {a for h in self.spec.hosts for a in (h.ipv4, h.ipv6)}
        addresses.update(self.dns_servers)
        commands = [f"address add {a}/{128 if ':' in a else 32} dev lo" for a in sorted(addresses)]
        netns.ip("-n", self.netns, "-batch", "-", input="\n".join(commands) + "\n")
        # Attached namespaces route everything here; the lab must not pass it on (to another
        # attached namespace, say): it answers, it never forwards.
        result = netns.run(
            self.netns,
            [
                "sh",
                "-c",
                "echo 0 > /proc/sys/net/ipv4/ip_forward && "
                "echo 0 > /proc/sys/net/ipv6/conf/all/forwarding",
            ],
        )
        if result.returncode != 0:
            raise LabError(f"cannot turn forwarding off in {self.netns}: {result.stderr.strip()}")

    def _spawn(self) -> None:
        read_end, write_end = os.pipe()
        try:
            with (self.state_dir / "server.log").open("wb") as stderr:
                self._process = subprocess.Popen(
                    netns.exec_argv(
                        self.netns,
                        [
                            sys.executable,
                            "-m",
                            "intercept_proxy.lab.server",
                            "--config",
                            str(self._config_path),
                            "--ready-fd",
                            str(write_end),
                        ],
                    ),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    pass_fds=(write_end,),
                    # Its own process group, so stop() can kill it with every CGI child; and
                    # no controlling terminal, so `intercept lab up` can return while it runs.
                    start_new_session=True,
                    cwd="/",
                )
            self.pid = self._process.pid
        finally:
            os.close(write_end)
        try:
            self._await_ready(read_end)
        finally:
            os.close(read_end)

    def _await_ready(self, read_end: int) -> None:
        """Block until the server writes READY (every listener bound) or closes the pipe."""
        deadline = time.monotonic() + READY_TIMEOUT
        received = b""
        while READY not in received:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([read_end], [], [], max(remaining, 0))
            if not readable:
                raise LabError(self._failure(f"not ready after {READY_TIMEOUT}s"))
            chunk = os.read(read_end, 64)
            if not chunk:
                raise LabError(self._failure("exited before it was ready"))
            received += chunk

    def _failure(self, what: str) -> str:
        assert self._process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=1)
        status = self._process.returncode
        stderr = (self.state_dir / "server.log").read_text(errors="replace").strip()
        return (
            f"lab server {what} (exit status {status}); its stderr:\n{stderr[-4000:] or '(empty)'}"
        )

    def connect(self, netns_name: str) -> LabLink:
        """Attach `netns_name` to the lab: a veth pair, link addresses, and default routes (IPv4
        and IPv6) through the lab, which answers for lab addresses and drops everything else."""
        if not self._owns_netns:
            raise LabError(f"lab {self.prefix} is not started")
        if not netns.exists(netns_name):
            raise LabError(f"network namespace {netns_name} does not exist")
        peer_ifname = f"{self.prefix}-lab"
        if peer_ifname in netns.links(netns_name):
            raise LabError(f"{netns_name} is already connected to lab {self.prefix}")
        with self._connect_lock:
            slot = self._free_slot()
            lab_ifname = f"{self.prefix}l{slot}"
            a = link_addresses(slot)
            netns.add_veth(lab_ifname, self.netns, peer_ifname, netns_name)
            try:
                netns.ip(
                    "-n",
                    self.netns,
                    "-batch",
                    "-",
                    input=f"address add {a.lab_ipv4}/{a.ipv4_prefix} dev {lab_ifname}\n"
                    # nodad: usable at once, not after duplicate address detection's delay.
                    f"address add {a.lab_ipv6}/{a.ipv6_prefix} dev {lab_ifname} nodad\n"
                    f"link set {lab_ifname} up\n",
                )
                netns.ip(
                    "-n",
                    netns_name,
                    "-batch",
                    "-",
                    input=f"address add {a.peer_ipv4}/{a.ipv4_prefix} dev {peer_ifname}\n"
                    f"address add {a.peer_ipv6}/{a.ipv6_prefix} dev {peer_ifname} nodad\n"
                    f"link set {peer_ifname} up\n"
                    f"route add default via {a.lab_ipv4}\n"
                    f"route add default via {a.lab_ipv6}\n",
                )
            except BaseException:
                with contextlib.suppress(netns.NetnsError):
                    netns.ip("-n", self.netns, "link", "delete", lab_ifname)
                raise
        return LabLink(
            netns_name,
            lab_ifname,
            peer_ifname,
            a.lab_ipv4,
            a.peer_ipv4,
            a.lab_ipv6,
            a.peer_ipv6,
        )

    def _free_slot(self) -> int:
        """The lowest link number not in use; read from the lab namespace itself, so a link
        disappears from the count as soon as its attached namespace is deleted."""
        pattern = re.compile(rf"^{self.prefix}l(\d+)$")
        used = {int(m.group(1)) for name in netns.links(self.netns) if (m := pattern.match(name))}
        slot = next(n for n in range(MAX_LINKS + 1) if n not in used)
        if slot == MAX_LINKS:
            raise LabError(f"lab {self.prefix} has no free link left ({MAX_LINKS} in use)")
        return slot

    def stop(self) -> None:
        """Kill the server and its children, delete the namespace (every veth pair goes with it)
        and the state dir. Safe to call twice, and on a lab that failed half-way through start."""
        try:
            self._kill_server()
        finally:
            try:
                if self._owns_netns:
                    self._remove_netns()
            finally:
                if self._owns_state_dir:
                    shutil.rmtree(self.state_dir, ignore_errors=True)
                    self._owns_state_dir = False

    def _remove_netns(self) -> None:
        # Delete the pairs explicitly: once the namespace is gone the kernel removes them
        # too, but later, and callers check right after stop() that nothing is left. A pair
        # may vanish meanwhile (its other namespace deleted): -force goes on past it, and
        # whatever remains goes with the namespace anyway.
        pattern = re.compile(rf"^{self.prefix}l\d+$")
        present = netns.links(self.netns) if netns.exists(self.netns) else []
        doomed = [name for name in present if pattern.match(name)]
        if doomed:
            with contextlib.suppress(netns.NetnsError):
                netns.ip(
                    "-n",
                    self.netns,
                    "-force",
                    "-batch",
                    "-",
                    input="".join(f"link delete {name}\n" for name in doomed),
                )
        netns.delete(self.netns)
        self._owns_netns = False

    def _kill_server(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=STOP_TIMEOUT)
            self._process = None
        elif self.pid is not None and _is_server(self.pid, self._config_path):
            # Started by another process (`intercept lab up`): not our child to wait for.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT
            while _is_server(self.pid, self._config_path) and time.monotonic() < deadline:
                time.sleep(0.01)
        self.pid = None

    # -- a lab started by another process ----------------------------------------------------

    @classmethod
    def from_state(cls, state_dir: Path) -> Lab:
        """The running lab whose state is in `state_dir` (see `intercept lab up`); stop() on it
        stops that lab completely."""
        state_path = state_dir / "state.json"
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError) as e:
            raise LabError(f"{state_path}: cannot read the lab state: {e}") from e
        spec = LabSpec.from_dict(state["spec"], source=str(state_path))
        lab = cls(spec, prefix=state["prefix"], log_path=Path(state["log"]), state_dir=state_dir)
        lab.pid = state["pid"]
        lab._owns_netns = True
        lab._owns_state_dir = True
        return lab


def _is_server(pid: int, config_path: Path) -> bool:
    """Whether `pid` is (still) the lab server reading `config_path`: a pid read from a state
    file may since have been reused by an unrelated process, which must not be killed."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; only its parent's wait() is missing.
    return str(config_path).encode() in argv and status.rsplit(")", 1)[1].split()[0] != "Z"


def _make_public_dir(path: Path) -> None:
    """Create `path` and its missing parents 0755: unprivileged users read the CA below."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        directory.chmod(0o755)
