"""The policy's `credentials`: secrets the agent holds and Envoy adds to the requests the policy
allows to one host, over TLS. The workload holds a placeholder, never the secret.

Parsing is pure (the policy file names where a secret is, never the secret); `resolve` reads the
values, in the agent, when the policy is loaded.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

from intercept_proxy.policy.errors import PolicyError, check_keys

SCHEMES = ("bearer", "basic", "none")
KEYS = ("host", "header", "scheme", "env", "file", "placeholder", "methods", "paths")
_METHOD = re.compile(r"^[A-Z]{1,20}$")
# A prefix of a path as Envoy normalises it: no dot segment, no doubled slash, no space.
_PATH_PREFIX = re.compile(r"^/[!-~]{0,255}$")
DEFAULT_HEADER = "authorization"
DEFAULT_PLACEHOLDER = "intercept-proxy-placeholder"
# Shorter secrets are refused: a request is refused when it carries one (it leaked), and a short
# one would be found in innocent text.
MIN_SECRET_LENGTH = 8
_HEADER = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
# Headers Envoy or the listener own, or that frame the request.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "x-request-id"}
)
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_PLACEHOLDER = re.compile(r"^[!-~]{1,256}$")
_PRINTABLE = re.compile(r"[!-~]+").fullmatch


@dataclasses.dataclass(frozen=True)
class Credential:
    # An exact host name, or `*.suffix` (any name below it).
    host: str
    header: str
    scheme: str
    env: str | None
    file: str | None
    placeholder: str
    methods: tuple[str, ...] = ()  # empty: every method
    paths: tuple[str, ...] = ()  # path prefixes; empty: every path

    @property
    def source(self) -> str:
        return f"env {self.env}" if self.env is not None else f"file {self.file}"

    def header_value(self, secret: str) -> str:
        """What Envoy writes into the header."""
        if self.scheme == "bearer":
            return f"Bearer {secret}"
        if self.scheme == "basic":
            return "Basic " + base64.b64encode(secret.encode()).decode()
        return secret


AWS_KEYS = (
    "host",
    "service",
    "region",
    "access_key_id_env",
    "secret_access_key_env",
    "session_token_env",
)
_AWS_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62})$")
# What a workload's AWS SDK writes when it signs with the placeholder keys.
AWS_SIGNED = "AWS4-HMAC-SHA256 Credential="
SESSION_TOKEN_HEADER = "x-amz-security-token"
# The rest of a SigV4 authorization value, nothing else: scope, signed headers, signature.
_AWS_SIGNATURE_AFTER_KEY = (
    r"/[0-9]{8}/[a-z0-9-]+/[a-z0-9-]+/aws4_request, ?SignedHeaders=[a-z0-9;-]+, ?"
    r"Signature=[0-9a-f]{64}"
)
# Temporary AWS keys (their id starts so) sign nothing without their session token.
TEMPORARY_KEY_PREFIX = "ASIA"
# AWS session tokens run to a few kilobytes.
MAX_AWS_VALUE = 8192


@dataclasses.dataclass(frozen=True)
class AwsSigning:
    """Requests to `host` signed (SigV4) with the operator's AWS keys, for `service` in
    `region`; the workload's variables hold the placeholder."""

    host: str
    service: str
    region: str
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"
    session_token_env: str | None = None

    @property
    def variables(self) -> tuple[str, ...]:
        names = (self.access_key_id_env, self.secret_access_key_env, self.session_token_env)
        return tuple(n for n in names if n is not None)


@dataclasses.dataclass(frozen=True)
class AwsKeys:
    access_key_id: str
    secret_access_key: str
    session_token: str | None

    @property
    def values(self) -> tuple[str, ...]:
        keys = (self.access_key_id, self.secret_access_key, self.session_token)
        return tuple(k for k in keys if k is not None)


# Each header credentials go in, with the forms (regular expressions of the whole value) the
# workload's placeholders take there.
Placeholders = tuple[tuple[str, tuple[str, ...]], ...]


def placeholders(
    credentials: tuple[Credential, ...], signings: tuple[AwsSigning, ...] = ()
) -> Placeholders:
    by_header: dict[str, set[str]] = {}
    for c in credentials:
        by_header.setdefault(c.header, set()).add(f"(?:Bearer )?{re.escape(c.placeholder)}")
    for signing in signings:
        placeholder = re.escape(DEFAULT_PLACEHOLDER)
        by_header.setdefault(DEFAULT_HEADER, set()).add(
            f"{AWS_SIGNED}{placeholder}{_AWS_SIGNATURE_AFTER_KEY}"
        )
        if signing.session_token_env is not None:
            by_header.setdefault(SESSION_TOKEN_HEADER, set()).add(placeholder)
    return tuple((h, tuple(sorted(p))) for h, p in sorted(by_header.items()))


def _string(entry: dict[str, Any], key: str, source: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise PolicyError(source, f"{where}.{key}", f"expected a string, got {value!r}")
    return value


def parse_credential(entry: Any, source: str, where: str, host: str) -> Credential:
    """One entry of `credentials`; `host` is its `host`, already a checked domain entry."""
    check_keys(entry, KEYS, source, where)
    header = (_string(entry, "header", source, where) or DEFAULT_HEADER).lower()
    if (
        not _HEADER.fullmatch(header)
        or header in _RESERVED_HEADERS
        or header.startswith("x-intercept-")
    ):
        raise PolicyError(
            source, f"{where}.header", f"{header!r} is not a header a credential may be sent in"
        )
    default_scheme = "bearer" if header == DEFAULT_HEADER else "none"
    scheme = _string(entry, "scheme", source, where) or default_scheme
    if scheme not in SCHEMES:
        raise PolicyError(
            source, f"{where}.scheme", f"{scheme!r} is not one of {', '.join(SCHEMES)}"
        )
    env = _string(entry, "env", source, where)
    file = _string(entry, "file", source, where)
    if (env is None) == (file is None):
        raise PolicyError(
            source,
            where,
            "name where the secret is, with exactly one of env (a variable of the operator's "
            "environment) and file (a path the agent reads)",
        )
    if env is not None and not _ENV.fullmatch(env):
        raise PolicyError(source, f"{where}.env", f"{env!r} is not an environment variable name")
    if file is not None and not (file.startswith("/") and "\0" not in file):
        raise PolicyError(source, f"{where}.file", f"{file!r} is not an absolute path")
    placeholder = _string(entry, "placeholder", source, where) or DEFAULT_PLACEHOLDER
    if not _PLACEHOLDER.fullmatch(placeholder):
        raise PolicyError(
            source, f"{where}.placeholder", "must be 1 to 256 printable characters, no spaces"
        )
    methods = _strings(entry, "methods", source, where, _METHOD, "a method, e.g. POST")
    paths = _strings(entry, "paths", source, where, _PATH_PREFIX, "a path prefix, e.g. /v1/")
    for i, path in enumerate(paths):
        if "//" in path or "/./" in path or "/../" in path or path.endswith(("/.", "/..")):
            raise PolicyError(
                source,
                f"{where}.paths[{i}]",
                f"{path!r} is no path as Envoy normalises it (a dot segment, a doubled slash)",
            )
    return Credential(host, header, scheme, env, file, placeholder, methods, paths)


def _strings(
    entry: dict[str, Any], key: str, source: str, where: str, pattern: re.Pattern[str], what: str
) -> tuple[str, ...]:
    value = entry.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise PolicyError(
            source, f"{where}.{key}", f"expected a list of at least one, got {value!r}"
        )
    for i, item in enumerate(value):
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise PolicyError(source, f"{where}.{key}[{i}]", f"{item!r} is not {what}")
    return tuple(value)


def _variable(entry: dict[str, Any], key: str, source: str, where: str) -> str | None:
    value = _string(entry, key, source, where)
    if value is not None and not _ENV.fullmatch(value):
        raise PolicyError(
            source, f"{where}.{key}", f"{value!r} is not an environment variable name"
        )
    return value


def parse_aws_signing(entry: Any, source: str, where: str, host: str) -> AwsSigning:
    """One entry of `aws_signing`; `host` is its `host`, already a checked domain entry."""
    check_keys(entry, AWS_KEYS, source, where)
    names = {}
    for key, example in (("service", "s3"), ("region", "us-east-1")):
        value = _string(entry, key, source, where)
        if value is None or not _AWS_NAME.fullmatch(value):
            raise PolicyError(source, f"{where}.{key}", f"expected an AWS {key} (e.g. {example})")
        names[key] = value
    variables = {
        key: value
        for key in ("access_key_id_env", "secret_access_key_env", "session_token_env")
        if (value := _variable(entry, key, source, where)) is not None
    }
    return AwsSigning(host, names["service"], names["region"], **variables)


def resolve_aws(
    signings: tuple[AwsSigning, ...], source: str, environ: Mapping[str, str] = os.environ
) -> tuple[AwsKeys, ...]:
    """Each signing's keys, from the agent's environment; PolicyError naming the first variable
    that is missing or malformed (never its value)."""
    out = []
    for i, signing in enumerate(signings):
        values = {}
        for key in ("access_key_id_env", "secret_access_key_env", "session_token_env"):
            name = getattr(signing, key)
            if name is None:
                continue
            value = environ.get(name)
            if value is None:
                raise PolicyError(
                    source,
                    f"aws_signing[{i}].{key}",
                    f"{name} is not set in the agent's environment",
                )
            if not MIN_SECRET_LENGTH <= len(value) <= MAX_AWS_VALUE or not _PRINTABLE(value):
                raise PolicyError(
                    source,
                    f"aws_signing[{i}].{key}",
                    f"{name} must be {MIN_SECRET_LENGTH} to {MAX_AWS_VALUE} printable characters "
                    "without spaces",
                )
            if value == DEFAULT_PLACEHOLDER:
                raise PolicyError(source, f"aws_signing[{i}].{key}", f"{name} is the placeholder")
            values[key] = value
        keys = AwsKeys(
            values["access_key_id_env"],
            values["secret_access_key_env"],
            values.get("session_token_env"),
        )
        if keys.access_key_id.startswith(TEMPORARY_KEY_PREFIX) and keys.session_token is None:
            raise PolicyError(
                source,
                f"aws_signing[{i}]",
                f"{signing.access_key_id_env} holds a temporary key: name its session token's "
                "variable (session_token_env)",
            )
        out.append(keys)
    return tuple(out)


def _read_private(path: str, source: str, where: str) -> str:
    """The file's text, if only its owner may read or write it (the agent's user: the
    workload's must not); read from the descriptor it was checked on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise PolicyError(source, where, f"cannot read the secret: {e}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode) or mode & 0o077:
            raise PolicyError(
                source,
                where,
                f"{path} must be a file only its owner may read (mode {stat.S_IMODE(mode):04o};"
                " chmod 600, owned by the agent's user)",
            )
        try:
            return f.read(1 << 16).decode().removesuffix("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise PolicyError(source, where, f"cannot read the secret: {e}") from None


def resolve(
    credentials: tuple[Credential, ...], source: str, environ: Mapping[str, str] = os.environ
) -> tuple[str, ...]:
    """Each credential's secret, read where it says; PolicyError naming the first that cannot be
    read (the error never carries a value)."""
    values = []
    for i, credential in enumerate(credentials):
        where = f"credentials[{i}]"
        if credential.env is not None:
            value = environ.get(credential.env)
            if value is None:
                raise PolicyError(
                    source,
                    f"{where}.env",
                    f"{credential.env} is not set in the agent's environment",
                )
        else:
            value = _read_private(str(credential.file), source, f"{where}.file")
        if len(value) < MIN_SECRET_LENGTH or not _PLACEHOLDER.fullmatch(value):
            raise PolicyError(
                source,
                where,
                f"the secret ({credential.source}) must be {MIN_SECRET_LENGTH} to 256 printable "
                "characters without spaces",
            )
        if value == credential.placeholder:
            raise PolicyError(source, where, f"the secret ({credential.source}) is the placeholder")
        values.append(value)
    return tuple(values)
