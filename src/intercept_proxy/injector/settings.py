"""What the injector may be told: the chart's values, as one frozen, validated object."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from intercept_proxy import __version__, ports
from intercept_proxy.identities import AGENT_UID, ENVOY_UID, GATEWAY_UID
from intercept_proxy.netfilter.config import CaptureConfig, CaptureConfigError
from intercept_proxy.policy.combined import OverrideMode, UnknownClients
from intercept_proxy.xds.resources import cidr

# Container images. Never `latest`: what runs is what was tested.
IMAGE_REPOSITORY = "intercept-proxy/intercept-proxy"
ENVOY_REPOSITORY = "envoyproxy/envoy"
ENVOY_TAG = "v1.40.0"
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
DEFAULT_ENVOY_IMAGE = f"{ENVOY_REPOSITORY}:{ENVOY_TAG}"

ENABLED_LABEL = "intercept-proxy/enabled"
# A gateway replica's grace period: its drain takes all of it but DRAIN_MARGIN_S (xds/envoy.py),
# and an hour at most (a stuck client must not hold a rollout forever).
MIN_GRACE_S, MAX_GRACE_S = 10, 3600
INJECTED_ANNOTATION = "intercept-proxy/injected"
POLICY_ANNOTATION = "intercept-proxy/opa-data"

PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class SettingsError(ValueError):
    """Settings that cannot produce a safe pod; the message names the setting."""


# A resource quantity as the API server reads it (resource.Quantity): a decimal number with an
# optional exponent or suffix. Kept as written; the API server is its judge.
QUANTITY = re.compile(
    r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?"
)


def check_quantity(value: Any, where: str) -> Any:
    """`value` unchanged (a number stays a number, as Helm writes it) once it reads as one."""
    text = str(value) if type(value) in (int, float) else value
    if not isinstance(text, str) or not QUANTITY.fullmatch(text):
        raise SettingsError(f"{where}: {value!r} is not a resource quantity (500m, 1Gi, 2)")
    return value


@dataclass(frozen=True)
class Resources:
    """A sidecar's requests and limits, as given."""

    requests: dict[str, str] = field(default_factory=lambda: {"cpu": "50m", "memory": "64Mi"})
    limits: dict[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "512Mi"})

    def to_k8s(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "limits": dict(self.limits)}

    def check(self, name: str) -> None:
        for kind in ("requests", "limits"):
            for resource, quantity in getattr(self, kind).items():
                check_quantity(quantity, f"{name}.{kind}.{resource}")


CAPTURE_MODES = ("init", "cni")
# What a gateway client's pod's own policy may do (the first: the default). A shared gateway's
# client never replaces its policy: it would widen it.
GATEWAY_POD_POLICIES = (OverrideMode.NARROW, OverrideMode.NONE)


@dataclass(frozen=True)
class InjectorSettings:
    image: str = DEFAULT_IMAGE
    envoy_image: str = DEFAULT_ENVOY_IMAGE
    image_pull_policy: str = "IfNotPresent"
    envoy_uid: int = ENVOY_UID
    agent_uid: int = AGENT_UID
    # TCP ports captured for the TLS and the plain-HTTP listener.
    tls_ports: tuple[int, ...] = (443,)
    http_ports: tuple[int, ...] = (80,)
    # Destinations the workload may reach directly (cluster-internal services), v4 and v6.
    allowed_cidrs: tuple[str, ...] = ()
    # Who installs the capture: proxy-init, root with NET_ADMIN ("init"), or the node's CNI
    # plugin, proxy-init then only checking it as an ordinary user ("cni": the pod passes Pod
    # Security `restricted`).
    capture_mode: str = "init"
    # TCP ports of the pod open to connections from outside it, besides the agent's health
    # port (kubelet probes): a server of the workload's, the agent's metrics for a scraper.
    inbound_ports: tuple[int, ...] = ()
    # Non-public ranges Envoy may connect to (an internal registry's); no other non-public
    # address, whatever a name resolves to (xds/resources.py, `refused_ranges`).
    upstream_private_ranges: tuple[str, ...] = ()
    # The Kubernetes API's addresses (the chart's networkPolicy.kubernetesApiCidrs): the egress
    # gateway's Envoy never connects there, though its pod may reach them (its agent's watch).
    kubernetes_api_cidrs: tuple[str, ...] = ()
    # DNS names the agent resolves for real (everything else gets a synthetic answer).
    dns_forward_suffixes: tuple[str, ...] = ("cluster.local",)
    # The ConfigMap holding `policy.yaml`, the policy every injected pod enforces by default.
    policy_config_map: str = "intercept-proxy-policy"
    # What a pod's own policy (its intercept-proxy/opa-data annotation) may do.
    policy_override: OverrideMode = OverrideMode.NARROW
    # The sandbox CA: a new one per pod ("ephemeral"), or one shared from a Secret holding
    # tls.crt and tls.key ("secret": created by the chart, or by cert-manager).
    ca_mode: str = "ephemeral"
    ca_secret: str = ""
    # The Secret whose keys become the agent's environment (the policy's credentials name them,
    # `env: KEY`): read by the agent alone, optional (a pod without one runs without secrets).
    credentials_secret: str = "intercept-proxy-credentials"
    cert_validity_hours: float = 12.0
    automount_service_account_token: bool = False
    agent_resources: Resources = field(default_factory=Resources)
    envoy_resources: Resources = field(default_factory=Resources)
    init_resources: Resources = field(
        default_factory=lambda: Resources({"cpu": "10m", "memory": "32Mi"}, {"memory": "128Mi"})
    )
    # The egress gateway's pods (injector/gateway.py): their user and their containers' sizes.
    gateway_uid: int = GATEWAY_UID
    gateway_agent_resources: Resources = field(
        default_factory=lambda: Resources({"cpu": "100m", "memory": "128Mi"}, {"memory": "512Mi"})
    )
    gateway_envoy_resources: Resources = field(
        default_factory=lambda: Resources({"cpu": "250m", "memory": "128Mi"}, {"memory": "1Gi"})
    )
    # A stopping replica's grace period: it drains for all of it but the last DRAIN_MARGIN_S.
    gateway_grace_s: int = 30
    # Whether a client's pod's own policy narrows the gateway's (NARROW: pods read from the API
    # server), and what a client no pod holds the address of gets.
    gateway_pod_policy: OverrideMode = GATEWAY_POD_POLICIES[0]
    gateway_unknown_clients: UnknownClients = UnknownClients.DEFAULT
    # CNI mode's node agent (injector/cninode.py): the nodes' CNI directories, the namespaces
    # whose pods the plugin passes without asking (besides the agent's own), its size.
    cni_bin_dir: str = "/opt/cni/bin"
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_exclude_namespaces: tuple[str, ...] = ("kube-system",)
    cni_node_resources: Resources = field(
        default_factory=lambda: Resources({"cpu": "10m", "memory": "64Mi"}, {"memory": "256Mi"})
    )

    def __post_init__(self) -> None:
        reserved = {0, self.envoy_uid, self.agent_uid}
        if len(reserved) != 3:
            raise SettingsError("envoy_uid and agent_uid must be distinct and not 0")
        if self.gateway_uid == 0:
            raise SettingsError("gateway_uid: the gateway never runs as root")
        if self.gateway_pod_policy not in GATEWAY_POD_POLICIES:
            raise SettingsError("gateway_pod_policy: a client's pod may narrow, never replace")
        if not MIN_GRACE_S <= self.gateway_grace_s <= MAX_GRACE_S:
            raise SettingsError(f"gateway_grace_s: from {MIN_GRACE_S} to {MAX_GRACE_S} seconds")
        try:  # proxy-init's own check, here: a pod it would refuse is never injected
            self.capture_config()
        except CaptureConfigError as e:
            raise SettingsError(str(e)) from None
        for name in ("upstream_private_ranges", "kubernetes_api_cidrs"):
            for text in getattr(self, name):
                try:
                    cidr(text)
                except ValueError as e:
                    raise SettingsError(f"{name}: {e}") from None
        if self.capture_mode not in CAPTURE_MODES:
            raise SettingsError(f"capture_mode: {self.capture_mode!r} is not 'init' or 'cni'")
        if self.ca_mode not in ("ephemeral", "secret"):
            raise SettingsError(f"ca_mode: {self.ca_mode!r} is not 'ephemeral' or 'secret'")
        if (self.ca_mode == "secret") != bool(self.ca_secret):
            raise SettingsError("ca_secret: a Secret name is needed with ca_mode 'secret' only")
        for name in ("image", "envoy_image"):
            image = getattr(self, name)
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                raise SettingsError(f"{name}: {image!r} must be pinned to a version tag")
        if not self.cert_validity_hours > 0:
            raise SettingsError(f"cert_validity_hours: {self.cert_validity_hours} is not positive")
        if self.image_pull_policy not in PULL_POLICIES:
            raise SettingsError(
                f"image_pull_policy: {self.image_pull_policy!r} is not one of {PULL_POLICIES}"
            )
        for name in ("cni_bin_dir", "cni_conf_dir"):
            path = getattr(self, name)
            if not path.startswith("/") or path.rstrip("/") == "" or "\0" in path:
                raise SettingsError(f"{name}: {path!r} is not an absolute directory of the node")
        for name in (
            "agent_resources", "envoy_resources", "init_resources",
            "gateway_agent_resources", "gateway_envoy_resources", "cni_node_resources",
        ):  # fmt: skip
            getattr(self, name).check(name)

    def capture_values(self) -> dict[str, Any]:
        """proxy-init's settings in every injected pod, as given (its command line keeps their
        order; CaptureConfig normalises them)."""
        return {
            "envoy_uid": self.envoy_uid,
            "agent_uid": self.agent_uid,
            "tls_ports": self.tls_ports,
            "http_ports": self.http_ports,
            "allowed_cidrs": self.allowed_cidrs,
            # The agent's health port first (kubelet probes), then the operator's.
            "inbound_ports": (ports.AGENT_HTTP, *self.inbound_ports),
        }

    def capture_config(self) -> CaptureConfig:
        """What proxy-init installs in every injected pod."""
        return CaptureConfig(**self.capture_values())

    @property
    def reserved_uids(self) -> tuple[int, ...]:
        return (0, self.envoy_uid, self.agent_uid)
