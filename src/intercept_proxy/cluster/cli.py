"""`scripts/cluster up [--lab SPEC] [--name NAME]` and `scripts/cluster down [--name NAME]`.

`up` prints shell assignments, and only those, on stdout, so that `eval "$(scripts/cluster up)"`
points kubectl and helm at the cluster; everything else goes to stderr and the logs in the state
dir. `down` stops the cluster and removes everything it made, also after a crash.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from intercept_proxy.cluster.cluster import Cluster, ClusterError
from intercept_proxy.cluster.layout import DEFAULT_NAME, LayoutError
from intercept_proxy.cluster.tools import ToolsError
from intercept_proxy.lab import LabSpecError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/cluster",
        description="A real control plane (etcd, kube-apiserver, kube-controller-manager, "
        "Kyverno) and a node running pods on the local pod runtime.",
    )
    commands = p.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "up",
        help="start a cluster; prints KUBECONFIG and PATH assignments for eval",
        description='Start the cluster and print shell assignments: eval "$(scripts/cluster up)"',
    )
    up.add_argument("--name", default=DEFAULT_NAME, help=f"the cluster's name ({DEFAULT_NAME})")
    up.add_argument(
        "--lab",
        type=Path,
        metavar="SPEC",
        help="a lab spec: the pod network's way out is that lab (without: this machine's "
        "network, the real one)",
    )
    up.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for readiness")
    down = commands.add_parser("down", help="stop a cluster and remove everything it made")
    down.add_argument("--name", default=DEFAULT_NAME, help=f"the cluster's name ({DEFAULT_NAME})")
    return p


def assignments(cluster: Cluster) -> str:
    env = cluster.env
    return (
        f"KUBECONFIG={shlex.quote(env['KUBECONFIG'])}\n"
        f"PATH={shlex.quote(env['PATH'])}\n"
        "export KUBECONFIG PATH\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "up":
            cluster = Cluster(args.name, args.lab)
            cluster.up(timeout=args.timeout)
            steps = ", ".join(f"{k} {v:.1f}s" for k, v in cluster.timings.items())
            print(
                f"cluster {args.name}: ready in {cluster.start_seconds:.1f}s ({steps}); "
                f"state and logs in {cluster.state_dir}",
                file=sys.stderr,
            )
            sys.stdout.write(assignments(cluster))
            return 0
        cluster = Cluster(args.name)
        removed = cluster.down()
        leftovers = [r for r in removed if r != str(cluster.state_dir)]
        if leftovers:
            print(
                f"cluster {args.name}: removed leftovers: {', '.join(leftovers)}", file=sys.stderr
            )
        print(f"cluster {args.name}: down", file=sys.stderr)
        return 0
    except (ClusterError, ToolsError, LayoutError, LabSpecError, OSError) as e:
        print(f"scripts/cluster: {e}", file=sys.stderr)
        return 1
