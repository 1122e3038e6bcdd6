"""The real interceptor in a test namespace: the agent (UID 102) and Envoy (UID 101) started
from the installed `intercept`, and curl (as an unprivileged workload UID) aimed at Envoy's
listeners with explicit addressing (transparent redirection is the sandbox's job)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from intercept_proxy import netns, ports
from intercept_proxy.runtime.containers import as_user
from tests.decisions import Record, decisions

T = TypeVar("T")

ENVOY_UID = 101
AGENT_UID = 102
WORKLOAD_UID = 12345
INTERCEPT = Path(sys.executable).with_name("intercept")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    stderr: str

    def json(self) -> Any:
        return json.loads(self.body)


class Interceptor:
    def __init__(self, ns: str, policy: str, upstream_ca: Path, dns: tuple[str, ...]) -> None:
        self.ns = ns
        # Not pytest's tmp_path: it is 0700 root, and the sidecars run as other users.
        self.dir = Path(tempfile.mkdtemp(prefix="intercept-it-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.policy_path = self.dir / "policy.yaml"
        self.upstream_ca = self.dir / "upstream-ca.pem"
        self.set_upstream_ca(upstream_ca.read_bytes())
        self.ca_dir = self.dir / "ca"
        self.ca_dir.mkdir()
        os.chown(self.ca_dir, AGENT_UID, AGENT_UID)
        self.ca_cert = self.ca_dir / "ca.pem"
        self.decision_log = self.dir / "decisions.log"  # Envoy writes it
        self.decision_log.touch()
        os.chown(self.decision_log, ENVOY_UID, ENVOY_UID)
        self.write_policy(policy)
        self.dns = dns
        self.agent: subprocess.Popen[bytes] | None = None
        self.envoy: subprocess.Popen[bytes] | None = None

    def write_policy(self, text: str) -> None:
        self._replace(self.policy_path, text.encode())

    def set_upstream_ca(self, pem: bytes) -> None:
        self._replace(self.upstream_ca, pem)

    @contextlib.contextmanager
    def upstream_ca_replaced(self, pem: bytes) -> Iterator[None]:
        """The upstream CA bundle replaced by `pem`, the original back afterwards."""
        good = self.upstream_ca.read_bytes()
        self.set_upstream_ca(pem)
        try:
            yield
        finally:
            self.set_upstream_ca(good)

    def until(self, condition: Callable[[], T], timeout: float = 10) -> T:
        """`condition()` once it is true; failing with the logs after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.1)
        return value

    def _replace(self, path: Path, data: bytes) -> None:
        """Atomically, as Kubernetes swaps a volume: the agent never reads a half-written file."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    # -- processes ----------------------------------------------------------------------------

    def start_agent(self) -> None:
        argv = [
            str(INTERCEPT), "--log-level", os.environ.get("AGENT_LOG_LEVEL", "info"),
            "agent", "run",
            "--policy", str(self.policy_path),
            "--ca-cert", str(self.ca_cert),
            "--ca-key", str(self.ca_dir / "ca.key"),
            "--upstream-ca", str(self.upstream_ca),
            "--decision-log", str(self.decision_log),
            "--cert-cache-size", "200",
        ]  # fmt: skip
        for server in self.dns:
            argv += ["--dns-resolver", server]
        log = (self.dir / "agent.log").open("ab")
        self.agent = subprocess.Popen(
            netns.exec_argv(self.ns, as_user(AGENT_UID, argv)), stdout=log, stderr=log
        )

    def start_envoy(self) -> None:
        # Through the CLI the docs show: it execs Envoy, so the pid stays Envoy's.
        argv = [
            str(INTERCEPT),
            "envoy",
            "run",
            "--node-id",
            f"test-{self.ns}",
            "--",
            "-l",
            "warning",
        ]
        log = (self.dir / "envoy.log").open("ab")
        self.envoy = subprocess.Popen(
            netns.exec_argv(self.ns, as_user(ENVOY_UID, argv)), stdout=log, stderr=log
        )

    def start(self) -> Interceptor:
        self.start_agent()
        self.start_envoy()
        self.wait_ready()
        return self

    def wait_ready(
        self, timeout: float = 30.0, judged_by: str = "envoy", revision: str | None = None
    ) -> None:
        """Ready when Envoy has accepted the agent's whole configuration, with the policy
        (of `revision`, if given) compiled into its routes (judged_by "envoy") unless told
        otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc, name in ((self.agent, "agent"), (self.envoy, "envoy")):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.logs()}")
            readiness = self.readiness()
            if (
                readiness.get("ready")
                and readiness.get("judged_by") == judged_by
                and revision in (None, readiness.get("policy_revision"))
            ):
                return
            time.sleep(0.1)
        raise TimeoutError(f"interceptor not ready after {timeout}s:\n{self.logs()}")

    def readiness(self) -> dict[str, Any]:
        result = netns.run(
            self.ns, ["curl", "-s", f"http://127.0.0.1:{ports.AGENT_HTTP}/readyz"], timeout=5
        )
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError:
            return {}

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{ports.AGENT_METRICS}/metrics"
        return netns.run(self.ns, ["curl", "-sf", url], timeout=5).stdout

    def metric(self, name: str, labels: str = "") -> float:
        prefix = f"{name}{{{labels}}} " if labels else f"{name} "
        for line in self.metrics().splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return 0.0

    def stop_process(self, proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        self.stop_process(self.envoy)
        self.stop_process(self.agent)

    def close(self) -> None:
        """Stop both processes and remove every file of this interceptor."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        out = []
        for name in ("agent.log", "envoy.log"):
            path = self.dir / name
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"--- {name} ---\n{text[-3000:]}")
        return "\n".join(out)

    def decisions(
        self, match: Callable[[Record], bool] | None = None, count: int = 1
    ) -> list[Record]:
        return decisions(self.decision_log, match, count)

    # -- the workload's side -------------------------------------------------------------------

    def curl(self, method: str, url: str, *args: str, timeout: float = 30.0) -> Response:
        """curl as the workload, every host:port sent to Envoy's TLS or plain listener."""
        port = ports.ENVOY_TLS if url.startswith("https:") else ports.ENVOY_HTTP
        argv = [
            "curl", "-sS", "-X", method, "--cacert", str(self.ca_cert),
            "--connect-to", f"::127.0.0.1:{port}",
            "--write-out", "%{stderr}\n@status %{http_code}\n@headers %{header_json}\n",
            "--max-time", str(timeout),
            *args, url,
        ]  # fmt: skip
        result = subprocess.run(
            netns.exec_argv(self.ns, as_user(WORKLOAD_UID, argv)),
            capture_output=True,
            timeout=timeout + 5,
            check=False,
        )
        stderr = result.stderr.decode(errors="replace")
        # The write-out comes last: "@status N", then "@headers" and curl's JSON of the headers.
        head, _, header_json = stderr.rpartition("\n@headers ")
        status_text = head.rpartition("@status ")[2]
        status = int(status_text) if status_text.isdigit() else 0
        raw = json.loads(header_json) if header_json.strip() else {}
        headers = {k.lower(): v[-1] for k, v in raw.items()}
        return Response(status, headers, result.stdout, stderr)
