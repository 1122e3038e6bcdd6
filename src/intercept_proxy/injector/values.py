"""The chart's values as injector settings: one mapping, so the chart's Kyverno patch and
`intercept inject` are driven by the same numbers (a test renders the chart and compares).

A values file may give any part of the values, as for `helm install -f`: what it leaves out is
the chart's default, which is also the injector's (`DEFAULTS`, built from `InjectorSettings()`;
a test holds it equal to charts/intercept-proxy/values.yaml). What it gives is checked against
the chart's schema (schema.py), as Helm checks it: the same values pass or fail both, and an
error names the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft7Validator, validators
from jsonschema.exceptions import ValidationError, best_match

from intercept_proxy import __version__
from intercept_proxy.injector.schema import DEFINITIONS, VALUES_SCHEMA
from intercept_proxy.injector.settings import (
    CAPTURE_MODES,
    ENVOY_REPOSITORY,
    ENVOY_TAG,
    GATEWAY_POD_POLICIES,
    IMAGE_REPOSITORY,
    PULL_POLICIES,
    InjectorSettings,
    Resources,
    SettingsError,
)
from intercept_proxy.policy.combined import OverrideMode, UnknownClients


def _resources_values(resources: Resources) -> dict[str, Any]:
    return {"requests": dict(resources.requests), "limits": dict(resources.limits)}


def _defaults(s: InjectorSettings) -> dict[str, Any]:
    """The chart's defaults of the values the injection reads (the rest it does not)."""
    return {
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
            "mode": s.capture_mode,
            "cni": {
                "binDir": s.cni_bin_dir,
                "confDir": s.cni_conf_dir,
                "excludeNamespaces": list(s.cni_exclude_namespaces),
                "resources": _resources_values(s.cni_node_resources),
            },
        },
        "dns": {"forwardSuffixes": list(s.dns_forward_suffixes)},
        "upstream": {"privateRanges": list(s.upstream_private_ranges)},
        "networkPolicy": {"kubernetesApiCidrs": list(s.kubernetes_api_cidrs)},
        "policy": {"podOverride": str(s.policy_override)},
        "ca": {"mode": s.ca_mode, "secretName": s.ca_secret},
        "serviceAccountToken": {"automount": s.automount_service_account_token},
        "gateway": {
            "uid": s.gateway_uid,
            "terminationGracePeriodSeconds": s.gateway_grace_s,
            "podPolicy": str(s.gateway_pod_policy),
            "unknownClients": str(s.gateway_unknown_clients),
            "resources": {
                "agent": _resources_values(s.gateway_agent_resources),
                "envoy": _resources_values(s.gateway_envoy_resources),
            },
        },
    }


DEFAULTS = _defaults(InjectorSettings())


def _optional(node: Any) -> Any:
    """The schema without `required`: the values the injection does not read have no defaults
    here, so a part given alone is checked for what it holds (`_check_present` checks that the
    values read are all there)."""
    if isinstance(node, dict):
        return {k: _optional(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [_optional(v) for v in node]
    return node


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """JSON Schema's `pattern` as Helm's Go engine reads it: `$` ends the text (in Python it
    also matches before a final newline, which let `v1\n` through as a tag)."""
    if isinstance(instance, str):
        anchored = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
        if not re.search(anchored, instance):
            yield ValidationError(f"{instance!r} does not match {pattern!r}")


HelmValidator = validators.extend(Draft7Validator, {"pattern": _pattern})  # type: ignore[no-untyped-call]
_VALIDATOR = HelmValidator(_optional(VALUES_SCHEMA))
_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
}


def _where(path: Any) -> str:
    where = ""
    for part in path:
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    return where


def _problem(error: ValidationError) -> tuple[str, str]:
    """(where, what is wrong) in the words of the values file, not of JSON Schema."""
    where = _where(error.absolute_path)
    # What the error holds is the values' and the schema's JSON (typed Any | Unset).
    value: Any = error.instance
    schema: Any = error.schema
    expected: Any = error.validator_value
    if error.validator == "additionalProperties":
        unknown = next(k for k in value if k not in schema.get("properties", {}))
        return _where([*error.absolute_path, unknown]), "the chart has no such value"
    if error.validator == "type":
        names = [_TYPES[k] for k in ([expected] if isinstance(expected, str) else expected)]
        return where, f"{value!r} is not {' or '.join(names)}"
    if error.validator == "enum":
        return where, f"{value!r} is not one of {tuple(expected)}"
    described = _description(error.absolute_schema_path)
    if not described:
        return where, error.message
    if error.validator in ("pattern", "not"):  # JSON Schema would quote the rule, not say it
        return where, f"{value!r} is not valid: {described}"
    return where, f"{error.message} ({described.rstrip('.')})"


def _resolve(node: Any) -> Any:
    return DEFINITIONS[node["$ref"].rpartition("/")[2]] if "$ref" in node else node


def _description(schema_path: Any) -> str | None:
    """The description nearest the keyword that failed (a pattern chosen by an `if` has none
    of its own, the network it is part of has)."""
    node, found = VALUES_SCHEMA, None
    for part in list(schema_path)[:-1]:
        node = node[part]
        if isinstance(node, dict):
            node = _resolve(node)
            found = node.get("description", found)
    return found


def check_values(values: Any) -> None:
    """Refuse values Helm's check of the chart's schema would refuse."""
    error = best_match(_VALIDATOR.iter_errors(values))
    if error is not None:
        where, problem = _problem(error)
        raise SettingsError(f"values: {where or 'the file'}: {problem}")


def _check_present(defaults: dict[str, Any], values: dict[str, Any], node: Any, where: str) -> None:
    """Every value the injection reads is there (a null given for it removed it)."""
    node = _resolve(node)
    if "properties" not in node:
        return  # a map of free keys (quantities): a null removes one, as in Helm
    for key, default in defaults.items():
        path = f"{where}.{key}" if where else key
        if key not in values:
            raise SettingsError(f"values: {path}: a value is needed")
        if isinstance(default, dict):
            _check_present(default, values[key], node["properties"][key], path)


def _coalesce(default: Any, given: Any) -> Any:
    """`given` over `default` as Helm coalesces values: maps merged key by key (a null removes
    a key the defaults have; elsewhere it stays, for the schema to refuse), lists and scalars
    replaced."""
    if not (isinstance(default, dict) and isinstance(given, dict)):
        return given
    merged = dict(default)
    for key, value in given.items():
        if value is None and key in default:
            del merged[key]
        else:
            merged[key] = _coalesce(default.get(key), value)
    return merged


def _image(section: Mapping[str, Any]) -> str:
    return f"{section['repository']}:{section['tag']}"


def _resources(section: Mapping[str, Any]) -> Resources:
    return Resources(dict(section["requests"]), dict(section["limits"]))


def settings_from_values(given: Mapping[str, Any] | None, release: str) -> InjectorSettings:
    """The settings of the chart installed as `release` with the values `given` (a values
    file's content: any part of the chart's values; None for an empty file)."""
    values = _coalesce(DEFAULTS, {} if given is None else given)
    check_values(values)
    _check_present(DEFAULTS, values, VALUES_SCHEMA, "")
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
        capture_mode=values["capture"]["mode"],
        cni_bin_dir=values["capture"]["cni"]["binDir"],
        cni_conf_dir=values["capture"]["cni"]["confDir"],
        cni_exclude_namespaces=tuple(values["capture"]["cni"]["excludeNamespaces"]),
        cni_node_resources=_resources(values["capture"]["cni"]["resources"]),
        dns_forward_suffixes=tuple(values["dns"]["forwardSuffixes"]),
        upstream_private_ranges=tuple(values["upstream"]["privateRanges"]),
        kubernetes_api_cidrs=tuple(values["networkPolicy"]["kubernetesApiCidrs"]),
        policy_config_map=f"{release}-policy",
        credentials_secret=f"{release}-credentials",
        policy_override=OverrideMode(values["policy"]["podOverride"]),
        ca_mode="ephemeral" if ca["mode"] == "ephemeral" else "secret",
        ca_secret="" if ca["mode"] == "ephemeral" else secret[ca["mode"]],
        cert_validity_hours=float(values["agent"]["certValidityHours"]),
        automount_service_account_token=values["serviceAccountToken"]["automount"],
        agent_resources=_resources(values["agent"]["resources"]),
        envoy_resources=_resources(values["envoy"]["resources"]),
        init_resources=_resources(values["proxyInit"]["resources"]),
        gateway_uid=values["gateway"]["uid"],
        gateway_grace_s=values["gateway"]["terminationGracePeriodSeconds"],
        gateway_pod_policy=OverrideMode(values["gateway"]["podPolicy"]),
        gateway_unknown_clients=UnknownClients(values["gateway"]["unknownClients"]),
        gateway_agent_resources=_resources(values["gateway"]["resources"]["agent"]),
        gateway_envoy_resources=_resources(values["gateway"]["resources"]["envoy"]),
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
    "capture_mode": Parameter(".Values.capture.mode", choices=CAPTURE_MODES),
    "cni_bin_dir": Parameter(".Values.capture.cni.binDir", "/sentinel/cni-bin"),
    "cni_conf_dir": Parameter(".Values.capture.cni.confDir", "/sentinel/cni-conf"),
    "cni_exclude_namespaces": Parameter(
        ".Values.capture.cni.excludeNamespaces", ("sentinel-ns-1", "sentinel-ns-2")
    ),
    "cni_node_resources": Parameter(
        ".Values.capture.cni.resources", Resources({"cpu": "990006m"}, {"memory": "990006Mi"})
    ),
    "dns_forward_suffixes": Parameter(
        ".Values.dns.forwardSuffixes", ("s1.sentinel.invalid", "s2.sentinel.invalid")
    ),
    "upstream_private_ranges": Parameter(
        ".Values.upstream.privateRanges", ("192.0.2.3/32", "192.0.2.4/32")
    ),
    "kubernetes_api_cidrs": Parameter(
        ".Values.networkPolicy.kubernetesApiCidrs", ("192.0.2.5/32", "192.0.2.6/32")
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
    "credentials_secret": Parameter(
        'include "intercept-proxy.credentialsSecret" .', "sentinel-credentials"
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
    "gateway_uid": Parameter(".Values.gateway.uid | int", 990104),
    "gateway_grace_s": Parameter(".Values.gateway.terminationGracePeriodSeconds | int", 3541),
    "gateway_pod_policy": Parameter(".Values.gateway.podPolicy", choices=GATEWAY_POD_POLICIES),
    "gateway_unknown_clients": Parameter(
        ".Values.gateway.unknownClients", choices=tuple(UnknownClients)
    ),
    "gateway_agent_resources": Parameter(
        ".Values.gateway.resources.agent", Resources({"cpu": "990004m"}, {"memory": "990004Mi"})
    ),
    "gateway_envoy_resources": Parameter(
        ".Values.gateway.resources.envoy", Resources({"cpu": "990005m"}, {"memory": "990005Mi"})
    ),
}
