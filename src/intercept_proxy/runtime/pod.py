"""The local pod runtime: runs a Pod spec on this machine the way a kubelet would.

One network namespace per pod (loopback up, one uplink), init containers in order, native
sidecars (init containers with `restartPolicy: Always`) started before the rest once their
startup probe passes and kept running, then the app containers; the pod's result is the exit
status of its first app container. Clean-up is total, on success, error or signal: every
process, the namespace (and with it every rule and address in it), the uplink, the volumes and
any mount point created for them.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO, TypeVar

from intercept_proxy import netns, resolvconf, signals
from intercept_proxy.agent.control import CONTROL_SOCKET
from intercept_proxy.identities import AGENT_UID
from intercept_proxy.injector.pod import CONTROL_VOLUME
from intercept_proxy.pki.files import SYSTEM_TRUST
from intercept_proxy.runtime import admission, rootfs, state
from intercept_proxy.runtime.containers import (
    Executables,
    Identity,
    container_env,
    identity,
    in_image,
    local_argv,
    setpriv_argv,
)
from intercept_proxy.runtime.mounts import unmount_under
from intercept_proxy.runtime.network import Uplink, release_host_uplink
from intercept_proxy.runtime.terminal import PseudoTerminal
from intercept_proxy.runtime.volumes import PodVolumes

log = logging.getLogger(__name__)
T = TypeVar("T")

POD_ROOT = Path("/tmp")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STOP_GRACE_S = 5.0
# Lines of each container's output kept to explain a failure (proxy-init prints ~100 rules).
RECENT_LINES = 200


def control_sockets() -> list[Path]:
    """The control sockets of the agents of this machine's local pods and gateways (intercept
    approvals): a pod's only under a pod directory of root's alone, since anyone may write into
    POD_ROOT; a gateway's as it recorded them (runtime/state.py, root's alone)."""
    found = [path for path in state.control_sockets() if _made_by_a_gateway(path)]
    for pod_dir in POD_ROOT.glob("intercept-pod-*"):
        mode = pod_dir.lstat()
        if not stat.S_ISDIR(mode.st_mode) or mode.st_uid != 0 or mode.st_mode & 0o077:
            continue
        socket = pod_dir / "volumes" / CONTROL_VOLUME / Path(CONTROL_SOCKET).name
        if _is_socket(socket):
            found.append(socket)
    return sorted(found)


def _ignore(signum: int, frame: object) -> None:
    """A signal the workload's alone (its terminal's Ctrl-C)."""


def _made_by_a_gateway(path: Path) -> bool:
    """A socket as a gateway makes it (lab/interceptor.py): in a directory of its agent's
    alone, inside one of root's that no one else may write. Whatever else stands at a recorded
    path now (its gateway stopping, someone's directory of the same name) is not asked."""
    try:
        top, control, sock = (p.lstat() for p in (path.parent.parent, path.parent, path))
    except OSError:
        return False
    return (
        stat.S_ISDIR(top.st_mode) and top.st_uid == 0 and not top.st_mode & 0o022
        and stat.S_ISDIR(control.st_mode) and control.st_uid == AGENT_UID
        and not control.st_mode & 0o077
        and stat.S_ISSOCK(sock.st_mode)
    )  # fmt: skip


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False


class PodError(RuntimeError):
    """The pod could not start or run; the message says which container and why."""


@dataclass(frozen=True)
class HostAccess:
    """What a pod its caller trusts as the node's own agent (a CNI node agent) may reach of the
    node: its network namespace (`hostNetwork`), its filesystem (`hostPath`, under `root`), and
    the environment the node gives such pods (the API server where its network reaches it)."""

    netns: str
    root: Path
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Options:
    uplink: Uplink
    executables: Executables
    prefix: str
    # The one container whose stdin, stdout and stderr are this process's (`intercept run`);
    # every other container's output is written to `output` line by line with its name in
    # front, or, without `output`, only kept (the last lines) to explain a failure.
    attached: str | None = None
    # Paths of this machine bound into a container (by name), at the same path: writable
    # ones first, then read-only ones, which may lie inside them.
    writable: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)
    read_only: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)
    # The interceptor's own containers, verified to be the injector's by the caller: the only
    # ones that may run as root, as the sidecar users, with capabilities.
    trusted: frozenset[str] = frozenset()
    # User and group IDs the operator chose (intercept run --user): accounts of this machine
    # that a manifest may not otherwise name.
    operator_ids: frozenset[int] = frozenset()
    # Containers whose standard output is appended to a file of this machine (Envoy's decision
    # log for `intercept run`) instead of going to `output`.
    stdout_files: Mapping[str, Path] = field(default_factory=dict)
    output: IO[str] | None = None
    # The node's own agent's (with `trusted`: all its containers); None for any other pod.
    host: HostAccess | None = None
    # What the node tells every container (a cluster's: where the API server is).
    env: Mapping[str, str] = field(default_factory=dict)


# A sidecar that exits is started again after 0.5 s, 1 s, 2 s, ... up to 10 s; one that ran this
# long before it exited starts the count again (the kubelet's back-off, shorter).
BACKOFF_BASE_S, BACKOFF_MAX_S, BACKOFF_RESET_S = 0.5, 10.0, 60.0


def backoff(restarts: int, ran_for: float) -> tuple[int, float]:
    """(the restart count after this exit, the delay before the restart). Pure."""
    count = 1 if ran_for >= BACKOFF_RESET_S else restarts + 1
    return count, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (count - 1))


@dataclass
class _Running:
    name: str
    process: subprocess.Popen[bytes]
    spec: dict[str, Any]
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)
    due: float | None = None  # when it is to be started again, once it exited


class LocalPod:
    def __init__(
        self,
        pod: dict[str, Any],
        objects: Mapping[tuple[str, str], dict[str, Any]],
        options: Options,
    ) -> None:
        admission.check_pod(
            pod,
            options.trusted,
            admission.Accounts.of_this_machine(options.operator_ids),
            host=options.host is not None,
        )
        admission.check_objects(objects)
        self.pod = pod
        self.spec = pod.get("spec") or {}
        self.options = options
        self.name = f"{options.prefix}-pod"
        host = options.host
        # The network namespace its containers run in: its own, or the node's.
        self.host_network = host is not None and bool(self.spec.get("hostNetwork"))
        self.netns = host.netns if host is not None and self.host_network else self.name
        self.dir = POD_ROOT / f"intercept-pod-{options.prefix}"
        self.volumes = PodVolumes(
            self.dir / "volumes", pod, objects, host_root=host.root if host else None
        )
        self._sidecars: list[_Running] = []
        self._stopping = threading.Event()
        self.started = threading.Event()  # set once the app containers run
        self._apps: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._restarting = threading.Lock()
        self._torn_down = threading.Event()
        self._node_trust: Path | None = None
        self._resolv_conf = self.dir / "resolv.conf"
        self._terminal: PseudoTerminal | None = None
        self._serial = itertools.count()
        self._copies: list[threading.Thread] = []  # output relayed to the caller
        self.recent: dict[str, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=RECENT_LINES)
        )

    @property
    def terminal(self) -> PseudoTerminal | None:
        """The attached workload's own terminal, once it runs with one."""
        return self._terminal if self.started.is_set() else None

    @property
    def control_socket(self) -> Path:
        """The agent's control socket, as this machine sees it."""
        return self.volumes.path(CONTROL_VOLUME) / Path(CONTROL_SOCKET).name

    # -- set-up and clean-up ------------------------------------------------------------------

    def _setup(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=False)
        state.register(self.options.prefix, self.name)
        self.volumes.create()
        if not self.host_network:
            netns.create(self.name)
            self.options.uplink.attach(self.name)
        # Envoy's own lookups (and forwarded suffixes) use the uplink's real resolvers; the
        # workload's lookups never reach them (they are redirected to the agent).
        servers = self.options.uplink.nameservers
        self._resolv_conf.write_text(resolvconf.text(servers, self.options.uplink.search))
        self._resolv_conf.chmod(0o644)
        extra = self.options.uplink.extra_trust
        if extra is not None:
            # This "node" trusts the lab's root CA like any system root.
            self._node_trust = self.dir / "node-ca-certificates.crt"
            self._node_trust.write_bytes(SYSTEM_TRUST.read_bytes() + b"\n" + extra.read_bytes())
            self._node_trust.chmod(0o644)

    def _teardown(self) -> None:
        self._stopping.set()
        with self._restarting:  # a restart under way ends first; none begins after it
            pass
        with self._lock:
            running = list(self._sidecars)
        for r in reversed(running):
            _terminate(r.process)
        own_network: list[tuple[str, Callable[[], None]]] = [
            # The uplink first: a CNI DEL undoes what it made through the pod's namespace.
            ("uplink", self.options.uplink.detach),
            ("namespace", lambda: netns.delete(self.name)),
        ]
        steps: list[tuple[str, Callable[[], None]]] = [
            *([] if self.host_network else own_network),
            ("volumes", self.volumes.remove),
            ("mount points", lambda: state.release(self.options.prefix)),
            ("pod directory", lambda: shutil.rmtree(self.dir, ignore_errors=True)),
        ]
        for what, step in steps:
            try:
                step()
            except Exception:  # every step runs, whatever an earlier one did
                log.exception("clean-up of %s failed", what)
        self._torn_down.set()

    # -- containers ---------------------------------------------------------------------------

    def _identity(self, container: dict[str, Any]) -> Identity:
        return identity(container, self.spec, container["name"] in self.options.trusted)

    def _binds(self, container: dict[str, Any]) -> list[dict[str, Any]]:
        name = container["name"]
        binds = [
            {"source": str(path), "target": str(path), "read_only": read_only}
            for read_only, paths in ((False, self.options.writable), (True, self.options.read_only))
            for path in paths.get(name, ())
        ]
        binds += [
            {
                "source": str(self.volumes.path(m["name"])),
                "target": m["mountPath"],
                "read_only": bool(m.get("readOnly")),
            }
            for m in container.get("volumeMounts") or []
        ]
        # An installation under /tmp (a fresh clone) is part of every container's "image".
        binds += [
            {"source": str(path), "target": str(path), "read_only": True}
            for path in rootfs.hidden(self.options.executables.installation)
        ]
        node = {"/etc/resolv.conf": self._resolv_conf, str(SYSTEM_TRUST): self._node_trust}
        binds += [
            {"source": str(source), "target": target, "read_only": True}
            for target, source in node.items()
            if source is not None
        ]
        return binds

    def _popen(
        self, container: dict[str, Any], terminal: bool = False, **popen: Any
    ) -> subprocess.Popen[bytes]:
        """The container's process: `enter` builds its root and starts its program as its
        identity."""
        env = {"PATH": DEFAULT_PATH, "HOSTNAME": self.pod.get("metadata", {}).get("name", "")}
        env |= self.options.env
        env |= self.options.host.env if self.options.host is not None else {}
        env |= container_env(container, self.pod, self.volumes.object_data)
        who = self._identity(container)
        scratch = self.dir / "containers" / f"{container['name']}-{next(self._serial)}"
        scratch.mkdir(mode=0o700, parents=True)
        spec = {
            "scratch": str(scratch),
            "binds": self._binds(container),
            "read_only_root": who.read_only_root,
            "excluded": [str(POD_ROOT)],
            "seccomp": who.seccomp,
            "terminal": terminal,
            "working_dir": container.get("workingDir"),
            "env": env,
            "argv": local_argv(container, env, self.options.executables),
            "identity": _identity_spec(who),
        }
        # Dies with the runtime (even a SIGKILLed one); its own mount, PID, IPC and UTS
        # namespaces in the pod's network namespace; `enter` becomes the PID namespace's init.
        namespaces = [
            "setpriv", "--pdeathsig", "KILL", "--",
            "nsenter", f"--net={netns.NETNS_RUN_DIR / self.netns}", "--",
            "unshare", "--mount", "--propagation", "private", "--ipc", "--uts",
            "--pid", "--fork", "--kill-child", "--",
        ]  # fmt: skip
        return self._launch("enter", spec, namespaces, subprocess.Popen, **popen)

    def _launch(
        self,
        module: str,
        spec: dict[str, Any],
        before: list[str],
        launcher: Callable[..., T],
        **popen: Any,
    ) -> T:
        """`python -I -m intercept_proxy.runtime.<module>` (after `before`), its specification
        (a container's environment included) in a memfd: never on a command line. -I: root's
        interpreter must not import from the working directory (the workload's)."""
        fd = os.memfd_create(f"intercept-{module}")
        try:
            os.write(fd, json.dumps(spec).encode())
            python = str(self.options.executables.python)
            argv = [*before, python, "-I", "-m", f"intercept_proxy.runtime.{module}", str(fd)]
            return launcher(argv, cwd="/", pass_fds=(fd,), **popen)
        finally:
            os.close(fd)

    def _start(self, container: dict[str, Any]) -> subprocess.Popen[bytes]:
        name = container["name"]
        if name == self.options.attached:
            # Never the caller's terminal itself: a session of its own, and a terminal of its
            # own when there is one to relay. Without one, output that goes to a terminal goes
            # through a pipe: a terminal's descriptor would read what the caller types.
            if not sys.stdin.isatty():
                targets = {"stdout": sys.stdout, "stderr": sys.stderr}
                piped: dict[str, Any] = {
                    k: subprocess.PIPE for k, f in targets.items() if f.isatty()
                }
                process = self._popen(container, start_new_session=True, **piped)
                for key in piped:
                    source, target = getattr(process, key), targets[key]
                    copy = threading.Thread(target=_copy, args=(source, target), daemon=True)
                    copy.start()
                    self._copies.append(copy)
                return process
            self._terminal = PseudoTerminal()
            slave = self._terminal.slave
            return self._popen(
                container,
                terminal=True,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
            )
        stdout: Any = subprocess.PIPE
        if name in self.options.stdout_files:
            # Never through a symlink: a workload could leave one where the next run's
            # (root's) file goes.
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
            stdout = os.fdopen(os.open(self.options.stdout_files[name], flags, 0o644), "ab")
        process = self._popen(
            container,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C is for the workload, not the sidecars
        )
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                threading.Thread(target=self._relay, args=(name, stream), daemon=True).start()
        return process

    def _relay(self, name: str, stream: IO[bytes]) -> None:
        out = self.options.output
        for raw in stream:
            line = f"[{name}] {raw.decode(errors='replace')}"
            self.recent[name].append(line)
            if out is not None:
                out.write(line)
                out.flush()

    def _probe(
        self, container: dict[str, Any], process: subprocess.Popen[bytes], probe: dict[str, Any]
    ) -> bool:
        """A kubelet probe, run inside the pod as the container's user."""
        timeout = probe.get("timeoutSeconds", 1)
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"http://127.0.0.1:{get['port']}{get.get('path', '/')}"
            who = self._identity(container)
            command = ["curl", "-sf", "-o", "/dev/null", "--max-time", str(timeout), url]
            argv = netns.exec_argv(self.netns, [*setpriv_argv(who), "--", *command])
            try:
                return (
                    subprocess.run(argv, capture_output=True, timeout=timeout + 5).returncode == 0
                )
            except subprocess.TimeoutExpired:
                return False
        try:
            return self._exec(process, container, probe["exec"]["command"], timeout).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _wait_started(self, container: dict[str, Any], process: subprocess.Popen[bytes]) -> None:
        probe = container.get("startupProbe")
        if probe is None:
            return
        period = probe.get("periodSeconds", 10)
        for _ in range(probe.get("failureThreshold", 3)):
            if process.poll() is not None:
                raise PodError(
                    f"sidecar {container['name']!r} exited {process.returncode} while starting"
                )
            if self._probe(container, process, probe):
                return
            if self._stopping.wait(period):
                raise PodError("stopped")
        raise PodError(f"sidecar {container['name']!r}: startup probe never passed")

    def _watch_sidecars(self) -> None:
        """restartPolicy Always: a sidecar that exits is started again, with a back-off. What to
        do is decided under the lock, the starting happens outside it (the teardown waits for a
        start under way, and none begins after it)."""
        try:
            while not self._stopping.wait(0.2):
                self._restart_due(time.monotonic())
        finally:
            # The parent of the sidecars it restarted (their pdeathsig): alive until the
            # teardown has stopped them, gracefully.
            self._torn_down.wait()

    def _restart_due(self, now: float) -> None:
        with self._lock:
            for r in self._sidecars:
                if r.due is None and r.process.poll() is not None:
                    r.restarts, delay = backoff(r.restarts, now - r.started)
                    r.due = now + delay
                    log.warning(
                        "sidecar %s exited %s; restart %d in %.1f s",
                        r.name, r.process.returncode, r.restarts, delay,
                    )  # fmt: skip
            due = [r for r in self._sidecars if r.due is not None and r.due <= now]
        for r in due:
            with self._restarting:
                if self._stopping.is_set():
                    return
                try:
                    process = self._start(r.spec)
                except Exception:  # tried again after the next back-off
                    log.exception("restarting sidecar %s failed", r.name)
                    with self._lock:
                        r.restarts, delay = backoff(r.restarts, 0.0)
                        r.due = time.monotonic() + delay
                    continue
                with self._lock:
                    r.process, r.started, r.due = process, time.monotonic(), None

    # -- the pod ------------------------------------------------------------------------------

    def run(self) -> int:
        """Run to completion; the exit status of the first app container."""
        with self._signals():
            try:
                self._setup()
                for container in self.spec.get("initContainers") or []:
                    if self._stopping.is_set():
                        raise PodError("stopped")
                    if container.get("restartPolicy") == "Always":
                        process = self._start(container)
                        with self._lock:
                            self._sidecars.append(_Running(container["name"], process, container))
                        self._wait_started(container, process)
                    else:
                        status = self._start(container).wait()
                        if status != 0:
                            raise PodError(f"init container {container['name']!r} exited {status}")
                threading.Thread(target=self._watch_sidecars, daemon=True).start()
                apps = {c["name"]: self._start(c) for c in self.spec.get("containers") or []}
                self._apps = apps
                self.started.set()
                relay = self._terminal.relaying() if self._terminal else contextlib.nullcontext()
                with relay:
                    statuses = self._wait_apps(apps)
                for copy in self._copies:
                    copy.join(5)  # its last output
                return statuses[0] if statuses else 0
            finally:
                self._teardown()

    def _wait_apps(self, apps: dict[str, subprocess.Popen[bytes]]) -> list[int]:
        """Until every app container has ended: their exit statuses. Once the pod is stopping,
        they are stopped all at once, as the kubelet does (`_stop_app`)."""
        stopper = None
        while any(p.poll() is None for p in apps.values()):
            if stopper is None and self._stopping.wait(0.2):
                deadline = time.monotonic() + self._grace_s()
                specs = {c["name"]: c for c in self.spec.get("containers") or []}
                stopper = [
                    threading.Thread(target=self._stop_app, args=(specs[n], p, deadline))
                    for n, p in apps.items()
                ]
                for thread in stopper:
                    thread.start()
            elif stopper is not None:
                time.sleep(0.2)
        for thread in stopper or ():
            thread.join()
        return [128 - s if s < 0 else s for s in (p.returncode for p in apps.values())]

    def _grace_s(self) -> float:
        """The pod's terminationGracePeriodSeconds; unless it gives one, the runtime's own
        (shorter than the kubelet's 30 s: a sandbox stops at once)."""
        grace = self.spec.get("terminationGracePeriodSeconds")
        return float(grace) if isinstance(grace, int) and grace >= 0 else STOP_GRACE_S

    def _stop_app(
        self, container: dict[str, Any], process: subprocess.Popen[bytes], deadline: float
    ) -> None:
        """Its preStop hook (exec or sleep), then SIGTERM, then SIGKILL at `deadline`: the hook
        and the container share the pod's grace period. A hook that fails or runs out of time
        is logged, and the container stopped all the same."""
        hook = (container.get("lifecycle") or {}).get("preStop") or {}
        left = deadline - time.monotonic()
        try:
            if process.poll() is not None or left <= 0:
                pass  # ended already, or no time left for a hook
            elif "exec" in hook:
                done = self._exec(process, container, hook["exec"]["command"], left)
                if done.returncode != 0:
                    log.warning(
                        "%s: preStop exited %d: %s", container["name"], done.returncode,
                        done.stderr.decode(errors="replace").strip()[-500:],
                    )  # fmt: skip
            elif "sleep" in hook:
                time.sleep(min(float(hook["sleep"]["seconds"]), left))
        except subprocess.TimeoutExpired:
            log.warning("%s: preStop still running at the grace period's end", container["name"])
        except Exception:  # the container ended meanwhile, say: it is stopped all the same
            log.exception("%s: preStop failed", container["name"])
        _terminate(process, max(deadline - time.monotonic(), 0.0))

    def _signals(self) -> contextlib.AbstractContextManager[object]:
        """SIGTERM and SIGHUP stop the pod; so does SIGINT, unless the workload has the
        terminal: then Ctrl-C is the workload's to handle (an interactive shell survives it)."""
        if threading.current_thread() is not threading.main_thread():
            return contextlib.nullcontext()
        interactive = self.options.attached is not None and sys.stdin.isatty()
        handled = contextlib.ExitStack()
        if interactive:  # a no-op handler, not SIG_IGN: dispositions set to ignore survive exec
            handled.callback(signal.signal, signal.SIGINT, signal.signal(signal.SIGINT, _ignore))
        stopping = [signal.SIGTERM, signal.SIGHUP] + ([] if interactive else [signal.SIGINT])
        handled.enter_context(signals.setting(self._stopping, stopping))
        return handled

    def exec(
        self, container: str, argv: list[str], timeout: float = 60.0
    ) -> subprocess.CompletedProcess[bytes]:
        """What `kubectl exec` does: `argv` in a running container's namespaces (an app's or a
        sidecar's), as its user, with its environment."""
        spec = next((c for c in self.spec.get("containers") or [] if c["name"] == container), None)
        if spec is not None:
            return self._exec(self._apps[container], spec, argv, timeout)
        with self._lock:
            sidecar = next(r for r in self._sidecars if r.name == container)
        return self._exec(sidecar.process, sidecar.spec, argv, timeout)

    def _exec(
        self,
        process: subprocess.Popen[bytes],
        container: dict[str, Any],
        argv: list[str],
        timeout: float,
    ) -> subprocess.CompletedProcess[bytes]:
        who = self._identity(container)
        spec = {
            "pid": _started_process(process),
            "identity": _identity_spec(who),
            "seccomp": who.seccomp,
            "working_dir": container.get("workingDir"),
            "env": {"PATH": DEFAULT_PATH}
            | container_env(container, self.pod, self.volumes.object_data),
            "argv": in_image(container.get("image", ""), argv, self.options.executables),
        }
        return self._launch(
            "join", spec, [], subprocess.run, capture_output=True, timeout=timeout, check=False
        )

    def stop(self) -> None:
        self._stopping.set()

    def set_annotations(self, annotations: dict[str, str]) -> None:
        self.volumes.set_annotations(annotations)


def _copy(source: IO[bytes], target: TextIO) -> None:
    """Bytes as they come (an interactive program's prompt has no newline)."""
    while data := os.read(source.fileno(), 65536):
        target.buffer.write(data)
        target.flush()


def _identity_spec(who: Identity) -> dict[str, Any]:
    return {
        "uid": who.uid,
        "gid": who.gid,
        "groups": list(who.groups),
        "capabilities": list(who.capabilities),
        "no_new_privileges": who.no_new_privileges,
    }


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _init(process: subprocess.Popen[bytes]) -> int | None:
    """The container's init (`enter`), the child `unshare --fork` started."""
    children = _children(process.pid)
    return children[0] if children else None


def _started_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """The container's init, once it has started the container's process (its mounts done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        init = _init(process)
        for child in _children(init) if init else []:
            with contextlib.suppress(OSError):
                if (
                    b"intercept_proxy.runtime.enter"
                    not in Path(f"/proc/{child}/cmdline").read_bytes()
                ):
                    return init  # type: ignore[return-value]
        time.sleep(0.02)
    raise PodError(f"process {process.pid} did not start its container in {timeout}s")


def _terminate(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the container (through its init), SIGKILL after `grace_s`.
    (`unshare --fork` itself ignores SIGTERM, and kills the container when killed.)"""
    if process.poll() is not None:
        return
    init = _init(process)
    with contextlib.suppress(ProcessLookupError):
        if init:
            os.kill(init, signal.SIGTERM)
        else:
            process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


def cleanup_stale() -> list[str]:
    """Remove what runtimes that died without cleaning up left behind: every namespace and
    interface named after the pod (its lab's included), its host uplink's rules, its files."""
    removed = []
    for record in state.stale():
        prefix = str(record["pod"])
        removed += netns.cleanup(prefix)
        release_host_uplink(prefix)
        state.release(prefix)
        for leftover in POD_ROOT.glob(f"intercept-*-{prefix}*"):
            if leftover.is_dir():
                unmount_under(leftover)
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(str(leftover))
    return removed
