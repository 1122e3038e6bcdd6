"""`intercept decisions`: read a decision log."""

from __future__ import annotations

import argparse
from pathlib import Path

from intercept_proxy.authz.report import decision_table, read_decisions


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "decisions",
        help="show a decision log as a table",
        description="Show the decisions of a decision log (one JSON object per line) as a table.",
    )
    parser.add_argument("log", type=Path, help="the decision log")
    parser.add_argument("--denied", action="store_true", help="only the denials")
    parser.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    records = read_decisions(args.log)
    if args.denied:
        records = [r for r in records if not r.allow]
    print(decision_table(records))
    return 0
