"""From load-generator output to the figures: parsing wrk and h2load, percentiles, medians over
rounds, ratios, the issue's targets, and the Markdown report. Pure functions only."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from intercept_proxy import procfs

# Per-round figures reduced to median, min and max (higher or lower is better, per figure).
FIGURES = (
    "cpu_ms_per_req",
    "cpu_ms_per_req_h2",
    "rps",
    "rps_h2",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "new_conn_rps",
    "first_new_host_ms",
    "mb_per_s",
    "p99_half_sat_ms",
)
# The least an interception by Envoy costs; what the product is measured against.
MINIMAL = "envoy-minimal"
RATIO_PAIRS = (
    ("intercept", MINIMAL),
    ("intercept", "envoy-only"),
    ("intercept", "mitmproxy"),
    ("intercept", "squid"),
    ("gateway", "squid-proxy"),
)
# Measured again at half of intercept's keep-alive rate, for the latency target.
HALF_SATURATION = ("direct", MINIMAL, "intercept")
# hey's keep-alive runs send this many requests per second of the run's duration (about what
# the explicit proxies serve here, so a run lasts about as long as the others): a count, not
# hey's -z, which cancels the requests in flight when its time is up and counts them failed.
HEY_REQUESTS_PER_SECOND = 10000
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class H2load:
    """What h2load's summary says about one run."""

    rps: float
    done: int
    succeeded: int
    failed: int
    status_2xx: int
    status_other: int  # 3xx, 4xx and 5xx
    ttfb_mean_ms: float | None


def parse_h2load(text: str) -> H2load:
    finished = re.search(r"^finished in [\d.]+(?:us|ms|s), ([\d.]+) req/s", text, re.MULTILINE)
    requests = re.search(
        r"^requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed",
        text,
        re.MULTILINE,
    )
    codes = re.search(
        r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.MULTILINE
    )
    if not (finished and requests and codes):
        raise ValueError(f"not an h2load summary:\n{text[-2000:]}")
    ttfb = re.search(r"^time to 1st byte:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b", text, re.MULTILINE)
    return H2load(
        rps=float(finished.group(1)),
        done=int(requests.group(1)),
        succeeded=int(requests.group(2)),
        failed=int(requests.group(3)),
        status_2xx=int(codes.group(1)),
        status_other=sum(int(codes.group(i)) for i in (2, 3, 4)),
        ttfb_mean_ms=float(ttfb.group(1)) * _UNITS_MS[ttfb.group(2)] if ttfb else None,
    )


@dataclass(frozen=True)
class Wrk:
    """What wrk's summary says about one run."""

    rps: float
    requests: int
    errors: int  # answers not 2xx or 3xx, and socket errors


def parse_wrk(text: str) -> Wrk:
    total = re.search(r"^\s*(\d+) requests in [\d.]+\w+, ", text, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    if not (total and rate):
        raise ValueError(f"not a wrk summary:\n{text[-2000:]}")
    non_2xx = re.search(r"^\s*Non-2xx or 3xx responses: (\d+)", text, re.MULTILINE)
    sockets = re.search(
        r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
        text,
        re.MULTILINE,
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    errors += sum(int(g) for g in sockets.groups()) if sockets else 0
    return Wrk(rps=float(rate.group(1)), requests=int(total.group(1)), errors=errors)


@dataclass(frozen=True)
class Hey:
    """What hey's summary says about one run (the explicit proxies' client)."""

    rps: float
    answered: int  # whatever the status
    not_2xx: int
    failed: int  # requests that got no answer
    average_ms: float
    percentiles_ms: dict[int, float]


def parse_hey(text: str) -> Hey:
    rate = re.search(r"^\s*Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    average = re.search(r"^\s*Average:\s+([\d.]+|NaN) secs", text, re.MULTILINE)
    if not (rate and average):
        raise ValueError(f"not a hey summary:\n{text[-2000:]}")
    codes = {
        int(code): int(n)
        for code, n in re.findall(r"^\s*\[(\d{3})\]\s+(\d+) responses", text, re.MULTILINE)
    }
    errors_part = text.partition("Error distribution:")[2]
    failed = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]\s", errors_part, re.MULTILINE))
    latencies = re.findall(r"^\s*(\d+)% in ([\d.]+) secs", text, re.MULTILINE)
    return Hey(
        rps=float(rate.group(1)),
        answered=sum(codes.values()),
        not_2xx=sum(n for code, n in codes.items() if not 200 <= code < 300),
        failed=failed,
        average_ms=float(average.group(1)) * 1000,
        percentiles_ms={int(q): float(t) * 1000 for q, t in latencies},
    )


def log_latencies_ms(text: str) -> list[float]:
    """Latencies of the successful requests in an h2load --log-file (start µs, status,
    µs to the end of the response)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1].startswith("2"):
            out.append(int(fields[2]) / 1000)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, `q` in [0, 1]."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def latency_figures(latencies_ms: Sequence[float]) -> dict[str, float]:
    return {f"p{q}_ms": percentile(latencies_ms, q / 100) for q in (50, 90, 99)}


def envoy_quantiles(stats: Mapping[str, Any], name: str) -> dict[str, float]:
    """p50/p90/p99 (ms, cumulative) of histogram `name` in Envoy's /stats?format=json; {} when
    it has no samples."""
    for stat in stats.get("stats", []):
        histograms = stat.get("histograms")
        if not histograms:
            continue
        supported = histograms["supported_quantiles"]
        for histogram in histograms["computed_quantiles"]:
            if histogram["name"] != name:
                continue
            figures = {
                f"p{q:g}_ms": value["cumulative"]
                for q, value in zip(supported, histogram["values"], strict=True)
                if q in (50, 90, 99) and value.get("cumulative") is not None
            }
            return figures
    return {}


def rss_total_mb(statuses: Iterable[str]) -> float:
    """Summed VmRSS (MiB) of /proc/PID/status texts: a process and its children."""
    return round(sum(procfs.memory_mib(procfs.parse_status(text)) for text in statuses), 1)


def aggregate(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median, min and max of every figure over the rounds of one scenario."""
    out: dict[str, Any] = {"rounds": len(rounds)}
    for figure in FIGURES:
        values = [r[figure] for r in rounds if r.get(figure) is not None]
        if values:
            out[figure] = round(statistics.median(values), 3)
            out[f"{figure}_min"] = round(min(values), 3)
            out[f"{figure}_max"] = round(max(values), 3)
    per_key = (
        ("rss_mb", 1),
        ("rss_idle_mb", 1),
        ("cpu_ms_per_req_by_process", 3),
        ("cpu_ms_per_req_h2_by_process", 3),
        ("busy_percent", 1),
    )
    for key, digits in per_key:
        processes = sorted({p for r in rounds for p in r.get(key, {})})
        if processes:
            out[key] = {
                p: round(
                    statistics.median(r[key][p] for r in rounds if p in r.get(key, {})), digits
                )
                for p in processes
            }
            out[f"{key}_max"] = {
                p: max(r[key][p] for r in rounds if p in r.get(key, {})) for p in processes
            }
    flags = [flag for r in rounds for flag in r.get("flags", [])]
    if flags:
        out["flags"] = flags
    return out


def ratios(scenarios: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The proxies' own cost: proxy CPU per request of each alternative over intercept's
    (above 1: intercept costs less), HTTP/1.1 and HTTP/2; and keep-alive requests/s of
    intercept over each, which a saturated client core caps."""
    out = {}
    for suffix, label in (("", "HTTP/1.1"), ("_h2", "HTTP/2")):
        for a, b in RATIO_PAIRS:
            first, second = scenarios.get(a, {}), scenarios.get(b, {})
            mine, theirs = (
                first.get(f"cpu_ms_per_req{suffix}"),
                second.get(f"cpu_ms_per_req{suffix}"),
            )
            if mine and theirs:
                out[f"{b}/{a} proxy CPU per request, {label}"] = round(theirs / mine, 2)
    for a, b in RATIO_PAIRS:
        first, second = scenarios.get(a, {}), scenarios.get(b, {})
        if first.get("rps") and second.get("rps"):
            out[f"{a}/{b} keep-alive req/s, HTTP/1.1"] = round(first["rps"] / second["rps"], 2)
    return out


@dataclass(frozen=True)
class Target:
    text: str
    figure: str
    met: bool | None  # None: not measured in this run


def _target(text: str, value: float | None, shown: str, met: Callable[[float], bool]) -> Target:
    if value is None:
        return Target(text, "not measured", None)
    return Target(text, shown, met(value))


def targets(result: Mapping[str, Any]) -> list[Target]:
    """Issue 12's targets, judged on a run's medians."""
    scenarios = result["scenarios"]
    intercept = scenarios.get("intercept", {})
    minimal = scenarios.get(MINIMAL, {})
    direct = scenarios.get("direct", {})
    out = []
    for suffix, label in (("", "HTTP/1.1"), ("_h2", "HTTP/2")):
        key = f"cpu_ms_per_req{suffix}"
        mine, least = intercept.get(key), minimal.get(key)
        ratio = mine / least if mine and least else None
        out.append(
            _target(
                f"intercept proxy CPU per request ≤ 1.1 x {MINIMAL}, {label}",
                ratio,
                f"{ratio or 0:.2f}x ({mine or 0:.3f} vs {least or 0:.3f} ms)",
                lambda r: r <= 1.1,
            )
        )
    mitm, mine = (
        scenarios.get("mitmproxy", {}).get("cpu_ms_per_req"),
        intercept.get("cpu_ms_per_req"),
    )
    ratio = mitm / mine if mitm and mine else None
    out.append(
        _target(
            "intercept ≥ 30 x mitmproxy (proxy CPU per request, HTTP/1.1)",
            ratio,
            f"{ratio or 0:.1f}x",
            lambda r: r >= 30,
        )
    )
    added = {
        name: s["p99_half_sat_ms"] - direct["p99_half_sat_ms"]
        for name, s in (("intercept", intercept), (MINIMAL, minimal))
        if s.get("p99_half_sat_ms") is not None and direct.get("p99_half_sat_ms") is not None
    }
    ratio = added["intercept"] / added[MINIMAL] if len(added) == 2 and added[MINIMAL] > 0 else None
    out.append(
        _target(
            f"p99 added at half of intercept's saturation ≤ 1.2 x {MINIMAL}'s",
            ratio,
            f"{ratio or 0:.2f}x ({added.get('intercept', 0):+.2f} vs "
            f"{added.get(MINIMAL, 0):+.2f} ms over direct)",
            lambda r: r <= 1.2,
        )
    )
    new_host = intercept.get("first_new_host_ms")
    out.append(
        _target(
            "first request to a never-seen host ≤ +5 ms",
            new_host,
            f"{new_host or 0:+.2f} ms",
            lambda v: v <= 5,
        )
    )
    idle = intercept.get("rss_idle_mb", {})
    both = idle["agent"] + idle["envoy"] if {"agent", "envoy"} <= idle.keys() else None
    out.append(
        _target("Envoy + agent RSS ≤ 120 MB idle", both, f"{both or 0:.1f} MiB", lambda v: v <= 120)
    )
    return out


def _cell(scenario: Mapping[str, Any], figure: str, digits: int) -> str:
    if scenario.get(figure) is None:
        return "-"
    value, low, high = (scenario[k] for k in (figure, f"{figure}_min", f"{figure}_max"))
    return f"{value:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


_COLUMNS = (
    ("proxy CPU ms/req, HTTP/1.1", "cpu_ms_per_req", 3),
    ("proxy CPU ms/req, HTTP/2", "cpu_ms_per_req_h2", 3),
    ("keep-alive req/s, HTTP/1.1", "rps", 0),
    ("keep-alive req/s, HTTP/2", "rps_h2", 0),
    ("p50 ms at {rate}/s", "p50_ms", 2),
    ("p99 ms at {rate}/s", "p99_ms", 2),
    ("p99 ms at half saturation", "p99_half_sat_ms", 2),
    ("new TLS conn/s", "new_conn_rps", 0),
    ("new host, extra ms", "first_new_host_ms", 1),
    ("10 MB, MB/s", "mb_per_s", 0),
)


def render_markdown(result: Mapping[str, Any], plot_name: str | None) -> str:
    machine = result["machine"]
    settings = machine["settings"]
    scenarios = result["scenarios"]
    lines = [
        "# Performance",
        "",
        "Generated by `intercept bench` (`make bench`) from "
        f"`{settings['json_name']}`; do not edit by hand. Figures are medians over "
        f"{settings['rounds']} interleaved rounds, (min-max) in brackets. The headline is the "
        "proxy's CPU time per request: what the proxy itself costs, whoever else shares the "
        "machine.",
        "",
        "## Results",
        "",
        "| scenario | " + " | ".join(c[0].format(rate=settings["rate"]) for c in _COLUMNS) + " |",
        "|---|" + "---|" * len(_COLUMNS),
    ]
    for name, scenario in scenarios.items():
        cells = [_cell(scenario, figure, digits) for _, figure, digits in _COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each proxy process (its children summed): RSS in MiB idle before the load and highest "
        "during the HTTP/1.1 keep-alive run (medians, and the highest of all rounds), and its "
        "CPU per request of that run:",
        "",
        "| scenario | process | RSS idle | RSS under load | RSS under load, max | CPU ms/req |",
        "|---|---|---|---|---|---|",
    ]
    for name, scenario in scenarios.items():
        for process, loaded in scenario.get("rss_mb", {}).items():
            idle = scenario.get("rss_idle_mb", {}).get(process, math.nan)
            peak = scenario.get("rss_mb_max", {}).get(process, math.nan)
            cpu = scenario.get("cpu_ms_per_req_by_process", {}).get(process, math.nan)
            lines.append(
                f"| {name} | {process} | {idle:.1f} | {loaded:.1f} | {peak:.1f} | {cpu:.3f} |"
            )
    busy = [(name, s["busy_percent"]) for name, s in scenarios.items() if s.get("busy_percent")]
    if busy:
        roles = sorted({role for _, b in busy for role in b})
        lines += [
            "",
            "How busy each core was during the HTTP/1.1 keep-alive run (%, medians): the "
            "saturated one sets the rate (runs where the client's saturated are flagged).",
            "",
            "| scenario | " + " | ".join(roles) + " |",
            "|---|" + "---|" * len(roles),
        ]
        for name, b in busy:
            lines.append(
                f"| {name} | " + " | ".join(f"{b.get(r, math.nan):.0f}" for r in roles) + " |"
            )
    authz = [(name, s) for name, s in scenarios.items() if any(k.startswith("authz_") for k in s)]
    if authz:
        lines += [
            "",
            "The authorization call as Envoy reports it (cluster `intercept_authz`, "
            "`upstream_rq_time`, cumulative over the run):",
            "",
            "| scenario | p50 ms | p90 ms | p99 ms | calls |",
            "|---|---|---|---|---|",
        ]
        for name, s in authz:
            cells = [
                f"{s[k]:g}" if s.get(k) is not None else "-"
                for k in ("authz_p50_ms", "authz_p90_ms", "authz_p99_ms")
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {s.get('authz_calls', 0)} |")
    lines += [
        "",
        "## Ratios",
        "",
        "Proxy CPU per request of each alternative over intercept's (above 1: intercept costs "
        "less), and keep-alive requests/s of intercept over each (what a client gets on this "
        "machine, capped where the client core saturates).",
        "",
    ]
    lines += [f"- `{k}`: {v:g}x" for k, v in result["ratios"].items()] or ["- none measured"]
    lines += ["", "## Issue 12's targets", "", "| target | measured | met |", "|---|---|---|"]
    for target in targets(result):
        met = {True: "met", False: "**not met**", None: "-"}[target.met]
        lines.append(f"| {target.text} | {target.figure} | {met} |")
    if plot_name:
        lines += ["", f"![latency percentiles per scenario]({plot_name})"]
    flags = [(name, f) for name, s in scenarios.items() for f in s.get("flags", [])]
    if flags:
        lines += ["", "## Flagged runs", ""]
        lines += [f"- {name}: {flag}" for name, flag in flags]
    lines += ["", "## Machine and core layout", ""]
    lines += [
        f"- {key}: {value}" for key, value in machine.items() if key not in ("settings", "layout")
    ]
    lines += [f"- {role}: {where}" for role, where in machine["layout"].items()]
    method = METHOD.format(**settings, hey_rate=HEY_REQUESTS_PER_SECOND)
    lines += ["", "## Method", "", *method.splitlines()]
    return "\n".join(lines) + "\n"


METHOD = """\
Every scenario is measured against the same upstream, nginx (one worker, HTTPS, HTTP/1.1, \
keep-alive, a 1 KB answer) on the bench address of the lab (`intercept_proxy.lab`, which \
answers DNS for the bench names and issues their certificates), through a client namespace of \
its own, by the same clients (UID 12345) asking for `https://bench.test/`: the workload does \
not know a proxy is there. `direct` reaches the upstream; `envoy-minimal`, `envoy-only`, \
`squid` and `mitmproxy` receive the client's port-443 traffic through an iptables REDIRECT, \
terminate TLS with a certificate from an EC P-256 CA and re-encrypt to the upstream, verifying \
it. `envoy-minimal` is the least such an interception can cost: listener, HTTP connection \
manager, router and one fixed upstream cluster. `envoy-only` finds the upstream as a \
transparent proxy must (original destination, SNI and SAN from the Host). `intercept` and \
`intercept-agent` run the agent (UID 102) and Envoy (UID 101) from the installed `intercept` \
command, the client captured by proxy-init's own rules (DNS to the agent's sinkhole, TCP 443 \
to Envoy), as in a pod. The judging scenarios enforce the same allowlist (reads of \
`bench.test` and `*.bench.test`, 403 otherwise; checked before measuring). The measured \
requests ask for `bench.test`, an exact name in the allowlist: a wildcard's requests (here the \
new hosts') also run intercept's check that the SNI is the host, one CEL expression each. \
`intercept-agent` \
adds a custom Rego module, which makes every request go through the agent's ext_authz, \
`intercept-extras` a credential Envoy sends with every request and a rate limit it counts \
them against (never reached), `intercept-signed` the same and AWS SigV4 signing of every \
request, and \
`mitmproxy` evaluates the same Rego with regorus in an addon. Envoy runs with one worker; \
Squid (`-N`) and mitmproxy are single-threaded.

`gateway` and `squid-proxy` are explicit proxies: the client is told of them (its proxy) and \
opens a CONNECT tunnel per connection, in which the proxy terminates TLS as above. `gateway` \
is the same agent and Envoy serving Envoy's gateway listener, as the chart's gateway replicas \
do with `gateway.podPolicy: none` (with `narrow`, its default, the agent judges every request \
in a tunnel too, which is not measured here; the local `intercept gateway` adds a relay before \
it), which refuses a CONNECT to a host outside the allowlist; `squid-proxy` is Squid \
bumping the tunnels, which judges the CONNECT's host at once too, but shows its refusal \
inside the tunnel it bumps. wrk and h2load cannot use \
a proxy: these two are measured with hey (Go's HTTP client, `-x PROXY`): keep-alive runs of \
`hey -n N -c{connections}` (and `-h2`; N: {hey_rate} requests per second of {duration} s), \
the latency run `hey -c1 -q{rate}`, new connections `hey -disable-keepalive`, the new \
host's extra ms from the whole request's time (CONNECT and TLS included). hey's HTTP/2 \
runs share one connection among its workers: 16 streams in flight on one tunnel, where \
h2load's are 16 connections of one stream each. hey prints times to 0.1 ms, so its \
latencies and new-host figures move in steps of 0.1 ms. Squid bumps each tunnel after \
opening its own upstream TLS connection, for the known host as for the new one, which the \
new host's difference cancels out (and which lowers its new-connection rate); the gateway \
reuses Envoy's upstream connections. A different client sends different requests: compare \
these two with each other, the others among themselves.

Rounds run the scenarios one after the other (A B C … A B C …) so that drift of a shared \
machine spreads over all of them; each figure is the median over rounds.

- proxy CPU ms/req: the proxy processes' user+system CPU (from /proc, children included) \
during a keep-alive run over the requests it served. HTTP/1.1: `wrk -t1 -c{connections} \
-d{duration}s`; HTTP/2: `h2load -c{connections} -m1 -D{duration}` (one stream in flight per \
connection), for the scenarios that offer HTTP/2 (not Squid; nor `direct`: the upstream speaks \
HTTP/1.1 to everyone). Both are closed loops; a run whose client core was saturated is flagged.
- latency at {rate}/s: `h2load --h1 -c1 --rps={rate}`: one connection, requests evenly \
spaced, percentiles from `--log-file`; a run that does not achieve 95 % of the rate is flagged \
(the proxy saturated, the figures are then queueing). At half saturation (direct, \
envoy-minimal, intercept): the same at half of intercept's HTTP/1.1 keep-alive rate of that \
round, over {half_saturation_clients} connections that h2load starts together (so they send \
in step: the percentiles include that queueing, for every scenario alike).
- new TLS connections/s: `h2load --h1 -n{new_connections} -c{new_connections}`, one request per \
connection and a fresh client each, so no TLS session is resumed.
- new host, extra ms: time to first byte of `https://newN.bench.test/` (a name never used \
before, so the proxy mints a certificate for it) minus that of `https://bench.test/`, \
{new_host_samples} each per round.
- 10 MB: `curl` of `/bytes/10485760`, MB/s as curl reports it.
- memory: VmRSS from /proc of each proxy process plus its children, before the load and \
sampled during the keep-alive run.

Reading the figures: the client and the upstream share one core, and each proxy has one of its \
own; where the client core saturates first, requests/s are the client's figure, and the proxy \
CPU per request still is the proxy's. Envoy keeps its upstream connections open across client \
connections, whereas Squid (bumping server-first) and mitmproxy open one upstream TLS \
connection per client connection, whose handshake costs the upstream's core too: \
new-connection rates compare the proxies' own handshakes for Envoy, and include an upstream \
handshake for Squid and mitmproxy (and `direct`).
"""
