"""`Cluster`: a real control plane (etcd, kube-apiserver, kube-controller-manager, Kyverno) and
one node of ours on this machine, owned by a supervisor daemon; `scripts/cluster` and the tests
both use this class.

    with Cluster("demo", lab_spec={"hosts": [{"name": "pypi.org"}]}) as c:
        c.kubectl("get", "nodes")
        c.env          # {"KUBECONFIG": ..., "PATH": ...}: kubectl and helm of the engines
        c.client       # an admin KubeClient
        c.lab          # the lab the pods reach (None without a lab spec)

`up` returns once the cluster is ready; `down` stops the supervisor (which stops the node's
pods, Kyverno, the control plane and the lab) and then removes whatever is left of the cluster
by its name, so it also cleans up after a supervisor that crashed or was killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from intercept_proxy.cluster import cleanup as cleanup_module
from intercept_proxy.cluster.client import Credentials, KubeClient
from intercept_proxy.cluster.layout import (
    DEFAULT_NAME,
    STATE_PARENT,
    Config,
    Ports,
    check_name,
    prefix_for,
    state_dir_for,
)
from intercept_proxy.cluster.processes import log_tail
from intercept_proxy.cluster.tools import Tools
from intercept_proxy.lab import Lab, LabSpec

UP_TIMEOUT = 240.0
STOP_TIMEOUT = 120.0
LOGS = (
    "supervisor",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kyverno-admission-controller",
    "kyverno-background-controller",
    "node",
)


class ClusterError(RuntimeError):
    """The cluster could not start (or stop); the message says what failed and where to look."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _lab_dict(lab_spec: LabSpec | Mapping[str, Any] | Path | str | None) -> dict[str, Any] | None:
    if lab_spec is None:
        return None
    if isinstance(lab_spec, LabSpec):
        return lab_spec.to_dict()
    if isinstance(lab_spec, str | Path):
        return LabSpec.load(Path(lab_spec)).to_dict()
    return LabSpec.from_dict(dict(lab_spec)).to_dict()  # validated now, not in the daemon


def _supervisor_pid(state_dir: Path) -> int | None:
    """The pid of the cluster's supervisor, if it runs (checked against its command line)."""
    try:
        pid = int((state_dir / "supervisor.pid").read_text())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if b"intercept_proxy.cluster.supervisor" in args and str(state_dir).encode() in args:
        return pid
    return None


class Cluster:
    def __init__(
        self,
        name: str = DEFAULT_NAME,
        lab_spec: LabSpec | Mapping[str, Any] | Path | str | None = None,
        *,
        state_parent: Path = STATE_PARENT,
    ) -> None:
        self.name = check_name(name)
        self.prefix = prefix_for(name)
        self.state_dir = state_dir_for(name, state_parent)
        self.lab_spec = _lab_dict(lab_spec)
        self.tools = Tools.locate()
        self.start_seconds: float | None = None
        self._client: KubeClient | None = None
        self._lab: Lab | None = None

    # -- paths and handles --------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return Config.load(self.state_dir)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def env(self) -> dict[str, str]:
        """KUBECONFIG, and a PATH that finds the engines' kubectl and helm first."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.tools.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }

    @property
    def client(self) -> KubeClient:
        if self._client is None:
            config, pki = self.config, self.state_dir / "pki"
            self._client = KubeClient(
                Credentials(config.server, pki / "ca.crt", pki / "admin.crt", pki / "admin.key")
            )
        return self._client

    @property
    def lab(self) -> Lab | None:
        """The running lab (for its hosts and receipts); never stop it through this handle."""
        if self._lab is None and (self.state_dir / "lab" / "state.json").exists():
            self._lab = Lab.from_state(self.state_dir / "lab")
        return self._lab

    @property
    def node_name(self) -> str:
        return self.config.node_name

    @property
    def timings(self) -> dict[str, float]:
        with contextlib.suppress(OSError, ValueError):
            ready = json.loads((self.state_dir / "ready").read_text())
            timings: dict[str, float] = ready["timings"]
            return timings
        return {}

    def running(self) -> bool:
        return _supervisor_pid(self.state_dir) is not None

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.tools.binary("kubectl")), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def log(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self, timeout: float = UP_TIMEOUT) -> Cluster:
        """Start the cluster's supervisor and return once the cluster is ready."""
        if os.geteuid() != 0:
            raise ClusterError("a cluster needs root (network namespaces, iptables, pods' users)")
        start = time.monotonic()
        if self.running():
            raise ClusterError(
                f"cluster {self.name} is already up (scripts/cluster down --name {self.name})"
            )
        # What an earlier cluster of this name left (crashed, killed) goes first.
        self.cleanup()
        self.state_dir.mkdir(mode=0o700, parents=True)
        config = Config(
            name=self.name,
            prefix=self.prefix,
            state_dir=str(self.state_dir),
            node_name=f"{self.name}-node",
            ports=Ports(free_port(), free_port(), free_port(), free_port()),
            lab_spec=self.lab_spec,
        )
        (self.state_dir / "config.json").write_text(config.to_json())
        (self.state_dir / "logs").mkdir(mode=0o700)
        with (self.state_dir / "logs" / "supervisor.log").open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "intercept_proxy.cluster.supervisor", str(self.state_dir)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,  # a daemon: no terminal, its own session
                env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
            )
        try:
            self._await_ready(process, timeout)
        except BaseException:
            self.down()
            raise
        self.start_seconds = round(time.monotonic() - start, 2)
        return self

    def _await_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ready, failed = self.state_dir / "ready", self.state_dir / "failed"
        while not ready.exists():
            if failed.exists() or process.poll() is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(STOP_TIMEOUT)
                raise ClusterError(self._explain("did not start"))
            if time.monotonic() > deadline:
                raise ClusterError(self._explain(f"was not ready after {timeout:.0f}s"))
            time.sleep(0.1)

    def _explain(self, what: str) -> str:
        error = ""
        with contextlib.suppress(OSError, ValueError):
            error = json.loads((self.state_dir / "failed").read_text())["error"]
        tails = "\n".join(
            f"--- {self.log(name)} (last lines)\n{log_tail(self.log(name), 15)}"
            for name in LOGS
            if self.log(name).exists()
        )
        return f"cluster {self.name} {what}: {error or '(see the logs)'}\n{tails}"

    def down(self, timeout: float = STOP_TIMEOUT) -> list[str]:
        """Stop the supervisor (gracefully), then remove whatever is left; returns what had to
        be removed by force (nothing after a clean stop but the state dir)."""
        pid = _supervisor_pid(self.state_dir)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _supervisor_pid(self.state_dir) == pid and time.monotonic() < deadline:
                time.sleep(0.1)
        if self._client is not None:
            self._client.close()
            self._client = None
        self._lab = None
        return self.cleanup()

    def cleanup(self) -> list[str]:
        return cleanup_module.cleanup(self.prefix, self.state_dir)


def unique_name(stem: str = "t") -> str:
    """A cluster name no other run uses (tests)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return stem + "".join(secrets.choice(alphabet) for _ in range(6))
