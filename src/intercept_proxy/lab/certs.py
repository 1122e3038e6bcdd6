"""The lab's own PKI: a fresh root CA per lab and one leaf per host name."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from intercept_proxy.lab.spec import LabHost
from intercept_proxy.pki import CertificateAuthority
from intercept_proxy.pki.files import write_private, write_public

CA_COMMON_NAME = "intercept-proxy lab root CA"
# Long enough for a lab started with `intercept lab up` to outlive a working week.
LEAF_VALIDITY = dt.timedelta(days=30)


@dataclass(frozen=True)
class LabPki:
    ca_cert_path: Path
    leaves: dict[str, tuple[Path, Path]]  # host name -> (certificate, key)


def leaf_paths(leaf_dir: Path, name: str) -> tuple[Path, Path]:
    """Where the certificate and key of host `name` are written."""
    return leaf_dir / f"{name}.pem", leaf_dir / f"{name}.key"


def write_lab_pki(hosts: Sequence[LabHost], ca_cert_path: Path, leaf_dir: Path) -> LabPki:
    """Generate the CA and a leaf per host; the CA key is never written, nothing needs it later.

    The CA certificate is world-readable (0644) because unprivileged workloads must trust it;
    leaf keys are 0600.
    """
    ca = CertificateAuthority.generate(CA_COMMON_NAME)
    write_public(ca_cert_path, ca.cert_pem)
    leaves = {}
    for host in hosts:
        leaf = ca.issue([host.name], validity=LEAF_VALIDITY)
        cert_path, key_path = leaf_paths(leaf_dir, host.name)
        write_public(cert_path, leaf.cert_pem)
        write_private(key_path, leaf.key_pem)
        leaves[host.name] = (cert_path, key_path)
    return LabPki(ca_cert_path, leaves)
