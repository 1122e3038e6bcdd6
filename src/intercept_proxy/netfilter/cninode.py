"""`intercept cni-node`: CNI mode's node agent, one per node (the chart's DaemonSet; the test
node runs one too). It puts the CNI plugin on its node and answers the plugin's calls:

- **Install.** The plugin (`intercept-proxy-cni`, a static Go program: the host has no Python)
  is copied into the node's CNI binary directory, and its entry (`plugin.plugin_config`: the
  socket, the excluded namespaces) goes last in the node's network configuration list, the one
  a container runtime uses (`cniconf`), which must be a list of a CNI version the plugin
  supports (its VERSION answer). Both are written to a temporary name and renamed (the list
  keeping its mode): a runtime never reads half a file. The list is watched: a node whose own
  CNI rewrites it gets the entry back.
- **Serve.** The plugin connects to an abstract Unix socket (a name of the node's network
  namespace, where runtimes run CNI plugins and this agent runs, with no file to share): the
  given name (`@intercept-proxy-cni`) and a random suffix, new at each start and written into
  the entry, so that no process of the node's network can take the name first and keep the
  agent out. It sends one byte carrying the pod's network namespace as a descriptor, then its
  request (`{"env": CNI_*, "config": stdin}`); the answer is `{"exit", "output"}`
  (`plugin.answer`). Only root may call (the peer's credentials, read as the call is accepted):
  a caller could otherwise have any namespace it holds captured; and the plugin calls only a
  root listener (a process that took an earlier agent's name gets no call). The namespace is
  entered through that descriptor: this agent needs no view of the host's `/var/run/netns` or
  `/proc`.
- **Stop.** What it installed is removed, unless `--daemonset` names its DaemonSet and that is
  seen to exist still: a restart or an update of the agent then leaves the entry, so pods that
  come meanwhile wait for the next agent (the plugin's "try again later"). An uninstall deletes
  the DaemonSet, and its agents clean up. Either way no pod starts uncaptured: without the
  entry, a pod of CNI mode fails its own check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intercept_proxy.cluster.client import ApiError, KubeClient
from intercept_proxy.cniconf import EXTENSIONS, network_file
from intercept_proxy.netfilter.plugin import (
    DECODING_FAILURE,
    PLUGIN,
    PluginError,
    PodReader,
    answer,
    failure,
)

log = logging.getLogger(__name__)

# Abstract (`@`): see above.
DEFAULT_SOCKET = "@intercept-proxy-cni"
WATCH_INTERVAL = 2.0  # seconds between looks at the configuration list
REQUEST_LIMIT = 1 << 20  # a network configuration and its prevResult: far less
CALLS = 16  # answered at once (the runtime makes pods' networks a few at a time)
CALL_TIMEOUT = 60.0  # seconds: a call's reading, the pod's, the rules'
UCRED = struct.Struct("iII")


class InstallError(Exception):
    """The node's CNI configuration cannot take the plugin: the message says why."""


def chained(
    network: dict[str, Any], entry: dict[str, Any], versions: Collection[str]
) -> dict[str, Any]:
    """`network` (a configuration list of a CNI version in `versions`) with `entry` as its last
    plugin, and no other entry of ours (pure)."""
    plugins = network.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise InstallError(
            "no `plugins` list: a single plugin's configuration (CNI mode chains a plugin to a "
            "configuration list)"
        )
    if network.get("cniVersion") not in versions:
        raise InstallError(
            f"CNI version {network.get('cniVersion')!r}: the plugin supports "
            f"{', '.join(sorted(versions))}"
        )
    return {**network, "plugins": [*_others(plugins), entry]}


def unchained(network: dict[str, Any]) -> dict[str, Any]:
    """`network` without our entry (pure)."""
    plugins = network.get("plugins")
    if not isinstance(plugins, list):
        return network
    return {**network, "plugins": _others(plugins)}


def _others(plugins: list[Any]) -> list[Any]:
    return [p for p in plugins if not (isinstance(p, dict) and p.get("type") == PLUGIN)]


def supported_versions(plugin: Path) -> frozenset[str]:
    """The CNI versions `plugin` supports, as a runtime learns them (its VERSION command)."""
    try:
        answer = subprocess.run(
            [str(plugin)],
            env={"CNI_COMMAND": "VERSION"},
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return frozenset(json.loads(answer.stdout)["supportedVersions"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as e:
        raise InstallError(f"{plugin} VERSION: {e}") from None


def node_list(conf_dir: Path) -> Path:
    """The configuration the node's runtime uses."""
    found = network_file(conf_dir)
    if found is None:
        raise InstallError(
            f"{conf_dir} has no network configuration: the node's own CNI must be installed first"
        )
    return found


def _replace(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{PLUGIN}.tmp")
    temporary.write_bytes(data)
    temporary.chmod(mode)
    temporary.replace(path)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _read(path: Path) -> dict[str, Any]:
    try:
        network = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InstallError(f"{path}: {e}") from None
    if not isinstance(network, dict):
        raise InstallError(f"{path}: not a JSON object")
    return network


@dataclass(frozen=True)
class Node:
    """Where the node keeps its CNI plugins and configuration (as this agent sees them)."""

    bin_dir: Path
    conf_dir: Path

    def install(self, plugin: Path, entry: dict[str, Any], versions: Collection[str]) -> bool:
        """The plugin in place and `entry` last in the node's list (of a version in `versions`,
        the plugin's); True if anything changed."""
        target = self.bin_dir / PLUGIN
        data = plugin.read_bytes()
        changed = False
        if not target.exists() or target.read_bytes() != data:
            _replace(target, data, 0o755)
            changed = True
        path = node_list(self.conf_dir)
        network = _read(path)
        try:
            wanted = chained(network, entry, versions)
        except InstallError as e:
            raise InstallError(f"{path}: {e}") from None
        if wanted != network:
            _replace(path, json.dumps(wanted, indent=2).encode() + b"\n", _mode(path))
            changed = True
        return changed

    def uninstall(self) -> None:
        """Our entry out of every list, and the plugin removed."""
        for path in sorted(self.conf_dir.iterdir()):
            if path.suffix not in EXTENSIONS:
                continue
            with contextlib.suppress(InstallError, OSError):
                network = _read(path)
                if unchained(network) != network:
                    text = json.dumps(unchained(network), indent=2).encode() + b"\n"
                    _replace(path, text, _mode(path))
        (self.bin_dir / PLUGIN).unlink(missing_ok=True)


def _receive(connection: socket.socket) -> tuple[int, bytes]:
    """The namespace's descriptor (the first byte's) and the request after it."""
    first, fds, _, _ = socket.recv_fds(connection, 1, 1)
    try:
        if len(first) != 1 or len(fds) != 1:
            raise ValueError("the call carries no network namespace")
        chunks, total = [], 0
        while chunk := connection.recv(65536):
            total += len(chunk)
            if total > REQUEST_LIMIT:
                raise ValueError("the call is too large")
            chunks.append(chunk)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], b"".join(chunks)


def abstract(name: str) -> str:
    """An abstract socket's address as Python binds it (`@name` as Go and ss write it)."""
    if not name.startswith("@") or len(name) < 2:
        raise ValueError(f"{name!r} is not an abstract socket's name (@NAME)")
    return "\0" + name[1:]


def _peer_uid(connection: socket.socket) -> int:
    """The caller's UID (struct ucred: pid, uid, gid)."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
    return int(UCRED.unpack(credentials)[1])


@dataclass
class Server:
    """The plugin's calls on an abstract socket of this network namespace named `prefix` and a
    random suffix (`name`), each answered by `plugin.answer` with pods from `read_pod`."""

    prefix: str
    read_pod: PodReader

    def __post_init__(self) -> None:
        self.name = f"{self.prefix}-{secrets.token_hex(8)}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.bind(abstract(self.name))
        except OSError as e:
            self._socket.close()
            raise OSError(e.errno, f"cannot listen on {self.name}: {e.strerror}") from None
        self._socket.listen(64)
        self._calls = threading.BoundedSemaphore(CALLS)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="cni-node", daemon=True)

    @property
    def serving(self) -> bool:
        return self._thread.is_alive()

    def serve(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                connection, _ = self._socket.accept()
            except OSError as e:
                if not self._closing.is_set():  # out of descriptors, a call gone: the next
                    log.warning("accepting a CNI call: %s", e)
                    time.sleep(0.1)
                continue
            try:
                if (uid := _peer_uid(connection)) != 0:
                    log.warning("a CNI call from UID %d refused: only root may call", uid)
                    connection.close()
                    continue
                self._calls.acquire()  # at most CALLS at once; the next wait in the backlog
                try:
                    threading.Thread(target=self._call, args=(connection,), daemon=True).start()
                except BaseException:
                    self._calls.release()
                    raise
            except Exception:
                log.exception("a CNI call not taken")
                connection.close()

    def _call(self, connection: socket.socket) -> None:
        try:
            with connection:
                connection.settimeout(CALL_TIMEOUT)
                try:
                    fd, body = _receive(connection)
                except (OSError, ValueError) as e:
                    log.warning("a CNI call not read: %s", e)
                    return
                try:
                    exit, output = self._answer(fd, body)
                finally:
                    os.close(fd)
                with contextlib.suppress(OSError):
                    connection.sendall(json.dumps({"exit": exit, "output": output}).encode())
        finally:
            self._calls.release()

    def _answer(self, fd: int, body: bytes) -> tuple[int, str]:
        try:
            request = json.loads(body)
            env = {str(k): str(v) for k, v in dict(request["env"]).items()}
            stdin = str(request["config"])
        except (ValueError, KeyError, TypeError) as e:
            problem = PluginError(DECODING_FAILURE, f"{PLUGIN}: the call is not understood: {e}")
            return failure(problem, "")
        # The descriptor's path in this process: what nsenter opens.
        exit, output = answer(stdin, env, f"/proc/{os.getpid()}/fd/{fd}", self.read_pod)
        log.info(
            "%s %s (%s): %s",
            env.get("CNI_COMMAND"),
            env.get("CNI_ARGS"),
            env.get("CNI_CONTAINERID"),
            "done" if exit == 0 else output,
        )
        return exit, output


def installed_plugin() -> Path:
    """The plugin program installed beside this interpreter (the venv's bin, the image's
    /usr/local/bin: `make install` and images/Dockerfile build it there)."""
    return Path(sys.executable).with_name(PLUGIN)


def daemonset_exists(client: KubeClient, name: str) -> bool:
    """Whether the DaemonSet `NAMESPACE/NAME` is seen to exist and not being deleted. Anything
    else counts as no (an uninstall also removes the agent's account and its rights, so the
    API server then refuses to answer): removing the plugin is never unsafe, since a pod of CNI
    mode that starts without it fails its own check; it only fails rather than waits."""
    namespace, _, name = name.partition("/")
    try:
        found = client.get(f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}")
    except (ApiError, OSError, ValueError):
        return False
    return isinstance(found, dict) and not (found.get("metadata") or {}).get("deletionTimestamp")
