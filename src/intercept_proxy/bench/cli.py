"""`intercept bench`: our data path beside bare Envoy, mitmproxy and Squid, one machine, one run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from intercept_proxy.bench import results
from intercept_proxy.bench.runner import Bench, Settings, cleanup_on_signals, write_outputs
from intercept_proxy.bench.scenarios import ALL, missing_tools

PLOT_NAME = "performance-latency.png"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = Settings()
    parser = commands.add_parser(
        "bench",
        help="measure the interceptor beside Envoy alone, mitmproxy and Squid",
        description="Run every scenario against the same lab upstream, interleaved over "
        "several rounds, and report medians (with min and max) and ratios. Needs root; "
        "everything runs in network namespaces of its own, removed at the end. mitmproxy and "
        "Squid come from scripts/install-bench-tools.",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=defaults.duration,
        help="seconds of each keep-alive and fixed-rate run (default %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="(default %(default)s)")
    parser.add_argument(
        "--scenarios",
        default=",".join(ALL),
        help="comma-separated, from: %(default)s",
    )
    parser.add_argument(
        "--rate",
        type=int,
        default=defaults.rate,
        help="req/s of the fixed-rate latency run (default %(default)s)",
    )
    parser.add_argument(
        "--new-connections",
        type=int,
        default=defaults.new_connections,
        help="connections of the new-connection run (default %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: render --markdown (and its plot) from an earlier --json",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        help=f"render the report here, with the latency plot ({PLOT_NAME}) beside it",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = json.loads(args.render.read_text()) if args.render else measure(args)
    if result is None:
        return 1
    plot = args.markdown.with_name(PLOT_NAME) if args.markdown else None
    write_outputs(result, None if args.render else args.json, args.markdown, plot)
    print(results.render_markdown(result, None))
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any] | None:
    """The results, or None (and the reason on stderr) when the run cannot start."""
    names = tuple(n.strip() for n in args.scenarios.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL]
    problems = missing_tools(names)
    if unknown or not names:
        problems.insert(0, f"unknown scenarios {unknown}; choose from {', '.join(ALL)}")
    if os.geteuid() != 0:
        problems.append("intercept bench needs root (network namespaces, iptables)")
    if problems:
        print("error: " + "\n       ".join(problems), file=sys.stderr)
        return None
    settings = Settings(
        duration=args.duration,
        rounds=args.rounds,
        scenarios=names,
        rate=args.rate,
        new_connections=args.new_connections,
        json_name=args.json.name if args.json else "-",
    )

    def log(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    with cleanup_on_signals():
        return Bench(settings, log).run()
