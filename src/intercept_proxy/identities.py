"""The sidecars' users and the range of IDs a pod may name: one definition for proxy-init, the
injector, the runtime and (checked against it) the chart."""

from __future__ import annotations

ENVOY_UID = 101  # Envoy's image's user
AGENT_UID = 102
# Kubernetes' limit for runAsUser, runAsGroup and fsGroup; beyond it the kernel's (uid_t)-1
# ("no change") and its 32-bit aliases would keep a process root.
MAX_ID = 2**31 - 1
