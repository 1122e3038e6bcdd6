"""`intercept-proxy-cni`: the CNI plugin of CNI mode, chained after the plugin that attaches the
pod (bridge, ...), run by the node's container runtime as root in the node's namespace.

ADD reads the pod (`CNI_ARGS` K8S_POD_NAMESPACE and K8S_POD_NAME) from the API server with the
kubeconfig its configuration names. A pod injected in CNI mode names its capture in its first
init container, the check `intercept proxy-init --check ARGS`: the plugin installs the rules
ARGS describe in the pod's namespace (`CNI_NETNS`) and verifies them, as proxy-init does in init
mode. Any other pod is left alone. The result is the previous plugin's. CHECK verifies the
rules in force.

Fail closed: a pod that cannot be read, or rules that cannot be installed or verified, fail the
ADD, and the runtime makes the pod's network again later; the pod's own check fails it if it
ever starts without them. DEL changes nothing: the rules go with the pod's namespace, and
removing them first would let a stopping workload out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from intercept_proxy.cluster.client import ApiError, KubeClient
from intercept_proxy.cluster.kubeconfig import credentials
from intercept_proxy.injector.pod import cni_capture
from intercept_proxy.netfilter.apply import NetfilterError, apply, verify
from intercept_proxy.netfilter.builder import render
from intercept_proxy.netfilter.config import CaptureConfig, CaptureConfigError
from intercept_proxy.options import add_arguments, flag_of, from_arguments

PLUGIN = "intercept-proxy-cni"
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0")
# The CNI specification's error codes.
INCOMPATIBLE_VERSION, INVALID_ENVIRONMENT, DECODING_FAILURE, INVALID_CONFIG = 1, 4, 6, 7
TRY_AGAIN_LATER = 11
INTERNAL = 999
CAPTURE_FAILED = 100  # ours


def plugin_config(kubeconfig: Path, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The plugin's entry in a network configuration list, after the plugin attaching pods.
    `exclude`: namespaces whose pods it passes without reading them (they start while the API
    server is unreachable; a pod of theirs injected in CNI mode then fails its own check)."""
    return {"type": PLUGIN, "kubeconfig": str(kubeconfig), "excludeNamespaces": list(exclude)}


class PluginError(Exception):
    def __init__(self, code: int, message: str, details: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise PluginError(CAPTURE_FAILED, f"the pod's capture check: {message}")


def capture_config(arguments: list[str]) -> CaptureConfig:
    """The capture the check's arguments describe, parsed as proxy-init parses them."""
    parser = _Parser(prog="intercept proxy-init --check", add_help=False)
    add_arguments(parser, CaptureConfig)
    try:
        return from_arguments(CaptureConfig, parser.parse_args(arguments))
    except CaptureConfigError as e:
        flag = flag_of(CaptureConfig, e.field) or e.field
        raise PluginError(CAPTURE_FAILED, f"the pod's capture check: {flag}: {e.problem}") from None


def cni_args(text: str) -> dict[str, str]:
    """`CNI_ARGS` (`K=V;K=V`) as a dict."""
    pairs = {}
    for item in filter(None, text.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise PluginError(INVALID_ENVIRONMENT, f"CNI_ARGS: {item!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


def _environment(env: Mapping[str, str], *names: str) -> list[str]:
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise PluginError(INVALID_ENVIRONMENT, f"{', '.join(missing)} not set")
    return [env[n] for n in names]


def read_pod(config: Mapping[str, Any], namespace: str, name: str) -> dict[str, Any]:
    kubeconfig = config.get("kubeconfig")
    if not isinstance(kubeconfig, str) or not kubeconfig:
        raise PluginError(INVALID_CONFIG, f"{PLUGIN}: the configuration names no kubeconfig")
    try:
        client = KubeClient(credentials(Path(kubeconfig)), timeout=10)
        pod: dict[str, Any] = client.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
    except (OSError, ValueError, ApiError) as e:
        raise PluginError(TRY_AGAIN_LATER, f"cannot read pod {namespace}/{name}", str(e)) from None
    if not isinstance(pod, dict) or pod.get("kind") != "Pod":
        raise PluginError(TRY_AGAIN_LATER, f"pod {namespace}/{name}: the API server sent no Pod")
    return pod


def capture(config: Mapping[str, Any], env: Mapping[str, str], install: bool) -> dict[str, Any]:
    """ADD (`install`) or CHECK: the pod's capture installed and verified, or only verified;
    the previous plugin's result."""
    previous = config.get("prevResult")
    if not isinstance(previous, dict):
        raise PluginError(
            INVALID_CONFIG, f"{PLUGIN} is chained: it needs the attaching plugin's prevResult"
        )
    (netns,) = _environment(env, "CNI_NETNS")
    if not netns.startswith("/"):
        raise PluginError(INVALID_ENVIRONMENT, f"CNI_NETNS {netns!r} is not a path")
    args = cni_args(env.get("CNI_ARGS", ""))
    if "K8S_POD_NAMESPACE" not in args or "K8S_POD_NAME" not in args:
        return previous  # not a Kubernetes pod: nothing of ours
    if args["K8S_POD_NAMESPACE"] in (config.get("excludeNamespaces") or ()):
        return previous
    pod = read_pod(config, args["K8S_POD_NAMESPACE"], args["K8S_POD_NAME"])
    uid = (pod.get("metadata") or {}).get("uid")
    if args.get("K8S_POD_UID") and uid != args["K8S_POD_UID"]:
        raise PluginError(
            TRY_AGAIN_LATER,
            f"pod {args['K8S_POD_NAMESPACE']}/{args['K8S_POD_NAME']}: the API server has "
            f"another pod of that name (uid {uid}, not {args['K8S_POD_UID']})",
        )
    arguments = cni_capture(pod)
    if arguments is None:
        return previous
    rules = render(capture_config(arguments))
    where = f"pod {args['K8S_POD_NAMESPACE']}/{args['K8S_POD_NAME']}"
    try:
        if install:
            apply(rules, netns)
        differences = verify(rules, netns)
    except NetfilterError as e:
        raise PluginError(CAPTURE_FAILED, f"{where}: the capture failed", str(e)) from None
    if differences:
        detail = "; ".join(str(d) for d in differences)
        raise PluginError(CAPTURE_FAILED, f"{where}: the rules in force differ", detail)
    return previous


def run(command: str, stdin: str, env: Mapping[str, str]) -> dict[str, Any] | None:
    """The plugin's answer to one invocation (None: nothing to print)."""
    if command == "VERSION":
        return {"cniVersion": SUPPORTED_VERSIONS[-1], "supportedVersions": list(SUPPORTED_VERSIONS)}
    try:
        config = json.loads(stdin)
    except ValueError as e:
        raise PluginError(
            DECODING_FAILURE, f"{PLUGIN}: its configuration is not JSON: {e}"
        ) from None
    if not isinstance(config, dict):
        raise PluginError(DECODING_FAILURE, f"{PLUGIN}: its configuration is not an object")
    if config.get("cniVersion") not in SUPPORTED_VERSIONS:
        raise PluginError(
            INCOMPATIBLE_VERSION,
            f"{PLUGIN}: CNI version {config.get('cniVersion')!r} is not one of "
            f"{', '.join(SUPPORTED_VERSIONS)}",
        )
    if command == "ADD":
        return {**capture(config, env, install=True), "cniVersion": config["cniVersion"]}
    if command == "CHECK":
        capture(config, env, install=False)
        return None
    if command in ("DEL", "GC", "STATUS"):
        return None  # see the module's description
    raise PluginError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not known")


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    try:
        answer = run(command, "" if command == "VERSION" else sys.stdin.read(), os.environ)
    except Exception as e:  # always an error the runtime can read: the ADD fails (closed)
        if not isinstance(e, PluginError):
            e = PluginError(INTERNAL, f"{PLUGIN}: {type(e).__name__}: {e}")
        error = {"cniVersion": SUPPORTED_VERSIONS[-1], "code": e.code, "msg": e.message}
        if e.details:
            error["details"] = e.details
        print(json.dumps(error))
        return 1
    if answer is not None:
        print(json.dumps(answer))
    return 0
