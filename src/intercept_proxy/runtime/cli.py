"""`intercept run`: a command (or a Pod manifest) in a sandbox whose only way out is the
interceptor."""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import pwd
import secrets
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from intercept_proxy import netns
from intercept_proxy.argv import after_separator
from intercept_proxy.decision import parse_log
from intercept_proxy.identities import MAX_ID
from intercept_proxy.injector.pod import (
    ENVOY,
    SIDECARS,
    TRUST_VARIABLES,
    InjectionError,
    agent_secrets,
    inject_pod,
)
from intercept_proxy.injector.settings import (
    ENABLED_LABEL,
    InjectorSettings,
)
from intercept_proxy.lab import LabError, LabSpecError
from intercept_proxy.policy.model import (
    POLICY_FILE_NAME,
    Policy,
    PolicyError,
    load_policy,
    policy_files,
)
from intercept_proxy.runtime import credentials, gateway
from intercept_proxy.runtime.admission import MIN_GROUP, AdmissionError
from intercept_proxy.runtime.asking import Asker
from intercept_proxy.runtime.containers import ContainerError, Executables
from intercept_proxy.runtime.network import (
    NetworkError,
    add_uplink_options,
    private_ranges,
    uplink,
)
from intercept_proxy.runtime.pod import LocalPod, Options, PodError, cleanup_stale
from intercept_proxy.runtime.volumes import VolumeError
from intercept_proxy.runtime.workdir import (
    WorkdirError,
    check_workdir,
    created_repositories,
    git_metadata,
    installation_inside,
    pinned,
)
from intercept_proxy.xds.envoy import envoy_binary

WORKLOAD = "workload"
HOME = "/home/sandbox"
# A sandboxed command finds no proxy: its traffic is captured whatever it believes.
PROXY_VARIABLES = frozenset(
    v
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for v in (name, name.upper())
)
# Sockets of the caller's session (agents, buses): none of them is in the sandbox's /run or
# /tmp, and none may be reached from it.
SESSION_VARIABLES = frozenset(
    {"SSH_AUTH_SOCK", "GPG_AGENT_INFO", "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR"}
)
USAGE_ERROR = 2


class RunError(Exception):
    """A problem with what `intercept run` was asked to do; the message says what."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run a command (or a Pod manifest) in the sandbox",
        description="Run CMD in a network namespace whose only way out is the interceptor: "
        "every HTTP(S) request is judged by the policy, everything else is blocked. The exit "
        "status is CMD's (with --pod: the first app container's).",
    )
    run.add_argument("--policy", type=Path, help="policy file (default: deny everything)")
    add_uplink_options(run)
    run.add_argument("--decision-log", type=Path, metavar="FILE", help="append decisions here")
    run.add_argument(
        "--user",
        type=int,
        metavar="UID",
        help=f"the workload's UID (and group), from {MIN_GROUP} to {MAX_ID} (default: yours "
        "behind sudo, else a UID of the sandbox's own)",
    )
    run.add_argument("--pod", type=Path, metavar="FILE", help="run this Pod manifest instead")
    run.add_argument(
        "--ask",
        action="store_true",
        help="ask on this terminal whether to allow the requests the policy's approvals hold "
        "(without it, answer them with intercept approvals)",
    )
    run.add_argument(
        "-v", "--verbose", action="store_true", help="show the sidecars' output as it comes"
    )
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    run.set_defaults(func=_run)
    cleanup = commands.add_parser(
        "cleanup",
        help="remove what sandboxes killed without warning left behind",
        description="Remove the namespaces, interfaces, host rules, processes and files of local "
        "pods and gateways whose runtime died (intercept run and intercept gateway do this too "
        "when they start).",
    )
    cleanup.set_defaults(func=_cleanup)
    gateway.register(commands)


def _executables() -> Executables:
    intercept = Path(sys.executable).with_name("intercept")
    return Executables(intercept=intercept, envoy=envoy_binary())


# Where a sandbox's own UID is taken from when the caller names none: far above the accounts a
# machine hands out.
SANDBOX_UIDS = range(2_000_000_000, 2_100_000_000)


def _in_use(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        pass
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("Uid:") and str(uid) in line.split()[1:]:
                    return True
    return False


def default_uid() -> int:
    """The invoking user's UID behind sudo (files it writes stay theirs), else a UID of this
    sandbox's own, which no account and no other process has (not `nobody`: every process of
    a shared UID may read the others' environment and files)."""
    sudo = os.environ.get("SUDO_UID", "")
    if sudo.isdigit() and MIN_GROUP <= int(sudo) <= MAX_ID:
        return int(sudo)
    while True:
        uid = secrets.choice(SANDBOX_UIDS)
        if not _in_use(uid):
            return uid


def check_user(uid: int, settings: InjectorSettings) -> None:
    """`--user`: also the workload's group, so neither root's nor a system group."""
    if not MIN_GROUP <= uid <= MAX_ID:
        raise RunError(
            f"--user {uid}: give a UID from {MIN_GROUP} to {MAX_ID} (it is also the workload's "
            "group, and a system group would be a key to this machine's files)"
        )
    if uid in settings.reserved_uids:
        raise RunError(f"--user {uid}: the interceptor's sidecars run as {uid}")


def command_pod(
    argv: list[str], uid: int, environ: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """A one-container pod for `argv`, run where and as it was asked, with the caller's
    environment. Its root filesystem is this machine's, read-only; it writes its working
    directory (git metadata aside, see `workdir.py`), and a HOME, /tmp and /var/tmp of its own,
    gone when it ends: nothing it leaves behind (a shell profile, a git hook) runs later outside
    the sandbox, and nothing of another sandbox's temporary files is in reach."""
    # Without the caller's proxy and CA-bundle variables: the sandbox sets the bundle itself.
    dropped = PROXY_VARIABLES | set(TRUST_VARIABLES) | SESSION_VARIABLES
    variables = {k: v for k, v in environ.items() if k not in dropped}
    variables["HOME"] = HOME
    scratch = {"home": HOME, "tmp": "/tmp", "var-tmp": "/var/tmp"}
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
                    "env": [{"name": k, "value": v} for k, v in sorted(variables.items())],
                    "volumeMounts": [
                        {"name": name, "mountPath": path} for name, path in scratch.items()
                    ],
                    "securityContext": {
                        "runAsUser": uid,
                        "runAsGroup": uid,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                    },
                }
            ],
            "volumes": [{"name": name, "emptyDir": {}} for name in scratch],
        },
    }


def sandbox_pod(
    argv: list[str],
    uid: int,
    policy_file: Path | None,
    settings: InjectorSettings,
    environ: Mapping[str, str] = os.environ,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`intercept run -- CMD`'s pod, injected, and the objects it reads: its policy, and the
    credentials' secrets from `environ` (the agent's alone; the workload's environment has the
    placeholders)."""
    policy = load_policy(policy_file) if policy_file is not None else Policy()
    secrets = credentials.operator_secrets(policy, environ)
    env = credentials.workload_env(dict(environ), policy, secrets)
    pod = inject_pod(command_pod(argv, uid, env), settings)
    objects = [policy_config_map(policy_file, policy, settings.policy_config_map)]
    if secrets:  # the agent reads its keys into its environment (the injection says so)
        objects.append(credentials.agent_secret(settings.credentials_secret, secrets))
    return pod, objects


def interceptor_objects(settings: InjectorSettings) -> set[tuple[str, str]]:
    """The objects the interceptor reads, which a Pod file may not bring along."""
    names = {("ConfigMap", settings.policy_config_map)}
    return names | {("Secret", name) for name in agent_secrets(settings)}


def pod_objects(
    manifests: list[dict[str, Any]], source: Path, settings: InjectorSettings
) -> list[dict[str, Any]]:
    """The ConfigMaps and Secrets of a Pod file: none of the interceptor's, none twice."""
    reserved = interceptor_objects(settings)
    seen: set[tuple[str, str]] = set()
    objects = []
    for manifest in manifests:
        kind = manifest.get("kind")
        if kind not in ("ConfigMap", "Secret"):
            continue
        key = (str(kind), str((manifest.get("metadata") or {}).get("name")))
        if key in reserved:
            raise RunError(
                f"{source}: {key[0]} {key[1]!r} is the interceptor's (its policy comes from "
                "--policy); give yours another name"
            )
        if key in seen:
            raise RunError(f"{source}: {key[0]} {key[1]!r} appears twice")
        seen.add(key)
        objects.append(manifest)
    return objects


def policy_config_map(policy: Path | None, parsed: Policy, name: str) -> dict[str, Any]:
    """The ConfigMap the injected agent reads its policy from (with its custom modules)."""
    data = (
        {POLICY_FILE_NAME: "{}\n"} if policy is None else policy_files(parsed, policy.read_text())
    )
    return {"kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def load_manifests(path: Path) -> list[dict[str, Any]]:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def summarize(decision_log: Path) -> str:
    allowed, denied, hosts = 0, 0, collections.Counter[str]()
    with contextlib.suppress(OSError):
        for event in parse_log(decision_log.read_text()):
            if event.allow:
                allowed += 1
            else:
                denied += 1
                hosts[str(event.host)] += 1
    lines = [f"intercept: {allowed} requests allowed, {denied} denied"]
    for host, count in hosts.most_common(5):
        lines.append(f"  denied {count:>4}  {host}")
    return "\n".join(lines)


def check_asking(policy_file: Path | None) -> None:
    """`--ask`: a terminal to ask on, and a policy that asks."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise RunError(
            "--ask needs a terminal; without one, answer with intercept approvals (see "
            "docs/policy.md)"
        )
    policy = load_policy(policy_file) if policy_file is not None else Policy()
    if policy.approvals is None:
        raise RunError("--ask: the policy has no approvals, so nothing is ever asked")


def _cleanup(args: argparse.Namespace) -> int:
    for item in cleanup_stale():
        print(f"removed {item}")
    return 0


def run_settings(private_ranges: tuple[str, ...]) -> InjectorSettings:
    """The injection `intercept run` makes. No DNS forwarding: on this machine there is no
    cluster whose names need resolving, and a forwarded name would carry its labels out."""
    return InjectorSettings(dns_forward_suffixes=(), upstream_private_ranges=private_ranges)


def _run(args: argparse.Namespace) -> int:
    command = after_separator(args.command)
    if bool(command) == bool(args.pod):
        print("intercept run: give either -- CMD [ARGS...] or --pod FILE", file=sys.stderr)
        return USAGE_ERROR
    try:
        settings = run_settings(private_ranges(args))
    except NetworkError as e:
        print(f"intercept run: {e}", file=sys.stderr)
        return USAGE_ERROR
    if os.geteuid() != 0:
        print("intercept run: needs root (network namespaces, iptables)", file=sys.stderr)
        return USAGE_ERROR
    prefix = netns.unique_prefix("isb")
    cleanup_stale()  # what an earlier run killed without warning left behind
    decision_log = args.decision_log
    scratch = None
    if decision_log is None:  # kept for the summary, removed at the end
        fd, name = tempfile.mkstemp(prefix=f"intercept-pod-{prefix}-decisions-")
        os.close(fd)
        decision_log = scratch = Path(name)
    try:
        executables = _executables()
        writable: dict[str, tuple[Path, ...]] = {}
        read_only: dict[str, tuple[Path, ...]] = {}
        operator_ids: frozenset[int] = frozenset()  # IDs the caller chose: theirs to use
        if args.pod:
            manifests = load_manifests(args.pod)
            pods = [m for m in manifests if m.get("kind") == "Pod"]
            if len(pods) != 1:
                raise RunError(f"{args.pod}: expected exactly one Pod, found {len(pods)}")
            pod = pods[0]
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if labels.get(ENABLED_LABEL, "true") != "true":
                raise RunError(
                    f"{args.pod}: the Pod is labelled {ENABLED_LABEL}: "
                    f"{labels[ENABLED_LABEL]!r}; intercept run runs intercepted pods only"
                )
            if args.ask:
                raise RunError("--ask needs -- CMD (it asks on the terminal the command has)")
            policy = load_policy(args.policy) if args.policy is not None else Policy()
            if credentials.placeholders(policy):
                raise RunError(
                    f"{args.policy}: credentials from the environment need -- CMD (a pod file's "
                    "containers set their own environment)"
                )
            objects = [
                policy_config_map(args.policy, policy, settings.policy_config_map),
                *pod_objects(manifests, args.pod, settings),
            ]
            # One injected already is verified to be this injection's.
            pod = inject_pod(pod, settings)
            attached = None
        else:
            if args.ask:
                check_asking(args.policy)
            uid = args.user if args.user is not None else default_uid()
            check_user(uid, settings)
            operator_ids = frozenset({uid})
            pod, objects = sandbox_pod(command, uid, args.policy, settings)
            attached = WORKLOAD
            workdir = Path.cwd()
            check_workdir(workdir)
            protection = git_metadata(workdir)
            own = installation_inside(workdir, executables.installation)
            writable[WORKLOAD] = (workdir, *protection.pinned, *pinned(workdir, own))
            # The operator's own files, where the workload could otherwise loosen them for the
            # next run.
            operators = [p.resolve() for p in (args.policy, args.lab) if p is not None]
            read_only[WORKLOAD] = (
                *protection.git_dirs,
                *own,
                *(p for p in operators if p.is_relative_to(workdir)),
            )
        by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        with uplink(args.lab, args.lab_log, prefix) as up:
            options = Options(
                uplink=up,
                executables=executables,
                prefix=prefix,
                attached=attached,
                writable=writable,
                read_only=read_only,
                trusted=frozenset(SIDECARS),
                operator_ids=operator_ids,
                stdout_files={ENVOY: decision_log},  # Envoy prints its decision log there
                # Without a terminal of its own the workload's output and the sidecars' mix.
                output=sys.stderr if args.verbose or attached is None else None,
            )
            local = LocalPod(pod, by_name, options)
            asked = threading.Event()  # set: no more questions
            if args.ask:
                Asker(local.control_socket, lambda: local.terminal, args.policy, asked).start()
            try:
                status = local.run()
            except PodError:
                for lines in local.recent.values():
                    sys.stderr.writelines(lines)
                raise
            finally:
                asked.set()
        if attached is not None:
            for git_dir in created_repositories(protection, git_metadata(workdir)):
                print(
                    f"intercept run: the workload created the git repository {git_dir}: its "
                    "hooks and configuration are the workload's, inspect them before running "
                    "git there",
                    file=sys.stderr,
                )
        if sys.stderr.isatty():
            print(summarize(decision_log), file=sys.stderr)
        return status
    except (
        RunError,
        PolicyError,
        InjectionError,
        AdmissionError,
        WorkdirError,
        ContainerError,
        VolumeError,
        NetworkError,
        PodError,
        LabError,
        LabSpecError,
        OSError,
    ) as e:
        print(f"intercept run: {e}", file=sys.stderr)
        usage = RunError | PolicyError | InjectionError | AdmissionError | WorkdirError
        return USAGE_ERROR if isinstance(e, usage) else 1
    finally:
        if scratch is not None:
            scratch.unlink(missing_ok=True)
