"""`intercept run`: a command (or a Pod manifest) in a sandbox whose only way out is the
interceptor."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from intercept_proxy import netns
from intercept_proxy.injector.pod import (
    TRUST_VARIABLES,
    InjectionError,
    inject_pod,
    is_enabled,
)
from intercept_proxy.injector.settings import (
    AGENT_UID,
    ENABLED_LABEL,
    ENVOY_UID,
    InjectorSettings,
)
from intercept_proxy.lab import Lab, LabError, LabSpec, LabSpecError
from intercept_proxy.policy.model import PolicyError, load_policy
from intercept_proxy.runtime.containers import ContainerError, Executables
from intercept_proxy.runtime.network import HostUplink, LabUplink, NetworkError, Uplink
from intercept_proxy.runtime.pod import LocalPod, Options, PodError, cleanup_stale
from intercept_proxy.runtime.volumes import VolumeError
from intercept_proxy.xds.envoy import envoy_binary

WORKLOAD = "workload"
# A sandboxed command finds no proxy: its traffic is captured whatever it believes.
PROXY_VARIABLES = frozenset(
    v
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for v in (name, name.upper())
)
USAGE_ERROR = 2


class RunError(Exception):
    """A problem with what `intercept run` was asked to do; the message says what."""


def register(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="run a command (or a Pod manifest) in the sandbox",
        description="Run CMD in a network namespace whose only way out is the interceptor: "
        "every HTTP(S) request is judged by the policy, everything else is blocked. The exit "
        "status is CMD's (with --pod: the first app container's).",
    )
    run.add_argument("--policy", type=Path, help="policy file (default: deny everything)")
    run.add_argument("--lab", type=Path, metavar="SPEC", help="use a lab as the internet")
    run.add_argument("--lab-log", type=Path, metavar="FILE", help="the lab's receipt log")
    run.add_argument("--decision-log", type=Path, metavar="FILE", help="append decisions here")
    run.add_argument("--user", type=int, metavar="UID", help="the workload's UID")
    run.add_argument("--pod", type=Path, metavar="FILE", help="run this Pod manifest instead")
    run.add_argument(
        "-v", "--verbose", action="store_true", help="show the sidecars' output as it comes"
    )
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    run.set_defaults(func=_run)
    cleanup = commands.add_parser(
        "cleanup",
        help="remove what sandboxes killed without warning left behind",
        description="Remove the namespaces, interfaces, host rules and files of local pods "
        "whose runtime died (intercept run does this too when it starts).",
    )
    cleanup.set_defaults(func=_cleanup)


def _executables() -> Executables:
    intercept = Path(sys.executable).with_name("intercept")
    return Executables(intercept=intercept, envoy=envoy_binary())


def default_uid() -> int:
    """The invoking user's UID behind sudo (files it writes stay theirs), else nobody."""
    sudo = os.environ.get("SUDO_UID", "")
    if sudo.isdigit() and int(sudo) not in (0, ENVOY_UID, AGENT_UID):
        return int(sudo)
    return 65534


def command_pod(argv: list[str], uid: int, prefix: str) -> dict[str, Any]:
    """A one-container pod for `argv`, run where and as it was asked, with the caller's
    environment. This machine's files are read-only to it but for the working directory and
    /tmp (see `writable_paths`), and its HOME is a scratch directory: nothing it leaves behind
    (a shell profile, a git hook) runs later outside the sandbox."""
    # Without the caller's proxy and CA-bundle variables: the sandbox sets the bundle itself.
    dropped = PROXY_VARIABLES | set(TRUST_VARIABLES)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    home = f"/tmp/intercept-home-{prefix}"
    env["HOME"] = home
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "intercept-run", "labels": {ENABLED_LABEL: "true"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": WORKLOAD,
                    "image": "local",
                    # Escaped: a Pod's $(VAR) and $$ are Kubernetes syntax, CMD is verbatim.
                    "command": [a.replace("$", "$$") for a in argv],
                    "workingDir": str(Path.cwd()),
                    "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
                    "volumeMounts": [{"name": "home", "mountPath": home}],
                    "securityContext": {
                        "runAsUser": uid,
                        "runAsGroup": uid,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                    },
                }
            ],
            "volumes": [{"name": "home", "emptyDir": {}}],
        },
    }


def writable_paths() -> tuple[Path, ...]:
    """What `intercept run`'s workload may write besides its HOME: where it was started, and
    the temporary directories (shared with this machine, as for any program)."""
    return tuple(dict.fromkeys([Path.cwd(), Path("/tmp"), Path("/var/tmp")]))


def policy_config_map(policy: Path | None, name: str) -> dict[str, Any]:
    """The ConfigMap the injected agent reads its policy from (with its custom modules)."""
    if policy is None:
        return {"kind": "ConfigMap", "metadata": {"name": name}, "data": {"policy.yaml": "{}\n"}}
    parsed = load_policy(policy)  # an invalid policy stops here, before anything starts
    data = {"policy.yaml": policy.read_text()}
    for module in parsed.rego_modules:
        path = Path(module.path)
        if path.parent != policy.parent:
            raise RunError(f"{policy}: rego module {path} must sit next to the policy file")
        data[path.name] = module.text
    return {"kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def load_manifests(path: Path) -> list[dict[str, Any]]:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    return [d for d in yaml.safe_load_all(text) if d]


@contextlib.contextmanager
def _uplink(args: argparse.Namespace, prefix: str) -> Iterator[Uplink]:
    if args.lab is None:
        if args.lab_log is not None:
            raise RunError("--lab-log needs --lab")
        yield HostUplink(prefix)
        return
    spec = LabSpec.load(args.lab)
    with Lab(spec, prefix=f"{prefix}l", log_path=args.lab_log) as lab:
        yield LabUplink(lab)


def summarize(decision_log: Path) -> str:
    allowed, denied, hosts = 0, 0, collections.Counter[str]()
    with contextlib.suppress(OSError):
        for line in decision_log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("allow"):
                    allowed += 1
                else:
                    denied += 1
                    hosts[str(record.get("host"))] += 1
    lines = [f"intercept: {allowed} requests allowed, {denied} denied"]
    for host, count in hosts.most_common(5):
        lines.append(f"  denied {count:>4}  {host}")
    return "\n".join(lines)


def _cleanup(args: argparse.Namespace) -> int:
    for item in cleanup_stale():
        print(f"removed {item}")
    return 0


def _run(args: argparse.Namespace) -> int:
    command = [a for a in args.command if a != "--"] if args.command[:1] == ["--"] else args.command
    if bool(command) == bool(args.pod):
        print("intercept run: give either -- CMD [ARGS...] or --pod FILE", file=sys.stderr)
        return USAGE_ERROR
    if os.geteuid() != 0:
        print("intercept run: needs root (network namespaces, iptables)", file=sys.stderr)
        return USAGE_ERROR
    # No DNS forwarding: on this machine there is no cluster whose names need resolving, and
    # a forwarded name would carry its labels out.
    settings = InjectorSettings(dns_forward_suffixes=())
    prefix = netns.unique_prefix("isb")
    cleanup_stale()  # what an earlier run killed without warning left behind
    decision_log = args.decision_log
    scratch = None
    if decision_log is None:  # kept for the summary, removed at the end
        fd, name = tempfile.mkstemp(prefix=f"intercept-pod-{prefix}-decisions-")
        os.close(fd)
        decision_log = scratch = Path(name)
    try:
        objects = [policy_config_map(args.policy, settings.policy_config_map)]
        if args.pod:
            manifests = load_manifests(args.pod)
            pods = [m for m in manifests if m.get("kind") == "Pod"]
            if len(pods) != 1:
                raise RunError(f"{args.pod}: expected exactly one Pod, found {len(pods)}")
            pod = pods[0]
            objects += [m for m in manifests if m.get("kind") in ("ConfigMap", "Secret")]
            attached = None
        else:
            uid = args.user if args.user is not None else default_uid()
            pod = command_pod(command, uid, prefix)
            attached = WORKLOAD
        meta = pod.get("metadata") or {}
        if is_enabled(meta):  # an injected one is verified to be this injection's
            pod = inject_pod(pod, settings)
        by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        with _uplink(args, prefix) as uplink:
            options = Options(
                uplink=uplink,
                executables=_executables(),
                prefix=prefix,
                attached=attached,
                writable={WORKLOAD: writable_paths()} if attached else {},
                decision_log=decision_log,
                # Without a terminal of its own the workload's output and the sidecars' mix.
                output=sys.stderr if args.verbose or attached is None else None,
            )
            local = LocalPod(pod, by_name, options)
            try:
                status = local.run()
            except PodError:
                for lines in local.recent.values():
                    sys.stderr.writelines(lines)
                raise
        if sys.stderr.isatty():
            print(summarize(decision_log), file=sys.stderr)
        return status
    except (
        RunError,
        PolicyError,
        InjectionError,
        ContainerError,
        VolumeError,
        NetworkError,
        PodError,
        LabError,
        LabSpecError,
        OSError,
    ) as e:
        print(f"intercept run: {e}", file=sys.stderr)
        return USAGE_ERROR if isinstance(e, RunError | PolicyError | InjectionError) else 1
    finally:
        if scratch is not None:
            scratch.unlink(missing_ok=True)
