"""One pod on the node: prepared from the API server's Pod, run by the local pod runtime
(`ClusterPod`, a `LocalPod` that also records what a kubelet reports: each container's process,
start and end, exit status, restarts, startup and readiness), its status reported, its deletion
carried out (stop, last status, then the Pod deleted with grace period 0 so deletion completes).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from intercept_proxy import netns
from intercept_proxy.cluster.client import ApiError
from intercept_proxy.cluster.node import prepare as prep
from intercept_proxy.cluster.node import status as st
from intercept_proxy.cluster.node import trust as tr
from intercept_proxy.cluster.node.logs import PodLogs
from intercept_proxy.lab import LabError
from intercept_proxy.netns import NetnsError
from intercept_proxy.runtime.admission import AdmissionError
from intercept_proxy.runtime.cni import CniError
from intercept_proxy.runtime.containers import ContainerError
from intercept_proxy.runtime.network import NetworkError
from intercept_proxy.runtime.pod import HostAccess, LocalPod, Options, PodError
from intercept_proxy.runtime.volumes import VolumeError

if TYPE_CHECKING:
    from intercept_proxy.cluster.node.agent import NodeAgent

log = logging.getLogger(__name__)

STATUS_INTERVAL = 0.5
PREPARE_RETRY = 2.0
REFRESH_INTERVAL = 10.0
TOKEN_REFRESH_FRACTION = 0.8
# A pod whose network could not be made: made again after 1 s, 2 s, ... up to 10 s.
SANDBOX_RETRY_S, SANDBOX_RETRY_MAX_S = 1.0, 10.0


@dataclass
class _Record:
    spec: dict[str, Any]
    state: st.ContainerState
    process: subprocess.Popen[bytes] | None = None
    started_mono: float = 0.0
    successes: int = 0
    failures: int = 0
    next_probe: float = 0.0


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def pod_addresses(netns_name: str) -> tuple[str, ...]:
    """The global addresses of a pod's network namespace, IPv4 first."""
    out = netns.ip("-n", netns_name, "-j", "address", "show")
    addresses = []
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info") or []:
            if a.get("scope") == "global":
                addresses.append(a["local"])
    return tuple(sorted(addresses, key=lambda a: (":" in a, a)))


class ClusterPod(LocalPod):
    """A LocalPod that keeps what the node reports about its containers, and their logs."""

    def __init__(
        self,
        pod: dict[str, Any],
        objects: Mapping[tuple[str, str], dict[str, Any]],
        options: Options,
        *,
        logs: PodLogs,
        facts: prep.PodFacts,
        on_sandbox: Callable[[ClusterPod], None],
        on_event: Callable[[str, str, str], None] = lambda kind, reason, message: None,
        previous: Mapping[str, st.ContainerState] | None = None,
    ) -> None:
        super().__init__(pod, objects, options)  # the runtime's admission: AdmissionError
        self.logs = logs
        self.facts = facts
        self.on_sandbox = on_sandbox
        self.on_event = on_event
        self.records: dict[str, _Record] = {}
        for state in st.container_states(self.spec):
            spec = next(
                c
                for c in [
                    *(self.spec.get("initContainers") or []),
                    *(self.spec.get("containers") or []),
                ]
                if c["name"] == state.name
            )
            known = (previous or {}).get(state.name)
            if known is not None:
                state.restarts, state.last_terminated = known.restarts, known.last_terminated
            self.records[state.name] = _Record(spec, state)
            logs.known.add(state.name)
        self.sandbox = False
        self.pod_ips: tuple[str, ...] = ()
        self._records_lock = threading.Lock()

    # -- the network and the runtime's hooks --------------------------------------------------

    def _setup(self) -> None:
        super()._setup()
        # On the node's network: the node's address, as a kubelet reports such a pod.
        self.pod_ips = (self.facts.host_ip,) if self.host_network else pod_addresses(self.netns)
        self.facts.pod_ips = self.pod_ips
        prep.fill_pod_ips(self.spec, self.pod, self.facts)
        self.sandbox = True
        threading.Thread(target=self._probe_loop, name=f"probes-{self.name}", daemon=True).start()
        self.on_sandbox(self)

    def _teardown(self) -> None:
        try:
            super()._teardown()
        finally:
            self.reap()
            for name in list(self.logs.active):
                self.logs.stopped(name)

    def _start(self, container: dict[str, Any]) -> subprocess.Popen[bytes]:
        name = container["name"]
        record = self.records[name]
        with self._records_lock:
            self._reap(record)
            if record.process is not None:  # a sidecar started again
                state = record.state
                state.last_terminated = state.terminated()
                state.restarts += 1
                state.exit_code = state.finished_at = None
                state.started = state.ready = False
                record.successes = record.failures = 0
        self.logs.started(name)
        process = super()._start(container)
        self.on_event("Normal", "Started", f"Started container {name}")
        with self._records_lock:
            record.process = process
            record.started_mono = time.monotonic()
            state = record.state
            state.started_at = st.now()
            state.container_id = f"intercept://{self.options.prefix}/{name}/{state.restarts}"
            # Sidecars' startup probes are the runtime's (`_wait_started`); an app container's
            # are the probe loop's.
            state.started = "startupProbe" not in container
            record.next_probe = time.monotonic() + (
                (container.get("readinessProbe") or {}).get("initialDelaySeconds", 0)
            )
        return process

    def _wait_started(self, container: dict[str, Any], process: subprocess.Popen[bytes]) -> None:
        super()._wait_started(container, process)
        self.records[container["name"]].state.started = True

    def _relay(self, name: str, stream: Any) -> None:
        for raw in stream:
            self.logs.write(name, raw)
            self.recent[name].append(f"[{name}] {raw.decode(errors='replace')}")

    # -- what the node reports ----------------------------------------------------------------

    def _reap(self, record: _Record) -> None:
        process = record.process
        if process is None or record.state.exit_code is not None:
            return
        returncode = process.poll()
        if returncode is not None:
            record.state.exit_code = _exit_code(returncode)
            record.state.finished_at = st.now()
            record.state.ready = False
            self.logs.stopped(record.state.name)

    def reap(self) -> None:
        with self._records_lock:
            for record in self.records.values():
                self._reap(record)

    def snapshot(self) -> list[st.ContainerState]:
        self.reap()
        with self._records_lock:
            return [copy.copy(r.state) for r in self.records.values()]

    def _probe_loop(self) -> None:
        """Startup probes of app containers, readiness probes of every running container."""
        while not self._stopping.wait(0.2):
            for record in list(self.records.values()):
                state, spec = record.state, record.spec
                process = record.process
                if process is None or state.exit_code is not None or process.poll() is not None:
                    continue
                if time.monotonic() < record.next_probe:
                    continue
                if not state.started:
                    if state.sidecar:
                        continue  # the runtime's own startup wait
                    probe = spec["startupProbe"]
                    if self._probe(spec, process, probe):
                        state.started = True
                        record.next_probe = 0.0
                    else:
                        record.next_probe = time.monotonic() + probe.get("periodSeconds", 10)
                    continue
                probe = spec.get("readinessProbe")
                if probe is None:
                    state.ready = True
                    continue
                ok = self._probe(spec, process, probe)
                if ok:
                    record.successes, record.failures = record.successes + 1, 0
                    if record.successes >= probe.get("successThreshold", 1):
                        state.ready = True
                else:
                    record.successes, record.failures = 0, record.failures + 1
                    if record.failures >= probe.get("failureThreshold", 3):
                        state.ready = False
                record.next_probe = time.monotonic() + probe.get("periodSeconds", 10)


@dataclass
class Failure:
    reason: str
    message: str


@dataclass
class PodWorker:
    """Runs one pod (by UID) in a thread of its own, from preparation to finalization."""

    agent: NodeAgent
    pod: dict[str, Any]
    local: ClusterPod | None = None
    failure: Failure | None = None
    finished: bool = False
    stop_requested: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    waiting: tuple[str, str] | None = None  # (reason, message) while the pod cannot start

    def __post_init__(self) -> None:
        meta = self.pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.conditions = st.Conditions()
        self.containers = st.container_states(self.pod.get("spec") or {})
        st.carry_over(self.containers, self.pod.get("status") or {})
        self.start_time = st.now()
        self.logs = self.agent.logs.open(self.namespace, self.name, self.uid)
        self.logs.known.update(c.name for c in self.containers)
        self._status_lock = threading.Lock()
        self._last_status: dict[str, Any] | None = None
        self._projections: list[prep.Projection] = []
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._token_times: dict[str, float] = {}
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def start(self) -> None:
        self.thread.start()

    # -- changes from the API server ----------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        old = self.pod["metadata"]
        self.pod = pod
        meta = pod["metadata"]
        local = self.local
        changed = old.get("annotations") != meta.get("annotations") or old.get(
            "labels"
        ) != meta.get("labels")
        if local is not None and changed:
            local.pod.setdefault("metadata", {})["labels"] = dict(meta.get("labels") or {})
            local.set_annotations(dict(meta.get("annotations") or {}))
            self._refresh_projections(metadata_changed=True)
        if meta.get("deletionTimestamp"):
            if self.done.is_set():
                self.agent.finalize(pod)
            else:
                self.stop()

    def stop(self) -> None:
        if self.stop_requested.is_set():
            return
        self.stop_requested.set()
        local = self.local  # once: an attempt whose network was refused sets it to None
        if local is not None and not self.done.is_set():
            if self.pod["metadata"].get("deletionTimestamp"):
                self.agent.event(self.pod, "Normal", "Killing", "Stopping the pod's containers")
            local.stop()

    # -- the run ------------------------------------------------------------------------------

    def _run(self) -> None:
        reporter = threading.Thread(
            target=self._report_loop, name=f"status-{self.name}", daemon=True
        )
        reporter.start()
        try:
            self._run_pod()
        except Exception as e:  # whatever happens, the pod gets a status saying so
            log.exception("pod %s failed", self.key)
            self.failure = self.failure or Failure(
                "NodeError", f"the node failed to run the pod: {e}"
            )
        finally:
            self.finished = True
            self.logs.finished.set()
            self.done.set()
            self.report()
            self.agent.pod_done(self)

    def _run_pod(self) -> None:
        prepared = self._prepare()
        if prepared is None:
            return
        host = None
        if tr.wants_host(self.pod):
            owner = tr.controller(self.pod) or {}
            daemonset = (
                self.agent.daemonset(self.namespace, str(owner["name"]))
                if owner.get("kind") == "DaemonSet" and owner.get("name")
                else None
            )
            labels = self.agent.namespace_labels(self.namespace)
            trust = tr.node_agent(self.pod, labels, daemonset)
            host = self.agent.network.host_access() if trust.trusted else None
        else:
            trust = tr.decide(self.pod, self.agent.releases())
        self._objects = dict(prepared.objects)
        self._projections = prepared.projections
        self._token_times = {p.volume: time.monotonic() for p in prepared.projections if p.tokens}
        refresher = threading.Thread(target=self._refresh_loop, daemon=True)
        delay = SANDBOX_RETRY_S
        # As a kubelet: a pod whose network could not be made is made again later (CNI mode's
        # plugin says "try again later" while the node agent is away).
        prefix = self.agent.pod_prefix()  # each attempt's own leaves nothing behind it
        while self._attempt(prepared, trust, host, refresher, prefix):
            if self.stop_requested.wait(delay):
                return
            delay = min(2 * delay, SANDBOX_RETRY_MAX_S)

    def _attempt(
        self,
        prepared: prep.Prepared,
        trust: tr.Trust,
        host: HostAccess | None,
        refresher: threading.Thread,
        prefix: str,
    ) -> bool:
        """One run of the pod on the local runtime; True if its network could not be made."""
        options = Options(
            uplink=self.agent.network.uplink(self.pod),
            executables=self.agent.executables,
            prefix=prefix,
            trusted=trust.trusted,
            host=host,
            env=self.agent.network.pod_env(),
        )
        try:
            local = ClusterPod(
                prepared.pod,
                prepared.objects,
                options,
                logs=self.logs,
                facts=self.agent.facts(),
                on_sandbox=lambda _: self.report(),
                on_event=lambda kind, reason, message: self.agent.event(
                    self.pod, kind, reason, message
                ),
                previous={c.name: c for c in self.containers},
            )
        except AdmissionError as e:
            message = f"Pod was rejected by the node's runtime: {e}"
            if not trust.trusted:
                message += f" (its containers run untrusted: {trust.explanation})"
            self.failure = Failure("RuntimeAdmissionRejected", message)
            self.agent.event(self.pod, "Warning", "RuntimeAdmissionRejected", message)
            return False
        self.local = local
        log.info("pod %s: starting (%s)", self.key, trust.explanation)
        if self.stop_requested.is_set():
            return False
        if refresher.ident is None:  # the first attempt's
            refresher.start()
        try:
            local.run()
        except CniError as e:
            if self.stop_requested.is_set():
                return False
            message = f"Failed to create pod sandbox: {e}"
            self.local, self.waiting = None, ("ContainerCreating", message)
            self.agent.event(self.pod, "Warning", "FailedCreatePodSandBox", message)
            return True
        except PodError as e:
            if not self.stop_requested.is_set():
                self.failure = Failure("Error", str(e))
                detail = "".join(line for lines in local.recent.values() for line in lines)[-2000:]
                self.agent.event(self.pod, "Warning", "Failed", f"{e}\n{detail}".strip())
        except (ContainerError, VolumeError, NetworkError, LabError, NetnsError, OSError) as e:
            self.failure = Failure("RunContainerError", f"the node could not run the pod: {e}")
            self.agent.event(self.pod, "Warning", "Failed", self.failure.message)
        return False

    def _prepare(self) -> prep.Prepared | None:
        """The pod as the runtime will run it; waits (status saying why) for missing objects.
        None if the pod is stopped meanwhile or can never start (`failure` says why)."""
        spec = self.pod.get("spec") or {}
        while not self.stop_requested.is_set():
            objects: dict[tuple[str, str], dict[str, Any] | None] = {}
            try:
                for ref in prep.references(spec):
                    objects[(ref.kind, ref.name)] = self.agent.read_object(
                        self.namespace, ref.kind, ref.name
                    )
                return prep.prepare(
                    self.pod, objects, self.agent.facts(), self._token, self.agent.capacity
                )
            except prep.PrepareError as e:
                if not e.waiting:
                    self.failure = Failure(e.reason, str(e))
                    self.agent.event(self.pod, "Warning", "Failed", str(e))
                    return None
                if self.waiting != (e.reason, str(e)):
                    self.agent.event(self.pod, "Warning", "FailedMount", str(e))
                self.waiting = (e.reason, str(e))
            except ApiError as e:
                self.waiting = ("ContainerCreating", f"the node cannot read the pod's objects: {e}")
            self.stop_requested.wait(PREPARE_RETRY)
        return None

    def _token(self, audience: str | None, seconds: int) -> str:
        return self.agent.request_token(self.pod, audience, seconds)

    def _refresh_loop(self) -> None:
        """What the kubelet keeps up to date in a running pod's volumes: ConfigMaps, Secrets,
        projected tokens (at 80 % of their lifetime)."""
        while not self.stop_requested.wait(REFRESH_INTERVAL) and not self.done.is_set():
            with contextlib.suppress(Exception):
                self._refresh_objects()
                self._refresh_projections(metadata_changed=False)

    def _refresh_objects(self) -> None:
        local = self.local
        if local is None:
            return
        changed: set[tuple[str, str]] = set()
        for ref in prep.references(self.pod.get("spec") or {}):
            obj = self.agent.read_object(self.namespace, ref.kind, ref.name)
            key = (ref.kind, ref.name)
            if obj is not None and (obj.get("data"), obj.get("binaryData")) != (
                (self._objects.get(key) or {}).get("data"),
                (self._objects.get(key) or {}).get("binaryData"),
            ):
                self._objects[key] = obj
                changed.add(key)
        if not changed:
            return
        local.volumes.objects = self._objects
        for volume in local.spec.get("volumes") or []:
            source = volume.get("configMap") or volume.get("secret") or {}
            kind = "ConfigMap" if "configMap" in volume else "Secret"
            name = source.get("name") or source.get("secretName")
            if (kind, name) in changed:
                self._republish(volume)
        projected_sources = {
            v["name"]: v
            for v in (self.pod.get("spec") or {}).get("volumes") or []
            if "projected" in v
        }
        for projection in self._projections:
            volume = projected_sources.get(projection.volume)
            sources = ((volume or {}).get("projected") or {}).get("sources") or []
            if any(
                (("ConfigMap", (s.get("configMap") or {}).get("name")) in changed)
                or (("Secret", (s.get("secret") or {}).get("name")) in changed)
                for s in sources
            ):
                self._reproject(projection, volume)

    def _refresh_projections(self, metadata_changed: bool) -> None:
        local = self.local
        if local is None:
            return
        volumes = {v["name"]: v for v in (self.pod.get("spec") or {}).get("volumes") or []}
        for projection in self._projections:
            due = False
            if projection.tokens:
                shortest = min(seconds for _, seconds in projection.tokens)
                age = time.monotonic() - self._token_times.get(projection.volume, 0)
                due = age > TOKEN_REFRESH_FRACTION * shortest
            if due or (metadata_changed and projection.reads_metadata):
                self._reproject(projection, volumes.get(projection.volume))

    def _reproject(self, projection: prep.Projection, volume: dict[str, Any] | None) -> None:
        local = self.local
        if local is None or volume is None:
            return
        replacement, secret, _ = prep.project(
            volume, self.pod, self._objects, self.agent.facts(), self._token
        )
        self._objects[("Secret", projection.secret_name)] = secret
        local.volumes.objects = self._objects
        if projection.tokens:
            self._token_times[projection.volume] = time.monotonic()
        self._republish(replacement)

    def _republish(self, volume: dict[str, Any]) -> None:
        """Write a volume again (its `..data` swapped atomically), as the kubelet does."""
        assert self.local is not None
        self.local.volumes._create(volume)

    # -- status -------------------------------------------------------------------------------

    def state(self) -> st.PodState:
        local = self.local
        containers = (
            local.snapshot() if local is not None else [copy.copy(c) for c in self.containers]
        )
        if local is None and self.waiting is not None:
            for c in containers:
                c.waiting_reason, c.waiting_message = self.waiting
        failure = self.failure
        return st.PodState(
            containers=containers,
            sandbox=local is not None and local.sandbox and not self.finished,
            apps_started=local is not None and local.started.is_set(),
            finished=self.finished,
            failed=failure.message if failure else None,
            reason=failure.reason if failure else None,
            pod_ips=local.pod_ips if local is not None else (),
            host_ip=self.agent.host_ip,
            start_time=self.start_time,
        )

    def report(self) -> None:
        with self._status_lock:
            status = st.pod_status(self.state(), self.conditions)
            if status == self._last_status:
                return
            try:
                self.agent.patch_status(self.pod, status)
                self._last_status = status
            except ApiError as e:
                if e.status != 404:
                    log.warning("pod %s: status update failed: %s", self.key, e)

    def _report_loop(self) -> None:
        while not self.done.wait(STATUS_INTERVAL):
            self.report()
