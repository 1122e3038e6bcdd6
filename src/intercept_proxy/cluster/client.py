"""A small Kubernetes API client over HTTPS (standard library only): JSON requests, server-side
apply, watches. One connection per thread, reused; a client certificate or a bearer token."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Kinds this package creates or applies: (API path prefix, plural, namespaced).
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "Pod": ("/api/v1", "pods", True),
    "Node": ("/api/v1", "nodes", False),
    "Event": ("/api/v1", "events", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "CustomResourceDefinition": (
        "/apis/apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        False,
    ),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases", True),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices", True),
    "ClusterPolicy": ("/apis/kyverno.io/v1", "clusterpolicies", False),
    "ValidatingWebhookConfiguration": (
        "/apis/admissionregistration.k8s.io/v1",
        "validatingwebhookconfigurations",
        False,
    ),
    "MutatingWebhookConfiguration": (
        "/apis/admissionregistration.k8s.io/v1",
        "mutatingwebhookconfigurations",
        False,
    ),
}


class ApiError(RuntimeError):
    """A request the API server refused (or could not be made: status 0)."""

    def __init__(self, status: int, reason: str, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body


def object_path(kind: str, name: str | None = None, namespace: str | None = None) -> str:
    """The REST path of a kind (a collection) or of one object."""
    try:
        prefix, plural, namespaced = KINDS[kind]
    except KeyError:
        raise ValueError(f"kind {kind!r} is not known to this client") from None
    path = prefix
    if namespaced:
        if namespace is None:
            return f"{prefix}/{plural}" if name is None else _missing_namespace(kind)
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    return path if name is None else f"{path}/{name}"


def _missing_namespace(kind: str) -> str:
    raise ValueError(f"a {kind} needs a namespace")


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None
    # A token the kubelet renews in place (a projected service account token): read each time.
    token_file: Path | None = None


class KubeClient:
    def __init__(self, credentials: Credentials, timeout: float = 30.0) -> None:
        self.credentials = credentials
        self.timeout = timeout
        url = urllib.parse.urlsplit(credentials.server)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 443
        context = ssl.create_default_context(cafile=str(credentials.ca_file))
        if credentials.cert_file is not None:
            context.load_cert_chain(str(credentials.cert_file), str(credentials.key_file))
        self._context = context
        self._local = threading.local()

    # -- plumbing -----------------------------------------------------------------------------

    def _connection(self, timeout: float | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self._context, timeout=timeout or self.timeout
        )

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": JSON, "User-Agent": "intercept-cluster"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        token = self.credentials.token
        if self.credentials.token_file is not None:
            token = self.credentials.token_file.read_text().strip()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        content_type: str = JSON,
        timeout: float | None = None,
        raw: bool = False,
    ) -> Any:
        """The decoded JSON answer (bytes with `raw`); ApiError unless 2xx."""
        if params:
            path += "?" + urllib.parse.urlencode({k: _param(v) for k, v in params.items()})
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body))
        headers = self._headers(content_type if data is not None else None)
        for attempt in range(2):
            conn = getattr(self._local, "conn", None) if timeout is None else None
            fresh = conn is None
            if conn is None:
                conn = self._connection(timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._local.conn = None
                if fresh or attempt:  # a reused connection may have been closed by the server
                    raise ApiError(0, "ConnectionFailed", f"{method} {path}: {e}") from e
                continue
            if timeout is None:
                self._local.conn = conn
            else:
                conn.close()
            break
        if not 200 <= response.status < 300:
            raise _error(response.status, payload, method, path)
        if raw:
            return payload
        return json.loads(payload) if payload else None

    # -- verbs --------------------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def get_or_none(self, path: str) -> Any:
        try:
            return self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def create(self, path: str, obj: Any, **params: Any) -> Any:
        return self.request("POST", path, obj, params=params)

    def patch(self, path: str, patch: Any, content_type: str = MERGE_PATCH, **params: Any) -> Any:
        return self.request("PATCH", path, patch, params=params, content_type=content_type)

    def delete(self, path: str, body: Any = None, **params: Any) -> Any:
        return self.request("DELETE", path, body, params=params)

    def apply(self, obj: dict[str, Any], manager: str = "intercept-cluster") -> Any:
        """Server-side apply of `obj` (its kind must be in KINDS), forcing conflicts."""
        meta = obj["metadata"]
        path = object_path(obj["kind"], meta["name"], meta.get("namespace"))
        return self.request(
            "PATCH",
            path,
            json.dumps(obj).encode(),
            params={"fieldManager": manager, "force": "true"},
            content_type=APPLY_PATCH,
        )

    def watch(
        self,
        path: str,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        **params: Any,
    ) -> Iterator[dict[str, Any]]:
        """The events of a watch on collection `path` ({"type", "object"}) until the server
        ends it; ApiError when it cannot start."""
        query = {"watch": "true", "timeoutSeconds": timeout_seconds, **params}
        query["allowWatchBookmarks"] = "true"
        if resource_version:
            query["resourceVersion"] = resource_version
        url = path + "?" + urllib.parse.urlencode({k: _param(v) for k, v in query.items()})
        conn = self._connection(timeout_seconds + 30)
        try:
            conn.request("GET", url, headers=self._headers(None))
            response = conn.getresponse()
            if response.status != 200:
                raise _error(response.status, response.read(), "WATCH", path)
            while True:
                line = response.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        except (OSError, http.client.HTTPException) as e:
            raise ApiError(0, "ConnectionFailed", f"WATCH {path}: {e}") from e
        finally:
            conn.close()

    def wait_for(self, what: str, check: Any, timeout: float, interval: float = 0.2) -> Any:
        """Poll `check()` until it returns something true; TimeoutError naming `what`."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                result = check()
                if result:
                    return result
            except (ApiError, KeyError, TypeError) as e:
                last = e
            if time.monotonic() > deadline:
                detail = f" (last error: {last})" if last else ""
                raise TimeoutError(f"{what}: not after {timeout:.0f}s{detail}")
            time.sleep(interval)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
            self._local.conn = None


def list_watch(
    client: KubeClient,
    path: str,
    stop: threading.Event,
    handle: Callable[[str, dict[str, Any]], None],
    resync: Callable[[list[dict[str, Any]]], None],
    watch_seconds: int = 240,
    **params: Any,
) -> None:
    """Keep a copy of collection `path` until `stop`: list (`resync` with every object), then
    watch from that version (`handle` each event), and list again when the version expired or
    the watch failed (one second later)."""
    while not stop.is_set():
        try:
            listed = client.get(path, **params)
            resync(listed["items"])
            version = listed["metadata"]["resourceVersion"]
            while not stop.is_set():
                expired = False
                for event in client.watch(path, version, watch_seconds, **params):
                    if stop.is_set():
                        return
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        expired = True
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        handle(kind, obj)
                if expired:
                    break
        except ApiError as e:
            log.warning("watching %s: %s", path, e)
            stop.wait(1.0)
        except Exception:
            log.exception("watching %s", path)
            stop.wait(1.0)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _error(status: int, payload: bytes, method: str, path: str) -> ApiError:
    try:
        body = json.loads(payload)
        reason = str(body.get("reason") or status)
        message = str(body.get("message") or payload[:500])
    except ValueError:
        body, reason, message = None, str(status), payload[:500].decode(errors="replace")
    return ApiError(status, reason, f"{method} {path}: {message}", body)


def wait_port(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections on host:port within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return True
        time.sleep(0.05)
    return False
