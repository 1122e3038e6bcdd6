"""The chart's values as injector settings: one mapping, so the chart's Kyverno patch and
`intercept inject` are driven by the same numbers (a test renders the chart and compares)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from intercept_proxy.injector.settings import InjectorSettings, Resources
from intercept_proxy.policy.combined import OverrideMode


def _image(section: Mapping[str, Any]) -> str:
    return f"{section['repository']}:{section['tag']}"


def _resources(section: Mapping[str, Any]) -> Resources:
    return Resources(dict(section["requests"]), dict(section["limits"]))


def settings_from_values(values: Mapping[str, Any], release: str) -> InjectorSettings:
    ca = values["ca"]
    secret = {"secret": ca["secretName"] or f"{release}-ca", "certManager": f"{release}-ca"}
    return InjectorSettings(
        image=_image(values["image"]),
        envoy_image=_image(values["envoy"]["image"]),
        image_pull_policy=values["image"]["pullPolicy"],
        envoy_uid=values["envoy"]["uid"],
        agent_uid=values["agent"]["uid"],
        tls_ports=tuple(values["capture"]["tlsPorts"]),
        http_ports=tuple(values["capture"]["httpPorts"]),
        allowed_cidrs=tuple(values["capture"]["allowedCidrs"]),
        dns_forward_suffixes=tuple(values["dns"]["forwardSuffixes"]),
        policy_config_map=f"{release}-policy",
        policy_override=OverrideMode(values["policy"]["podOverride"]),
        ca_mode="ephemeral" if ca["mode"] == "ephemeral" else "secret",
        ca_secret="" if ca["mode"] == "ephemeral" else secret[ca["mode"]],
        cert_validity_hours=float(values["agent"]["certValidityHours"]),
        automount_service_account_token=values["serviceAccountToken"]["automount"],
        agent_resources=_resources(values["agent"]["resources"]),
        envoy_resources=_resources(values["envoy"]["resources"]),
        init_resources=_resources(values["proxyInit"]["resources"]),
    )
