"""The injector: a Pod in, the same Pod with the interceptor around it out. Pure functions.

What it adds:
- `proxy-init` first among the init containers: the traffic capture (it alone is root, with
  NET_ADMIN and NET_RAW, and exits);
- the agent and Envoy as native sidecars (init containers with `restartPolicy: Always`), whose
  startup probes hold back everything after them until the interceptor is configured, so even
  the workload's own init containers are intercepted;
- the sandbox CA's trust bundle and the usual variables naming it, in every workload container;
- volumes: the policy (a ConfigMap), the CA (an in-memory emptyDir mounted into the agent only),
  the trust bundle (an emptyDir the agent writes and the workload reads), the agent's control
  socket (an in-memory emptyDir mounted into the agent only).

What it refuses (check_pod, check_workload): whatever would let the workload undo, bypass or
control the capture. A pod annotated as injected already is not injected again but verified:
its interceptor must be exactly the one this injection adds.

The local runtime and Kubernetes run the very same output.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

from intercept_proxy import ports
from intercept_proxy.agent.control import CONTROL_DIR, CONTROL_SOCKET
from intercept_proxy.agent.settings import agent_command
from intercept_proxy.identities import CHECK_UID
from intercept_proxy.injector.settings import (
    ENABLED_LABEL,
    INJECTED_ANNOTATION,
    POLICY_ANNOTATION,
    InjectorSettings,
)
from intercept_proxy.netfilter.check import CHECK_FLAG
from intercept_proxy.netfilter.config import CaptureConfig
from intercept_proxy.options import command_line
from intercept_proxy.policy.combined import OverrideMode
from intercept_proxy.policy.model import POLICY_FILE_NAME
from intercept_proxy.xds.bootstrap import Bootstrap, bootstrap
from intercept_proxy.xds.envoy import DEFAULT_ARGS as ENVOY_ARGS

POLICY_DIR = "/etc/intercept/policy"
POLICY_FILE = f"{POLICY_DIR}/{POLICY_FILE_NAME}"
CA_DIR = "/var/run/intercept/ca"
TRUST_DIR = "/var/run/intercept/trust"
TRUST_BUNDLE = f"{TRUST_DIR}/ca-bundle.pem"

# Every volume of the interceptor is named so, and no volume of the workload may be.
INTERCEPTOR_PREFIX = "intercept-"
POLICY_VOLUME = "intercept-policy"
CA_VOLUME = "intercept-ca"
TRUST_VOLUME = "intercept-trust"
TRUST_MOUNT = {"name": TRUST_VOLUME, "mountPath": TRUST_DIR, "readOnly": True}

# The agent's control socket (pending approvals), in a directory only the agent mounts.
CONTROL_VOLUME = "intercept-control"

POD_POLICY_VOLUME = "intercept-pod-policy"
POD_POLICY_DIR = "/etc/intercept/pod"
POD_POLICY_FILE = f"{POD_POLICY_DIR}/{POLICY_FILE_NAME}"
POD_POLICY_FIELD = f"metadata.annotations['{POLICY_ANNOTATION}']"

# The ServiceAccount admission plugin projects the token into this volume before any webhook
# runs, so `automountServiceAccountToken: false` set by the injection alone would not unmount it.
TOKEN_VOLUME_PREFIX = "kube-api-access-"
# Where it mounts the token into every container with nothing mounted there. The sidecars hold
# an empty volume there: they have no use for a token, whatever serviceAccountToken.automount.
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
NO_TOKEN_VOLUME = "intercept-no-token"
NO_TOKEN_MOUNT = {"name": NO_TOKEN_VOLUME, "mountPath": TOKEN_PATH, "readOnly": True}

PROXY_INIT = "proxy-init"
PROXY_INIT_COMMAND = ["intercept", "proxy-init"]
AGENT = "intercept-agent"
ENVOY = "envoy"
SIDECARS = (PROXY_INIT, AGENT, ENVOY)

DEFAULT_MODE = 0o644

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
# The restricted Pod Security profile's volume types. The others are the node's files
# (hostPath) or storage the node mounts for the pod (nfs, iscsi, ...): reached from the node's
# network, around the capture.
ALLOWED_VOLUME_TYPES = (
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
)  # fmt: skip
# Security profiles a workload may not turn off (its container's or the pod's).
PROFILES = ("seccompProfile", "appArmorProfile")


class InjectionError(ValueError):
    """A pod the interceptor cannot safely wrap; the message names the container and field."""


def is_enabled(metadata: dict[str, Any]) -> bool:
    return (metadata.get("labels") or {}).get(ENABLED_LABEL) == "true"


def is_injected(metadata: dict[str, Any]) -> bool:
    return (metadata.get("annotations") or {}).get(INJECTED_ANNOTATION) == "true"


def restricted(uid: int) -> dict[str, Any]:
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


def http_probe(path: str, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": ports.AGENT_HTTP, "scheme": "HTTP"},
        "periodSeconds": 1,
        "timeoutSeconds": 1,
        "successThreshold": 1,
        "failureThreshold": failures,
    }


# What decides whether a sidecar is the interceptor's, verified in an injected pod: everything
# that runs code in it or changes what it runs (environment such as LD_PRELOAD, hooks, exec
# probes, mounts over its programs), so that a pod injected ahead of time cannot bring a sidecar
# of its own making. Left to other admission plugins: resources (LimitRanger, ResourceQuota),
# the pull policy (AlwaysPullImages), termination messages. The probes are written with every
# default the API server would add, so that the stored pod compares equal.
VERIFIED_FIELDS = (
    "name", "image", "command", "args", "workingDir", "env", "envFrom", "ports",
    "volumeMounts", "volumeDevices", "lifecycle", "startupProbe", "readinessProbe",
    "livenessProbe", "restartPolicy", "securityContext", "stdin", "tty",
)  # fmt: skip


def proxy_init_container(s: InjectorSettings) -> dict[str, Any]:
    capture = command_line(CaptureConfig, **s.capture_values())
    if s.capture_mode == "cni":
        # The node's CNI plugin installs what this names (`cni_capture`); this checks it.
        command = [*PROXY_INIT_COMMAND, CHECK_FLAG, *capture]
        context = restricted(CHECK_UID)
    else:
        command = PROXY_INIT_COMMAND + capture
        context = {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    return {
        "name": PROXY_INIT,
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "command": command,
        "resources": s.init_resources.to_k8s(),
        "securityContext": context,
        "volumeMounts": [dict(NO_TOKEN_MOUNT)],
    }


def cni_capture(pod: dict[str, Any]) -> list[str] | None:
    """The capture a pod injected in CNI mode asks of its node: its proxy-init's arguments after
    `--check` (None for any other pod). Decided by that container alone, which no one changes
    once the pod exists (an annotation could be taken off before the pod is scheduled); a pod
    that is not the interceptor's and asks anyway only captures itself."""
    init = (pod.get("spec") or {}).get("initContainers") or []
    first = init[0] if init and isinstance(init[0], dict) else {}
    command = first.get("command") or []
    prefix = [*PROXY_INIT_COMMAND, CHECK_FLAG]
    if first.get("name") != PROXY_INIT or command[: len(prefix)] != prefix:
        return None
    return [str(a) for a in command[len(prefix) :]]


def agent_secrets_and_probes(credentials_secret: str) -> dict[str, Any]:
    """What every agent's container has, the gateway's too."""
    return {
        # The credentials' secrets, if the pod's namespace holds them (`env:` in the policy).
        "envFrom": [{"secretRef": {"name": credentials_secret, "optional": True}}],
        "startupProbe": http_probe("/healthz", failures=60),
        "livenessProbe": http_probe("/healthz", failures=10),
    }


def agent_container(s: InjectorSettings) -> dict[str, Any]:
    # A shared CA comes from a Secret in its kubernetes.io/tls layout; an ephemeral one is made
    # by the agent itself on first start.
    shared = s.ca_mode == "secret"
    cert, key = ("tls.crt", "tls.key") if shared else ("ca.pem", "ca.key")
    command = agent_command(
        policy=Path(POLICY_FILE),
        ca_cert=Path(CA_DIR, cert),
        ca_key=Path(CA_DIR, key),
        trust_bundle=Path(TRUST_BUNDLE),
        cert_validity=dt.timedelta(hours=s.cert_validity_hours),
        health_addresses=("0.0.0.0", "::"),  # kubelet probes come to the pod's address
        # Always given: with `none`, the agent ignores the pod's own policy.
        pod_policy=Path(POD_POLICY_FILE),
        pod_policy_mode=OverrideMode(s.policy_override),
        dns_forward_suffixes=s.dns_forward_suffixes,
        upstream_private_ranges=s.upstream_private_ranges,
        control_socket=Path(CONTROL_SOCKET),
    )
    # readOnly only when true: the API server drops a false one, and the pod stored would no
    # longer be the pod rendered.
    ca_mount = {"name": CA_VOLUME, "mountPath": CA_DIR} | ({"readOnly": True} if shared else {})
    return {
        "name": AGENT,
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "restartPolicy": "Always",
        "command": command,
        "resources": s.agent_resources.to_k8s(),
        "securityContext": restricted(s.agent_uid),
        **agent_secrets_and_probes(s.credentials_secret),
        "volumeMounts": [
            {"name": POLICY_VOLUME, "mountPath": POLICY_DIR, "readOnly": True},
            ca_mount,
            {"name": TRUST_VOLUME, "mountPath": TRUST_DIR},
            {"name": POD_POLICY_VOLUME, "mountPath": POD_POLICY_DIR, "readOnly": True},
            {"name": CONTROL_VOLUME, "mountPath": CONTROL_DIR},
            dict(NO_TOKEN_MOUNT),
        ],
    }


def envoy_command(b: Bootstrap) -> list[str]:
    """Envoy's command in a pod, its bootstrap inline (the sidecar's, the gateway's)."""
    config = json.dumps(bootstrap(b), sort_keys=True)
    return ["envoy", "--config-yaml", config, *ENVOY_ARGS, "--log-level", "warning"]


def envoy_container(s: InjectorSettings) -> dict[str, Any]:
    return {
        "name": ENVOY,
        "image": s.envoy_image,
        "imagePullPolicy": s.image_pull_policy,
        "restartPolicy": "Always",
        "command": envoy_command(Bootstrap(node_id="intercept-sidecar")),
        "resources": s.envoy_resources.to_k8s(),
        "securityContext": restricted(s.envoy_uid),
        # The agent is ready when Envoy has accepted its whole configuration: the workload
        # starts only once its traffic can be judged.
        "startupProbe": http_probe("/readyz", failures=120),
        "readinessProbe": http_probe("/readyz", failures=3),
        "volumeMounts": [dict(NO_TOKEN_MOUNT)],
    }


def interceptor_containers(s: InjectorSettings) -> list[dict[str, Any]]:
    """The first three init containers of an injected pod, in order."""
    return [proxy_init_container(s), agent_container(s), envoy_container(s)]


def volumes(s: InjectorSettings) -> list[dict[str, Any]]:
    # Mounted into the agent only: the CA's private key. A Secret's files are root's, so they
    # are readable by any user of a container that mounts them (the agent alone).
    ca: dict[str, Any] = (
        {"secret": {"secretName": s.ca_secret, "defaultMode": 0o444}}
        if s.ca_mode == "secret"
        else {"emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    )
    # The pod's own policy, followed when the annotation changes (the kubelet rewrites the file,
    # the agent reloads it): no restart.
    field = {"apiVersion": "v1", "fieldPath": POD_POLICY_FIELD}
    return [
        {
            "name": POLICY_VOLUME,
            "configMap": {"name": s.policy_config_map, "defaultMode": DEFAULT_MODE},
        },
        {"name": CA_VOLUME, **ca},
        {"name": TRUST_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
        {
            "name": POD_POLICY_VOLUME,
            "downwardAPI": {
                "items": [{"path": POLICY_FILE_NAME, "fieldRef": field}],
                "defaultMode": DEFAULT_MODE,
            },
        },
        {"name": CONTROL_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {"name": NO_TOKEN_VOLUME, "emptyDir": {}},
    ]


def verified(container: Any) -> dict[str, Any]:
    """What of a sidecar must be exactly the injection's."""
    if not isinstance(container, dict):
        return {}
    return {f: container.get(f) for f in VERIFIED_FIELDS}


def _id(value: Any, where: str) -> int | None:
    """A user or group id: an integer (a string "101" would slip past a comparison with 101)."""
    if value is None:
        return None
    if type(value) is not int:
        raise InjectionError(f"{where}: {value!r} is not an integer")
    return value


def _is_interceptors(item: dict[str, Any]) -> bool:
    return str(item.get("name", "")).startswith(INTERCEPTOR_PREFIX)


def _check_profiles(context: dict[str, Any], where: str) -> None:
    for field in PROFILES:
        if (context.get(field) or {}).get("type") == "Unconfined":
            raise InjectionError(
                f"{where}.{field}: Unconfined is not allowed (the runtime's default profile "
                "keeps the workload from the kernel interfaces it has no use for)"
            )


def check_volume(volume: dict[str, Any], s: InjectorSettings) -> None:
    """A volume of the workload's: none of the interceptor's names, a type of the restricted
    profile's, not the sandbox CA's Secret, no service account token unless it is mounted."""
    where = f"volume {volume.get('name')!r}"
    if _is_interceptors(volume):
        raise InjectionError(f"{where}: names beginning with {INTERCEPTOR_PREFIX!r} are reserved")
    refused = sorted(set(volume) - {"name", *ALLOWED_VOLUME_TYPES})
    if refused:
        raise InjectionError(
            f"{where}: {', '.join(refused)} is not allowed: only {', '.join(ALLOWED_VOLUME_TYPES)}"
            " (the restricted Pod Security profile's types; the others reach the node's files, "
            "or are mounted by the node, outside the capture)"
        )
    sources = (volume.get("projected") or {}).get("sources") or []
    secrets = [(volume.get("secret") or {}).get("secretName")]
    secrets += [(source.get("secret") or {}).get("name") for source in sources]
    for name, holds in agent_secrets(s).items():
        if name in secrets:
            raise InjectionError(f"{where}: Secret {name!r} holds {holds}, for the agent alone")
    if not s.automount_service_account_token and any("serviceAccountToken" in x for x in sources):
        raise InjectionError(
            f"{where}: a serviceAccountToken source is not allowed: the service account token "
            "is not mounted into intercepted pods (serviceAccountToken.automount)"
        )


def check_pod(spec: dict[str, Any], s: InjectorSettings) -> None:
    """The pod's own settings and volumes (the interceptor's aside)."""
    for field in HOST_NAMESPACES:
        if spec.get(field):
            raise InjectionError(f"spec.{field}: not allowed: it would share the node's namespaces")
    # The sidecars resolve through the pod's resolv.conf and /etc/hosts: nameservers or host
    # entries of the pod's choosing would carry data out through the agent (whose DNS is
    # forwarded, never captured) or send Envoy's requests for an allowed host elsewhere.
    own_dns = {
        "spec.dnsPolicy": spec.get("dnsPolicy") == "None",
        "spec.dnsConfig.nameservers": bool((spec.get("dnsConfig") or {}).get("nameservers")),
    }
    chosen = [field for field, set_here in own_dns.items() if set_here]
    if chosen:
        raise InjectionError(
            f"{chosen[0]}: nameservers of the pod's own are not allowed: the interceptor "
            "resolves through the pod's DNS settings, which must be the cluster's"
        )
    if spec.get("hostAliases"):
        raise InjectionError(
            "spec.hostAliases: not allowed: the interceptor would resolve the pod's own host "
            "entries"
        )
    if spec.get("ephemeralContainers"):
        raise InjectionError(
            "spec.ephemeralContainers: not allowed: a debug container would join the pod "
            "unchecked (debug a copy: kubectl debug --copy-to)"
        )
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
    _check_profiles(context, "spec.securityContext")
    for volume in spec.get("volumes") or []:
        check_volume(volume, s)


def agent_secrets(s: InjectorSettings) -> dict[str, str]:
    """The Secrets only the agent may read, and what each holds."""
    out = {s.credentials_secret: "the policy's credentials"}
    if s.ca_mode == "secret":
        out[s.ca_secret] = "the sandbox CA's key"
    return out


def _secret_refs(container: dict[str, Any]) -> list[Any]:
    """The Secrets a container's environment reads."""
    env = [e.get("valueFrom") or {} for e in container.get("env") or []]
    refs = [(e.get("secretKeyRef") or {}).get("name") for e in env]
    return refs + [(e.get("secretRef") or {}).get("name") for e in container.get("envFrom") or []]


def check_workload(
    container: dict[str, Any],
    pod_context: dict[str, Any],
    s: InjectorSettings,
    interceptor_mounts: tuple[dict[str, Any], ...] = (),
) -> None:
    """Refuse what would let a workload container bypass or control the interceptor.
    `interceptor_mounts`: the mounts of the interceptor's volumes it may have (an injected
    pod's containers: the trust bundle's, as the injection adds it)."""
    name = container.get("name", "?")
    where = f"container {name!r}"
    if name in SIDECARS:
        raise InjectionError(f"{where}: the name is reserved for the interceptor")
    context = container.get("securityContext") or {}
    uid = _id(context.get("runAsUser"), f"{where}: runAsUser")
    uid = uid if uid is not None else _id(pod_context.get("runAsUser"), "runAsUser")
    if uid is None:
        raise InjectionError(
            f"{where}: no runAsUser (its securityContext's or the pod's): the image's user "
            f"could be root or {s.envoy_uid} or {s.agent_uid}, the UIDs the interceptor exempts "
            "from capture (nginx-unprivileged runs as 101)"
        )
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
    _check_profiles(context, f"{where}: securityContext")
    mounts = [m for m in container.get("volumeMounts") or [] if _is_interceptors(m)]
    if mounts and mounts != list(interceptor_mounts):
        raise InjectionError(
            f"{where}: volumeMounts {[m.get('name') for m in mounts]}: the interceptor's volumes"
            " are not the workload's to mount"
        )
    for name, holds in agent_secrets(s).items():
        if name in _secret_refs(container):
            raise InjectionError(
                f"{where}: env: Secret {name!r} holds {holds}, for the agent alone"
            )


def check_workloads(
    spec: dict[str, Any],
    s: InjectorSettings,
    interceptor_mounts: tuple[dict[str, Any], ...] = (),
) -> None:
    context = spec.get("securityContext") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        check_workload(container, context, s, interceptor_mounts)


def _difference(actual: Any, expected: dict[str, Any]) -> str:
    if not isinstance(actual, dict):
        return "missing"
    fields = sorted(k for k in actual.keys() | expected.keys() if actual.get(k) != expected.get(k))
    return f"{', '.join(fields)} not as the injection writes {'it' if len(fields) == 1 else 'them'}"


def check_injected(spec: dict[str, Any], s: InjectorSettings) -> None:
    """A pod injected ahead of time, by its annotation: the annotation is the pod's own word,
    so its interceptor must be exactly what this injection adds, and the rest of it passes the
    checks of a pod about to be injected."""
    init = spec.get("initContainers") or []
    for index, container in enumerate(interceptor_containers(s)):
        actual = verified(init[index] if index < len(init) else None)
        expected = verified(container)
        if actual != expected:
            difference = _difference(actual or None, expected)
            raise InjectionError(
                f"spec.initContainers[{index}] ({expected['name']}): {difference} (the pod is "
                f"annotated {INJECTED_ANNOTATION}, but this is not the interceptor)"
            )
    pod_volumes = spec.get("volumes") or []
    theirs = [v for v in pod_volumes if _is_interceptors(v)]
    if theirs != volumes(s):
        raise InjectionError(
            f"spec.volumes {[v.get('name') for v in theirs]}: the {INTERCEPTOR_PREFIX}* volumes "
            "are not the interceptor's as the injection writes them"
        )
    if (
        not s.automount_service_account_token
        and spec.get("automountServiceAccountToken") is not False
    ):
        raise InjectionError(
            "spec.automountServiceAccountToken: must be false: the service account token is not "
            "mounted into intercepted pods (serviceAccountToken.automount)"
        )
    pod_context = spec.get("securityContext") or {}
    for container in [*init[len(SIDECARS) :], *(spec.get("containers") or [])]:
        check_hardened(container, pod_context)
    workload = {
        **spec,
        "initContainers": init[len(SIDECARS) :],
        "volumes": [v for v in pod_volumes if not _is_interceptors(v)],
    }
    check_pod(workload, s)
    check_workloads(workload, s, (TRUST_MOUNT,))


def _is_token(volume: dict[str, Any]) -> bool:
    return str(volume.get("name", "")).startswith(TOKEN_VOLUME_PREFIX)


def check_hardened(container: dict[str, Any], pod_context: dict[str, Any]) -> None:
    """A workload container of a pod injected ahead of time has what workload_container sets:
    without no_new_privs a file capability in its image could make it a sidecar's UID."""
    where = f"container {container.get('name', '?')!r}: securityContext"
    context = container.get("securityContext") or {}
    dropped = {str(c).upper() for c in (context.get("capabilities") or {}).get("drop") or []}
    seccomp = context.get("seccompProfile") or pod_context.get("seccompProfile")
    if context.get("allowPrivilegeEscalation") is not False or "ALL" not in dropped or not seccomp:
        raise InjectionError(
            f"{where}: allowPrivilegeEscalation false, capabilities.drop [ALL] and a "
            "seccompProfile are required, as the injection writes them"
        )


def workload_container(container: dict[str, Any], s: InjectorSettings) -> dict[str, Any]:
    """The container trusting the sandbox CA: the bundle's variables replace its own of the same
    names (nothing it reaches over TLS is reached without the sandbox CA)."""
    out = copy.deepcopy(container)
    if not s.automount_service_account_token and "volumeMounts" in out:
        out["volumeMounts"] = [m for m in out["volumeMounts"] if not _is_token(m)]
    env = [e for e in out.get("env") or [] if e.get("name") not in TRUST_VARIABLES]
    out["env"] = env + [{"name": v, "value": TRUST_BUNDLE} for v in TRUST_VARIABLES]
    out.setdefault("volumeMounts", []).append(dict(TRUST_MOUNT))
    context = out.setdefault("securityContext", {})
    context.setdefault("runAsNonRoot", True)  # what strict policies check (the UID is never 0)
    context["allowPrivilegeEscalation"] = False
    caps = context.setdefault("capabilities", {})
    caps["drop"] = ["ALL"]  # what it added (NET_BIND_SERVICE at most) stays
    context.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    return out


def inject_pod_spec(
    metadata: dict[str, Any], spec: dict[str, Any], s: InjectorSettings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (metadata, spec) of the intercepted pod. Already injected (annotated): returned
    unchanged once its interceptor is verified to be this injection's."""
    if is_injected(metadata):
        check_injected(spec, s)
        return copy.deepcopy(metadata), copy.deepcopy(spec)
    own_volumes = spec.get("volumes") or []
    if not s.automount_service_account_token:
        own_volumes = [v for v in own_volumes if not _is_token(v)]
    check_pod({**spec, "volumes": own_volumes}, s)
    check_workloads(spec, s)

    out_meta = copy.deepcopy(metadata)
    out_meta.setdefault("annotations", {})[INJECTED_ANNOTATION] = "true"
    out_spec = copy.deepcopy(spec)
    own_init = spec.get("initContainers") or []
    out_spec["initContainers"] = [
        *interceptor_containers(s),
        *(workload_container(c, s) for c in own_init),
    ]
    out_spec["containers"] = [workload_container(c, s) for c in spec.get("containers") or []]
    if not s.automount_service_account_token:
        out_spec["automountServiceAccountToken"] = False
    out_spec["volumes"] = [*copy.deepcopy(own_volumes), *volumes(s)]
    return out_meta, out_spec


def inject_pod(pod: dict[str, Any], s: InjectorSettings) -> dict[str, Any]:
    metadata, spec = inject_pod_spec(pod.get("metadata") or {}, pod.get("spec") or {}, s)
    return {**pod, "metadata": metadata, "spec": spec}
