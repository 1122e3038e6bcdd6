"""`intercept inject`: what the chart's Kyverno policy does, for pipelines without Kyverno."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from intercept_proxy.injector.pod import InjectionError
from intercept_proxy.injector.settings import SettingsError
from intercept_proxy.injector.values import settings_from_values
from intercept_proxy.injector.workloads import TEMPLATE_PATHS, inject_object


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "inject",
        help="add the interceptor to labelled workloads in manifests",
        description="Read Kubernetes manifests (multi-document YAML) and write them with the "
        'interceptor added to every Pod template labelled intercept-proxy/enabled: "true" '
        f"({', '.join(TEMPLATE_PATHS)}); everything else passes through unchanged.",
    )
    parser.add_argument("-f", "--filename", required=True, help="manifests, or - for stdin")
    parser.add_argument(
        "--values",
        type=Path,
        help="the chart's values file (any part of it; the rest is the chart's defaults), for "
        "the same settings as the chart",
    )
    parser.add_argument("--release", default="intercept-proxy", help="the chart's release name")
    parser.set_defaults(func=_inject)


def _inject(args: argparse.Namespace) -> int:
    try:
        given = yaml.safe_load(args.values.read_text()) if args.values is not None else {}
        settings = settings_from_values(given, args.release)
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
        out = [inject_object(d, settings) for d in documents]
    except (OSError, yaml.YAMLError, SettingsError, InjectionError) as e:
        print(f"intercept inject: {e}", file=sys.stderr)
        return 2
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False)
    return 0
