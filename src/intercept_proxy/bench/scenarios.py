"""The scenarios: one client namespace each, attached to the shared lab, with its proxy
processes started (pinned to the proxy core) and checked to judge like the others."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from intercept_proxy import netns, ports
from intercept_proxy.bench import configs
from intercept_proxy.identities import AGENT_UID
from intercept_proxy.lab import Lab
from intercept_proxy.lab.interceptor import Interceptor, InterceptorError
from intercept_proxy.netfilter.apply import apply as apply_rules
from intercept_proxy.netfilter.builder import render
from intercept_proxy.netfilter.config import CaptureConfig
from intercept_proxy.pki import CertificateAuthority
from intercept_proxy.pki.files import write_private, write_public
from intercept_proxy.policy.engine import builtin_rego
from intercept_proxy.policy.model import load_policy
from intercept_proxy.runtime.containers import as_user
from intercept_proxy.xds.envoy import envoy_command

CLIENT_UID = 12345
INTERCEPT = Path(sys.executable).with_name("intercept")
MITM_VENV = Path(os.environ.get("MITM_VENV", "/opt/intercept-bench/mitmproxy-venv"))
SQUID = Path("/usr/sbin/squid")
HEY = Path("/opt/intercept-tools/bin/hey")
CERTGEN = Path("/usr/lib/squid/security_file_certgen")
ALL = (
    "direct",
    "envoy-minimal",
    "envoy-only",
    "intercept",
    "intercept-agent",
    "intercept-extras",
    "intercept-signed",
    "mitmproxy",
    "squid",
    "gateway",
    "squid-proxy",
)
# Told to their clients as HTTPS_PROXY (measured with hey: wrk and h2load cannot use a proxy).
EXPLICIT = ("gateway", "squid-proxy")
PROXY_PORT = 15443  # envoy-only, squid, mitmproxy: a port of their own namespace
ENVOY_ONLY_ADMIN = 15000
READY_TIMEOUT = 60.0


class BenchError(RuntimeError):
    """A scenario that cannot start or does not judge as the others do."""


def pinned(core: int | None, argv: Sequence[str]) -> list[str]:
    """`argv` on one core (taskset execs, so the pid stays the program's)."""
    return ["taskset", "-c", str(core), *argv] if core is not None else list(argv)


def missing_tools(names: Sequence[str]) -> list[str]:
    """Why scenarios in `names` cannot run here (their competitor is not installed)."""
    problems = []
    if "mitmproxy" in names and not (MITM_VENV / "bin" / "mitmdump").exists():
        problems.append(f"mitmproxy: no {MITM_VENV}/bin/mitmdump (run scripts/install-bench-tools)")
    squids = [n for n in names if n.startswith("squid")]
    if squids and not (SQUID.exists() and CERTGEN.exists()):
        problems.append(
            f"{', '.join(squids)}: squid-openssl is not installed (run scripts/install-bench-tools)"
        )
    explicit = [n for n in names if n in EXPLICIT]
    if explicit and not HEY.exists():
        problems.append(f"{', '.join(explicit)}: no {HEY} (run make install)")
    return problems


def stop_groups(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each process's group, then SIGKILL to those still there after 5 s."""
    processes = list(processes)
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def logs_of(directory: Path) -> str:
    """The end of every log in `directory`, each under its name."""
    out = []
    for path in sorted(directory.glob("*.log")):
        out.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(out)


def wait_listening(ns: str, address: str, port: int, check_alive: Callable[[], None]) -> bool:
    """Whether something in `ns` listens on `address` (any, if empty) and `port` within
    READY_TIMEOUT, calling `check_alive` (which raises) meanwhile. Read from the socket table:
    a connection that was not redirected makes Squid's NAT lookup fail, and then its listener
    accepts nothing more."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        check_alive()
        listening = netns.run(ns, ["ss", "-Hltn", f"sport = :{port}"]).stdout
        if listening.strip() and address in listening:
            return True
        time.sleep(0.1)
    return False


class Scenario:
    """A client namespace and the proxy processes serving it."""

    name = ""
    judges = True  # refuses what the allowlist does not grant
    http2 = True  # offers HTTP/2 to the client (ALPN)
    # The explicit proxy the clients are told of (HTTPS_PROXY); None: they are captured.
    proxy: str | None = None

    def __init__(self, lab: Lab, ns: str, workdir: Path, proxy_core: int | None) -> None:
        self.lab = lab
        self.ns = ns
        self.dir = workdir / self.name
        self.proxy_core = proxy_core
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.client_ca = lab.ca_cert_path

    def start(self) -> None:
        self.dir.mkdir(mode=0o755)
        self.dir.chmod(0o755)
        netns.create(self.ns)
        self.lab.connect(self.ns)
        netns.set_nameservers(self.ns, self.lab.dns_servers)
        self._setup()

    def _setup(self) -> None:
        self._hosts_file()

    def _hosts_file(self) -> None:
        path = netns.NETNS_ETC_DIR / self.ns / "hosts"
        path.write_text(configs.hosts_file(len(self.lab.hosts) - 1))
        path.chmod(0o644)

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        log = (self.dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            netns.exec_argv(self.ns, pinned(self.proxy_core, argv)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own group: stopped with its helpers (Squid's)
            env=env,
        )
        log.close()

    def _redirect(self, port: int) -> None:
        result = netns.run(
            self.ns, ["iptables-restore"], input=configs.redirect_rules(CLIENT_UID, port)
        )
        if result.returncode != 0:
            raise BenchError(f"{self.name}: iptables-restore: {result.stderr.strip()}")

    def _wait_port(self, port: int) -> None:
        if not wait_listening(self.ns, "", port, self._check_alive):
            raise BenchError(f"{self.name}: nothing listens on {port} after {READY_TIMEOUT}s")

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise BenchError(
                    f"{self.name}: {name} exited with {process.returncode}:\n{self.logs()}"
                )

    def logs(self) -> str:
        return logs_of(self.dir)

    def check(self) -> None:
        """A read passes; a write is refused where the scenario judges requests."""
        status = self.curl("GET", f"https://{configs.HOST}/")
        if status != 200:
            raise BenchError(f"{self.name}: GET answered {status}, not 200:\n{self.logs()}")
        if self.judges:
            status = self.curl("POST", f"https://{configs.HOST}/")
            if status != 403:
                raise BenchError(f"{self.name}: POST answered {status}, not 403")
        if self.judges and self.proxy:
            # A name outside the allowlist: refused on its CONNECT (the gateway), or inside the
            # tunnel Squid bumps to show its refusal.
            answers = self._curl("GET", "https://outside.invalid/", "%{http_connect} %{http_code}")
            if "403" not in answers.split():
                raise BenchError(f"{self.name}: outside.invalid answered {answers}, not 403")

    def curl(self, method: str, url: str) -> int:
        return int(self._curl(method, url, "%{http_code}") or 0)

    def _curl(self, method: str, url: str, written: str) -> str:
        argv = ["curl", "-s", "-o", "/dev/null", "-w", written, "-X", method]
        argv += ["--cacert", str(self.client_ca), "--max-time", "20", *self.curl_proxy(), url]
        return netns.run(self.ns, as_user(CLIENT_UID, argv), timeout=30).stdout

    def curl_proxy(self) -> list[str]:
        return ["--proxy", self.proxy] if self.proxy else []

    def pids(self) -> dict[str, int]:
        """The proxy processes whose memory and CPU are reported (children included)."""
        return {name: p.pid for name, p in self.processes.items()}

    def envoy_stats(self) -> dict[str, Any]:
        return {}

    def stop(self) -> None:
        stop_groups(self.processes.values())
        # Whatever is left in the namespace (helpers that left the group) dies with it.
        netns.delete(self.ns)


class Direct(Scenario):
    name = "direct"
    judges = False
    # The upstream speaks HTTP/1.1 only, so that every proxy talks to it alike.
    http2 = False


class EnvoyOnly(Scenario):
    name = "envoy-only"
    judges = False
    minimal = False

    def __init__(self, *args: Any, ca: CertificateAuthority, ca_cert: Path) -> None:
        super().__init__(*args)
        self.ca = ca
        self.client_ca = ca_cert

    def _setup(self) -> None:
        self._hosts_file()
        leaf = self.ca.issue([configs.HOST, f"*.{configs.HOST}"])
        cert, key = self.dir / "leaf.pem", self.dir / "leaf.key"
        write_public(cert, leaf.cert_pem)
        write_private(key, leaf.key_pem)
        bootstrap = configs.envoy_only_bootstrap(
            port=PROXY_PORT,
            admin_port=ENVOY_ONLY_ADMIN,
            cert=cert,
            key=key,
            upstream_ca=self.lab.ca_cert_path,
            minimal=self.minimal,
        )
        config = self.dir / "envoy.json"
        config.write_text(json.dumps(bootstrap, indent=2))
        self._spawn("envoy", envoy_command(config, ["--concurrency", "1", "-l", "warning"]))
        self._wait_port(PROXY_PORT)
        self._redirect(PROXY_PORT)


class EnvoyMinimal(EnvoyOnly):
    name = "envoy-minimal"
    minimal = True


class _MintingProxy(Scenario):
    """A competitor that mints its leaves from the bench's own CA (certificate and key)."""

    def __init__(self, *args: Any, ca_files: tuple[Path, Path]) -> None:
        super().__init__(*args)
        self.ca_cert, self.ca_key = ca_files
        self.client_ca = self.ca_cert


class Squid(_MintingProxy):
    name = "squid"
    http2 = False

    def _setup(self) -> None:
        self._hosts_file()
        db = self.dir / "ssl_db"
        subprocess.run([str(CERTGEN), "-c", "-s", str(db), "-M", "16MB"], check=True)
        key = self.dir / "ca.key"  # Squid reads it again as `proxy`, after dropping root
        shutil.copyfile(self.ca_key, key)
        for path in (self.dir, db, *db.rglob("*"), key):
            shutil.chown(path, "proxy", "proxy")
        conf = self.dir / "squid.conf"
        conf.write_text(
            configs.squid_conf(
                port=PROXY_PORT,
                state_dir=self.dir,
                ca_cert=self.ca_cert,
                ca_key=key,
                upstream_ca=self.lab.ca_cert_path,
                dns_servers=self.lab.dns_servers,
                explicit=self.proxy is not None,
            )
        )
        self._spawn("squid", [str(SQUID), "-N", "-f", str(conf)])
        self._wait_port(PROXY_PORT)
        if self.proxy is None:
            self._redirect(PROXY_PORT)


class SquidProxy(Squid):
    """Squid as the explicit ssl-bump proxy clients are told of, as the gateway is."""

    name = "squid-proxy"
    proxy = f"http://127.0.0.1:{PROXY_PORT}"


class Mitmproxy(_MintingProxy):
    name = "mitmproxy"

    def _setup(self) -> None:
        self._hosts_file()
        confdir = self.dir / "conf"
        confdir.mkdir()
        # mitmproxy's CA file is key and certificate in one; it signs every leaf with that key.
        write_private(
            confdir / "mitmproxy-ca.pem", self.ca_key.read_bytes() + self.ca_cert.read_bytes()
        )
        policy_path = self.dir / "policy.yaml"
        policy_path.write_text(configs.policy_yaml())
        rego, data = self.dir / "intercept.rego", self.dir / "data.json"
        rego.write_text(builtin_rego())
        data.write_text(json.dumps(load_policy(policy_path).to_data()))
        addon = self.dir / "addon.py"
        addon.write_text(configs.mitm_addon(rego, data))
        argv = [
            str(MITM_VENV / "bin" / "mitmdump"),
            "--mode", f"transparent@127.0.0.1:{PROXY_PORT}",
            "--set", f"confdir={confdir}",
            "--set", f"ssl_verify_upstream_trusted_ca={self.lab.ca_cert_path}",
            "--set", "stream_large_bodies=1m",  # else the 10 MB body is buffered whole
            "--set", "termlog_verbosity=error",
            "--set", "flow_detail=0",
            "-s", str(addon),
        ]  # fmt: skip
        self._spawn("mitmdump", argv, env={"HOME": str(self.dir), "PATH": os.environ["PATH"]})
        self._wait_port(PROXY_PORT)
        self._redirect(PROXY_PORT)


class Intercept(Scenario):
    """The agent and Envoy as in a pod, the client captured by proxy-init's rules."""

    name = "intercept"
    judged_by = "envoy"
    extras = False  # a credential sent, a rate limit counted
    signed = False  # and AWS signing
    gateway_port: int | None = None  # Envoy's explicit-proxy listener

    interceptor: Interceptor | None = None

    def _setup(self) -> None:
        # No hosts file: the client resolves through the agent's DNS sinkhole, as in a pod.
        icp = self.interceptor = Interceptor(
            self.ns,
            configs.policy_yaml(),
            self.lab.ca_cert_path,
            self.lab.dns_servers,
            log_level="warning",
            core=self.proxy_core,
            envoy_args=("-l", "warning", "--concurrency", "1"),
            agent_env={**os.environ, **configs.BENCH_AWS_KEYS} if self.signed else None,
            gateway_port=self.gateway_port,
        )
        if self.judged_by == "agent":
            icp.write_policy(
                configs.policy_yaml("custom.rego"), {"custom.rego": configs.CUSTOM_REGO}
            )
        if self.extras:
            secret = icp.dir / "bench-key"
            secret.write_text(configs.BENCH_SECRET)
            secret.chmod(0o600)
            os.chown(secret, AGENT_UID, AGENT_UID)
            icp.write_policy(configs.policy_yaml(secret_file=secret, signed=self.signed))
        self.client_ca = icp.ca_cert
        icp.start_agent()
        icp.start_envoy()
        assert icp.agent is not None and icp.envoy is not None
        self.processes |= {"agent": icp.agent, "envoy": icp.envoy}
        if self.proxy is None:
            apply_rules(render(CaptureConfig()), self.ns)
        try:
            icp.wait_ready(READY_TIMEOUT, judged_by=self.judged_by)
        except InterceptorError as e:
            raise BenchError(f"{self.name}: {e}") from None

    def logs(self) -> str:
        return self.interceptor.logs() if self.interceptor is not None else ""

    def envoy_stats(self) -> dict[str, Any]:
        return self.interceptor.envoy_stats() if self.interceptor is not None else {}

    def stop(self) -> None:
        if self.interceptor is not None:
            self.interceptor.close()
        self.processes.clear()
        super().stop()


class InterceptAgent(Intercept):
    name = "intercept-agent"
    judged_by = "agent"


class InterceptExtras(Intercept):
    name = "intercept-extras"
    extras = True


class InterceptSigned(InterceptExtras):
    name = "intercept-signed"
    signed = True


class Gateway(Intercept):
    """The same agent and Envoy serving the explicit proxy, as the chart's gateway replicas do
    with `gateway.podPolicy: none`: clients connect to Envoy's gateway listener (`intercept
    gateway` puts a relay before it)."""

    name = "gateway"
    proxy = f"http://127.0.0.1:{ports.ENVOY_GATEWAY}"
    gateway_port = ports.ENVOY_GATEWAY


class Upstream:
    """nginx in the lab's namespace, serving every bench name on the bench address."""

    def __init__(self, lab: Lab, workdir: Path, core: int | None) -> None:
        self.lab = lab
        self.dir = workdir / "upstream"
        self.core = core
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, names: Sequence[str]) -> None:
        self.dir.mkdir(mode=0o755)
        body, download = self.dir / "body", self.dir / "download"
        body.write_bytes(b"x" * configs.BODY_BYTES)
        with download.open("wb") as f:
            f.truncate(configs.DOWNLOAD_BYTES)
        conf = self.dir / "nginx.conf"
        leaves = {name: self.lab.leaf(name) for name in names}
        conf.write_text(
            configs.nginx_conf(state_dir=self.dir, leaves=leaves, body=body, download=download)
        )
        argv = ["nginx", "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(conf)]
        log = (self.dir / "nginx.log").open("ab")
        self.process = subprocess.Popen(
            netns.exec_argv(self.lab.netns, pinned(self.core, argv)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        if not wait_listening(self.lab.netns, configs.HOST_IPV4, 443, self._check_alive):
            raise BenchError(f"nginx does not listen after {READY_TIMEOUT}s:\n{self.logs()}")

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise BenchError(f"nginx exited with {self.process.returncode}:\n{self.logs()}")

    def logs(self) -> str:
        return logs_of(self.dir)

    def stop(self) -> None:
        if self.process is not None:
            stop_groups([self.process])
