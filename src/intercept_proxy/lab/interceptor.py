"""The interceptor's agent and Envoy started by hand in a network namespace, without a pod: for
the tests and the bench. They run as an injected pod runs them: as their own users, the agent
with the command line the injector writes (`agent_command`), Envoy through `intercept envoy run`
(it execs Envoy, so the pid stays Envoy's). Capturing a client's traffic is left to the caller
(proxy-init's rules, or a client that addresses the listeners itself)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from intercept_proxy import netns, ports
from intercept_proxy.agent.settings import agent_command
from intercept_proxy.identities import AGENT_UID, ENVOY_UID
from intercept_proxy.lab.addresses import LAB_RANGES
from intercept_proxy.pki.ca import CertificateAuthority
from intercept_proxy.policy.model import POLICY_FILE_NAME
from intercept_proxy.runtime.containers import as_user

INTERCEPT = Path(sys.executable).with_name("intercept")


def _append(path: Path) -> IO[bytes]:
    """`path` opened to append (made if missing), never through a symlink: the caller is root,
    and someone else may have left one where its file goes."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
    return os.fdopen(os.open(path, flags, 0o644), "ab")


class InterceptorError(RuntimeError):
    """A sidecar exited, or did not become ready; the message holds their logs."""


class Interceptor:
    """One agent and one Envoy in `ns`, their files in a directory of their own under /tmp (not
    a 0700 one: the sidecars run as other users)."""

    def __init__(
        self,
        ns: str,
        policy: str,
        upstream_ca: Path,
        dns: Sequence[str],
        *,
        log_level: str = "info",
        core: int | None = None,
        envoy_args: Sequence[str] = (),
        agent_env: Mapping[str, str] | None = None,
        decision_log: Path | None = None,
        ca: CertificateAuthority | None = None,
        modules: Mapping[str, str] | None = None,
        control: bool = False,
        **agent: Any,
    ) -> None:
        """`core`: both pinned to that CPU; `agent_env`: the agent's environment (its secrets'
        variables; Envoy's is then PATH alone), else ours; `decision_log`: a file of the
        caller's that Envoy's output of decisions is appended to (else one of this directory,
        which Envoy writes); `ca`: the CA the agent signs with (else one it makes); `modules`:
        the custom modules the policy names, by file name; `control`: the agent serves pending
        approvals on `control_socket` (else it holds none); `agent`: more of the agent's
        settings (by default, its upstreams may be in the lab's ranges)."""
        self.ns = ns
        # Named after the namespace: a stale one's clean-up finds it (runtime/pod.py).
        self.dir = Path(tempfile.mkdtemp(prefix=f"intercept-sidecars-{ns}-", dir="/tmp"))
        try:
            self._prepare(policy, modules, upstream_ca, decision_log, ca)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self._envoy_stdout = decision_log
        self.control_socket = self.dir / "control" / "agent.sock" if control else None
        if self.control_socket is not None:  # the agent's alone (and root's)
            self.control_socket.parent.mkdir(mode=0o700)
            os.chown(self.control_socket.parent, AGENT_UID, AGENT_UID)
            agent = {**agent, "control_socket": self.control_socket}
        self._agent_argv = [
            str(INTERCEPT), "--log-level", log_level,
            *agent_command(
                policy=self.policy_path,
                ca_cert=self.ca_cert,
                ca_key=self.ca_dir / "ca.key",
                upstream_ca=self.upstream_ca,
                # None: Envoy's stdout, which is the caller's file.
                decision_log_path=None if decision_log else str(self.decision_log),
                dns_resolvers=tuple(dns),
                **{"upstream_private_ranges": LAB_RANGES, **agent},
            )[1:],
        ]  # fmt: skip
        gateway = ["--gateway"] if agent.get("gateway_port") is not None else []
        self._envoy_argv = [
            str(INTERCEPT), "envoy", "run", "--node-id", f"sidecars-{ns}", *gateway,
            "--", *envoy_args,
        ]  # fmt: skip
        self._core = core
        self._agent_env = agent_env
        self.agent: subprocess.Popen[bytes] | None = None
        self.envoy: subprocess.Popen[bytes] | None = None

    # -- files ------------------------------------------------------------------------------

    def _prepare(
        self,
        policy: str,
        modules: Mapping[str, str] | None,
        upstream_ca: Path,
        decision_log: Path | None,
        ca: CertificateAuthority | None,
    ) -> None:
        self.dir.chmod(0o755)
        # A link to a directory of the version in force (`write_policy`): the policy's own
        # files, the custom modules beside it named by the policy's author.
        self.policy_path = self.dir / "policy" / POLICY_FILE_NAME
        self._versions = itertools.count()
        self.upstream_ca = self.dir / "upstream-ca.pem"
        self.ca_dir = self.dir / "ca"
        self.ca_cert = self.ca_dir / "ca.pem"
        self.write_policy(policy, modules)
        self.set_upstream_ca(upstream_ca.read_bytes())
        self.ca_dir.mkdir()
        if ca is not None:
            ca.write(self.ca_cert, self.ca_dir / "ca.key")
        for path in (self.ca_dir, *self.ca_dir.iterdir()):
            os.chown(path, AGENT_UID, AGENT_UID)
        self.decision_log = decision_log or self.dir / "decisions.log"
        if decision_log is None:  # Envoy writes it
            self.decision_log.touch()
            os.chown(self.decision_log, ENVOY_UID, ENVOY_UID)

    def write_policy(self, text: str, modules: Mapping[str, str] | None = None) -> None:
        """The policy, with the custom `modules` it names beside it (by file name), replaced
        all at once, as Kubernetes swaps a ConfigMap's files: written into a directory of their
        own, which the link `policy` then names. The version before stays (an agent may be
        reading it); older ones go."""
        version = self.dir / f".policy-{next(self._versions)}"
        version.mkdir(mode=0o755)
        for name, data in {**(modules or {}), POLICY_FILE_NAME: text}.items():
            (version / name).write_text(data)
        link = self.dir / ".policy-link"
        link.unlink(missing_ok=True)
        link.symlink_to(version.name)
        previous = self.policy_path.parent.resolve() if self.policy_path.parent.exists() else None
        link.replace(self.policy_path.parent)
        for old in self.dir.glob(".policy-*"):
            if old.is_dir() and not old.is_symlink() and old not in (version, previous):
                shutil.rmtree(old)

    def set_upstream_ca(self, pem: bytes) -> None:
        self._replace(self.upstream_ca, pem)

    def _replace(self, path: Path, data: bytes) -> None:
        """Atomically, as Kubernetes swaps a volume: the agent never reads a half-written file."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    # -- processes --------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        uid: int,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        stdout: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        pinned = ["taskset", "-c", str(self._core)] if self._core is not None else []
        with (
            (self.dir / f"{name}.log").open("ab") as log,
            _append(stdout) if stdout else contextlib.nullcontext(log) as out,
        ):
            return subprocess.Popen(
                netns.exec_argv(self.ns, [*pinned, *as_user(uid, argv)]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C is for the caller alone
            )

    def start_agent(self) -> None:
        self.agent = self._spawn("agent", AGENT_UID, self._agent_argv, self._agent_env)

    def start_envoy(self) -> None:
        # Where the caller chose the agent's environment, Envoy gets none of the caller's.
        env = None if self._agent_env is None else {"PATH": os.environ.get("PATH", os.defpath)}
        self.envoy = self._spawn("envoy", ENVOY_UID, self._envoy_argv, env, self._envoy_stdout)

    def start(self, judged_by: str = "envoy") -> Interceptor:
        self.start_agent()
        self.start_envoy()
        self.wait_ready(judged_by=judged_by)
        return self

    def check_alive(self) -> None:
        for proc, name in ((self.agent, "agent"), (self.envoy, "envoy")):
            if proc is not None and proc.poll() is not None:
                raise InterceptorError(f"{name} exited {proc.returncode}:\n{self.logs()}")

    def wait_ready(
        self, timeout: float = 30.0, judged_by: str = "envoy", revision: str | None = None
    ) -> None:
        """Ready when Envoy has accepted the agent's whole configuration, with the policy
        (of `revision`, if given) compiled into its routes (judged_by "envoy") unless told
        otherwise."""
        deadline = time.monotonic() + timeout
        readiness: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            readiness = self.readiness()
            if (
                readiness.get("ready")
                and readiness.get("judged_by") == judged_by
                and revision in (None, readiness.get("policy_revision"))
            ):
                return
            time.sleep(0.1)
        raise InterceptorError(f"not ready after {timeout}s: {readiness}\n{self.logs()}")

    def sidecar_get(self, port: int, path: str) -> str:
        """A GET to a sidecar's own port, as the agent's user (proxy-init's rules, where there
        are some, close those ports to every other UID)."""
        argv = ["curl", "-s", f"http://127.0.0.1:{port}{path}"]
        return netns.run(self.ns, as_user(AGENT_UID, argv), timeout=10).stdout

    @property
    def agent_log(self) -> Path:
        return self.dir / "agent.log"

    def readiness(self) -> dict[str, Any]:
        try:
            readiness: dict[str, Any] = json.loads(self.sidecar_get(ports.AGENT_HTTP, "/readyz"))
        except json.JSONDecodeError:
            return {}
        return readiness

    def metrics(self) -> str:
        return self.sidecar_get(ports.AGENT_METRICS, "/metrics")

    def metric(self, name: str, labels: str = "") -> float:
        prefix = f"{name}{{{labels}}} " if labels else f"{name} "
        for line in self.metrics().splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return 0.0

    def envoy_stats(self, name_filter: str = "") -> dict[str, Any]:
        query = f"/stats?format=json&filter={name_filter}" if name_filter else "/stats?format=json"
        text = self.sidecar_get(ports.ENVOY_ADMIN, query)
        stats: dict[str, Any] = json.loads(text) if text else {}
        return stats

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
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace")
                out.append(f"--- {name} ---\n{text[-3000:]}")
        return "\n".join(out)
