"""From load-generator output to the figures: parsing h2load, percentiles, medians over rounds,
ratios, the issue's targets, and the Markdown report. Pure functions only."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from intercept_proxy import procfs

# Per-round figures reduced to median, min and max (higher or lower is better, per figure).
FIGURES = (
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "new_conn_rps",
    "first_new_host_ms",
    "mb_per_s",
    "cpu_ms_per_req",
    "p99_half_sat_ms",
)
RATIO_PAIRS = (("intercept", "envoy-only"), ("intercept", "mitmproxy"), ("intercept", "squid"))
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
    """Keep-alive requests/s of intercept over each alternative that was measured; and the
    same per proxy CPU (requests per CPU-second), which a saturated client core or a noisy
    neighbour does not distort."""
    out = {}
    for a, b in RATIO_PAIRS:
        first, second = scenarios.get(a, {}), scenarios.get(b, {})
        if first.get("rps") and second.get("rps"):
            out[f"{a}/{b}"] = round(first["rps"] / second["rps"], 2)
    for a, b in RATIO_PAIRS:
        first, second = scenarios.get(a, {}), scenarios.get(b, {})
        if first.get("cpu_ms_per_req") and second.get("cpu_ms_per_req"):
            ratio = second["cpu_ms_per_req"] / first["cpu_ms_per_req"]
            out[f"{a}/{b} per proxy CPU"] = round(ratio, 2)
    return out


@dataclass(frozen=True)
class Target:
    text: str
    figure: str
    met: bool | None  # None: not measured in this run


def targets(result: Mapping[str, Any]) -> list[Target]:
    """Issue 5's targets, judged on a run's medians."""
    scenarios = result["scenarios"]
    ratio = result["ratios"]
    intercept = scenarios.get("intercept", {})
    direct = scenarios.get("direct", {})
    out = []
    for other, factor in (("envoy-only", 0.7), ("mitmproxy", 15), ("squid", 1.5)):
        value = ratio.get(f"intercept/{other}")
        out.append(
            Target(
                f"intercept keep-alive req/s ≥ {factor:g} x {other}",
                f"{value:g}x" if value is not None else "not measured",
                None if value is None else value >= factor,
            )
        )
    if intercept.get("p99_half_sat_ms") is not None and direct.get("p99_half_sat_ms") is not None:
        added = intercept["p99_half_sat_ms"] - direct["p99_half_sat_ms"]
        out.append(
            Target(
                "p99 added over direct ≤ 2 ms at half of intercept's saturation rate",
                f"{added:+.2f} ms ({intercept['p99_half_sat_ms']:.2f} vs "
                f"{direct['p99_half_sat_ms']:.2f} ms)",
                added <= 2,
            )
        )
    else:
        out.append(Target("p99 added over direct ≤ 2 ms at half saturation", "not measured", None))
    new_host = intercept.get("first_new_host_ms")
    out.append(
        Target(
            "first request to a never-seen host ≤ 10 ms more than to a seen one",
            f"{new_host:+.2f} ms" if new_host is not None else "not measured",
            None if new_host is None else new_host <= 10,
        )
    )
    rss = intercept.get("rss_mb_max", {})
    agent, envoy = rss.get("agent"), rss.get("envoy")
    out.append(
        Target(
            "agent RSS ≤ 80 MB under load",
            f"{agent:.1f} MB" if agent is not None else "not measured",
            None if agent is None else agent <= 80,
        )
    )
    both = None if agent is None or envoy is None else agent + envoy
    out.append(
        Target(
            "Envoy + agent RSS ≤ 150 MB under load",
            f"{both:.1f} MB" if both is not None else "not measured",
            None if both is None else both <= 150,
        )
    )
    return out


def _cell(scenario: Mapping[str, Any], figure: str, digits: int) -> str:
    if scenario.get(figure) is None:
        return "-"
    value, low, high = (scenario[k] for k in (figure, f"{figure}_min", f"{figure}_max"))
    return f"{value:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


_COLUMNS = (
    ("keep-alive req/s", "rps", 0),
    ("p50 ms at {rate}/s", "p50_ms", 2),
    ("p90 ms at {rate}/s", "p90_ms", 2),
    ("p99 ms at {rate}/s", "p99_ms", 2),
    ("new TLS conn/s", "new_conn_rps", 0),
    ("new host, extra ms", "first_new_host_ms", 1),
    ("10 MB, MB/s", "mb_per_s", 0),
    ("proxy CPU ms/req", "cpu_ms_per_req", 3),
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
        f"{settings['rounds']} interleaved rounds, (min-max) in brackets.",
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
        "during the keep-alive run (medians, and the highest of all rounds), and its CPU per "
        "keep-alive request:",
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
            "How busy each core was during the keep-alive run (%, medians): the saturated one "
            "sets the rate.",
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
        "Keep-alive requests/s, and requests per CPU-second of the proxy processes (`per proxy "
        "CPU`): the first is what a client gets on this machine, and is capped where the client "
        "core saturates (see above); the second compares the proxies' own cost.",
        "",
    ]
    lines += [f"- `{k}`: {v:g}x" for k, v in result["ratios"].items()] or ["- none measured"]
    lines += ["", "## Issue 5's targets", "", "| target | measured | met |", "|---|---|---|"]
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
    lines += ["", "## Method", "", *METHOD.format(**settings).splitlines()]
    return "\n".join(lines) + "\n"


METHOD = """\
Every scenario is measured against the same lab upstream (`intercept_proxy.lab`: aiohttp, \
HTTPS, keep-alive, in its own network namespace) through a client namespace of its own, by the \
same client (`h2load`, UID 12345) asking for `https://bench.test/`: the workload does not know \
a proxy is there. `direct` reaches the upstream; `envoy-only`, `squid` and `mitmproxy` receive \
the client's port-443 traffic through an iptables REDIRECT (original destination recovered with \
SO_ORIGINAL_DST), terminate TLS with a certificate from an EC P-256 CA and re-encrypt to the \
upstream, verifying it; `intercept` and `intercept-agent` run the agent (UID 102) and Envoy \
(UID 101) from the installed `intercept` command, the client captured by proxy-init's own rules \
(DNS to the agent's sinkhole, TCP 443 to Envoy), as in a pod. All judge the same allowlist \
(GET and HEAD on `bench.test` and `*.bench.test`, 403 otherwise; checked before measuring); \
`intercept-agent` adds a custom Rego module, which makes every request go through the agent's \
ext_authz (the design before the policy was compiled into Envoy's routes), and `mitmproxy` \
evaluates the same Rego with regorus in an addon. Envoy runs with one worker; Squid (`-N`) and \
mitmproxy are single-threaded.

Rounds run the scenarios one after the other (A B C … A B C …) so that drift of a shared \
machine spreads over all of them; each figure is the median over rounds.

- keep-alive req/s: `h2load --h1 -c{connections} -m1 -D{duration}` (closed loop, one request \
in flight per connection). `proxy CPU ms/req`: the proxy processes' user+system CPU during that \
run over the requests served.
- latency: `h2load --h1 -c{latency_clients} --rps` at {rate} req/s in total, percentiles from \
`--log-file`; a run that does not achieve 95 % of the rate is flagged (the proxy saturated, the \
figures are then queueing). `p99_half_sat_ms` (direct and intercept) is the same at half of \
intercept's keep-alive rate of that round, for the issue's latency target.
- new TLS connections/s: `h2load --h1 -n{new_connections} -c{new_connections}`, one request per \
connection and a fresh client each, so no TLS session is resumed.
- new host, extra ms: time to first byte of `https://newN.bench.test/` (a name never used \
before, so the proxy mints a certificate for it) minus that of `https://bench.test/`, \
{new_host_samples} each per round.
- 10 MB: `curl` of `/bytes/10485760`, MB/s as curl reports it.
- memory: VmRSS from /proc of each proxy process plus its children, before the load and \
sampled during the keep-alive run.

Reading the figures: `direct` is not an upper bound. Its client and the upstream (Python) \
share one core, while a proxy adds a core of its own; and Envoy (`envoy-only`, `intercept`) \
keeps its upstream connections open across client connections, whereas Squid (bumping \
server-first) and mitmproxy open one upstream TLS connection per client connection, whose \
handshake costs the upstream's core too. So new-connection rates compare the proxies' own \
handshakes for Envoy, and include an upstream handshake for Squid and mitmproxy (and `direct`).
"""
