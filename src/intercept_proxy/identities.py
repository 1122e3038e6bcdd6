"""The sidecars' users and the range of IDs a pod may name: one definition for proxy-init, the
injector, the runtime and (checked against it) the chart."""

from __future__ import annotations

ENVOY_UID = 101  # Envoy's image's user
AGENT_UID = 102
# The egress gateway's (its agent and Envoy, in a pod of their own with no workload): a user no
# system account has, as the node's runtime requires of a container it does not trust.
GATEWAY_UID = 10001
# CNI mode's proxy-init, which only checks the capture: a user the capture applies to (any but
# the sidecars'), not root.
CHECK_UID = 103
# Kubernetes' limit for runAsUser, runAsGroup and fsGroup; beyond it the kernel's (uid_t)-1
# ("no change") and its 32-bit aliases would keep a process root.
MAX_ID = 2**31 - 1
