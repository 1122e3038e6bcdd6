"""The DNS sinkhole the agent serves inside each sandbox.

Every query of the workload ends here (iptables redirects port 53) and none leaves the pod:
any host name gets a synthetic address that only leads to the interceptor, so every request
meets the policy instead of a resolution error, and DNS cannot carry data out. Only names under
configured suffixes (cluster services) are asked of the real resolver.
"""

from intercept_proxy.dns.answer import (
    SYNTHETIC_V4,
    SYNTHETIC_V6,
    TTL,
    Forward,
    Outcome,
    QueryEvent,
    Reply,
    answer,
    synthetic_address,
)
from intercept_proxy.dns.server import DnsSinkhole

__all__ = [
    "SYNTHETIC_V4",
    "SYNTHETIC_V6",
    "TTL",
    "DnsSinkhole",
    "Forward",
    "Outcome",
    "QueryEvent",
    "Reply",
    "answer",
    "synthetic_address",
]
