"""CNI mode's node agent in the cluster: the pod of the chart's DaemonSet, one per node, rendered
into the chart as the injection is (`template.py`; charts/intercept-proxy/templates/
cni-node.yaml wraps it with its namespace, account and RBAC).

`intercept cni-node` (netfilter/cninode.py) runs as root with NET_ADMIN and NET_RAW (iptables in
pods' namespaces) and SYS_ADMIN (entering them), every other capability dropped, on the node's
network (it must run before any pod network exists, the plugin passes its own namespace
unasked, and the plugin calls it on an abstract socket of the node's network namespace). From
the host it mounts the CNI plugin and configuration directories.
"""

from __future__ import annotations

from typing import Any

from intercept_proxy.injector.settings import InjectorSettings
from intercept_proxy.netfilter.cninode import DEFAULT_SOCKET

NAME = "intercept-proxy-cni-node"
CONTAINER = "cni-node"
BIN_MOUNT = "/host/cni/bin"
CONF_MOUNT = "/host/cni/net.d"
TMP = "/tmp"
# Where iptables takes its lock: the root filesystem is read-only.
XTABLES_LOCK = f"{TMP}/xtables.lock"
# Exists while the plugin is installed: the readiness probe's.
READY_FILE = f"{TMP}/installed"
CAPABILITIES = ("NET_ADMIN", "NET_RAW", "SYS_ADMIN")
# Enough to take the plugin out at an uninstall, even with a slow API server (cni-node's
# shutdown check waits 3 s at most).
GRACE_S = 30


def _command(s: InjectorSettings) -> list[str]:
    exclude = [a for ns in s.cni_exclude_namespaces for a in ("--exclude-namespace", ns)]
    return [
        "intercept",
        "cni-node",
        "--cni-bin-dir",
        BIN_MOUNT,
        "--cni-conf-dir",
        CONF_MOUNT,
        "--socket",
        DEFAULT_SOCKET,
        # Its own namespace's pods (itself, after a restart) never wait for it.
        "--exclude-namespace",
        "$(POD_NAMESPACE)",
        *exclude,
        "--ready-file",
        READY_FILE,
        "--daemonset",
        f"$(POD_NAMESPACE)/{NAME}",
    ]


def pod_spec(s: InjectorSettings) -> dict[str, Any]:
    """The DaemonSet's pod."""
    host_paths = {
        "cni-bin": (s.cni_bin_dir, BIN_MOUNT, "Directory"),
        "cni-conf": (s.cni_conf_dir, CONF_MOUNT, "Directory"),
    }
    return {
        "serviceAccountName": NAME,
        "automountServiceAccountToken": True,
        "hostNetwork": True,
        "priorityClassName": "system-node-critical",
        # Every node that may run an intercepted pod: every node.
        "tolerations": [{"operator": "Exists"}],
        "terminationGracePeriodSeconds": GRACE_S,
        "containers": [
            {
                "name": CONTAINER,
                "image": s.image,
                "imagePullPolicy": s.image_pull_policy,
                "command": _command(s),
                "env": [
                    {
                        "name": "POD_NAMESPACE",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                    },
                    {"name": "XTABLES_LOCKFILE", "value": XTABLES_LOCK},
                ],
                "securityContext": {
                    "runAsUser": 0,
                    "runAsGroup": 0,
                    "runAsNonRoot": False,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"], "add": list(CAPABILITIES)},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "resources": s.cni_node_resources.to_k8s(),
                "readinessProbe": {
                    "exec": {"command": ["test", "-e", READY_FILE]},
                    "periodSeconds": 2,
                },
                "volumeMounts": [
                    *({"name": n, "mountPath": m} for n, (_, m, _) in host_paths.items()),
                    {"name": "tmp", "mountPath": TMP},
                ],
            }
        ],
        "volumes": [
            *(
                {"name": n, "hostPath": {"path": p, "type": t}}
                for n, (p, _, t) in host_paths.items()
            ),
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        ],
    }
