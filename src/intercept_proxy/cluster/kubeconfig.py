"""Kubeconfig files: a client certificate's or a bearer token's; a pod's own credentials."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from intercept_proxy.cluster.client import Credentials
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


def credentials(path: Path) -> Credentials:
    """The current context's server and credentials of a kubeconfig written as above (paths,
    not inline data). ValueError naming what is missing."""
    config = yaml.safe_load(path.read_text())
    try:
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
        user = next(u for u in config["users"] if u["name"] == context["context"]["user"])
    except (KeyError, StopIteration, TypeError) as e:
        raise ValueError(f"{path}: no complete current context ({e})") from None
    server, ca = cluster["cluster"].get("server"), cluster["cluster"].get("certificate-authority")
    if not server or not ca:
        raise ValueError(f"{path}: the cluster needs a server and a certificate-authority file")
    u = user.get("user") or {}
    cert, key = u.get("client-certificate"), u.get("client-key")
    return Credentials(
        server,
        Path(ca),
        Path(cert) if cert else None,
        Path(key) if key else None,
        u.get("token"),
    )


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster(env: Mapping[str, str] = os.environ) -> Credentials:
    """A pod's: its service account's token and CA, the API server the kubelet names in the
    pod's environment. ValueError if this is no pod."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ValueError("not in a pod: KUBERNETES_SERVICE_HOST and _PORT are not set")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Credentials(server, SERVICE_ACCOUNT / "ca.crt", token_file=SERVICE_ACCOUNT / "token")
