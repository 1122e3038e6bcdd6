"""The engines a cluster runs, built and cached by `scripts/install-tools` (`make install`), and
the CNI plugins its node runs (a Debian package `make install` installs).

A missing engine is an error naming the command that builds it, never a reason to skip."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from intercept_proxy.runtime.cni import BRIDGE_PLUGINS, PLUGIN_DIR

INSTALL_HINT = (
    "run `make install` (the engines: `scripts/install-tools`; the CNI plugins: Debian's "
    "containernetworking-plugins)"
)

BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "kyverno",
    "background-controller",
    "helm",
    "kube-proxy",
    "coredns",
)


class ToolsError(RuntimeError):
    """An engine is missing; the message names it and the command that installs it."""


@dataclass(frozen=True)
class Tools:
    root: Path

    @classmethod
    def locate(cls) -> Tools:
        """The tools under $INTERCEPT_TOOLS (default /opt/intercept-tools), all checked."""
        tools = cls(Path(os.environ.get("INTERCEPT_TOOLS", "/opt/intercept-tools")))
        tools.check()
        return tools

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def binary(self, name: str) -> Path:
        return self.bin / name

    @property
    def kyverno_crds(self) -> Path:
        return self.root / "share" / "kyverno" / "crds"

    @property
    def kyverno_install(self) -> Path:
        return self.root / "share" / "kyverno" / "install.yaml"

    @property
    def cert_manager_crds(self) -> Path:
        """cert-manager's resource definitions only: the chart's certManager mode is tested with
        a Secret written in cert-manager's place (its controller is not built)."""
        return self.root / "share" / "cert-manager" / "crds"

    @property
    def cilium_crds(self) -> Path:
        """Cilium's resource definitions (`intercept render cilium`'s output is validated
        against them); no Cilium runs here."""
        return self.root / "share" / "cilium" / "crds"

    def check(self) -> None:
        missing = [str(self.binary(b)) for b in BINARIES if not os.access(self.binary(b), os.X_OK)]
        shared = (self.kyverno_crds, self.kyverno_install, self.cert_manager_crds)
        missing += [str(p) for p in shared if not p.exists()]
        # The node's pod network (Debian's containernetworking-plugins).
        plugins = (PLUGIN_DIR / p for p in BRIDGE_PLUGINS)
        missing += [str(p) for p in plugins if not os.access(p, os.X_OK)]
        if missing:
            raise ToolsError(f"missing {', '.join(missing)}: {INSTALL_HINT}")
