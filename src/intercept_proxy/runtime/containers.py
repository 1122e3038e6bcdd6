"""How one container of a Pod spec becomes a local process. Pure functions.

Images are mapped, not pulled: the project's own image runs the installed `intercept`, the
Envoy image runs the pinned `envoy`, and any other image runs its command on this machine's
filesystem. Each container gets a private mount namespace with its volumes bound at their
mount paths (`enter.py`), then `setpriv` gives it exactly the user, groups and capabilities its
securityContext grants.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import intercept_proxy
from intercept_proxy.runtime import privileges

PROJECT_IMAGE = "intercept-proxy/intercept-proxy"
ENVOY_IMAGE = "envoyproxy/envoy"

# What a container runtime grants a root container by default (containerd's set).
DEFAULT_ROOT_CAPABILITIES = (
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
)  # fmt: skip


class ContainerError(ValueError):
    """A container this runtime cannot run as specified; the message names it and the field."""


def installation() -> tuple[Path, ...]:
    """The directories the mapped images run from: this interpreter's environment, the package
    itself (an editable install keeps it outside the environment) and what else it imports from
    (directories .pth files add); never sys.path[0], the script's or the working directory."""
    package = Path(next(iter(intercept_proxy.__path__))).resolve().parent
    entries = [Path(p) for p in sys.path[1:]]
    imported = [p.resolve() for p in entries if p.is_absolute() and p.is_dir()]
    return tuple(dict.fromkeys([Path(sys.prefix).resolve(), package, *imported]))


@dataclass(frozen=True)
class Executables:
    """What the mapped images run on this machine, and from where."""

    intercept: Path
    envoy: Path
    python: Path = Path(sys.executable)
    installation: tuple[Path, ...] = field(default_factory=installation)


def _repository(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name.rsplit(":", 1)[0]
    return name


_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args; $$ is a literal $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VARIABLE.sub(replace, text)


_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
# A ConfigMap's or Secret's data by kind and name (None: no such object).
ObjectData = Callable[[str, str], dict[str, bytes] | None]


def container_env(
    container: dict[str, Any], pod: dict[str, Any], objects: ObjectData = lambda k, n: None
) -> dict[str, str]:
    """`envFrom` Secrets, then `env` with literal values, the downward API fields this
    runtime knows, and keys of Secrets."""
    metadata = pod.get("metadata") or {}
    fields = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", "default"),
    }
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("secretRef")
        if ref is None:
            raise ContainerError(f"container {container['name']!r}: envFrom: only secretRef")
        data = objects("Secret", str(ref.get("name")))
        if data is None and not ref.get("optional"):
            raise ContainerError(
                f"container {container['name']!r}: envFrom: Secret {ref.get('name')!r} not found"
            )
        # As the kubelet does: keys that are no variable names are left out.
        env |= {k: v.decode() for k, v in (data or {}).items() if _ENV_NAME.fullmatch(k)}
    for item in container.get("env") or []:
        name = item["name"]
        where = f"container {container['name']!r}: env {name}"
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            value = (objects("Secret", str(ref.get("name"))) or {}).get(str(ref.get("key")))
            if value is None:
                if ref.get("optional"):
                    continue
                raise ContainerError(
                    f"{where}: Secret {ref.get('name')!r} has no {ref.get('key')!r}"
                )
            env[name] = value.decode()
        elif "valueFrom" in item:
            ref = (item["valueFrom"].get("fieldRef") or {}).get("fieldPath")
            if ref not in fields:
                raise ContainerError(f"{where}: unsupported")
            env[name] = fields[ref]
    return env


def local_argv(container: dict[str, Any], env: dict[str, str], exe: Executables) -> list[str]:
    argv = [
        expand(a, env) for a in [*(container.get("command") or []), *(container.get("args") or [])]
    ]
    name = container.get("name", "?")
    if not argv:
        raise ContainerError(
            f"container {name!r}: no command; images are not pulled here, so the pod spec must "
            "say what to run"
        )
    return in_image(container.get("image", ""), argv, exe)


def in_image(image: str, argv: list[str], exe: Executables) -> list[str]:
    """`argv` with the image's program (its first word) mapped to this machine's."""
    repository = _repository(image)
    if repository.endswith(PROJECT_IMAGE) and argv[:1] == ["intercept"]:
        return [str(exe.intercept), *argv[1:]]
    if repository.endswith(ENVOY_IMAGE) and argv[:1] == ["envoy"]:
        return [str(exe.envoy), *argv[1:]]
    return argv


@dataclass(frozen=True)
class Identity(privileges.Identity):
    read_only_root: bool = False
    seccomp: bool = True


def identity(container: dict[str, Any], pod_spec: dict[str, Any], trusted: bool) -> Identity:
    """The user, groups and capabilities a container runs with, from both security contexts
    of a pod `admission.check_pod` accepted. A container of the workload (not `trusted`) never
    gains privileges and always gets the runtime's seccomp filter."""
    pod_ctx = pod_spec.get("securityContext") or {}
    ctx = container.get("securityContext") or {}
    uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup", uid))
    if type(uid) is not int or type(gid) is not int:  # admission refuses these first
        raise ContainerError(f"container {container.get('name')!r}: no valid runAsUser")
    groups = [*pod_ctx.get("supplementalGroups", [])]
    if "fsGroup" in pod_ctx:
        groups.append(pod_ctx["fsGroup"])
    caps = ctx.get("capabilities") or {}
    dropped = {c.upper() for c in caps.get("drop") or []}
    granted = set() if "ALL" in dropped else set(DEFAULT_ROOT_CAPABILITIES) - dropped
    if uid != 0:
        granted = set()  # a non-root process keeps no capability across exec by default
    granted |= {c.upper() for c in caps.get("add") or []}
    profile = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
    return Identity(
        uid=uid,
        gid=gid,
        groups=tuple(sorted(set(groups))),
        capabilities=tuple(sorted(granted)),
        no_new_privileges=not trusted or ctx.get("allowPrivilegeEscalation") is False,
        read_only_root=bool(ctx.get("readOnlyRootFilesystem")),
        seccomp=not trusted or profile == "RuntimeDefault",
    )


def setpriv_argv(who: Identity) -> list[str]:
    caps = ",".join(f"+{c.lower()}" for c in who.capabilities)
    argv = ["setpriv", f"--reuid={who.uid}", f"--regid={who.gid}"]
    argv.append(f"--groups={','.join(map(str, who.groups))}" if who.groups else "--clear-groups")
    argv.append(f"--bounding-set=-all{',' + caps if caps else ''}")
    argv.append(f"--inh-caps=-all{',' + caps if caps else ''}")
    if who.uid != 0 and caps:
        argv.append(f"--ambient-caps={caps}")
    if who.no_new_privileges:
        argv.append("--no-new-privs")
    return argv


def as_user(uid: int, argv: Sequence[str]) -> list[str]:
    """`argv` as `uid` (and its group): no other group, no capability, no way to gain any."""
    who = Identity(uid, uid, (), (), no_new_privileges=True)
    return [*setpriv_argv(who), "--", *argv]
