"""A pod's own policy beside the default one: replace it, narrow it, or be ignored.

In `narrow` mode (the default) a request must be allowed by both: a pod can only take away
from what the cluster's default policy grants, never add to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from intercept_proxy.policy.engine import Decision, PolicyEngine


class OverrideMode(StrEnum):
    REPLACE = "replace"
    NARROW = "narrow"
    NONE = "none"


class UnknownClients(StrEnum):
    """What an egress gateway does with a client whose pod it does not know (agent/clients.py)."""

    DEFAULT = "default"  # judged by the default policy, the most a pod's own policy allows
    REFUSE = "refuse"


@dataclass(frozen=True)
class CombinedEngine:
    default: PolicyEngine
    pod: PolicyEngine | None
    mode: OverrideMode
    owner: str = "this pod"  # whose own policy the pod's is, as a denial names it

    @property
    def revision(self) -> str:
        if self.pod is None or self.mode is OverrideMode.NONE:
            return self.default.revision
        return f"{self.default.revision}+{self.mode}:{self.pod.revision}"

    def evaluate(self, input_doc: dict[str, Any]) -> Decision:
        if self.pod is None or self.mode is OverrideMode.NONE:
            return self.default.evaluate(input_doc)
        if self.mode is OverrideMode.REPLACE:
            return self.pod.evaluate(input_doc)
        default = self.default.evaluate(input_doc)
        if not default.allow and default.grant is None:
            return default
        pod = self.pod.evaluate(input_doc)
        if default.grant is not None:  # a person may lift the default's denial, not the pod's
            return self._narrowed(pod) if not pod.allow else default
        return self._narrowed(pod) if not pod.allow else pod

    def _narrowed(self, pod: Decision) -> Decision:
        return Decision(False, f"pod:{pod.rule}", f"{pod.reason} ({self.owner}'s own policy)")
