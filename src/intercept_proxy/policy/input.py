"""Policy input documents in the OPA-Envoy shape, built from a method and a URL.

The agent builds the same shape from Envoy's CheckRequest (see `intercept_proxy.authz`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

INPUT_VERSION = {"encoding": "protojson", "ext_authz": "v3"}


class InputError(ValueError):
    """A request description that cannot be turned into a policy input."""


def http_input(
    *,
    method: str,
    host: str,
    path: str,
    scheme: str,
    headers: Mapping[str, str],
    sni: str | None,
    protocol: str = "HTTP/1.1",
) -> dict[str, Any]:
    """The input document for one request. `sni` is None for plain HTTP, "" for TLS without SNI."""
    attributes: dict[str, Any] = {
        "request": {
            "http": {
                "method": method,
                "host": host,
                "path": path,
                "scheme": scheme,
                "protocol": protocol,
                "headers": dict(headers),
            }
        }
    }
    if sni is not None:
        attributes["tlsSession"] = {"sni": sni}
    return {"attributes": attributes, "version": INPUT_VERSION}


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or name != name.strip():
        raise InputError(f"header {text!r} is not 'Name: value'")
    return name.lower(), value.strip()


def url_input(
    method: str, url: str, headers: Iterable[str] = (), sni: str | None = None
) -> dict[str, Any]:
    """The input for `method url` as a client would send it. A `Host` header overrides the URL's
    authority, as it does on the wire; for https the SNI defaults to the URL's host."""
    if not method or not method.isascii() or not method.isalpha():
        raise InputError(f"method {method!r} is not an HTTP method")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InputError(f"URL {url!r} must start with http:// or https://")
    if not parts.netloc:
        raise InputError(f"URL {url!r} has no host")
    header_map = dict(parse_header(h) for h in headers)
    authority = header_map.pop("host", parts.netloc)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    if parts.scheme == "https":
        if sni is None:
            sni = parts.hostname or ""
    elif sni is not None:
        raise InputError("--sni only applies to https URLs")
    # As written: methods are case-sensitive (RFC 9110), and Envoy forwards `get` as `get`.
    header_map = {":authority": authority, ":method": method, ":path": path} | header_map
    return http_input(
        method=method,
        host=authority,
        path=path,
        scheme=parts.scheme,
        headers=header_map,
        sni=sni,
    )
