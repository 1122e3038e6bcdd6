"""What the local runtime refuses to run: a Pod manifest is untrusted input. Pure functions.

The kubelet may trust what an API server validated; this runtime runs on the machine it shares
with its caller, so it checks every field it uses itself, and names the field in its refusal:

- identities: user and group IDs are integers from 1000 to 2^31-1 (below: system accounts; the
  kernel reads (uid_t)-1 as "unchanged"), never an account or group of this machine (whose files
  every container shares) but those the operator chose (`intercept run --user`); only the
  interceptor's own containers (`trusted`, verified by the injector) run as root or as the
  interceptor's users;
- privileges: no privileged container, no capability but NET_BIND_SERVICE, no privilege
  escalation (this machine's setuid programs are in every container's root), no profile that
  turns the runtime's seccomp filter off;
- the node: no host namespace (hostNetwork, hostPID, hostIPC) and no hostPath volume, but for
  a pod its caller trusts as the node's own agent (`host`: a node's CNI agent), which may share
  the node's network and mount directories of the node's own filesystem;
- names and paths: container and volume names are DNS labels (they name directories), keys and
  item paths are relative and never climb out (`..`), as the API server requires;
- probes: an HTTP probe's port is a number and its path a path.
"""

from __future__ import annotations

import grp
import pwd
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from intercept_proxy.identities import MAX_ID
from intercept_proxy.runtime.privileges import CAPABILITIES
from intercept_proxy.runtime.volumes import VolumeError, quantity_bytes

MIN_GROUP = 1000  # below: this machine's system accounts and groups (disk, shadow, docker, ...)
ALLOWED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
VOLUME_TYPES = ("emptyDir", "configMap", "secret", "downwardAPI")
HOST_PATH_TYPES = ("", "Directory", "DirectoryOrCreate")
HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")


@dataclass(frozen=True)
class Accounts:
    """The user and group IDs of this machine's accounts, and those the operator chose."""

    users: frozenset[int] = frozenset()
    groups: frozenset[int] = frozenset()
    chosen: frozenset[int] = frozenset()

    @classmethod
    def of_this_machine(cls, chosen: frozenset[int] = frozenset()) -> Accounts:
        return cls(
            frozenset(u.pw_uid for u in pwd.getpwall()),
            frozenset(g.gr_gid for g in grp.getgrall()),
            chosen,
        )

    def taken(self, value: int, group: bool) -> bool:
        return value not in self.chosen and value in (self.groups if group else self.users)


class AdmissionError(ValueError):
    """A manifest this runtime will not run; the message names the field and the problem."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def _label(value: object, where: str) -> str:
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise AdmissionError(where, f"{value!r} is not a DNS label (a-z, 0-9, '-', at most 63)")
    return value


def _int(value: object, where: str, low: int, what: str) -> int:
    if type(value) is not int or not low <= value <= MAX_ID:
        raise AdmissionError(where, f"{value!r} is not {what} (an integer from {low} to {MAX_ID})")
    return value


def _key(value: object, where: str) -> None:
    if not isinstance(value, str) or not _KEY.fullmatch(value) or value.startswith(".."):
        raise AdmissionError(
            where, f"{value!r} is not a key (letters, digits, '-', '_', '.'; not starting '..')"
        )
    if value == ".":
        raise AdmissionError(where, "'.' is not a key")


def _relative_path(value: object, where: str) -> None:
    """A file inside a volume: relative, never climbing out, no empty or odd component."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise AdmissionError(where, f"{value!r} is not a path")
    if value.startswith("/"):
        raise AdmissionError(where, f"{value!r} is absolute: it must be relative to the volume")
    if ".." in value.split("/") or value.startswith(".."):
        raise AdmissionError(where, f"{value!r} climbs out of the volume ('..')")


def _mode(value: object, where: str) -> None:
    if value is not None and (type(value) is not int or not 0 <= value <= 0o777):
        raise AdmissionError(where, f"{value!r} is not a file mode (0 to 0777)")


def _items(items: object, where: str, keyed: bool) -> None:
    if items is None:
        return
    if not isinstance(items, list):
        raise AdmissionError(where, "is not a list")
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise AdmissionError(at, "is not an object")
        if keyed:
            _key(item.get("key"), f"{at}.key")
        _relative_path(item.get("path"), f"{at}.path")
        _mode(item.get("mode"), f"{at}.mode")


def _host_path(source: object, where: str) -> None:
    if not isinstance(source, dict):
        raise AdmissionError(where, "is not an object")
    path = source.get("path")
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise AdmissionError(f"{where}.path", f"{path!r} is not an absolute path")
    if ".." in path.split("/"):
        raise AdmissionError(f"{where}.path", f"{path!r} climbs out (..)")
    if source.get("type", "") not in HOST_PATH_TYPES:
        raise AdmissionError(
            f"{where}.type",
            f"{source.get('type')!r} is not supported here: only Directory, DirectoryOrCreate",
        )


def check_volume(volume: object, where: str, host: bool = False) -> str:
    """A volume's name, once its type and fields are ones this runtime provides (`host`: a
    hostPath too)."""
    if not isinstance(volume, dict):
        raise AdmissionError(where, "is not an object")
    name = _label(volume.get("name"), f"{where}.name")
    kinds = sorted(set(volume) - {"name"})
    if host and kinds == ["hostPath"]:
        _host_path(volume["hostPath"], f"{where}.hostPath")
        return name
    if len(kinds) != 1 or kinds[0] not in VOLUME_TYPES:
        raise AdmissionError(
            where,
            f"volume type {kinds} is not supported here: only one of {', '.join(VOLUME_TYPES)} "
            "(hostPath and network storage would reach this machine's files or network)",
        )
    source = volume[kinds[0]]
    if not isinstance(source, dict):
        raise AdmissionError(f"{where}.{kinds[0]}", "is not an object")
    _mode(source.get("defaultMode"), f"{where}.{kinds[0]}.defaultMode")
    if kinds[0] == "emptyDir" and source.get("sizeLimit") is not None:
        try:
            quantity_bytes(source["sizeLimit"])
        except VolumeError as e:
            raise AdmissionError(f"{where}.emptyDir.sizeLimit", str(e)) from None
    _items(source.get("items"), f"{where}.{kinds[0]}.items", keyed=kinds[0] != "downwardAPI")
    return name


def _capabilities(context: dict[str, Any], where: str, trusted: bool) -> None:
    caps = context.get("capabilities") or {}
    for kind in ("add", "drop"):
        for i, cap in enumerate(caps.get(kind) or []):
            name = cap.upper() if isinstance(cap, str) else cap
            known = name in CAPABILITIES or (kind == "drop" and name == "ALL")
            if not known:
                raise AdmissionError(f"{where}.capabilities.{kind}[{i}]", f"unknown {cap!r}")
            if kind == "add" and not trusted and name not in ALLOWED_CAPABILITIES:
                raise AdmissionError(
                    f"{where}.capabilities.add[{i}]",
                    f"{cap} is not allowed: only {', '.join(sorted(ALLOWED_CAPABILITIES))}",
                )


def _profile(context: dict[str, Any], where: str) -> None:
    kind = (context.get("seccompProfile") or {}).get("type")
    if kind not in (None, "RuntimeDefault"):
        raise AdmissionError(
            f"{where}.seccompProfile.type",
            f"{kind!r} is not supported: every container gets the runtime's default profile",
        )


def _security(context: object, where: str, trusted: bool) -> dict[str, Any]:
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise AdmissionError(where, "is not an object")
    if context.get("privileged"):
        raise AdmissionError(f"{where}.privileged", "privileged containers are not supported")
    if not trusted:
        if context.get("allowPrivilegeEscalation") is True:
            raise AdmissionError(
                f"{where}.allowPrivilegeEscalation",
                "true is not allowed: this machine's setuid programs are in every container",
            )
        _profile(context, where)
    _capabilities(context, where, trusted)
    return context


def _identity(
    container: dict[str, Any],
    pod_context: dict[str, Any],
    where: str,
    trusted: bool,
    reserved: Collection[int],
    accounts: Accounts,
) -> tuple[int, int]:
    context = container.get("securityContext") or {}
    field = "runAsUser"
    at = f"{where}.securityContext.{field}" if field in context else f"spec.securityContext.{field}"
    uid = context.get(field, pod_context.get(field))
    if uid is None:
        raise AdmissionError(
            f"{where}.securityContext.runAsUser",
            "missing: images are not run here, so there is no image default user",
        )
    uid = _int(uid, at, 0 if trusted else 1, "a user ID")
    if not trusted and uid in reserved:
        raise AdmissionError(at, f"{uid} is the interceptor's (root or a sidecar's)")
    if not trusted and uid not in accounts.chosen:
        _int(uid, at, MIN_GROUP, "a user ID of no system account")
        if accounts.taken(uid, group=False):
            raise AdmissionError(at, f"{uid} is an account of this machine: its files are its own")
    if uid == 0 and context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
        raise AdmissionError(at, "0 contradicts runAsNonRoot")
    field = "runAsGroup"
    at = f"{where}.securityContext.{field}" if field in context else f"spec.securityContext.{field}"
    gid = context.get(field, pod_context.get(field, uid))
    if field not in context and field not in pod_context:
        at += f" (defaults to runAsUser {uid})"
    gid = _int(gid, at, 0 if trusted else MIN_GROUP, "a group ID of no system group")
    if not trusted and accounts.taken(gid, group=True):
        raise AdmissionError(at, f"{gid} is a group of this machine: its files are its own")
    return uid, gid


def check_objects(objects: Mapping[tuple[str, str], dict[str, Any]]) -> None:
    """The ConfigMaps and Secrets a pod's volumes read: every key names a file of a volume."""
    for (kind, name), obj in objects.items():
        for field in ("data", "binaryData", "stringData"):
            section = obj.get(field) or {}
            if not isinstance(section, dict):
                raise AdmissionError(f"{kind} {name}: {field}", "is not a mapping")
            for key in section:
                _key(key, f"{kind} {name}: {field}[{key!r}]")


def check_pod(
    pod: object,
    trusted: Collection[str] = (),
    accounts: Accounts = Accounts(),
    host: bool = False,
) -> None:
    """Refuse `pod` unless this runtime can run it safely. `trusted`: the names of the
    interceptor's own containers (verified to be the injector's), which alone may be root;
    `accounts`: this machine's, which no other container may use; `host`: the pod is the
    node's own agent, which may share the node's network and mount its directories."""
    if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
        raise AdmissionError("spec", "missing")
    spec = pod["spec"]
    for field in HOST_NAMESPACES:
        if spec.get(field) and not (host and field == "hostNetwork"):
            raise AdmissionError(
                f"spec.{field}",
                "not supported here"
                + (
                    ": only the node's own agent shares the node's network"
                    if field == "hostNetwork"
                    else ""
                ),
            )
    pod_context = _security(spec.get("securityContext"), "spec.securityContext", trusted=False)
    for field in ("supplementalGroups", "fsGroup"):
        values = pod_context.get(field)
        for i, gid in enumerate(values if isinstance(values, list) else [values]):
            if gid is not None:
                at = f"spec.securityContext.{field}" + (f"[{i}]" if field != "fsGroup" else "")
                _int(gid, at, MIN_GROUP, "a group ID of no system group")
                if accounts.taken(gid, group=True):
                    raise AdmissionError(at, f"{gid} is a group of this machine")
    volumes = {
        check_volume(v, f"spec.volumes[{i}]", host) for i, v in enumerate(spec.get("volumes") or [])
    }
    if len(volumes) != len(spec.get("volumes") or []):
        raise AdmissionError("spec.volumes", "two volumes have the same name")
    entries = [
        (f"spec.{kind}[{i}]", c)
        for kind in ("initContainers", "containers")
        for i, c in enumerate(spec.get(kind) or [])
    ]
    names = [_label((c or {}).get("name"), f"{where}.name") for where, c in entries]
    if len(set(names)) != len(names):
        raise AdmissionError("spec", "two containers have the same name")
    ids = {
        name: _identity(c, pod_context, where, True, (), accounts)
        for (where, c), name in zip(entries, names, strict=True)
        if name in trusted
    }
    reserved = {0} | {uid for uid, _ in ids.values()} | {gid for _, gid in ids.values()}
    for (where, container), name in zip(entries, names, strict=True):
        check_container(container, where, volumes, name in trusted, pod_context, reserved, accounts)


def check_container(
    container: dict[str, Any],
    where: str,
    volumes: Collection[str],
    trusted: bool,
    pod_context: dict[str, Any],
    reserved: Collection[int],
    accounts: Accounts,
) -> None:
    _security(container.get("securityContext"), f"{where}.securityContext", trusted)
    _, gid = _identity(container, pod_context, where, trusted, reserved, accounts)
    if not trusted and gid in reserved:
        raise AdmissionError(f"{where}.securityContext.runAsGroup", f"{gid} is the interceptor's")
    for i, mount in enumerate(container.get("volumeMounts") or []):
        at = f"{where}.volumeMounts[{i}]"
        if mount.get("name") not in volumes:
            raise AdmissionError(f"{at}.name", f"no volume named {mount.get('name')!r}")
        path = mount.get("mountPath")
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise AdmissionError(f"{at}.mountPath", f"{path!r} is not an absolute path")
        if mount.get("subPath") or mount.get("subPathExpr"):
            raise AdmissionError(f"{at}.subPath", "not supported here")
    restart = container.get("restartPolicy")
    if restart not in (None, "Always") or (restart and not where.startswith("spec.initContainers")):
        raise AdmissionError(f"{where}.restartPolicy", f"{restart!r}: only Always, of sidecars")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe is not None:
            _probe(probe, f"{where}.{kind}")


def _probe(probe: dict[str, Any], where: str) -> None:
    if "httpGet" in probe:
        get = probe["httpGet"]
        port, path = get.get("port"), get.get("path", "/")
        if type(port) is not int or not 0 < port < 65536:
            raise AdmissionError(f"{where}.httpGet.port", f"{port!r} is not a port number")
        if not isinstance(path, str) or not path.startswith("/") or not path.isprintable():
            raise AdmissionError(f"{where}.httpGet.path", f"{path!r} is not a path")
        if " " in path:
            raise AdmissionError(f"{where}.httpGet.path", f"{path!r} has a space")
    elif "exec" in probe:
        command = probe["exec"].get("command")
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(a, str) for a in command)
        ):
            raise AdmissionError(f"{where}.exec.command", "is not a list of strings")
    else:
        raise AdmissionError(where, "only httpGet and exec probes are supported")
