"""A pod and its "outside" in two namespaces joined by a veth pair, both IPv4 and IPv6.

The pod's default routes lead into the outside namespace, which owns every address the tests
send to: nothing ever leaves the namespaces created here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from intercept_proxy import netns

HERE = Path(__file__).parent
WORKLOAD_UID = 12345


@dataclass(frozen=True)
class Addresses:
    pod: str  # the pod's own address, on its veth end
    gateway: str  # the outside end of the veth
    remote: str  # an outside address beyond the gateway: "the internet"
    allowed: str  # an outside address inside ALLOWED_CIDRS
    loopback: str
    prefix_len: int
    host_len: int


ADDRESSES = {
    "ipv4": Addresses(
        "192.0.2.2", "192.0.2.1", "198.51.100.1", "203.0.113.10", "127.0.0.1", 24, 32
    ),
    "ipv6": Addresses(
        "2001:db8::2", "2001:db8::1", "2001:db8:1::1", "2001:db8:a11::10", "::1", 64, 128
    ),
}
ALLOWED_CIDRS = ("203.0.113.0/24", "2001:db8:a11::/48")

# Outside listens on its remote and allowed addresses; the pod on loopback (the sidecars, and a
# local 443) and on every address (8080: a workload server; 15090: a sidecar port).
OUTSIDE_PORTS = {"tcp": (22, 53, 80, 443, 5432), "udp": (53, 443)}
POD_LOOPBACK_PORTS = {"tcp": (443, 15000, 15001, 15002, 15020, 15021, 15053), "udp": (15053,)}
POD_WILDCARD_PORTS = {"tcp": (8080, 15090), "udp": (8080, 15090)}


class PodNet:
    """Namespaces `{prefix}pod` and `{prefix}out`; `close()` removes all of it, whatever state
    `setup()` reached."""

    def __init__(self, prefix: str, log_dir: Path) -> None:
        self.prefix = prefix
        self.pod, self.outside = f"{prefix}pod", f"{prefix}out"
        self.logs = {side: log_dir / f"{side}.jsonl" for side in ("pod", "outside")}
        self._listeners: list[subprocess.Popen[str]] = []

    def setup(self) -> None:
        for name in (self.pod, self.outside):
            netns.create(name)
        pod_if, out_if = f"{self.prefix}p", f"{self.prefix}o"
        netns.add_veth(pod_if, self.pod, out_if, self.outside)
        commands = {self.pod: [], self.outside: []}
        for a in ADDRESSES.values():
            # IPv6 addresses usable at once, without a second of duplicate address detection.
            nodad = " nodad" if ":" in a.pod else ""
            commands[self.pod] += [f"addr add {a.pod}/{a.prefix_len} dev {pod_if}{nodad}"]
            commands[self.outside] += [
                f"addr add {a.gateway}/{a.prefix_len} dev {out_if}{nodad}",
                f"addr add {a.remote}/{a.host_len} dev lo",
                f"addr add {a.allowed}/{a.host_len} dev lo",
            ]
        commands[self.pod] += [f"link set {pod_if} up"]
        commands[self.outside] += [f"link set {out_if} up"]
        commands[self.pod] += [f"route add default via {a.gateway}" for a in ADDRESSES.values()]
        for name, lines in commands.items():
            netns.ip("-n", name, "-batch", "-", input="\n".join(lines) + "\n")
        # The kernel may take up to a second to start a link it saw come up, dropping what is
        # sent meanwhile (a first neighbour solicitation, retried a second later).
        for name, ifname in ((self.pod, pod_if), (self.outside, out_if)):
            deadline = time.monotonic() + 5
            while "state UP" not in netns.ip("-n", name, "link", "show", ifname):
                assert time.monotonic() < deadline, f"{ifname} in {name} did not come up"
                time.sleep(0.01)
        # Let any GID open ICMP ping sockets in the pod, so a workload UID can ping.
        self.run(self.pod, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")

    def start_listeners(self) -> None:
        # Outside binds each address: a UDP reply from a wildcard socket would come from the
        # gateway address, which the client's connected socket ignores.
        outside = [a for f in ADDRESSES.values() for a in (f.remote, f.allowed)]
        self._listen(self.outside, "outside", OUTSIDE_PORTS, outside)
        self._listen(self.pod, "pod", POD_LOOPBACK_PORTS, ["127.0.0.1", "::1"])
        self._listen(self.pod, "pod", POD_WILDCARD_PORTS, ["0.0.0.0", "::"])

    def _listen(self, name: str, side: str, ports: dict, addresses: list[str]) -> None:
        spec = {
            proto: [[address, port] for address in addresses for port in proto_ports]
            for proto, proto_ports in ports.items()
        }
        argv = [sys.executable, str(HERE / "listener.py"), side, str(self.logs[side])]
        process = subprocess.Popen(
            netns.exec_argv(name, [*argv, json.dumps(spec)]), stdout=subprocess.PIPE, text=True
        )
        self._listeners.append(process)
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n", f"listener in {name} did not start"

    def run(self, name: str, *argv: str) -> str:
        result = netns.run(name, argv)
        assert result.returncode == 0, f"{argv} in {name}: {result.stderr}"
        return result.stdout

    def client(self, uid: int, *jobs: dict, name: str | None = None) -> list[dict]:
        """Run client.py jobs as `uid` (0: root, no setpriv) in the pod (or `name`)."""
        argv = [sys.executable, str(HERE / "client.py"), json.dumps(jobs)]
        if uid:
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
        return json.loads(self.run(name or self.pod, *argv))

    def received(self, side: str) -> list[dict]:
        """What the listeners of `side` ("pod" or "outside") have recorded so far."""
        path = self.logs[side]
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def icmp_echoes_received(self, family: str) -> int:
        """Echo requests the outside namespace has received (kernel counters)."""
        if family == "ipv4":
            lines = self.run(self.outside, "cat", "/proc/net/snmp").splitlines()
            header, values = (line.split() for line in lines if line.startswith("Icmp:"))
            return int(values[header.index("InEchos")])
        counters = dict(
            line.split() for line in self.run(self.outside, "cat", "/proc/net/snmp6").splitlines()
        )
        return int(counters["Icmp6InEchos"])

    def close(self) -> None:
        for process in self._listeners:
            process.kill()
            process.wait()
        netns.cleanup(self.prefix)
