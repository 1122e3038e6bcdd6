"""proxy-init: the sandbox's traffic capture, as iptables and ip6tables rules.

`render` turns a `CaptureConfig` into iptables-restore text for each family (pure,
golden-tested); `apply` installs it and `verify` compares it with the rules in force.
"""

from intercept_proxy.netfilter.apply import (
    Difference,
    NetfilterError,
    apply,
    diff,
    normalise,
    save,
    verify,
)
from intercept_proxy.netfilter.builder import FAMILIES, Family, Rules, render
from intercept_proxy.netfilter.config import CaptureConfig, CaptureConfigError

__all__ = [
    "FAMILIES",
    "CaptureConfig",
    "CaptureConfigError",
    "Difference",
    "Family",
    "NetfilterError",
    "Rules",
    "apply",
    "diff",
    "normalise",
    "render",
    "save",
    "verify",
]
