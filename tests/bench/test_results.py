"""Parsing, aggregation, ratios, targets and the report: pure functions on fixed inputs."""

import json

import pytest

from intercept_proxy.bench import results
from tests.golden import assert_golden, assert_golden_text

H2LOAD_ONE = """\
finished in 5.52ms, 181.29 req/s, 65.15KB/s
requests: 1 total, 1 started, 1 done, 1 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 1 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 368B (368) total, 125B (125) headers (space savings 0.00%), 208B (208) data
                     min         max         mean         sd        +/- sd
time for request:      899us       899us       899us         0us   100.00%
time for connect:     4.30ms      4.30ms      4.30ms         0us   100.00%
time to 1st byte:     5.21ms      5.21ms      5.21ms         0us   100.00%
req/s           :     187.87      187.87      187.87        0.00   100.00%
"""

H2LOAD_TIMED = """\
finished in 7.00s, 2894.00 req/s, 1.01MB/s
requests: 20258 total, 20274 started, 20258 done, 20250 succeeded, 8 failed, 0 errored, 0 timeout
status codes: 20250 2xx, 0 3xx, 8 4xx, 0 5xx
time to 1st byte:        0us         0us         0us         0us     0.00%
"""


def test_parse_h2load():
    one = results.parse_h2load(H2LOAD_ONE)
    assert one == results.H2load(181.29, 1, 1, 0, 1, 0, 5.21)
    timed = results.parse_h2load(H2LOAD_TIMED)
    assert (timed.rps, timed.done, timed.succeeded, timed.failed, timed.status_2xx) == (
        2894.0,
        20258,
        20250,
        8,
        20250,
    )
    assert timed.ttfb_mean_ms == 0.0


def test_parse_h2load_refuses_anything_else():
    with pytest.raises(ValueError, match="not an h2load summary"):
        results.parse_h2load("connect: Connection refused\n")


def test_log_latencies_keep_successes_only():
    log = "1000\t200\t1500\n2000\t403\t900\n3000\t200\t2500\n"
    assert results.log_latencies_ms(log) == [1.5, 2.5]


def test_percentiles():
    values = [float(v) for v in range(1, 101)]
    assert results.latency_figures(values) == {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0}
    assert results.percentile([3.0], 0.99) == 3.0
    with pytest.raises(ValueError):
        results.percentile([], 0.5)


def test_envoy_quantiles():
    stats = {
        "stats": [
            {"name": "cluster.intercept_authz.upstream_rq_total", "value": 12},
            {
                "histograms": {
                    "supported_quantiles": [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100],
                    "computed_quantiles": [
                        {
                            "name": "cluster.intercept_authz.upstream_rq_time",
                            "values": [{"cumulative": v} for v in range(10)],
                        }
                    ],
                }
            },
        ]
    }
    name = "cluster.intercept_authz.upstream_rq_time"
    assert results.envoy_quantiles(stats, name) == {
        "p50_ms": 2,
        "p90_ms": 4,
        "p99_ms": 6,
    }
    assert results.envoy_quantiles(stats, "cluster.other.upstream_rq_time") == {}


def test_rss_total():
    statuses = ["Name:\tsquid\nVmRSS:\t   2048 kB\n", "VmRSS:\t1024 kB\n", ""]
    assert results.rss_total_mb(statuses) == 3.0


def _round(rps, p99, rss_agent, flags=(), cpu=0.2):
    return {
        "rps": rps,
        "p50_ms": p99 / 4,
        "p90_ms": p99 / 2,
        "p99_ms": p99,
        "new_conn_rps": rps / 10,
        "first_new_host_ms": 4.0,
        "mb_per_s": 200.0,
        "cpu_ms_per_req": cpu,
        "cpu_ms_per_req_h2": cpu * 1.2,
        "rps_h2": rps * 0.9,
        "p99_half_sat_ms": p99 + 1,
        "rss_mb": {"agent": rss_agent, "envoy": 70.0},
        "rss_idle_mb": {"agent": 60.0, "envoy": 65.0},
        "cpu_ms_per_req_by_process": {"agent": 0.02, "envoy": 0.18},
        "busy_percent": {"client core": 90.0, "proxy core": rps / 50},
        "flags": list(flags),
    }


def _result():
    intercept = results.aggregate(
        [_round(3000, 4.0, 75.0), _round(3300, 3.0, 78.0), _round(2800, 5.0, 90.0, ["slow"])]
    )
    envoy = results.aggregate([_round(4000, 2.0, 0.0), _round(4200, 2.5, 0.0)])
    minimal = results.aggregate(
        [_round(4500, 1.5, 0.0, cpu=0.19), _round(4400, 2.0, 0.0, cpu=0.19)]
    )
    direct = results.aggregate([_round(9000, 1.0, 0.0)])
    for scenario in (envoy, minimal, direct):
        for key in [k for k in scenario if k.startswith(("rss_", "cpu_ms_per_req_by"))]:
            scenario.pop(key)
    intercept.update(
        {"authz_p50_ms": 0.5, "authz_p90_ms": 0.9, "authz_p99_ms": 2, "authz_calls": 7}
    )
    scenarios = {
        "direct": direct,
        "envoy-minimal": minimal,
        "envoy-only": envoy,
        "intercept": intercept,
    }
    return {
        "machine": {
            "cpus": 2,
            "layout": {"load generator": "CPU 0", "proxies": "CPU 1"},
            "settings": {
                "duration": 7.0,
                "rounds": 3,
                "connections": 16,
                "rate": 100,
                "half_saturation_clients": 10,
                "new_connections": 200,
                "new_host_samples": 2,
                "json_name": "performance.json",
            },
        },
        "scenarios": scenarios,
        "ratios": results.ratios(scenarios),
    }


def test_aggregate_medians_min_max():
    assert_golden("bench/aggregate.json", _result()["scenarios"]["intercept"])


def test_ratios_only_for_measured_pairs():
    assert _result()["ratios"] == {
        "envoy-minimal/intercept proxy CPU per request, HTTP/1.1": 0.95,
        "envoy-only/intercept proxy CPU per request, HTTP/1.1": 1.0,
        "envoy-minimal/intercept proxy CPU per request, HTTP/2": 0.95,
        "envoy-only/intercept proxy CPU per request, HTTP/2": 1.0,
        "intercept/envoy-minimal keep-alive req/s, HTTP/1.1": 0.67,
        "intercept/envoy-only keep-alive req/s, HTTP/1.1": 0.73,
    }


def test_targets():
    judged = {t.text: (t.figure, t.met) for t in results.targets(_result())}
    assert judged == {
        "intercept proxy CPU per request ≤ 1.1 x envoy-minimal, HTTP/1.1": (
            "1.05x (0.200 vs 0.190 ms)",
            True,
        ),
        "intercept proxy CPU per request ≤ 1.1 x envoy-minimal, HTTP/2": (
            "1.05x (0.240 vs 0.228 ms)",
            True,
        ),
        "intercept ≥ 30 x mitmproxy (proxy CPU per request, HTTP/1.1)": ("not measured", None),
        "p99 added at half of intercept's saturation ≤ 1.2 x envoy-minimal's": (
            "4.00x (+3.00 vs +0.75 ms over direct)",
            False,
        ),
        "first request to a never-seen host ≤ +5 ms": ("+4.00 ms", True),
        "Envoy + agent RSS ≤ 120 MB idle": ("125.0 MiB", False),
    }


def test_markdown():
    assert_golden_text("bench/performance.md", results.render_markdown(_result(), "plot.png"))


def test_plot_is_a_png():
    from intercept_proxy.bench.plot import latency_plot

    assert latency_plot(_result()).startswith(b"\x89PNG\r\n\x1a\n")


def test_cli_renders_an_earlier_run(tmp_path, capsys):
    from intercept_proxy.cli import main

    (tmp_path / "run.json").write_text(json.dumps(_result()))
    markdown = tmp_path / "performance.md"
    assert main(["bench", "--render", str(tmp_path / "run.json"), "--markdown", str(markdown)]) == 0
    assert markdown.read_text() == results.render_markdown(_result(), "performance-latency.png")
    assert (tmp_path / "performance-latency.png").read_bytes().startswith(b"\x89PNG")
    assert "## Issue 12's targets" in capsys.readouterr().out


# hey's summaries as it prints them (shortened: the histogram and details go unread).
HEY_OK = """
Summary:
  Total:\t3.0215 secs
  Slowest:\t0.0210 secs
  Fastest:\t0.0003 secs
  Average:\t0.0014 secs
  Requests/sec:\t11354.5140

  Total data:\t35161088 bytes
  Size/request:\t1024 bytes

Latency distribution:
  10% in 0.0008 secs
  25% in 0.0010 secs
  50% in 0.0013 secs
  75% in 0.0016 secs
  90% in 0.0019 secs
  95% in 0.0022 secs
  99% in 0.0031 secs

Status code distribution:
  [200]\t34300 responses
  [403]\t6 responses

Error distribution:
  [2]\tGet "https://bench.test/": net/http: request canceled
"""

HEY_REFUSED = """
Summary:
  Total:\t0.0004 secs
  Slowest:\t0.0000 secs
  Fastest:\t0.0000 secs
  Average:\tNaN secs
  Requests/sec:\t7482.3064

Status code distribution:

Error distribution:
  [3]\tGet "http://127.0.0.1:9/": dial tcp 127.0.0.1:9: connect: connection refused
"""


def test_parse_hey():
    ok = results.parse_hey(HEY_OK)
    assert (ok.rps, ok.answered, ok.not_2xx, ok.failed) == (11354.514, 34306, 6, 2)
    assert ok.average_ms == pytest.approx(1.4)
    assert ok.percentiles_ms[50] == pytest.approx(1.3)
    assert ok.percentiles_ms[99] == pytest.approx(3.1)
    refused = results.parse_hey(HEY_REFUSED)
    assert (refused.answered, refused.failed) == (0, 3)


def test_parse_hey_refuses_anything_else():
    with pytest.raises(ValueError, match="not a hey summary"):
        results.parse_hey("Usage: hey [options...] <url>\n")
