"""The chart's values as injector settings: one mapping, so the chart's Kyverno patch and
`intercept inject` are driven by the same numbers (a test renders the chart and compares).

A values file may give any part of the values, as for `helm install -f`: what it leaves out is
the chart's default, which is also the injector's (`DEFAULTS`, built from `InjectorSettings()`;
a test holds it equal to charts/intercept-proxy/values.yaml). A key the chart does not have, or
a value of the wrong type, is an error naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from intercept_proxy import __version__
from intercept_proxy.injector.settings import (
    ENVOY_REPOSITORY,
    ENVOY_TAG,
    IMAGE_REPOSITORY,
    PULL_POLICIES,
    InjectorSettings,
    Resources,
    SettingsError,
    check_quantity,
)
from intercept_proxy.policy.combined import OverrideMode

# A part of the chart's values the injection does not read (the chart's schema checks it).
IGNORED = object()


def _resources_values(resources: Resources) -> dict[str, Any]:
    return {"requests": dict(resources.requests), "limits": dict(resources.limits)}


def _defaults(s: InjectorSettings) -> dict[str, Any]:
    return {
        "global": IGNORED,  # Helm's own
        "image": {
            "repository": IMAGE_REPOSITORY,
            "tag": __version__,
            "pullPolicy": s.image_pull_policy,
        },
        "envoy": {
            "image": {"repository": ENVOY_REPOSITORY, "tag": ENVOY_TAG},
            "uid": s.envoy_uid,
            "resources": _resources_values(s.envoy_resources),
        },
        "agent": {
            "uid": s.agent_uid,
            "certValidityHours": s.cert_validity_hours,
            "resources": _resources_values(s.agent_resources),
        },
        "proxyInit": {"resources": _resources_values(s.init_resources)},
        "capture": {
            "tlsPorts": list(s.tls_ports),
            "httpPorts": list(s.http_ports),
            "allowedCidrs": list(s.allowed_cidrs),
            "inboundPorts": list(s.inbound_ports),
        },
        "dns": {"forwardSuffixes": list(s.dns_forward_suffixes)},
        "policy": {"podOverride": str(s.policy_override), "default": IGNORED},
        "ca": {"mode": s.ca_mode, "secretName": s.ca_secret, "certManager": IGNORED},
        "serviceAccountToken": {"automount": s.automount_service_account_token},
        "injection": IGNORED,
        "clone": IGNORED,
        "networkPolicy": IGNORED,
        "podSecurity": IGNORED,
        "kyverno": IGNORED,
        "helmTest": IGNORED,
        "cleanup": IGNORED,
    }


DEFAULTS = _defaults(InjectorSettings())
# The items of the lists (the defaults may be empty), and the maps whose keys are free.
ITEM_TYPES: dict[str, type] = {
    "capture.tlsPorts": int,
    "capture.httpPorts": int,
    "capture.allowedCidrs": str,
    "capture.inboundPorts": int,
    "dns.forwardSuffixes": str,
}
QUANTITY_MAPS = frozenset(
    f"{section}.resources.{kind}"
    for section in ("envoy", "agent", "proxyInit")
    for kind in ("requests", "limits")
)
CHOICES: dict[str, tuple[str, ...]] = {
    "image.pullPolicy": PULL_POLICIES,
    "policy.podOverride": tuple(str(m) for m in OverrideMode),
    "ca.mode": ("ephemeral", "secret", "certManager"),
}


def _type_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def _is(value: Any, kind: type) -> bool:
    """JSON's types: a boolean is not a number, an integer is a number."""
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


def _scalar(value: Any, default: Any, where: str) -> Any:
    if not _is(value, type(default)):
        raise SettingsError(f"values: {where}: {value!r} is not {_type_name(type(default))}")
    if where in CHOICES and value not in CHOICES[where]:
        raise SettingsError(f"values: {where}: {value!r} is not one of {CHOICES[where]}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise SettingsError(f"values: {where}: {value!r} is not a list")
    for i, item in enumerate(value):
        if not _is(item, ITEM_TYPES[where]):
            raise SettingsError(
                f"values: {where}[{i}]: {item!r} is not {_type_name(ITEM_TYPES[where])}"
            )
    return value


def _quantities(value: Any, default: dict[str, Any], where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise SettingsError(f"values: {where}: {value!r} is not a mapping")
    merged = {k: v for k, v in {**default, **value}.items() if v is not None}
    return {k: check_quantity(v, f"values: {where}.{k}") for k, v in merged.items()}


def _merge(default: dict[str, Any], given: Any, where: str) -> dict[str, Any]:
    """`given` over `default`, as Helm coalesces values: maps merged key by key, lists and
    scalars replaced."""
    if not isinstance(given, dict):
        raise SettingsError(f"values: {where or 'the file'}: {given!r} is not a mapping")
    out = dict(default)
    for key, value in given.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in default:
            raise SettingsError(f"values: {path}: the chart has no such value")
        if default[key] is IGNORED:
            continue
        if value is None:
            raise SettingsError(f"values: {path}: a value is needed")
        if path in QUANTITY_MAPS:
            out[key] = _quantities(value, default[key], path)
        elif isinstance(default[key], dict):
            out[key] = _merge(default[key], value, path)
        elif isinstance(default[key], list):
            out[key] = _list(value, path)
        else:
            out[key] = _scalar(value, default[key], path)
    return out


def _image(section: Mapping[str, Any]) -> str:
    return f"{section['repository']}:{section['tag']}"


def _resources(section: Mapping[str, Any]) -> Resources:
    return Resources(dict(section["requests"]), dict(section["limits"]))


def settings_from_values(given: Mapping[str, Any] | None, release: str) -> InjectorSettings:
    """The settings of the chart installed as `release` with the values `given` (a values
    file's content: any part of the chart's values; None for an empty file)."""
    values = _merge(DEFAULTS, {} if given is None else given, "")
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
        inbound_ports=tuple(values["capture"]["inboundPorts"]),
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


@dataclass(frozen=True)
class Parameter:
    """How one setting reaches the chart's templates, beside `settings_from_values` above: its
    Helm pipeline over the same values, and what stands for it when the injection is rendered
    into the chart (intercept_proxy.injector.template). A `sentinel` is a valid value no
    rendering otherwise contains (two items for a list, each rendered by the pipeline `item`
    applied to `.`); a setting whose value shapes the rendering lists its `choices` instead."""

    helm: str
    sentinel: Any = None
    item: str = ". | toString"
    choices: tuple[Any, ...] = ()
    # (setting, value): the sentinel stands only when that setting has that value.
    only_with: tuple[str, Any] | None = None


_PORT = ". | int | toString"
HELM_PARAMETERS: dict[str, Parameter] = {
    "image": Parameter(
        'printf "%s:%s" .Values.image.repository .Values.image.tag', "sentinel.invalid/image:s1"
    ),
    "envoy_image": Parameter(
        'printf "%s:%s" .Values.envoy.image.repository .Values.envoy.image.tag',
        "sentinel.invalid/envoy:s2",
    ),
    "image_pull_policy": Parameter(".Values.image.pullPolicy", choices=PULL_POLICIES),
    "envoy_uid": Parameter(".Values.envoy.uid | int", 990101),
    "agent_uid": Parameter(".Values.agent.uid | int", 990102),
    "tls_ports": Parameter(".Values.capture.tlsPorts", (61443, 61444), _PORT),
    "http_ports": Parameter(".Values.capture.httpPorts", (61080, 61081), _PORT),
    "allowed_cidrs": Parameter(".Values.capture.allowedCidrs", ("192.0.2.1/32", "192.0.2.2/32")),
    "inbound_ports": Parameter(".Values.capture.inboundPorts", (61900, 61901), _PORT),
    "dns_forward_suffixes": Parameter(
        ".Values.dns.forwardSuffixes", ("s1.sentinel.invalid", "s2.sentinel.invalid")
    ),
    "policy_config_map": Parameter('printf "%s-policy" .Release.Name', "sentinel-policy"),
    "policy_override": Parameter(".Values.policy.podOverride", choices=tuple(OverrideMode)),
    "ca_mode": Parameter(
        'ternary "ephemeral" "secret" (eq .Values.ca.mode "ephemeral")',
        choices=("ephemeral", "secret"),
    ),
    "ca_secret": Parameter(
        'include "intercept-proxy.caSecret" .',
        "sentinel-ca-secret",
        only_with=("ca_mode", "secret"),
    ),
    "cert_validity_hours": Parameter(".Values.agent.certValidityHours | float64", 990.25),
    "automount_service_account_token": Parameter(
        ".Values.serviceAccountToken.automount", choices=(False, True)
    ),
    "agent_resources": Parameter(
        ".Values.agent.resources", Resources({"cpu": "990001m"}, {"memory": "990001Mi"})
    ),
    "envoy_resources": Parameter(
        ".Values.envoy.resources", Resources({"cpu": "990002m"}, {"memory": "990002Mi"})
    ),
    "init_resources": Parameter(
        ".Values.proxyInit.resources", Resources({"cpu": "990003m"}, {"memory": "990003Mi"})
    ),
}
