"""The injector: a Pod in, the same Pod with the interceptor around it out. Pure functions.

What it adds:
- `proxy-init` first among the init containers: the traffic capture (it alone is root, with
  NET_ADMIN and NET_RAW, and exits);
- the agent and Envoy as native sidecars (init containers with `restartPolicy: Always`), whose
  startup probes hold back everything after them until the interceptor is configured, so even
  the workload's own init containers are intercepted;
- the sandbox CA's trust bundle and the usual variables naming it, in every workload container;
- volumes: the policy (a ConfigMap), the CA (an in-memory emptyDir mounted into the agent only),
  the trust bundle (an emptyDir the agent writes and the workload reads).

The local runtime and Kubernetes run the very same output.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from intercept_proxy import ports
from intercept_proxy.injector.settings import (
    ENABLED_LABEL,
    INJECTED_ANNOTATION,
    POLICY_ANNOTATION,
    InjectorSettings,
)
from intercept_proxy.policy.combined import OverrideMode
from intercept_proxy.xds.bootstrap import Bootstrap, bootstrap
from intercept_proxy.xds.envoy import DEFAULT_ARGS as ENVOY_ARGS

POLICY_DIR = "/etc/intercept/policy"
POLICY_FILE = f"{POLICY_DIR}/policy.yaml"
CA_DIR = "/var/run/intercept/ca"
TRUST_DIR = "/var/run/intercept/trust"
TRUST_BUNDLE = f"{TRUST_DIR}/ca-bundle.pem"

POLICY_VOLUME = "intercept-policy"
CA_VOLUME = "intercept-ca"
TRUST_VOLUME = "intercept-trust"

POD_POLICY_VOLUME = "intercept-pod-policy"
POD_POLICY_DIR = "/etc/intercept/pod"
POD_POLICY_FILE = f"{POD_POLICY_DIR}/policy.yaml"
POD_POLICY_FIELD = f"metadata.annotations['{POLICY_ANNOTATION}']"

RESERVED_VOLUMES = frozenset({POLICY_VOLUME, CA_VOLUME, TRUST_VOLUME, POD_POLICY_VOLUME})
# The ServiceAccount admission plugin projects the token into this volume before any webhook
# runs, so `automountServiceAccountToken: false` set by the injection alone would not unmount it.
TOKEN_VOLUME_PREFIX = "kube-api-access-"

PROXY_INIT = "proxy-init"
AGENT = "intercept-agent"
ENVOY = "envoy"
SIDECARS = (PROXY_INIT, AGENT, ENVOY)

# Variables through which common clients find their CA bundle.
TRUST_VARIABLES = (
    "SSL_CERT_FILE",  # OpenSSL, Python ssl, Go (crypto/x509), Ruby
    "REQUESTS_CA_BUNDLE",  # Python requests
    "CURL_CA_BUNDLE",  # curl
    "NODE_EXTRA_CA_CERTS",  # Node.js
    "GIT_SSL_CAINFO",  # git
    "AWS_CA_BUNDLE",  # AWS CLI and SDKs
    "PIP_CERT",  # pip
    "CARGO_HTTP_CAINFO",  # cargo
)
# The only capability a workload may add: binding ports below 1024 changes nothing outside it.
ALLOWED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
# Pod-level settings that would share the node's network, processes or IPC.
HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace")


class InjectionError(ValueError):
    """A pod the interceptor cannot safely wrap; the message names the container and field."""


def is_enabled(metadata: dict[str, Any]) -> bool:
    return (metadata.get("labels") or {}).get(ENABLED_LABEL) == "true"


def is_injected(metadata: dict[str, Any]) -> bool:
    return (metadata.get("annotations") or {}).get(INJECTED_ANNOTATION) == "true"


def _restricted(uid: int) -> dict[str, Any]:
    return {
        "runAsUser": uid,
        "runAsGroup": uid,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _http_probe(path: str, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": ports.AGENT_HTTP},
        "periodSeconds": 1,
        "timeoutSeconds": 1,
        "failureThreshold": failures,
    }


def proxy_init_container(s: InjectorSettings) -> dict[str, Any]:
    command = ["intercept", "proxy-init", "--envoy-uid", str(s.envoy_uid)]
    command += ["--agent-uid", str(s.agent_uid)]
    for port in s.tls_ports:
        command += ["--tls-port", str(port)]
    for port in s.http_ports:
        command += ["--http-port", str(port)]
    for cidr in s.allowed_cidrs:
        command += ["--allow-cidr", cidr]
    command += ["--inbound-port", str(ports.AGENT_HTTP)]  # kubelet probes reach the agent
    return {
        "name": PROXY_INIT,
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "command": command,
        "resources": s.init_resources.to_k8s(),
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def agent_container(s: InjectorSettings) -> dict[str, Any]:
    # A shared CA comes from a Secret in its kubernetes.io/tls layout; an ephemeral one is made
    # by the agent itself on first start.
    cert, key = ("tls.crt", "tls.key") if s.ca_mode == "secret" else ("ca.pem", "ca.key")
    command = [
        "intercept", "agent", "run",
        "--policy", POLICY_FILE,
        "--ca-cert", f"{CA_DIR}/{cert}",
        "--ca-key", f"{CA_DIR}/{key}",
        "--trust-bundle", TRUST_BUNDLE,
        "--cert-validity-hours", f"{s.cert_validity_hours:g}",
        # Kubelet probes come to the pod's address.
        "--health-address", "0.0.0.0", "--health-address", "::",
    ]  # fmt: skip
    for suffix in s.dns_forward_suffixes:
        command += ["--dns-forward-suffix", suffix]
    mounts = [
        {"name": POLICY_VOLUME, "mountPath": POLICY_DIR, "readOnly": True},
        {"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": s.ca_mode == "secret"},
        {"name": TRUST_VOLUME, "mountPath": TRUST_DIR},
    ]
    if s.policy_override is not OverrideMode.NONE:
        command += ["--pod-policy", POD_POLICY_FILE, "--pod-policy-mode", str(s.policy_override)]
        mounts.append({"name": POD_POLICY_VOLUME, "mountPath": POD_POLICY_DIR, "readOnly": True})
    return {
        "name": AGENT,
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "restartPolicy": "Always",
        "command": command,
        "resources": s.agent_resources.to_k8s(),
        "securityContext": _restricted(s.agent_uid),
        "startupProbe": _http_probe("/healthz", failures=60),
        "livenessProbe": _http_probe("/healthz", failures=10),
        "volumeMounts": mounts,
    }


def envoy_container(s: InjectorSettings) -> dict[str, Any]:
    config = json.dumps(bootstrap(Bootstrap(node_id="intercept-sidecar")), sort_keys=True)
    return {
        "name": ENVOY,
        "image": s.envoy_image,
        "imagePullPolicy": s.image_pull_policy,
        "restartPolicy": "Always",
        "command": ["envoy", "--config-yaml", config, *ENVOY_ARGS, "--log-level", "warning"],
        "resources": s.envoy_resources.to_k8s(),
        "securityContext": _restricted(s.envoy_uid),
        # The agent is ready when Envoy has accepted its whole configuration: the workload
        # starts only once its traffic can be judged.
        "startupProbe": _http_probe("/readyz", failures=120),
        "readinessProbe": _http_probe("/readyz", failures=3),
    }


def volumes(s: InjectorSettings) -> list[dict[str, Any]]:
    # Mounted into the agent only: the CA's private key. A Secret's files are root's, so they
    # are readable by any user of a container that mounts them (the agent alone).
    ca: dict[str, Any] = (
        {"secret": {"secretName": s.ca_secret, "defaultMode": 0o444}}
        if s.ca_mode == "secret"
        else {"emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    )
    out = [
        {"name": POLICY_VOLUME, "configMap": {"name": s.policy_config_map}},
        {"name": CA_VOLUME, **ca},
        {"name": TRUST_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
    ]
    if s.policy_override is not OverrideMode.NONE:
        # The pod's own policy, followed when the annotation changes (the kubelet rewrites the
        # file, the agent reloads it): no restart.
        item = {"path": "policy.yaml", "fieldRef": {"fieldPath": POD_POLICY_FIELD}}
        out.append({"name": POD_POLICY_VOLUME, "downwardAPI": {"items": [item]}})
    return out


def _id(value: Any, where: str) -> int | None:
    """A user or group id: an integer (a string "101" would slip past a comparison with 101)."""
    if value is None:
        return None
    if type(value) is not int:
        raise InjectionError(f"{where}: {value!r} is not an integer")
    return value


def check_pod(spec: dict[str, Any], s: InjectorSettings) -> None:
    for field in HOST_NAMESPACES:
        if spec.get(field):
            raise InjectionError(f"spec.{field}: not allowed: it would share the node's namespaces")
    context = spec.get("securityContext") or {}
    if _id(context.get("runAsUser"), "spec.securityContext.runAsUser") in s.reserved_uids:
        raise InjectionError(
            f"spec.securityContext.runAsUser {context['runAsUser']} is reserved "
            "(root or a sidecar of the interceptor)"
        )
    groups = [
        _id(context.get("runAsGroup"), "spec.securityContext.runAsGroup"),
        _id(context.get("fsGroup"), "spec.securityContext.fsGroup"),
        *(
            _id(g, "spec.securityContext.supplementalGroups")
            for g in context.get("supplementalGroups") or []
        ),
    ]
    if 0 in groups:
        raise InjectionError("spec.securityContext: group 0 (root's) is not allowed")
    names = {v.get("name") for v in spec.get("volumes") or []}
    clash = names & RESERVED_VOLUMES
    if clash:
        raise InjectionError(f"volumes {sorted(clash)}: the names are reserved for the interceptor")


def check_workload(
    container: dict[str, Any], pod_context: dict[str, Any], s: InjectorSettings
) -> None:
    """Refuse what would let a workload container bypass or control the interceptor."""
    name = container.get("name", "?")
    where = f"container {name!r}"
    if name in SIDECARS:
        raise InjectionError(f"{where}: the name is reserved for the interceptor")
    context = container.get("securityContext") or {}
    uid = _id(context.get("runAsUser"), f"{where}: runAsUser")
    uid = uid if uid is not None else _id(pod_context.get("runAsUser"), "runAsUser")
    if uid in s.reserved_uids:
        who = "root" if uid == 0 else "a sidecar of the interceptor"
        raise InjectionError(
            f"{where}: runAsUser {uid} is reserved ({who}); the interceptor "
            f"exempts {s.envoy_uid} and {s.agent_uid} from capture, and root could undo it"
        )
    if _id(context.get("runAsGroup"), f"{where}: runAsGroup") == 0:
        raise InjectionError(f"{where}: runAsGroup 0 (root's group) is not allowed")
    if context.get("privileged"):
        raise InjectionError(f"{where}: securityContext.privileged is not allowed")
    if context.get("allowPrivilegeEscalation") is True:
        raise InjectionError(
            f"{where}: allowPrivilegeEscalation true is not allowed (a setuid program "
            "could gain what the interceptor takes away)"
        )
    added = {str(c).upper() for c in (context.get("capabilities") or {}).get("add") or []}
    if added - ALLOWED_CAPABILITIES:
        raise InjectionError(
            f"{where}: capabilities.add {sorted(added - ALLOWED_CAPABILITIES)}: only "
            f"{sorted(ALLOWED_CAPABILITIES)} may be added"
        )
    for mount in container.get("volumeMounts") or []:
        if mount.get("name") in RESERVED_VOLUMES:
            raise InjectionError(f"{where}: volume {mount['name']!r} is the interceptor's")


def _is_token(volume: dict[str, Any]) -> bool:
    return str(volume.get("name", "")).startswith(TOKEN_VOLUME_PREFIX)


def workload_container(container: dict[str, Any], s: InjectorSettings) -> dict[str, Any]:
    """The container trusting the sandbox CA: the bundle's variables replace its own of the same
    names (nothing it reaches over TLS is reached without the sandbox CA)."""
    out = copy.deepcopy(container)
    if not s.automount_service_account_token and "volumeMounts" in out:
        out["volumeMounts"] = [m for m in out["volumeMounts"] if not _is_token(m)]
    env = [e for e in out.get("env") or [] if e.get("name") not in TRUST_VARIABLES]
    out["env"] = env + [{"name": v, "value": TRUST_BUNDLE} for v in TRUST_VARIABLES]
    mounts = out.setdefault("volumeMounts", [])
    mounts.append({"name": TRUST_VOLUME, "mountPath": TRUST_DIR, "readOnly": True})
    context = out.setdefault("securityContext", {})
    context.setdefault("runAsNonRoot", True)  # no UID given: the image's must not be root
    context["allowPrivilegeEscalation"] = False
    caps = context.setdefault("capabilities", {})
    caps["drop"] = ["ALL"]  # what it added (NET_BIND_SERVICE at most) stays
    context.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    return out


def inject_pod_spec(
    metadata: dict[str, Any], spec: dict[str, Any], s: InjectorSettings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (metadata, spec) of the intercepted pod. Already injected: returned unchanged."""
    if is_injected(metadata):
        return copy.deepcopy(metadata), copy.deepcopy(spec)
    check_pod(spec, s)
    pod_context = spec.get("securityContext") or {}
    own_init = spec.get("initContainers") or []
    for container in [*own_init, *(spec.get("containers") or [])]:
        check_workload(container, pod_context, s)

    out_meta = copy.deepcopy(metadata)
    out_meta.setdefault("annotations", {})[INJECTED_ANNOTATION] = "true"
    out_spec = copy.deepcopy(spec)
    out_spec["initContainers"] = [
        proxy_init_container(s),
        agent_container(s),
        envoy_container(s),
        *(workload_container(c, s) for c in own_init),
    ]
    out_spec["containers"] = [workload_container(c, s) for c in spec.get("containers") or []]
    own_volumes = spec.get("volumes") or []
    if not s.automount_service_account_token:
        out_spec["automountServiceAccountToken"] = False
        own_volumes = [v for v in own_volumes if not _is_token(v)]
    out_spec["volumes"] = [*own_volumes, *volumes(s)]
    return out_meta, out_spec


def inject_pod(pod: dict[str, Any], s: InjectorSettings) -> dict[str, Any]:
    metadata, spec = inject_pod_spec(pod.get("metadata") or {}, pod.get("spec") or {}, s)
    return {**pod, "metadata": metadata, "spec": spec}
