"""CNI mode's capture, as the node agent (`netfilter.cninode`) makes it for the CNI plugin
`intercept-proxy-cni` (`cni/`, the Go program the node's container runtime runs, chained after
the plugin that attaches the pod). The plugin answers alone what needs no pod (VERSION, DEL,
sandboxes that are not Kubernetes pods, excluded namespaces) and hands every other ADD and
CHECK here, with the pod's network namespace.

ADD reads the pod (`CNI_ARGS` K8S_POD_NAMESPACE and K8S_POD_NAME) from the API server. A pod
injected in CNI mode names its capture in its first init container, the check
`intercept proxy-init --check ARGS`: the rules ARGS describe are installed in the pod's namespace
and verified, as proxy-init does in init mode. Any other pod is left alone. The result is the
previous plugin's. CHECK verifies the rules in force.

Fail closed: a pod that cannot be read, or rules that cannot be installed or verified, fail the
ADD, and the runtime makes the pod's network again later; the pod's own check fails it if it
ever starts without them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

from intercept_proxy.cluster.client import ApiError, KubeClient
from intercept_proxy.injector.pod import cni_capture
from intercept_proxy.netfilter.apply import NetfilterError, apply, verify
from intercept_proxy.netfilter.builder import render
from intercept_proxy.netfilter.config import CaptureConfig, CaptureConfigError
from intercept_proxy.options import add_arguments, flag_of, from_arguments

PLUGIN = "intercept-proxy-cni"
# The CNI specification's error codes.
INVALID_ENVIRONMENT, DECODING_FAILURE, INVALID_CONFIG, TRY_AGAIN_LATER = 4, 6, 7, 11
INTERNAL = 999
CAPTURE_FAILED = 100  # ours

PodReader = Callable[[str, str], dict[str, Any]]


def plugin_config(socket: str, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The plugin's entry in a network configuration list, after the plugin attaching pods:
    the node agent's socket, and the namespaces whose pods it passes without asking (they start
    while the agent or the API server is away; a pod of theirs injected in CNI mode then fails
    its own check)."""
    return {"type": PLUGIN, "socket": socket, "excludeNamespaces": list(exclude)}


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


def pod_reader(client: KubeClient) -> PodReader:
    """Pods read with `client`; what cannot be read is an error to try again later."""

    def read(namespace: str, name: str) -> dict[str, Any]:
        try:
            pod: dict[str, Any] = client.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        except (OSError, ValueError, ApiError) as e:
            raise PluginError(
                TRY_AGAIN_LATER, f"cannot read pod {namespace}/{name}", str(e)
            ) from None
        if not isinstance(pod, dict) or pod.get("kind") != "Pod":
            raise PluginError(
                TRY_AGAIN_LATER, f"pod {namespace}/{name}: the API server sent no Pod"
            )
        return pod

    return read


def capture(
    config: Mapping[str, Any],
    env: Mapping[str, str],
    netns: str,
    read_pod: PodReader,
    install: bool,
) -> dict[str, Any]:
    """ADD (`install`) or CHECK: the capture of the pod `env` names installed in `netns` (a
    path) and verified, or only verified; the previous plugin's result."""
    previous = config.get("prevResult")
    if not isinstance(previous, dict):
        raise PluginError(
            INVALID_CONFIG, f"{PLUGIN} is chained: it needs the attaching plugin's prevResult"
        )
    args = cni_args(env.get("CNI_ARGS", ""))
    namespace, name = (args.get(k) for k in ("K8S_POD_NAMESPACE", "K8S_POD_NAME"))
    if not namespace or not name:
        raise PluginError(
            INVALID_ENVIRONMENT, "CNI_ARGS: K8S_POD_NAMESPACE and K8S_POD_NAME are needed"
        )
    pod = read_pod(namespace, name)
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


def run(
    command: str, stdin: str, env: Mapping[str, str], netns: str, read_pod: PodReader
) -> dict[str, Any] | None:
    """The plugin's answer to an ADD or CHECK the plugin handed on (None: nothing to print)."""
    try:
        config = json.loads(stdin)
    except ValueError as e:
        raise PluginError(
            DECODING_FAILURE, f"{PLUGIN}: its configuration is not JSON: {e}"
        ) from None
    if not isinstance(config, dict):
        raise PluginError(DECODING_FAILURE, f"{PLUGIN}: its configuration is not an object")
    if command == "ADD":
        result = capture(config, env, netns, read_pod, install=True)
        return {**result, "cniVersion": config.get("cniVersion")}
    if command == "CHECK":
        capture(config, env, netns, read_pod, install=False)
        return None
    raise PluginError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not known")


def answer(stdin: str, env: Mapping[str, str], netns: str, read_pod: PodReader) -> tuple[int, str]:
    """The plugin's exit status and output for one call: its result, or the CNI error JSON of
    what failed (an unexpected exception too: the ADD fails, closed)."""
    try:
        result = run(env.get("CNI_COMMAND", ""), stdin, env, netns, read_pod)
    except Exception as e:
        if not isinstance(e, PluginError):
            e = PluginError(INTERNAL, f"{PLUGIN}: {type(e).__name__}: {e}")
        return failure(e, stdin)
    return 0, "" if result is None else json.dumps(result)


def failure(e: PluginError, stdin: str) -> tuple[int, str]:
    """The exit status and CNI error JSON of `e`, for the call whose configuration is
    `stdin`."""
    error = {"cniVersion": _version(stdin), "code": e.code, "msg": e.message}
    if e.details:
        error["details"] = e.details
    return 1, json.dumps(error)


def _version(stdin: str) -> str:
    """The configuration's CNI version, which the plugin checked, for an error's JSON."""
    try:
        return str(json.loads(stdin).get("cniVersion", ""))
    except (ValueError, AttributeError):
        return ""
