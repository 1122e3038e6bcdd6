"""Pod status as a kubelet reports it, from what the node knows of a pod's containers. Pure.

Phases: Pending until the app containers start, Running while they run, then Succeeded (every
app container exited 0) or Failed. Conditions: PodReadyToStartContainers (the network
namespace exists), Initialized (init containers done, sidecars started), ContainersReady and
Ready (every app container and sidecar running, started, and passing its readiness probe if it
has one).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ContainerState:
    """What the node knows of one container (a snapshot)."""

    name: str
    image: str
    init: bool = False
    sidecar: bool = False
    container_id: str = ""
    started_at: str | None = None  # None: never started
    finished_at: str | None = None
    exit_code: int | None = None  # None while it runs (or before it starts)
    restarts: int = 0
    last_terminated: dict[str, Any] | None = None
    started: bool = False
    ready: bool = False
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.exit_code is None

    def terminated(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": "Completed" if self.exit_code == 0 else "Error",
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out

    def to_status(self) -> dict[str, Any]:
        if self.started_at is None:
            waiting: dict[str, Any] = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state: dict[str, Any] = {"waiting": waiting}
        elif self.exit_code is None:
            state = {"running": {"startedAt": self.started_at}}
        else:
            state = {"terminated": self.terminated()}
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready and self.running,
            "started": self.started and self.running,
            "restartCount": self.restarts,
            "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


@dataclass
class Conditions:
    """Pod conditions with stable transition times."""

    current: dict[str, dict[str, Any]] = field(default_factory=dict)

    def set(self, kind: str, status: bool, reason: str = "", message: str = "") -> None:
        value = "True" if status else "False"
        known = self.current.get(kind)
        if (
            known is not None
            and known["status"] == value
            and known["reason"] == (reason or None)
            and known["message"] == (message or None)
        ):
            return
        condition: dict[str, Any] = {
            "type": kind,
            "status": value,
            "lastProbeTime": None,
            "lastTransitionTime": now()
            if known is None or known["status"] != value
            else known["lastTransitionTime"],
        }
        # Null, not absent: a strategic merge patch keeps fields it does not name.
        condition["reason"] = reason or None
        condition["message"] = message or None
        self.current[kind] = condition

    def to_list(self) -> list[dict[str, Any]]:
        order = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"]
        return [self.current[k] for k in order if k in self.current]


@dataclass
class PodState:
    containers: Sequence[ContainerState]
    sandbox: bool = False  # the network namespace exists
    apps_started: bool = False
    finished: bool = False  # the runtime is done with the pod
    failed: str | None = None  # why the pod failed before or beside its containers
    reason: str | None = None  # status.reason (kubectl's STATUS column) of a failed pod
    pod_ips: Sequence[str] = ()
    host_ip: str = "127.0.0.1"
    start_time: str | None = None


def phase(state: PodState) -> str:
    apps = [c for c in state.containers if not c.init]
    if state.failed is not None:
        return "Failed"
    if state.finished:
        if apps and all(c.exit_code == 0 for c in apps):
            return "Succeeded"
        return "Failed"
    if state.apps_started:
        if apps and all(c.exit_code is not None for c in apps):
            return "Succeeded" if all(c.exit_code == 0 for c in apps) else "Failed"
        return "Running"
    return "Pending"


def pod_status(state: PodState, conditions: Conditions) -> dict[str, Any]:
    """The `status` of the pod (conditions updated in `conditions`)."""
    current = phase(state)
    terminal = current in ("Succeeded", "Failed")
    apps = [c for c in state.containers if not c.init]
    inits = [c for c in state.containers if c.init]
    conditions.set("PodReadyToStartContainers", state.sandbox and not terminal)
    initialized = state.apps_started or (terminal and state.failed is None and bool(inits))
    conditions.set("Initialized", initialized or (not inits and state.sandbox))
    # Sidecars (restartable init containers) count, as app containers do.
    needed = [*(c for c in inits if c.sidecar), *apps]
    ready = not terminal and bool(apps) and all(c.ready and c.running for c in needed)
    reason = "PodCompleted" if terminal else ("" if ready else "ContainersNotReady")
    unready = [c.name for c in needed if not (c.ready and c.running)]
    message = "" if ready or terminal else f"containers with unready status: [{' '.join(unready)}]"
    conditions.set("ContainersReady", ready, reason, message)
    conditions.set("Ready", ready, reason, message)
    if state.failed is not None:
        for c in state.containers:  # kubectl shows a container's reason before the pod's
            if c.started_at is None:
                c.waiting_reason = state.reason or "Failed"
                c.waiting_message = state.failed
    status: dict[str, Any] = {
        "phase": current,
        "conditions": conditions.to_list(),
        "hostIP": state.host_ip,
        "hostIPs": [{"ip": state.host_ip}],
        "initContainerStatuses": [c.to_status() for c in inits],
        "containerStatuses": [c.to_status() for c in apps],
    }
    if state.start_time:
        status["startTime"] = state.start_time
    if state.pod_ips:
        status["podIP"] = state.pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in state.pod_ips]
    if state.failed is not None:
        status["reason"] = state.reason or "Failed"
        status["message"] = state.failed
    return status


def container_states(spec: Mapping[str, Any]) -> list[ContainerState]:
    """Fresh states of every container of `spec`, init containers first."""
    inits = spec.get("initContainers") or []
    waiting = "PodInitializing" if inits else "ContainerCreating"
    out = [
        ContainerState(
            c["name"],
            c.get("image", ""),
            init=True,
            sidecar=c.get("restartPolicy") == "Always",
            waiting_reason="PodInitializing",
        )
        for c in inits
    ]
    out += [
        ContainerState(c["name"], c.get("image", ""), waiting_reason=waiting)
        for c in spec.get("containers") or []
    ]
    return out


def carry_over(states: Sequence[ContainerState], status: Mapping[str, Any]) -> None:
    """A pod this node ran before it restarted (its processes died with it) starts again:
    its containers count a restart, their last state unknown, as a kubelet reports them after a
    reboot."""
    listed = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    known = {s["name"]: s for s in listed}
    for state in states:
        previous = known.get(state.name) or {}
        ran = previous.get("state") or {}
        if set(ran) & {"running", "terminated"}:
            state.restarts = int(previous.get("restartCount") or 0) + 1
            started = (ran.get("running") or ran.get("terminated") or {}).get("startedAt")
            state.last_terminated = {
                "exitCode": 255,
                "reason": "Unknown",
                "startedAt": started,
                "finishedAt": now(),
            }
