"""Kubeconfig files: a client certificate's or a bearer token's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from intercept_proxy.pki.files import write_private


def kubeconfig(
    server: str,
    ca: Path,
    user: str,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    cluster: str = "intercept",
) -> dict[str, Any]:
    if (cert is None) == (token is None):
        raise ValueError("a kubeconfig needs a client certificate or a token")
    credentials = (
        {"client-certificate": str(cert), "client-key": str(key)}
        if cert is not None
        else {"token": token}
    )
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
        "preferences": {},
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> Path:
    write_private(path, yaml.safe_dump(config, sort_keys=False).encode())
    return path
