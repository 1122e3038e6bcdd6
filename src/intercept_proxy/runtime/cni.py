"""A pod's network made by a chain of CNI plugins, invoked as a container runtime invokes them
(CNI specification 1.0): ADD runs the plugins in order, each given the one before's result as
`prevResult`; DEL runs them in reverse order, given the ADD's cached result. The plugins are
Debian's `containernetworking-plugins`; they run in the node's network namespace (where the
bridge is) and configure the pod's through `CNI_NETNS`.

- `bridge_network`: the node's network configuration (pure): a bridge that is every pod's
  default gateway, host-local addresses from one IPv4 and one IPv6 subnet, masquerade for what
  leaves the pods' subnets.
- `Chain`: ADD and DEL of the network configuration list a node's configuration directory holds
  (`cniconf`: read at each ADD as containerd does; the node agent of CNI mode adds its plugin
  there), with the list and the result cached for DEL. Plugins are the system's (`CNI_PATH`),
  but the few named ones found elsewhere (CNI mode's, in the node's own directory, which a node
  agent writes: nothing else is ever taken from there).
- `CniUplink`: a pod's uplink (`runtime.network.Uplink`) through a chain.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intercept_proxy import netns
from intercept_proxy.cniconf import network_file
from intercept_proxy.pki.files import write_private
from intercept_proxy.runtime.network import NetworkError

CNI_VERSION = "1.0.0"
# Debian's containernetworking-plugins.
PLUGIN_DIR = Path("/usr/lib/cni")
POD_IFNAME = "eth0"
PLUGIN_TIMEOUT = 60  # seconds
# A plugin's type is a file name (libcni refuses a path).
_PLUGIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# What `bridge_network` runs: the plugin and its address manager.
BRIDGE_PLUGINS = ("bridge", "host-local")


class CniError(NetworkError):
    """A plugin that failed: the message names it, the command, and its error."""


def bridge_network(
    name: str, bridge: str, subnets: Sequence[str], data_dir: Path
) -> dict[str, Any]:
    """A network configuration list: pods on `bridge`, one address from each of `subnets`
    (host-local, its allocations under `data_dir`), a default route per family through the
    bridge, masquerade to whatever lies beyond (the node's own uplink)."""
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "plugins": [
            {
                "type": BRIDGE_PLUGINS[0],
                "bridge": bridge,
                "isDefaultGateway": True,
                "ipMasq": True,
                # A pod that kube-proxy sends to itself (its own Service) comes back through the
                # bridge.
                "hairpinMode": True,
                "ipam": {
                    "type": BRIDGE_PLUGINS[1],
                    "dataDir": str(data_dir),
                    "ranges": [[{"subnet": s}] for s in subnets],
                },
            }
        ],
    }


@dataclass(frozen=True)
class Attachment:
    """One pod's attachment to a network: what CNI calls the container, its namespace and
    interface, and the arguments plugins read (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...)."""

    container_id: str
    netns_path: Path
    ifname: str = POD_IFNAME
    args: tuple[tuple[str, str], ...] = ()


def plugin_environment(
    command: str, attachment: Attachment, path: Sequence[Path]
) -> dict[str, str]:
    """The CNI_* variables of one invocation (pure)."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": attachment.container_id,
        "CNI_NETNS": str(attachment.netns_path),
        "CNI_IFNAME": attachment.ifname,
        "CNI_PATH": ":".join(str(p) for p in path),
    }
    if attachment.args:
        # IgnoreUnknown: plugins refuse arguments they do not know, unless told not to.
        pairs = [("IgnoreUnknown", "1"), *attachment.args]
        env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in pairs)
    return env


def plugin_input(
    network: Mapping[str, Any], plugin: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A plugin's stdin (pure): its own configuration, the list's name and version, and the
    result so far."""
    config = {**plugin, "cniVersion": network["cniVersion"], "name": network["name"]}
    if previous is not None:
        config["prevResult"] = dict(previous)
    return config


def _failure(plugin: str, command: str, attachment: Attachment, out: str, err: str, rc: int) -> str:
    try:
        error = json.loads(out)
        detail = f"code {error.get('code')}: {error.get('msg')}"
        if error.get("details"):
            detail += f" ({error['details']})"
    except (ValueError, AttributeError):
        detail = (err or out).strip() or f"exit status {rc}"
    return f"CNI {command} of {attachment.container_id}: plugin {plugin}: {detail}"


@dataclass
class Chain:
    """ADD and DEL of the network list of `conf_dir`, the plugins running in the namespace
    `host_netns`; each ADD's list and result are kept in `cache_dir`, for DEL."""

    conf_dir: Path
    host_netns: str
    cache_dir: Path
    plugin_path: tuple[Path, ...] = (PLUGIN_DIR,)
    # Plugins by type found outside `plugin_path`, which the plugins are not told of.
    extra_plugins: Mapping[str, Path] = field(default_factory=dict)

    def _invoke(
        self,
        command: str,
        network: Mapping[str, Any],
        plugin: Mapping[str, Any],
        attachment: Attachment,
        previous: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        kind = str(plugin.get("type"))
        if not _PLUGIN_NAME.fullmatch(kind):
            raise CniError(f"CNI {command} of {attachment.container_id}: type {kind!r} is no name")
        candidates = [self.extra_plugins[kind]] if kind in self.extra_plugins else []
        candidates += [d / kind for d in self.plugin_path]
        found = [c for c in candidates if os.access(c, os.X_OK)]
        if not found:
            where = ":".join(str(d) for d in self.plugin_path)
            raise CniError(f"CNI plugin {kind} is not in {where} (`make install`)")
        executable = found[0]
        try:
            result = subprocess.run(
                netns.exec_argv(self.host_netns, [str(executable)]),
                input=json.dumps(plugin_input(network, plugin, previous)),
                env={**os.environ, **plugin_environment(command, attachment, self.plugin_path)},
                capture_output=True,
                text=True,
                timeout=PLUGIN_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CniError(f"CNI {command} of {attachment.container_id}: plugin {kind}: {e}") from e
        if result.returncode != 0:
            raise CniError(
                _failure(kind, command, attachment, result.stdout, result.stderr, result.returncode)
            )
        if command != "ADD":
            return dict(previous or {})
        try:
            parsed: dict[str, Any] = json.loads(result.stdout)
        except ValueError:
            raise CniError(
                f"CNI ADD of {attachment.container_id}: plugin {kind} printed no JSON result"
            ) from None
        return parsed

    def _cached(self, attachment: Attachment) -> Path:
        return self.cache_dir / f"{attachment.container_id}-{attachment.ifname}.json"

    def network(self) -> dict[str, Any]:
        """The list in force."""
        path = network_file(self.conf_dir) if self.conf_dir.is_dir() else None
        if path is None:
            raise CniError(f"no CNI network: {self.conf_dir} has no configuration")
        try:
            network: dict[str, Any] = json.loads(path.read_text())
            plugins = network.get("plugins")
            if not isinstance(plugins, list) or not all(isinstance(p, dict) for p in plugins):
                raise ValueError("its plugins are not a list of objects")
            if not isinstance(network.get("cniVersion"), str) or "name" not in network:
                raise ValueError("it names no cniVersion or name")
        except (OSError, ValueError, AttributeError) as e:
            raise CniError(f"the CNI network {path}: {e}") from None
        return network

    def add(self, attachment: Attachment) -> dict[str, Any]:
        """Attach: every plugin's ADD in order; the last result. On a failure, what the earlier
        plugins made is deleted again (with no result, as a runtime that cached none) before the
        error is raised."""
        network = self.network()
        result: dict[str, Any] | None = None
        try:
            for plugin in network["plugins"]:
                result = self._invoke("ADD", network, plugin, attachment, result)
            assert result is not None
            cached = {"network": network, "result": result}
            write_private(self._cached(attachment), json.dumps(cached).encode())
        except BaseException:
            with contextlib.suppress(CniError):  # the ADD's own error says more
                self._delete(attachment, network, None)
            raise
        return result

    def delete(self, attachment: Attachment) -> None:
        """Detach: every plugin of the ADD's list, DEL in reverse order, each given the cached
        ADD result; the first failure is raised once all have run."""
        cached = self._cached(attachment)
        try:
            known = json.loads(cached.read_text())
            network, result = known["network"], known["result"]
        except (OSError, ValueError, KeyError, TypeError):  # none cached: the list in force
            network, result = self.network(), None
        self._delete(attachment, network, result)
        cached.unlink(missing_ok=True)

    def _delete(
        self, attachment: Attachment, network: Mapping[str, Any], result: Mapping[str, Any] | None
    ) -> None:
        failures = []
        for plugin in reversed(network["plugins"]):
            try:
                self._invoke("DEL", network, plugin, attachment, result)
            except CniError as e:
                failures.append(str(e))
        if failures:
            raise CniError("; ".join(failures))


@dataclass
class CniUplink:
    """A pod's network through `chain`: ADD when the pod's namespace is made, DEL before it
    goes (the bridge plugin finds its masquerade rules through the pod's interface: once the
    namespace is gone, it only releases the addresses). Resolvers and extra trust are the
    node's: its own uplink's."""

    chain: Chain
    args: tuple[tuple[str, str], ...]
    nameservers: tuple[str, ...]
    extra_trust: Path | None
    search: tuple[str, ...] = ()
    _attachment: Attachment | None = None

    def attach(self, pod_netns: str) -> None:
        self._attachment = Attachment(pod_netns, netns.NETNS_RUN_DIR / pod_netns, args=self.args)
        self.chain.add(self._attachment)

    def detach(self) -> None:
        if self._attachment is not None:
            self.chain.delete(self._attachment)
            self._attachment = None
