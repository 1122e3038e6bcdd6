"""The node agent (`python -m intercept_proxy.cluster.node STATE_DIR`): registers the Node and
keeps it Ready (status and Lease), binds pods that wait for a node to itself (there is no
scheduler), and runs the pods bound to it, each in a PodWorker. Its identities: the node's
(`system:node:NODE`, held by the Node authorizer and NodeRestriction like a kubelet), the
scheduler's for bindings, and a reader of the chart's settings ConfigMaps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from intercept_proxy import __version__, netns, signals
from intercept_proxy.cluster.client import (
    STRATEGIC_PATCH,
    ApiError,
    Credentials,
    KubeClient,
    list_watch,
)
from intercept_proxy.cluster.layout import Config, pod_prefix
from intercept_proxy.cluster.node import prepare as prep
from intercept_proxy.cluster.node import status as st
from intercept_proxy.cluster.node import trust as tr
from intercept_proxy.cluster.node.logs import LogServer, LogStore
from intercept_proxy.cluster.node.network import NodeNetwork
from intercept_proxy.cluster.node.pods import PodWorker
from intercept_proxy.cluster.pki import KUBELET_CLIENT_USER, ClusterPki
from intercept_proxy.cluster.tools import Tools
from intercept_proxy.lab import Lab
from intercept_proxy.runtime.containers import Executables
from intercept_proxy.runtime.pod import cleanup_stale
from intercept_proxy.xds.envoy import envoy_binary

log = logging.getLogger("intercept_proxy.cluster.node")

HOST_IP = "127.0.0.1"
LEASE_SECONDS = 40
LEASE_RENEW = 10.0
STATUS_EVERY = 30.0
WATCH_SECONDS = 240
SCHEDULER = "default-scheduler"


def _capacity() -> dict[str, str]:
    memory_kib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
    disk = os.statvfs("/")
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_kib}Ki",
        "pods": "110",
        "ephemeral-storage": f"{disk.f_blocks * disk.f_frsize // 1024}Ki",
    }


class NodeAgent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.node_name
        self.host_ip = HOST_IP
        pki = ClusterPki(config.path("pki"))
        self.pki = pki

        def client(subject: str) -> KubeClient:
            return KubeClient(
                Credentials(config.server, pki.ca, pki.cert(subject), pki.key(subject))
            )

        self.client = client("node")
        self.scheduler = client("scheduler")
        self.policy_reader = client("injection-policy-reader")
        self.capacity = _capacity()
        self.logs = LogStore(config.path("pods"))
        self.executables = Executables(
            intercept=Path(sys.executable).with_name("intercept"), envoy=envoy_binary()
        )
        lab = Lab.from_state(config.path("lab")) if config.lab_spec is not None else None
        self.network = NodeNetwork(config, lab, pki, Tools.locate())
        self.workers: dict[str, PodWorker] = {}
        self._prefixes: set[str] = set()  # given out by pod_prefix
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._boot_id = str(uuid.uuid4())
        self._version = ""

    # -- what pod workers ask for -------------------------------------------------------------

    def pod_prefix(self) -> str:
        """A prefix no namespace or interface of this machine starts with."""
        with self._lock:
            existing = set(netns.namespaces()) | set(netns.links()) | self._prefixes
            while True:
                prefix = pod_prefix(self.config.prefix)
                if not any(name.startswith(prefix) for name in existing):
                    self._prefixes.add(prefix)
                    return prefix

    def facts(self) -> prep.PodFacts:
        return prep.PodFacts(node_name=self.name, host_ip=self.host_ip)

    def releases(self) -> list[tr.Release]:
        path = "/apis/kyverno.io/v1/clusterpolicies"
        items = self.policy_reader.get(path, labelSelector=tr.SELECTOR)["items"]
        return tr.releases(items)

    def namespace_labels(self, name: str) -> dict[str, str]:
        namespace = self.policy_reader.get_or_none(f"/api/v1/namespaces/{name}") or {}
        return dict((namespace.get("metadata") or {}).get("labels") or {})

    def daemonset(self, namespace: str, name: str) -> dict[str, Any] | None:
        path = f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}"
        found: dict[str, Any] | None = self.policy_reader.get_or_none(path)
        return found

    def read_object(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        plural = "configmaps" if kind == prep.CONFIG_MAP else "secrets"
        obj: dict[str, Any] | None = self.client.get_or_none(
            f"/api/v1/namespaces/{namespace}/{plural}/{name}"
        )
        if obj is not None:
            obj.setdefault("kind", kind)
        return obj

    def request_token(self, pod: dict[str, Any], audience: str | None, seconds: int) -> str:
        meta = pod["metadata"]
        account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": seconds,
            "boundObjectRef": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        if audience:
            spec["audiences"] = [audience]
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        token: str = self.client.create(path, body)["status"]["token"]
        return token

    def patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        patch = {"metadata": {"uid": meta["uid"]}, "status": status}
        self.client.patch(path, patch, STRATEGIC_PATCH)

    def event(self, pod: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """An event about `pod` (best effort: `kubectl describe` shows it)."""
        meta = pod["metadata"]
        stamp = st.now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": "kubelet", "host": self.name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.name,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.client.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except ApiError as e:
            log.debug("event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], e)

    def pod_done(self, worker: PodWorker) -> None:
        """A worker ended: a pod being deleted is finalized (deleted with grace period 0)."""
        if worker.pod["metadata"].get("deletionTimestamp"):
            self.finalize(worker.pod)

    def finalize(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        try:
            self.client.delete(path, body)
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("pod %s/%s: delete failed: %s", meta["namespace"], meta["name"], e)

    # -- the Node -----------------------------------------------------------------------------

    def _node_status(self, port: int) -> dict[str, Any]:
        stamp = st.now()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        machine_id = (
            Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
        )
        return {
            "addresses": [
                {"type": "InternalIP", "address": self.host_ip},
                {"type": "Hostname", "address": self.name},
            ],
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                {
                    "type": kind,
                    "status": value,
                    "reason": reason,
                    "message": "intercept-cluster node agent: " + reason,
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": self._started,
                }
                for kind, value, reason in conditions
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": {
                "machineID": machine_id,
                "systemUUID": machine_id,
                "bootID": self._boot_id,
                "kernelVersion": platform.release(),
                "osImage": "this machine (images are not pulled)",
                "containerRuntimeVersion": f"intercept-local://{__version__}",
                # The control plane's own: controllers compare versions.
                "kubeletVersion": self._version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self, port: int) -> None:
        self._started = st.now()
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }
        try:
            self.client.create("/api/v1/nodes", node)
        except ApiError as e:
            if e.status != 409:
                raise
        self._post_status(port)
        self._renew_lease()

    def _post_status(self, port: int) -> None:
        self.client.patch(
            f"/api/v1/nodes/{self.name}/status",
            {"status": self._node_status(port)},
            STRATEGIC_PATCH,
        )

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": st.micro_now(),
        }
        try:
            self.client.patch(path, {"spec": spec})
        except ApiError as e:
            if e.status != 404:
                raise
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": "kube-node-lease"},
                "spec": spec,
            }
            self.client.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease
            )

    def _heartbeat(self, port: int) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(LEASE_RENEW):
            try:
                self._renew_lease()
                if time.monotonic() - last_status > STATUS_EVERY:
                    self._post_status(port)
                    last_status = time.monotonic()
            except ApiError as e:
                log.warning("heartbeat: %s", e)

    # -- binding ------------------------------------------------------------------------------

    def _schedulable(self, pod: dict[str, Any]) -> str | None:
        """Why `pod` cannot go to this node (None: it can)."""
        spec = pod.get("spec") or {}
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        for key, value in (spec.get("nodeSelector") or {}).items():
            if labels.get(key) != value:
                return (
                    "0/1 nodes are available: 1 node(s) didn't match Pod's node selector "
                    f"({key}={value})."
                )
        return None

    def _bind(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if (
            spec.get("nodeName")
            or meta.get("deletionTimestamp")
            or spec.get("schedulerName", SCHEDULER) != SCHEDULER
            or spec.get("schedulingGates")
            or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        ):
            return
        base = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        why = self._schedulable(pod)
        try:
            if why is not None:
                condition = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": why,
                    "lastTransitionTime": st.now(),
                }
                self.scheduler.patch(
                    f"{base}/status", {"status": {"conditions": [condition]}}, STRATEGIC_PATCH
                )
                return
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": meta["name"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
            }
            self.scheduler.create(f"{base}/binding", binding)
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("binding %s/%s: %s", meta["namespace"], meta["name"], e)
                return
        if why is None:
            self.event(
                pod,
                "Normal",
                "Scheduled",
                f"Successfully assigned {meta['namespace']}/{meta['name']} to {self.name}",
            )

    def _binder(self) -> None:
        selector = "spec.nodeName=,status.phase!=Succeeded,status.phase!=Failed"

        def event(kind: str, pod: dict[str, Any]) -> None:
            if kind != "DELETED":
                self._bind(pod)

        def resync(pods: list[dict[str, Any]]) -> None:
            for pod in pods:
                self._bind(pod)

        self._list_watch(self.scheduler, selector, event, resync)

    # -- the pods bound here ------------------------------------------------------------------

    def _sync(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                worker.stop()
                threading.Thread(target=self._forget, args=(worker,), daemon=True).start()
            return
        if worker is not None:
            worker.update(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if meta.get("deletionTimestamp"):
            self.finalize(pod)  # never started here (or finished before a restart of ours)
            return
        if phase in ("Succeeded", "Failed") or self.stopping.is_set():
            return
        worker = PodWorker(self, pod)
        with self._lock:
            self.workers[uid] = worker
        worker.start()

    def _forget(self, worker: PodWorker) -> None:
        worker.done.wait()
        worker.thread.join()
        with self._lock:
            self.workers.pop(worker.uid, None)
        self.logs.close(worker.logs)

    def _resync(self, pods: list[dict[str, Any]]) -> None:
        seen = {p["metadata"]["uid"] for p in pods}
        with self._lock:
            gone = [w for uid, w in self.workers.items() if uid not in seen]
        for worker in gone:
            self._sync("DELETED", worker.pod)
        for pod in pods:
            self._sync("MODIFIED", pod)

    def _list_watch(self, client: KubeClient, selector: str, handle: Any, resync: Any) -> None:
        list_watch(
            client, "/api/v1/pods", self.stopping, handle, resync, WATCH_SECONDS,
            fieldSelector=selector,
        )  # fmt: skip

    # -- the agent ----------------------------------------------------------------------------

    def run(self) -> None:
        removed = cleanup_stale()  # what an earlier agent of ours (or a crashed run) left
        if removed:
            log.info("removed leftovers: %s", removed)
        self.network.start()
        server = LogServer(
            self.logs,
            self.pki.cert("node-serving"),
            self.pki.key("node-serving"),
            self.pki.ca,
            KUBELET_CLIENT_USER,
        )
        stop_server = server.serve_in_background()
        try:
            version = self.client.wait_for(
                "the API server", lambda: self.client.get("/version"), 120
            )
            self._version = str(version.get("gitVersion", ""))
            self.register(server.port)
            log.info("node %s registered (logs on port %d)", self.name, server.port)
            threads = [
                threading.Thread(target=self._heartbeat, args=(server.port,), daemon=True),
                threading.Thread(target=self._binder, daemon=True),
            ]
            selector = f"spec.nodeName={self.name}"
            threads.append(
                threading.Thread(
                    target=self._list_watch,
                    args=(self.client, selector, self._sync, self._resync),
                    daemon=True,
                )
            )
            for t in threads:
                t.start()
            # The watches block in reads: the main thread waits for the signal, and keeps
            # kube-proxy and CoreDNS running.
            while not self.stopping.wait(1.0):
                self.network.check()
        finally:
            self.shutdown()
            stop_server()

    def shutdown(self) -> None:
        """Stop every pod here (gracefully, in parallel); their API objects stay as they are."""
        self.stopping.set()
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.thread.join(timeout=60)
        self.network.stop()


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = Config.load(Path(argv[0]))
    agent = NodeAgent(config)

    def said(signum: int) -> None:
        log.info("signal %d: stopping the node's pods", signum)

    stopping = (signal.SIGTERM, signal.SIGINT)
    with contextlib.suppress(KeyboardInterrupt), signals.setting(agent.stopping, stopping, said):
        agent.run()
    return 0
