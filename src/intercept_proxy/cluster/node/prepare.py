"""What the node does to a Pod from the API server before the local runtime runs it. Pure
functions (the API calls they need are passed in).

The runtime takes literal environment values (and the downward API's name and namespace) and
emptyDir, configMap, secret and downwardAPI volumes. The node therefore resolves, as a kubelet
does before starting containers:

- `env[].valueFrom` (configMapKeyRef, secretKeyRef, fieldRef, resourceFieldRef) and `envFrom`
  into literal values (`$` escaped: values from objects are not expanded);
- `projected` volumes into a `secret` volume of the same name whose items are the projection's
  files: configMap and secret sources (keys or items), downwardAPI sources (labels,
  annotations, name, namespace, uid), serviceAccountToken sources (a token from the TokenRequest
  API, bound to the pod, for its audience and lifetime). The synthetic Secret behind it is the
  node's own (`projected/VOLUME`, a name no real Secret can have), refreshed like the kubelet
  refreshes the projection (annotations, tokens at 80 % of their lifetime).
"""

from __future__ import annotations

import base64
import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

CONFIG_MAP = "ConfigMap"
SECRET = "Secret"
PROJECTED_PREFIX = "projected/"
DEFAULT_TOKEN_SECONDS = 3600
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
POD_IP_FIELDS = ("status.podIP", "status.podIPs")

Objects = dict[tuple[str, str], dict[str, Any]]
# (audience or None, expirationSeconds) -> token
TokenSource = Callable[[str | None, int], str]


class PrepareError(ValueError):
    """The pod cannot start (yet): a missing object, an unsupported field. `waiting` errors
    (a missing ConfigMap, say) may resolve themselves; the others never do."""

    def __init__(self, message: str, *, reason: str, waiting: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.waiting = waiting


@dataclass(frozen=True)
class Reference:
    kind: str
    name: str
    optional: bool


def _containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _volume_references(source: Mapping[str, Any], secret_name: str) -> list[Reference]:
    """A volume's or a projection's ConfigMap and Secret (a volume names its Secret by
    `secretName`, a projection by `name`)."""
    refs = []
    for kind, key, name in ((CONFIG_MAP, "configMap", "name"), (SECRET, "secret", secret_name)):
        if key in source:
            refs.append(Reference(kind, source[key][name], bool(source[key].get("optional"))))
    return refs


def references(spec: Mapping[str, Any]) -> list[Reference]:
    """Every ConfigMap and Secret the pod reads (volumes, projections, env, envFrom)."""
    refs: list[Reference] = []
    for volume in spec.get("volumes") or []:
        refs += _volume_references(volume, secret_name="secretName")
        for source in (volume.get("projected") or {}).get("sources") or []:
            refs += _volume_references(source, secret_name="name")
    for container in _containers(spec):
        for item in container.get("env") or []:
            value_from = item.get("valueFrom") or {}
            for key, kind in (("configMapKeyRef", CONFIG_MAP), ("secretKeyRef", SECRET)):
                if key in value_from:
                    ref = value_from[key]
                    refs.append(Reference(kind, ref["name"], bool(ref.get("optional"))))
        for source in container.get("envFrom") or []:
            for key, kind in (("configMapRef", CONFIG_MAP), ("secretRef", SECRET)):
                if key in source:
                    ref = source[key]
                    refs.append(Reference(kind, ref["name"], bool(ref.get("optional"))))
    unique: dict[tuple[str, str], Reference] = {}
    for ref in refs:
        known = unique.get((ref.kind, ref.name))
        # Needed by one use, it is needed.
        unique[(ref.kind, ref.name)] = (
            ref if known is None else Reference(ref.kind, ref.name, known.optional and ref.optional)
        )
    return list(unique.values())


def object_data(obj: Mapping[str, Any] | None) -> dict[str, bytes]:
    """A ConfigMap's or Secret's keys and their bytes."""
    if obj is None:
        return {}
    if obj.get("kind") == SECRET:
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    return data | {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace").replace("$", "$$")


# -- the downward API ------------------------------------------------------------------------


@dataclass
class PodFacts:
    """What the downward API and env refs read besides the pod itself."""

    node_name: str
    host_ip: str
    pod_ips: tuple[str, ...] = ()


def field_value(field_path: str, pod: Mapping[str, Any], facts: PodFacts) -> str:
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    for kind in ("labels", "annotations"):
        if field_path == f"metadata.{kind}":
            values = metadata.get(kind) or {}
            return "".join(f'{k}="{v}"\n' for k, v in sorted(values.items()))
        prefix = f"metadata.{kind}['"
        if field_path.startswith(prefix) and field_path.endswith("']"):
            return str((metadata.get(kind) or {}).get(field_path[len(prefix) : -2], ""))
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", "default"),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": facts.node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
        "status.podIP": facts.pod_ips[0] if facts.pod_ips else "",
        "status.podIPs": ",".join(facts.pod_ips),
    }
    if field_path not in simple:
        raise PrepareError(
            f"fieldRef {field_path!r} is not supported", reason="CreateContainerConfigError"
        )
    return str(simple[field_path])


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def quantity(text: str) -> float:
    match = _QUANTITY.match(str(text))
    if not match or match.group(2) not in _SUFFIX:
        raise PrepareError(
            f"quantity {text!r} is not understood", reason="CreateContainerConfigError"
        )
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def resource_value(
    ref: Mapping[str, Any], container: Mapping[str, Any], capacity: Mapping[str, str]
) -> str:
    """resourceFieldRef: the container's limit (the node's capacity without one) or request,
    divided by the divisor and rounded up, as the kubelet writes it."""
    resource = ref["resource"]
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None:
        value = capacity.get(name, "0") if kind == "limits" else "0"
    divisor = quantity(str(ref.get("divisor") or "1"))
    return str(math.ceil(quantity(str(value)) / divisor))


# -- env -------------------------------------------------------------------------------------


def resolve_env(
    container: dict[str, Any],
    pod: Mapping[str, Any],
    objects: Mapping[tuple[str, str], dict[str, Any] | None],
    facts: PodFacts,
    capacity: Mapping[str, str],
) -> dict[str, Any]:
    """The container with `envFrom` and every `valueFrom` made literal, but the pod's IPs
    (known once its network exists: see `fill_pod_ips`)."""
    out = copy.deepcopy(container)
    env: list[dict[str, Any]] = []
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for key, kind in (("configMapRef", CONFIG_MAP), ("secretRef", SECRET)):
            if key not in source:
                continue
            ref = source[key]
            obj = objects.get((kind, ref["name"]))
            if obj is None and not ref.get("optional"):
                raise PrepareError(
                    f"{kind} {ref['name']!r} not found (envFrom of container "
                    f"{container['name']!r})",
                    reason="CreateContainerConfigError",
                    waiting=True,
                )
            for k, v in sorted(object_data(obj).items()):
                if _ENV_NAME.fullmatch(prefix + k):  # the kubelet skips invalid names too
                    env.append({"name": prefix + k, "value": _text(v)})
    for item in container.get("env") or []:
        if "valueFrom" not in item:
            env.append(item)
            continue
        env.append(_resolve_item(item, container, pod, objects, facts, capacity))
    out["env"] = [e for e in env if e is not None]
    out.pop("envFrom", None)
    return out


def _resolve_item(
    item: dict[str, Any],
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
    objects: Mapping[tuple[str, str], dict[str, Any] | None],
    facts: PodFacts,
    capacity: Mapping[str, str],
) -> dict[str, Any]:
    name, value_from = item["name"], item["valueFrom"]
    for key, kind in (("configMapKeyRef", CONFIG_MAP), ("secretKeyRef", SECRET)):
        if key in value_from:
            ref = value_from[key]
            data = object_data(objects.get((kind, ref["name"])))
            if ref["key"] in data:
                return {"name": name, "value": _text(data[ref["key"]])}
            if ref.get("optional"):
                return {"name": name, "value": ""}
            raise PrepareError(
                f"{kind} {ref['name']!r} key {ref['key']!r} not found (env {name} of container "
                f"{container['name']!r})",
                reason="CreateContainerConfigError",
                waiting=True,
            )
    if "fieldRef" in value_from:
        path = value_from["fieldRef"]["fieldPath"]
        if path in POD_IP_FIELDS:
            return item  # filled in once the pod's network exists
        return {"name": name, "value": field_value(path, pod, facts).replace("$", "$$")}
    if "resourceFieldRef" in value_from:
        return {
            "name": name,
            "value": resource_value(value_from["resourceFieldRef"], container, capacity),
        }
    raise PrepareError(f"env {name}: unsupported valueFrom", reason="CreateContainerConfigError")


def fill_pod_ips(spec: dict[str, Any], pod: Mapping[str, Any], facts: PodFacts) -> None:
    """Replace, in place, the env values that name the pod's IPs (known now)."""
    for container in _containers(spec):
        for i, item in enumerate(container.get("env") or []):
            path = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            if path in POD_IP_FIELDS:
                container["env"][i] = {"name": item["name"], "value": field_value(path, pod, facts)}


# -- projected volumes -----------------------------------------------------------------------


@dataclass
class Projection:
    """A projected volume turned into a secret volume over a synthetic Secret."""

    volume: str
    secret_name: str
    tokens: list[tuple[str | None, int]] = field(default_factory=list)  # (audience, seconds)
    reads_metadata: bool = False


def _key_items(
    source: Mapping[str, Any], data: Mapping[str, bytes], where: str
) -> list[tuple[str, bytes, int | None]]:
    items = source.get("items")
    if items is None:
        return [(k, v, None) for k, v in sorted(data.items())]
    out = []
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise PrepareError(
                f"{where}: key {item['key']!r} not found", reason="ContainerCreating", waiting=True
            )
        out.append((item["path"], data[item["key"]], item.get("mode")))
    return out


def project(
    volume: Mapping[str, Any],
    pod: Mapping[str, Any],
    objects: Mapping[tuple[str, str], dict[str, Any] | None],
    facts: PodFacts,
    tokens: TokenSource,
) -> tuple[dict[str, Any], dict[str, Any], Projection]:
    """(the secret volume replacing `volume`, its synthetic Secret, what refreshes it)."""
    name = volume["name"]
    projected = volume["projected"] or {}
    projection = Projection(name, f"{PROJECTED_PREFIX}{name}")
    files: list[tuple[str, bytes, int | None]] = []
    for index, source in enumerate(projected.get("sources") or []):
        where = f"volume {name!r} source {index}"
        if "configMap" in source or "secret" in source:
            kind = CONFIG_MAP if "configMap" in source else SECRET
            s = source["configMap" if kind == CONFIG_MAP else "secret"]
            obj = objects.get((kind, s["name"]))
            if obj is None and not s.get("optional"):
                raise PrepareError(
                    f"{where}: {kind} {s['name']!r} not found",
                    reason="ContainerCreating",
                    waiting=True,
                )
            files += _key_items(s, object_data(obj), where)
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                if "fieldRef" not in item:
                    raise PrepareError(
                        f"{where}: only fieldRef items are supported",
                        reason="CreateContainerConfigError",
                    )
                value = field_value(item["fieldRef"]["fieldPath"], pod, facts)
                projection.reads_metadata = True
                files.append((item["path"], value.encode(), item.get("mode")))
        elif "serviceAccountToken" in source:
            s = source["serviceAccountToken"]
            seconds = int(s.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS)
            audience = s.get("audience") or None
            projection.tokens.append((audience, seconds))
            files.append((s["path"], tokens(audience, seconds).encode(), None))
        else:
            kinds = sorted(source)
            raise PrepareError(
                f"{where}: projected source {kinds} is not supported here",
                reason="CreateContainerConfigError",
            )
    data = {f"f{i}": base64.b64encode(content).decode() for i, (_, content, _) in enumerate(files)}
    items = [
        {"key": f"f{i}", "path": path, **({"mode": mode} if mode is not None else {})}
        for i, (path, _, mode) in enumerate(files)
    ]
    replacement: dict[str, Any] = {"secretName": projection.secret_name, "items": items}
    if "defaultMode" in projected:
        replacement["defaultMode"] = projected["defaultMode"]
    secret = {"kind": SECRET, "metadata": {"name": projection.secret_name}, "data": data}
    return {"name": name, "secret": replacement}, secret, projection


@dataclass
class Prepared:
    """The pod as the runtime will run it, with the objects its volumes read."""

    pod: dict[str, Any]
    objects: Objects
    projections: list[Projection]


def prepare(
    pod: Mapping[str, Any],
    objects: Mapping[tuple[str, str], dict[str, Any] | None],
    facts: PodFacts,
    tokens: TokenSource,
    capacity: Mapping[str, str],
) -> Prepared:
    """`objects`: every reference's object (None: not found). Raises PrepareError."""
    for ref in references(pod.get("spec") or {}):
        if objects.get((ref.kind, ref.name)) is None and not ref.optional:
            # Volumes wait in ContainerCreating; env in CreateContainerConfigError.
            raise PrepareError(
                f"{ref.kind.lower()} {ref.name!r} not found",
                reason="ContainerCreating",
                waiting=True,
            )
    out = copy.deepcopy(dict(pod))
    spec = out.setdefault("spec", {})
    found: Objects = {k: v for k, v in objects.items() if v is not None}
    projections = []
    volumes = []
    for volume in spec.get("volumes") or []:
        if "projected" in volume:
            replacement, secret, projection = project(volume, pod, objects, facts, tokens)
            found[(SECRET, projection.secret_name)] = secret
            projections.append(projection)
            volumes.append(replacement)
        else:
            volumes.append(volume)
    if volumes:
        spec["volumes"] = volumes
    for kind in ("initContainers", "containers"):
        if spec.get(kind):
            spec[kind] = [resolve_env(c, pod, objects, facts, capacity) for c in spec[kind]]
    return Prepared(out, found, projections)
