"""The latency plot of docs/performance.md: p50, p90 and p99 per scenario at the fixed rate."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to a file

import matplotlib.pyplot as plt

PERCENTILES = ("p50_ms", "p90_ms", "p99_ms")


def latency_plot(result: Mapping[str, Any]) -> bytes:
    """Grouped bars (median over rounds, whiskers min to max) on a log scale: the scenarios
    span two orders of magnitude."""
    scenarios = {n: s for n, s in result["scenarios"].items() if s.get("p50_ms") is not None}
    rate = result["machine"]["settings"]["rate"]
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100)
    width = 0.8 / len(PERCENTILES)
    for i, key in enumerate(PERCENTILES):
        xs = [j + (i - 1) * width for j in range(len(scenarios))]
        medians = [s[key] for s in scenarios.values()]
        errors = [
            [s[key] - s[f"{key}_min"] for s in scenarios.values()],
            [s[f"{key}_max"] - s[key] for s in scenarios.values()],
        ]
        axes.bar(xs, medians, width, yerr=errors, capsize=3, label=key.removesuffix("_ms"))
    axes.set_xticks(range(len(scenarios)), list(scenarios))
    axes.set_yscale("log")
    axes.set_ylabel("latency (ms, log scale)")
    axes.set_title(f"Latency at {rate} req/s, keep-alive (median of rounds, min-max)")
    axes.legend()
    axes.grid(axis="y", which="both", alpha=0.3)
    figure.tight_layout()
    out = io.BytesIO()
    # No timestamp in the PNG metadata: the same figures give the same file.
    figure.savefig(out, format="png", metadata={"Software": None})
    plt.close(figure)
    return out.getvalue()
