"""What the injector may be told: the chart's values, as one frozen, validated object."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from intercept_proxy import __version__, ports
from intercept_proxy.policy.combined import OverrideMode

# Container images. Never `latest`: what runs is what was tested.
DEFAULT_IMAGE = f"intercept-proxy/intercept-proxy:{__version__}"
DEFAULT_ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"

ENABLED_LABEL = "intercept-proxy/enabled"
INJECTED_ANNOTATION = "intercept-proxy/injected"
POLICY_ANNOTATION = "intercept-proxy/opa-data"

ENVOY_UID = 101
AGENT_UID = 102


class SettingsError(ValueError):
    """Settings that cannot produce a safe pod; the message names the setting."""


@dataclass(frozen=True)
class Resources:
    requests: dict[str, str] = field(default_factory=lambda: {"cpu": "50m", "memory": "64Mi"})
    limits: dict[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "512Mi"})

    def to_k8s(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "limits": dict(self.limits)}


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
    cert_validity_hours: float = 12.0
    automount_service_account_token: bool = False
    agent_resources: Resources = field(default_factory=Resources)
    envoy_resources: Resources = field(default_factory=Resources)
    init_resources: Resources = field(
        default_factory=lambda: Resources({"cpu": "10m", "memory": "32Mi"}, {"memory": "128Mi"})
    )

    def __post_init__(self) -> None:
        reserved = {0, self.envoy_uid, self.agent_uid}
        if len(reserved) != 3:
            raise SettingsError("envoy_uid and agent_uid must be distinct and not 0")
        for name in ("tls_ports", "http_ports"):
            for port in getattr(self, name):
                if not 0 < port < 65536 or ports.SIDECAR_RANGE[0] <= port <= ports.SIDECAR_RANGE[1]:
                    raise SettingsError(f"{name}: {port} is not a port outside 15000-15099")
        if set(self.tls_ports) & set(self.http_ports):
            raise SettingsError("tls_ports and http_ports overlap")
        for cidr in self.allowed_cidrs:
            try:
                ipaddress.ip_network(cidr)
            except ValueError as e:
                raise SettingsError(f"allowed_cidrs: {e}") from None
        if self.ca_mode not in ("ephemeral", "secret"):
            raise SettingsError(f"ca_mode: {self.ca_mode!r} is not 'ephemeral' or 'secret'")
        if (self.ca_mode == "secret") != bool(self.ca_secret):
            raise SettingsError("ca_secret: a Secret name is needed with ca_mode 'secret' only")
        for name in ("image", "envoy_image"):
            image = getattr(self, name)
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                raise SettingsError(f"{name}: {image!r} must be pinned to a version tag")

    @property
    def reserved_uids(self) -> tuple[int, ...]:
        return (0, self.envoy_uid, self.agent_uid)
