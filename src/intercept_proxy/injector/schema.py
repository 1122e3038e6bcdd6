"""The chart's values schema, declared here beside the facts it states: the sidecars' users
(identities), the ports proxy-init captures or keeps (CaptureConfig, ports), the choices the
injector knows, the policy file's keys (policy.model). charts/intercept-proxy/values.schema.json
is this, rendered (`python -m intercept_proxy.injector.schema`; a test fails when it is stale),
and `intercept inject` checks its values against the same schema Helm does (values.py).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from intercept_proxy.identities import MAX_ID
from intercept_proxy.injector.networks import network_schema
from intercept_proxy.injector.settings import (
    CAPTURE_MODES,
    GATEWAY_POD_POLICIES,
    MAX_GRACE_S,
    MIN_GRACE_S,
    PULL_POLICIES,
    QUANTITY,
)
from intercept_proxy.netfilter.config import DNS, MAX_ENTRIES, CaptureConfig
from intercept_proxy.policy import approvals, credentials, limits
from intercept_proxy.policy.combined import OverrideMode, UnknownClients
from intercept_proxy.policy.model import Policy

PATH = "charts/intercept-proxy/values.schema.json"
CA_MODES = ("ephemeral", "secret", "certManager")
GATEWAY_CA_MODES = ("generated", "secret", "certManager")
# The rules of the guardrails' ClusterPolicy require-security-context (guardrails.yaml).
SECURITY_CONTEXT_RULES = (
    "require-security-context-constraints",
    "require-debug-container-security-context",
    "require-pod-security-context",
)

_CAPTURE = CaptureConfig()
_SIDECARS = _CAPTURE.sidecar_port_range
_REDIRECTS = (_CAPTURE.tls_redirect_port, _CAPTURE.http_redirect_port, _CAPTURE.dns_port)


def _ref(name: str, description: str = "") -> dict[str, Any]:
    return {
        "$ref": f"#/definitions/{name}",
        **({"description": description} if description else {}),
    }


def _object(description: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A mapping holding exactly `properties`, all of them required."""
    node = {"type": "object", "description": description} if description else {"type": "object"}
    return {
        **node,
        "additionalProperties": False,
        "required": list(properties),
        "properties": properties,
        **extra,
    }


def _list(description: str, items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "array",
        "description": description,
        "items": items,
        "uniqueItems": True,
        **extra,
    }


def _count(description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "description": description}


def _choice(description: str, choices: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "string", "enum": list(choices), "description": description}


def _image(description: str) -> dict[str, Any]:
    return _object(description, {"repository": _ref("repository"), "tag": _ref("tag")})


def _resources(whose: str) -> dict[str, Any]:
    quantities = {"requests": _ref("quantities"), "limits": _ref("quantities")}
    return _object(f"{whose} requests and limits.", quantities)


_DNS_NAME = r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
DEFINITIONS: dict[str, Any] = {
    "repository": {
        "type": "string",
        "description": "An image repository, without tag or digest.",
        "pattern": "^([a-zA-Z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._/-][a-z0-9]+)*$",
    },
    "tag": {
        "type": "string",
        "description": "A version tag: what runs is what was tested, never latest.",
        "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
        "not": {"const": "latest"},
    },
    "uid": {
        "type": "integer",
        "description": f"A user ID other than root, at most {MAX_ID}, Kubernetes' limit.",
        "minimum": 1,
        "maximum": MAX_ID,
    },
    "port": {
        "type": "integer",
        "description": f"A captured TCP port: outside the sidecars' range {_SIDECARS[0]}-"
        f"{_SIDECARS[1]}, and not {DNS} (DNS always goes to the agent).",
        "minimum": 1,
        "maximum": 65535,
        "not": {
            "anyOf": [{"minimum": _SIDECARS[0], "maximum": _SIDECARS[1]}, {"const": DNS}],
        },
    },
    "inboundPort": {
        "type": "integer",
        "description": "A TCP port open from outside the pod: not one of the ports the "
        f"workload's traffic is redirected to ({', '.join(map(str, _REDIRECTS))}).",
        "minimum": 1,
        "maximum": 65535,
        "not": {"enum": list(_REDIRECTS)},
    },
    "cidr": network_schema(
        "An IPv4 or IPv6 network in CIDR notation, without host bits (10.0.0.0/8, "
        "fd00:10:96::/112); IPv6 in lower case, its leading groups then ::."
    ),
    "dnsName": {"type": "string", "pattern": f"^{_DNS_NAME}$", "maxLength": 253},
    "nodeDirectory": {
        "type": "string",
        "description": "An absolute path on the nodes, not /, without spaces.",
        "pattern": "^/\\S+$",
    },
    "dnsNameOrNone": {
        "type": "string",
        "description": "A DNS name, or empty for none.",
        "pattern": f"^({_DNS_NAME})?$",
        "maxLength": 253,
    },
    "quantities": {
        "type": "object",
        "description": "Resource quantities (cpu, memory, ...) as Kubernetes reads them: "
        "500m, 0.5, 1Gi, 2.",
        "additionalProperties": {
            "type": ["string", "number"],
            "pattern": f"^({QUANTITY.pattern})$",
        },
    },
    "domains": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
    "labelSelector": {
        "type": "object",
        "description": "A Kubernetes label selector.",
        "additionalProperties": False,
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {
                "type": "array",
                "items": _object(
                    "",
                    {
                        "key": {"type": "string", "minLength": 1},
                        "operator": _choice(
                            "How the label's value is matched.",
                            ("In", "NotIn", "Exists", "DoesNotExist"),
                        ),
                        "values": {"type": "array", "items": {"type": "string"}},
                    },
                    required=["key", "operator"],
                ),
            },
        },
    },
}


def _host_entries(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A list of mappings for one host each (the policy's parser checks the host itself)."""
    host = {"type": "string", "minLength": 1, "description": "An exact name, or *.suffix."}
    return {
        "type": "array",
        "items": _object("", {"host": host, **properties}, required=["host", *required]),
    }


# The policy's keys that are lists of mappings, as the chart takes them. A credential's secret
# and the AWS keys come from the agent's environment (the Secret <release>-credentials), never
# from a file.
_ENTRIES = {
    "credentials": _host_entries(
        {
            "header": {"type": "string", "minLength": 1},
            "scheme": {"type": "string", "enum": list(credentials.SCHEMES)},
            "env": {"type": "string", "minLength": 1},
            "placeholder": {"type": "string", "minLength": 1},
            "methods": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "paths": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        },
        ["env"],
    ),
    "aws_signing": _host_entries(
        {
            "service": {"type": "string", "minLength": 1},
            "region": {"type": "string", "minLength": 1},
            **{
                key: {"type": "string", "minLength": 1}
                for key in credentials.AWS_KEYS
                if key.endswith("_env")
            },
        },
        ["service", "region"],
    ),
    "rate_limits": _host_entries(
        {
            "requests_per_minute": {
                "type": "integer",
                "minimum": 1,
                "maximum": limits.MAX_PER_MINUTE,
            }
        },
        ["requests_per_minute"],
    ),
    "budgets": _host_entries(
        {
            "requests": {"type": "integer", "minimum": 1},
            "upload_bytes": {"type": "integer", "minimum": 1},
        },
        [],
    ),
}


_APPROVALS = _object(
    "",
    {
        "hosts": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "timeout_seconds": {
            "type": "integer",
            "minimum": 1,
            "maximum": approvals.MAX_TIMEOUT_SECONDS,
        },
    },
    required=["hosts"],
)

# A CA certificate's issuer (the sandbox CA's and the gateway's certManager modes).
_CERT_MANAGER = _object(
    "",
    {
        "issuerRef": _object(
            "",
            {
                "name": {"type": "string", "description": "The issuer of the CA certificate."},
                "kind": {
                    "type": "string",
                    "description": "Issuer, ClusterIssuer, or an external issuer's kind.",
                    "pattern": "^[A-Z][A-Za-z0-9]*$",
                },
            },
        )
    },
)


def _policy_key(key: dataclasses.Field[Any]) -> dict[str, Any]:
    if key.name == "approvals":
        node = _APPROVALS
    elif key.name in _ENTRIES:
        node = _ENTRIES[key.name]
    else:
        node = {"type": "boolean"} if key.type == "bool" else _ref("domains")
    return {**node, "description": key.metadata["help"]}


_POLICY_KEYS = {
    f.name: _policy_key(f)
    for f in dataclasses.fields(Policy)
    if "help" in f.metadata and f.metadata["chart"]
}

PROPERTIES: dict[str, Any] = {
    "global": {"type": "object", "description": "Helm's values shared with subcharts (none here)."},
    "image": _object(
        "The project's image: the agent and proxy-init.",
        {
            "repository": _ref("repository"),
            "tag": _ref("tag"),
            "pullPolicy": _choice("Pull policy of every injected container.", PULL_POLICIES),
        },
    ),
    "envoy": _object(
        "",
        {
            "image": _image("Envoy's upstream image."),
            "uid": _ref("uid", "Envoy's UID, exempt from the capture."),
            "resources": _resources("Envoy's"),
        },
    ),
    "agent": _object(
        "",
        {
            "uid": _ref("uid", "The agent's UID, exempt from the capture."),
            "certValidityHours": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "Validity of minted certificates, in hours.",
            },
            "resources": _resources("The agent's"),
        },
    ),
    "proxyInit": _object("", {"resources": _resources("proxy-init's")}),
    "capture": _object(
        "",
        {
            "tlsPorts": _list(
                "TCP ports sent to Envoy's TLS listener.", _ref("port"), maxItems=MAX_ENTRIES
            ),
            "httpPorts": _list(
                "TCP ports sent to Envoy's plain-HTTP listener.", _ref("port"), maxItems=MAX_ENTRIES
            ),
            "allowedCidrs": _list(
                "Destinations reached directly, without the policy.",
                _ref("cidr"),
                maxItems=MAX_ENTRIES,
            ),
            "inboundPorts": _list(
                "TCP ports open to connections from outside the pod, besides the agent's "
                "health port.",
                _ref("inboundPort"),
                maxItems=MAX_ENTRIES - 1,  # the agent's health port is one
            ),
            "mode": _choice(
                "Who installs the capture: proxy-init, root with NET_ADMIN (init), or the "
                "node's CNI plugin, proxy-init only checking it as an ordinary user (cni: "
                "intercepted pods pass Pod Security restricted; the node must run the plugin).",
                CAPTURE_MODES,
            ),
            "cni": _object(
                "CNI mode's node agent, a DaemonSet that installs the plugin on every node and "
                "captures the pods it attaches.",
                {
                    "nodeAgent": {
                        "type": "boolean",
                        "description": "Install it (mode cni); false: you run "
                        "`intercept cni-node` on the nodes yourself.",
                    },
                    "namespace": _ref("dnsName", "Its namespace (not the release's)."),
                    "createNamespace": {
                        "type": "boolean",
                        "description": "Create that namespace, Pod Security privileged: the "
                        "agent is root with NET_ADMIN, NET_RAW and SYS_ADMIN.",
                    },
                    "binDir": _ref("nodeDirectory", "The nodes' CNI plugin directory."),
                    "confDir": _ref("nodeDirectory", "The nodes' CNI configuration directory."),
                    "excludeNamespaces": _list(
                        "Namespaces whose pods the plugin passes without asking the agent "
                        "(they start while it is away), besides its own.",
                        _ref("dnsName"),
                    ),
                    "resources": _resources("The node agent's"),
                },
            ),
        },
    ),
    "dns": _object(
        "",
        {"forwardSuffixes": _list("Names the DNS sinkhole resolves for real.", _ref("dnsName"))},
    ),
    "upstream": _object(
        "",
        {
            "privateRanges": _list(
                "Non-public ranges Envoy may connect to (an internal registry's); it connects to "
                "no other non-public address, whatever a name resolves to.",
                _ref("cidr"),
            )
        },
    ),
    "policy": _object(
        "",
        {
            "podOverride": _choice(
                "What a pod's own policy (annotation intercept-proxy/opa-data) may do.",
                tuple(OverrideMode),
            ),
            "default": _object(
                "The default policy (docs/policy.md); rego_modules are not available in the chart.",
                _POLICY_KEYS,
                required=[],
            ),
        },
    ),
    "ca": _object(
        "",
        {
            "mode": _choice("A CA per pod, one from a Secret, or one from cert-manager.", CA_MODES),
            "secretName": {
                "type": "string",
                "description": "secret mode: an existing Secret (tls.crt, tls.key); empty: the "
                "chart's.",
                "pattern": "^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?)?$",
            },
            "certManager": _CERT_MANAGER,
        },
        # cert-manager needs an issuer.
        **{
            "if": {"properties": {"mode": {"const": "certManager"}}},
            "then": {
                "properties": {
                    "certManager": {
                        "properties": {"issuerRef": {"properties": {"name": {"minLength": 1}}}}
                    }
                }
            },
        },
    ),
    "serviceAccountToken": _object(
        "",
        {
            "automount": {
                "type": "boolean",
                "description": "Mount the service account token into intercepted pods.",
            }
        },
    ),
    "approvals": _object(
        "Who may answer the agents' approval questions, with kubectl exec POD -c "
        "intercept-agent -- intercept approvals list|allow|deny (those commands alone). They "
        "also need pods/exec; empty: no one.",
        {
            "users": _list("User names.", {"type": "string", "minLength": 1}),
            "groups": _list("Group names.", {"type": "string", "minLength": 1}),
        },
    ),
    "clone": _object(
        "",
        {
            "namespaceSelector": _ref(
                "labelSelector",
                "The namespaces that get copies of the default policy (and a shared CA's "
                "Secret); empty: all but the release's.",
            ),
            "excludedNamespaces": _list("Namespaces that never get copies.", _ref("dnsName")),
        },
    ),
    "networkPolicy": _object(
        "",
        {
            "enabled": {
                "type": "boolean",
                "description": "Generate a NetworkPolicy in each namespace with intercepted pods.",
            },
            "kubernetesApiCidrs": _list("The Kubernetes API's addresses.", _ref("cidr")),
            "metadataCidrs": _list("The cloud metadata services' addresses.", _ref("cidr")),
            "dns": _object(
                "The cluster's DNS pods, reached by selector on port 53.",
                {"namespaceSelector": _ref("labelSelector"), "podSelector": _ref("labelSelector")},
            ),
        },
    ),
    "monitoring": _object(
        "",
        {
            "namespaceSelector": _ref(
                "labelSelector", "The namespaces whose pods scrape metrics (gateway, guardrails)."
            )
        },
    ),
    "kyverno": _object(
        "",
        {
            "namespace": _ref(
                "dnsName", "Kyverno's namespace (for the PolicyException, its service accounts)."
            ),
            "serviceAccounts": _object(
                "Kyverno's controllers' service accounts, bound to the chart's roles for them "
                "(empty: aggregated into Kyverno's roles only).",
                {
                    "admissionController": _ref("dnsNameOrNone"),
                    "backgroundController": _ref("dnsNameOrNone"),
                },
            ),
            "validationFailureAction": _choice("What a refused pod gets.", ("Enforce", "Audit")),
            "policyException": _object(
                "",
                {
                    "enabled": {
                        "type": "boolean",
                        "description": "Exempt proxy-init from the cluster's strict policies.",
                    },
                    "exceptions": {
                        "type": "array",
                        "description": "The cluster's policies and rules proxy-init is exempt "
                        "from.",
                        "items": _object(
                            "",
                            {
                                "policyName": {"type": "string", "minLength": 1},
                                "ruleNames": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {"type": "string", "minLength": 1},
                                },
                            },
                        ),
                    },
                },
            ),
        },
    ),
    "helmTest": _object(
        "",
        {
            "enabled": {"type": "boolean", "description": "Install the helm test pod."},
            "image": _image("The test's image (curl)."),
        },
    ),
    "cleanup": _object(
        "",
        {
            "enabled": {
                "type": "boolean",
                "description": "The hooks deleting the ClusterPolicies before an uninstall and "
                "the replaced generating ones before an upgrade.",
            },
            "image": _image("The hooks' image (kubectl)."),
        },
    ),
    "podSecurity": _object(
        "",
        {
            "enabled": {
                "type": "boolean",
                "description": "A Kyverno Pod Security policy for namespaces labelled "
                "intercept-proxy/pod-security.",
            }
        },
    ),
    "injection": _object(
        "",
        {
            "namespaceSelector": _ref(
                "labelSelector", "The namespaces this release injects; empty: all."
            )
        },
    ),
    "gateway": _object(
        "The egress gateway, a shared explicit proxy (docs/gateway.md).",
        {
            "enabled": {"type": "boolean", "description": "Install the egress gateway."},
            "namespace": _ref("dnsName", "Its namespace (not the release's)."),
            "createNamespace": {
                "type": "boolean",
                "description": "Create that namespace, Pod Security restricted.",
            },
            "uid": _ref("uid", "The user its agent and Envoy run as."),
            "terminationGracePeriodSeconds": {
                "type": "integer",
                "minimum": MIN_GRACE_S,
                "maximum": MAX_GRACE_S,
                "description": "A stopping replica waits for its clients' streams all of it "
                "but 5 s.",
            },
            "replicas": _count("Replicas when autoscaling is off."),
            "podPolicy": _choice(
                "narrow: a client pod's intercept-proxy/opa-data policy narrows the gateway's "
                "(pods read from the API server); none: ignored.",
                tuple(GATEWAY_POD_POLICIES),
            ),
            "unknownClients": _choice(
                "With podPolicy narrow, a client at an address no pod holds: judged by "
                "policy.default, or refused.",
                tuple(UnknownClients),
            ),
            "ca": _object(
                "The CA every replica mints from (the Secret egress-proxy-ca).",
                {
                    "mode": _choice(
                        "Made by the chart, yours, or issued by cert-manager.", GATEWAY_CA_MODES
                    ),
                    "certManager": _CERT_MANAGER,
                },
            ),
            "resources": _object(
                "", {"agent": _resources("Its agent's"), "envoy": _resources("Its Envoy's")}
            ),
            "autoscaling": _object(
                "A HorizontalPodAutoscaler on CPU.",
                {
                    "enabled": {"type": "boolean", "description": "Autoscale the gateway."},
                    "minReplicas": _count("The fewest replicas."),
                    "maxReplicas": _count("The most replicas."),
                    "targetCPUUtilizationPercentage": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "The CPU use (of the requests) it scales to.",
                    },
                },
            ),
            "podDisruptionBudget": _object(
                "", {"minAvailable": _count("Replicas kept through voluntary disruptions.")}
            ),
            "topologySpread": {
                "type": "boolean",
                "description": "Spread the replicas over zones and nodes (preferred).",
            },
            "clients": _object(
                "Pods labelled networking/allow-egress=true.",
                {
                    "namespaceSelector": _ref(
                        "labelSelector", "The clients' namespaces; empty: all but the excluded."
                    ),
                    "networkPolicy": {
                        "type": "boolean",
                        "description": "They reach only the gateway and DNS.",
                    },
                    "proxyEnv": {
                        "type": "boolean",
                        "description": "Kyverno sets their proxy variables and CA trust.",
                    },
                    "noProxy": _list(
                        "NO_PROXY's entries.", {"type": "string", "pattern": "^[^,\\s]+$"}
                    ),
                },
            ),
        },
    ),
    "guardrails": _object(
        "The seeds' cluster guardrails (docs/kubernetes.md, Guardrails).",
        {
            "enabled": {"type": "boolean", "description": "Install the guardrails."},
            "namespaces": _list(
                "Namespaces created isolated, at a Pod Security level, with a quota and limits.",
                _object(
                    "",
                    {
                        "name": _ref("dnsName"),
                        "podSecurity": _choice(
                            "Its Pod Security level.", ("restricted", "baseline", "privileged")
                        ),
                    },
                ),
            ),
            "resourceQuota": _ref("quantities", "Each namespace's ResourceQuota (spec.hard)."),
            "limitRange": _object(
                "Each namespace's container defaults.",
                {"default": _ref("quantities"), "defaultRequest": _ref("quantities")},
            ),
            "ingressControllers": _object(
                "",
                {
                    "namespaceSelector": _ref(
                        "labelSelector",
                        "Where pods labelled networking/allow-ingress=true accept "
                        "connections from.",
                    )
                },
            ),
            "securityContext": _object(
                "The minimum security context (ClusterPolicy require-security-context).",
                {
                    "enabled": {"type": "boolean", "description": "Enforce it."},
                    "exclusions": _list(
                        "Namespaces exempt from named rules of it.",
                        _object(
                            "",
                            {
                                "namespace": _ref("dnsName"),
                                "rules": _list(
                                    "The rules it is exempt from.",
                                    {"enum": list(SECURITY_CONTEXT_RULES)},
                                    minItems=1,
                                ),
                            },
                        ),
                    ),
                },
            ),
        },
    ),
}

VALUES_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "intercept-proxy chart values",
    "definitions": DEFINITIONS,
    "type": "object",
    "additionalProperties": False,
    "required": [key for key in PROPERTIES if key != "global"],
    "properties": PROPERTIES,
}


def chart_schema() -> str:
    """values.schema.json's text."""
    return json.dumps(VALUES_SCHEMA, indent=2) + "\n"


if __name__ == "__main__":
    print(chart_schema(), end="")
