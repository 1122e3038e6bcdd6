"""A fake internet in a network namespace: lab hosts with HTTPS, DNS, git and a receipt log.

Tests never touch the real internet; they attach a namespace to a lab and talk to it.
"""

from intercept_proxy.lab.control import Lab, LabError, LabLink
from intercept_proxy.lab.spec import LabHost, LabSpec, LabSpecError

__all__ = ["Lab", "LabError", "LabHost", "LabLink", "LabSpec", "LabSpecError"]
