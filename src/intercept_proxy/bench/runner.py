"""Run the scenarios interleaved over several rounds and collect their figures.

Layout on a machine with two or more cores: the load generators and the upstream (nginx) share
the first core, every proxy process the second, so each proxy gets one whole core and they all
face the same client and upstream. With one core, nothing is pinned.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from intercept_proxy import netns
from intercept_proxy.bench import configs, results
from intercept_proxy.bench.scenarios import (
    ALL,
    CLIENT_UID,
    HEY,
    MITM_VENV,
    SQUID,
    BenchError,
    Direct,
    EnvoyMinimal,
    EnvoyOnly,
    Gateway,
    Intercept,
    InterceptAgent,
    InterceptExtras,
    InterceptSigned,
    Mitmproxy,
    Scenario,
    Squid,
    SquidProxy,
    Upstream,
    pinned,
)
from intercept_proxy.lab import Lab, LabSpec
from intercept_proxy.pki import CertificateAuthority
from intercept_proxy.pki.files import write_private, write_public
from intercept_proxy.runtime.containers import as_user
from intercept_proxy.xds.envoy import envoy_binary

AUTHZ_HISTOGRAM = "cluster.intercept_authz.upstream_rq_time"
AUTHZ_COUNTER = "cluster.intercept_authz.upstream_rq_total"
RATE_TOLERANCE = 0.95
# A core this busy during a closed-loop run was the limit: if it is the client's, the rate is.
SATURATED_PERCENT = 95.0
MAX_ERROR_SHARE = 0.01
RSS_SAMPLE_SECONDS = 0.5
Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    duration: float = 7.0
    rounds: int = 3
    scenarios: tuple[str, ...] = ALL
    connections: int = 16  # keep-alive run
    rate: int = 100  # fixed-rate latency run, one connection: below every proxy's saturation
    half_saturation_clients: int = 10
    new_connections: int = 200
    new_host_samples: int = 2
    warm_up: float = 1.0
    json_name: str = "performance.json"


@dataclass(frozen=True)
class Layout:
    client_core: int | None
    proxy_core: int | None

    @classmethod
    def for_machine(cls) -> Layout:
        cores = sorted(os.sched_getaffinity(0))
        return cls(cores[0], cores[1]) if len(cores) >= 2 else cls(None, None)

    def describe(self) -> dict[str, str]:
        def where(core: int | None) -> str:
            return f"CPU {core}" if core is not None else "not pinned"

        return {
            "load generators (wrk, h2load, hey, curl)": where(self.client_core),
            "upstream (nginx, one worker)": where(self.client_core),
            "proxy processes (Envoy, agent, Squid and helpers, mitmdump)": where(self.proxy_core),
        }


class Bench:
    def __init__(self, settings: Settings, log: Log) -> None:
        self.settings = settings
        self.log = log
        self.layout = Layout.for_machine()
        self.prefix = netns.unique_prefix("ipb")
        self.dir = Path(tempfile.mkdtemp(prefix="intercept-bench-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.client_dir = self.dir / "client"  # the client's h2load logs
        self.client_dir.mkdir()
        os.chown(self.client_dir, CLIENT_UID, CLIENT_UID)
        self.new_hosts = len(settings.scenarios) * settings.rounds * settings.new_host_samples
        self.next_new_host = 0
        self.flags: list[str] = []  # of the scenario being measured
        self.lab: Lab | None = None
        self.upstream: Upstream | None = None
        self.scenarios: dict[str, Scenario] = {}

    # -- life cycle ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        machine = self.machine()
        try:
            self._start()
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in self.scenarios}
            for index in range(self.settings.rounds):
                self._round(index, rounds)
            scenarios = {name: results.aggregate(rounds[name]) for name in self.scenarios}
            for name, scenario in self.scenarios.items():
                scenarios[name].update(self._authz(scenario))
            # Anything else running here shows in the load: the figures are shared-machine ones.
            machine["load_average_at_end"] = _load_average()
        finally:
            self.close()
        return {
            "machine": machine,
            "scenarios": scenarios,
            "ratios": results.ratios(scenarios),
        }

    def _start(self) -> None:
        spec = LabSpec.from_dict(configs.lab_spec(self.new_hosts), source="<bench>")
        self.log(f"lab {self.prefix}: starting ({len(spec.hosts)} names)")
        self.lab = Lab(spec, prefix=self.prefix, state_dir=self.dir / "lab").start()
        if self.layout.client_core is not None:
            # Every thread of the upstream (taskset -a), which is not ours to start pinned.
            subprocess.run(
                ["taskset", "-a", "-p", "-c", str(self.layout.client_core), str(self.lab.pid)],
                check=True,
                capture_output=True,
            )
        self.upstream = Upstream(self.lab, self.dir, self.layout.client_core)
        self.upstream.start(configs.bench_names(self.new_hosts))
        ca = CertificateAuthority.generate("intercept bench proxy CA")
        ca_cert, ca_key = self.dir / "proxy-ca.pem", self.dir / "proxy-ca.key"
        write_public(ca_cert, ca.cert_pem)
        write_private(ca_key, ca.key_pem())
        for name in self.settings.scenarios:
            scenario = self._scenario(name, ca, (ca_cert, ca_key))
            self.scenarios[name] = scenario
            self.log(f"{name}: starting")
            scenario.start()
            scenario.check()

    def _scenario(
        self, name: str, ca: CertificateAuthority, ca_files: tuple[Path, Path]
    ) -> Scenario:
        assert self.lab is not None
        args = (self.lab, f"{self.prefix}-{name}", self.dir, self.layout.proxy_core)
        if name in ("envoy-only", "envoy-minimal"):
            kind = EnvoyOnly if name == "envoy-only" else EnvoyMinimal
            return kind(*args, ca=ca, ca_cert=ca_files[0])
        if name == "mitmproxy":
            return Mitmproxy(*args, ca_files=ca_files)
        if name in ("squid", "squid-proxy"):
            return (Squid if name == "squid" else SquidProxy)(*args, ca_files=ca_files)
        kinds = {
            "direct": Direct,
            "intercept": Intercept,
            "intercept-agent": InterceptAgent,
            "intercept-extras": InterceptExtras,
            "intercept-signed": InterceptSigned,
            "gateway": Gateway,
        }
        return kinds[name](*args)

    def close(self) -> None:
        """Stop everything this run started, whatever state it is in."""
        for scenario in self.scenarios.values():
            with contextlib.suppress(Exception):
                scenario.stop()
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                self.upstream.stop()
        if self.lab is not None:
            with contextlib.suppress(Exception):
                self.lab.stop()
        netns.cleanup(self.prefix)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- one round ---------------------------------------------------------------------------

    def _round(self, index: int, rounds: dict[str, list[dict[str, Any]]]) -> None:
        names = list(self.scenarios)
        # Each round starts one scenario later, so no scenario always follows the same one.
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            self.log(f"round {index + 1}/{self.settings.rounds}: {name}")
            rounds[name].append(self._measure(self.scenarios[name], index))
        if "intercept" in rounds and rounds["intercept"][-1].get("rps"):
            half = rounds["intercept"][-1]["rps"] / 2
            for name in results.HALF_SATURATION:
                if name in self.scenarios:
                    self.flags = []
                    clients = self.settings.half_saturation_clients
                    figures = self._latency(self.scenarios[name], half, index, clients)
                    rounds[name][-1]["p99_half_sat_ms"] = figures.get("p99_ms")
                    rounds[name][-1]["flags"] += [f"round {index + 1}: {f}" for f in self.flags]

    def _measure(self, scenario: Scenario, index: int) -> dict[str, Any]:
        scenario.check()
        self.flags = []
        figures: dict[str, Any] = {"rss_idle_mb": self._rss(scenario)}
        figures.update(self._keepalive(scenario, http2=False))
        if scenario.http2:
            figures.update(self._keepalive(scenario, http2=True))
        figures.update(self._latency(scenario, self.settings.rate, index, clients=1))
        figures["new_conn_rps"] = self._new_connections(scenario)
        figures["first_new_host_ms"] = self._first_new_host(scenario)
        figures["mb_per_s"] = self._download(scenario)
        figures["flags"] = [f"round {index + 1}: {flag}" for flag in self.flags]
        return figures

    # -- the measurements ----------------------------------------------------------------------

    def _client(self, scenario: Scenario, argv: Sequence[str], timeout: float) -> str:
        command = pinned(self.layout.client_core, as_user(CLIENT_UID, argv))
        result = netns.run(scenario.ns, command, timeout=timeout)
        if result.returncode != 0:
            raise BenchError(
                f"{scenario.name}: {' '.join(argv)} exited {result.returncode}:\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        return result.stdout

    def _h2load(
        self, scenario: Scenario, args: Sequence[str], url: str, *, http2: bool = False
    ) -> results.H2load:
        argv = ["h2load", *([] if http2 else ["--h1"]), "-t1", "-m1", *args, url]
        timeout = self.settings.duration + self.settings.warm_up + 120
        output = self._client(scenario, argv, timeout)
        summary = results.parse_h2load(output)
        # Not done - 2xx: h2load counts its warm-up in one and not the other.
        errors = summary.failed + summary.status_other
        self._judge_errors(
            scenario, argv, output, errors, summary.done, summary.status_2xx,
            f"{' '.join(args)}; {url}",
        )  # fmt: skip
        return summary

    def _judge_errors(
        self,
        scenario: Scenario,
        argv: Sequence[str],
        output: str,
        errors: int,
        total: int,
        succeeded: int,
        what: str,
    ) -> None:
        """A few errors under load are a figure of the proxy (flagged); many mean it is broken."""
        if succeeded == 0 or errors > MAX_ERROR_SHARE * total:
            raise BenchError(f"{scenario.name}: {' '.join(argv)}: too many errors:\n{output}")
        if errors:
            self.flags.append(f"{errors} of {total} answers not 2xx ({what})")

    def _duration_args(self) -> list[str]:
        return [f"-D{self.settings.duration:g}", f"--warm-up-time={self.settings.warm_up:g}"]

    def _wrk(self, scenario: Scenario) -> results.Wrk:
        argv = ["wrk", "-t1", f"-c{self.settings.connections}"]
        argv += [f"-d{self.settings.duration:g}s", _url(configs.HOST)]
        output = self._client(scenario, argv, self.settings.duration + 120)
        summary = results.parse_wrk(output)
        total = summary.requests
        self._judge_errors(scenario, argv, output, summary.errors, total, total, "wrk")
        return summary

    def _keepalive(self, scenario: Scenario, *, http2: bool) -> dict[str, Any]:
        """Closed loop over keep-alive connections: HTTP/1.1 with wrk, HTTP/2 with h2load (one
        stream in flight per connection)."""
        pids = scenario.pids()
        cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        cores_before = _core_ticks()
        served: float  # requests the proxy handled, its warm-up's too
        with _rss_peaks(pids) as peaks:
            if scenario.proxy:
                n = int(self.settings.duration * results.HEY_REQUESTS_PER_SECOND)
                args = ["-n", str(n), "-c", str(self.settings.connections)]
                hey = self._hey(scenario, [*args, *(["-h2"] if http2 else [])], _url(configs.HOST))
                rps, served = hey.rps, hey.answered
            elif http2:
                args = [f"-c{self.settings.connections}", *self._duration_args()]
                h2 = self._h2load(scenario, args, _url(configs.HOST), http2=True)
                # Warm-up requests cost CPU too: count them (they are not in `done`).
                rps, served = h2.rps, h2.rps * (self.settings.duration + self.settings.warm_up)
            else:
                wrk = self._wrk(scenario)
                rps, served = wrk.rps, wrk.requests
        busy = _busy_percent(cores_before, _core_ticks())
        suffix = "_h2" if http2 else ""
        cpu_ms = {
            name: (_cpu_seconds(pid) - cpu_before[name]) * 1000 / served
            for name, pid in pids.items()
        }
        figures: dict[str, Any] = {f"rps{suffix}": rps}
        # Which core saturated: tells whether a rate is the proxy's or the client's limit.
        roles = {"client core": self.layout.client_core, "proxy core": self.layout.proxy_core}
        busy_roles = {role: busy[core] for role, core in roles.items() if core is not None}
        if busy_roles.get("client core", 0) >= SATURATED_PERCENT:
            self.flags.append(
                f"keep-alive{' HTTP/2' if http2 else ''}: the client core was "
                f"{busy_roles['client core']:.0f} % busy, so the rate is the client's"
            )
        if not http2:
            figures |= {"rss_mb": dict(peaks), "busy_percent": busy_roles}
        if cpu_ms:
            figures[f"cpu_ms_per_req{suffix}"] = sum(cpu_ms.values())
            figures[f"cpu_ms_per_req{suffix}_by_process"] = cpu_ms
        return figures

    def _latency(
        self, scenario: Scenario, rate: float, index: int, clients: int
    ) -> dict[str, float]:
        """At a fixed rate: each of `clients` connections sends at rate/clients, evenly
        spaced (h2load starts them together, so several clients send in step)."""
        if scenario.proxy:  # hey: each of `clients` workers at rate/clients (-q)
            n = max(clients, round(rate * self.settings.duration))
            args = ["-n", str(n), "-c", str(clients), "-q", f"{rate / clients:g}"]
            hey = self._hey(scenario, args, _url(configs.HOST))
            shown = hey.percentiles_ms  # hey leaves out those it has too few requests for
            achieved, figures = hey.rps, {f"p{q}_ms": shown[q] for q in (50, 90, 99) if q in shown}
        else:
            log = self.client_dir / f"{scenario.name}-{index}-{rate:.0f}.log"
            args = [f"-c{clients}", f"--rps={rate / clients:.3f}", *self._duration_args()]
            summary = self._h2load(scenario, [*args, f"--log-file={log}"], _url(configs.HOST))
            achieved, figures = (
                summary.rps,
                results.latency_figures(results.log_latencies_ms(log.read_text())),
            )
            log.unlink()
        if achieved < RATE_TOLERANCE * rate:
            self.flags.append(
                f"latency run at {rate:.0f} req/s achieved only {achieved:.0f} req/s "
                "(saturated): its percentiles are left out"
            )
            return {}
        return figures

    def _new_connections(self, scenario: Scenario) -> float:
        n = self.settings.new_connections
        if scenario.proxy:
            args = ["-disable-keepalive", "-n", str(n), "-c", str(n)]
            return self._hey(scenario, args, _url(configs.HOST)).rps
        return self._h2load(scenario, [f"-n{n}", f"-c{n}"], _url(configs.HOST)).rps

    def _first_new_host(self, scenario: Scenario) -> float:
        extra = []
        for _ in range(self.settings.new_host_samples):
            name = configs.new_host(self.next_new_host)
            self.next_new_host += 1
            new, seen = (self._one_request_ms(scenario, _url(n)) for n in (name, configs.HOST))
            if new is None or seen is None:
                raise BenchError(f"{scenario.name}: the client printed no time for one request")
            extra.append(new - seen)
        return sum(extra) / len(extra)

    def _one_request_ms(self, scenario: Scenario, url: str) -> float | None:
        """One request on a new connection: h2load's time to first byte; through an explicit
        proxy, hey's time of the whole request (CONNECT and TLS included)."""
        if scenario.proxy:
            return self._hey(scenario, ["-n", "1", "-c", "1"], url).average_ms
        return self._h2load(scenario, ["-n1", "-c1"], url).ttfb_mean_ms

    def _hey(self, scenario: Scenario, args: Sequence[str], url: str) -> results.Hey:
        assert scenario.proxy is not None
        argv = [str(HEY), *args, "-x", scenario.proxy, url]
        timeout = self.settings.duration + 120
        output = self._client(scenario, argv, timeout)
        summary = results.parse_hey(output)
        self._judge_errors(
            scenario, argv, output, summary.not_2xx + summary.failed,
            summary.answered + summary.failed, summary.answered - summary.not_2xx,
            f"hey {' '.join(args)}",
        )  # fmt: skip
        return summary

    def _download(self, scenario: Scenario) -> float:
        argv = ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{speed_download}"]
        argv += ["--cacert", str(scenario.client_ca), *scenario.curl_proxy()]
        argv += [_url(configs.HOST, configs.DOWNLOAD_PATH)]
        return float(self._client(scenario, argv, 120)) / 1e6

    def _rss(self, scenario: Scenario) -> dict[str, float]:
        return {name: _rss_mb(pid) for name, pid in scenario.pids().items()}

    def _authz(self, scenario: Scenario) -> dict[str, Any]:
        stats = scenario.envoy_stats()
        if not stats:
            return {}
        quantiles = results.envoy_quantiles(stats, AUTHZ_HISTOGRAM)
        figures: dict[str, Any] = {f"authz_{k}": v for k, v in quantiles.items()}
        for stat in stats.get("stats", []):
            if stat.get("name") == AUTHZ_COUNTER:
                figures["authz_calls"] = stat["value"]
        return figures

    # -- description -------------------------------------------------------------------------

    def machine(self) -> dict[str, Any]:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        memory = Path("/proc/meminfo").read_text().split()[1]
        return {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu,
            "cpus": os.cpu_count(),
            "memory_gib": round(int(memory) / 1024**2, 1),
            "kernel": platform.release(),
            "load_average_at_start": _load_average(),
            "envoy": _first_line([str(envoy_binary()), "--version"]).rpartition("version: ")[2],
            "h2load": _first_line(["h2load", "--version"]),
            "wrk": _first_line(["wrk", "--version"]),
            "nginx": _first_line(["nginx", "-v"]),
            "squid": _first_line([str(SQUID), "-v"]),
            "mitmproxy": _first_line([str(MITM_VENV / "bin" / "mitmdump"), "--version"]),
            "layout": self.layout.describe(),
            "settings": {**asdict(self.settings), "scenarios": list(self.settings.scenarios)},
        }


def _load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _url(host: str, path: str = configs.PATH) -> str:
    return f"https://{host}{path}"


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return "not installed"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else "unknown"


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    out, queue = [], [pid]
    while queue:
        current = queue.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                queue += [int(c) for c in (task / "children").read_text().split()]
    return out


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:  # a helper that exited meanwhile
        return ""


def _rss_mb(pid: int) -> float:
    return results.rss_total_mb(_read(f"/proc/{p}/status") for p in _tree(pid))


def _cpu_seconds(pid: int) -> float:
    ticks = 0
    for p in _tree(pid):
        # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
        fields = _read(f"/proc/{p}/stat").rpartition(")")[2].split()
        if len(fields) > 12:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _core_ticks() -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies of each CPU since boot, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values]
            idle = ticks[3] + ticks[4]  # idle and iowait
            out[int(name[3:])] = (sum(ticks[:8]) - idle, sum(ticks[:8]))
    return out


def _busy_percent(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> dict[int, float]:
    return {
        cpu: round(100 * (after[cpu][0] - busy) / max(1, after[cpu][1] - total), 1)
        for cpu, (busy, total) in before.items()
    }


@contextlib.contextmanager
def _rss_peaks(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """The highest RSS of each process tree while the block runs."""
    peaks = {name: _rss_mb(pid) for name, pid in pids.items()}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(RSS_SAMPLE_SECONDS):
            for name, pid in pids.items():
                peaks[name] = max(peaks[name], _rss_mb(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        done.set()
        thread.join()


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like Ctrl-C does: through every `finally`."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def write_outputs(
    result: dict[str, Any], json_path: Path | None, markdown: Path | None, plot: Path | None
) -> None:
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    if plot is not None:
        from intercept_proxy.bench.plot import latency_plot  # matplotlib: the bench extra only

        plot.write_bytes(latency_plot(result))
    if markdown is not None:
        markdown.write_text(results.render_markdown(result, plot.name if plot else None))
