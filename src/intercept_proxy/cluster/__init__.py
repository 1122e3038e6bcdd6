"""A real control plane and a node of ours on this machine (`scripts/cluster`); see
docs/cluster.md."""

from intercept_proxy.cluster.cluster import Cluster, ClusterError, unique_name
from intercept_proxy.cluster.tools import ToolsError

__all__ = ["Cluster", "ClusterError", "ToolsError", "unique_name"]
