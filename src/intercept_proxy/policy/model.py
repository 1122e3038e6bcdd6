"""The policy file: YAML in, a validated immutable Policy out, or a PolicyError naming the problem.

A policy is all-or-nothing: any error rejects the whole file, so nothing half-loaded is ever
enforced. `Policy.to_data()` is the data document the Rego policy reads (`data.intercept_policy`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from intercept_proxy.policy.approvals import Approvals, parse_approvals
from intercept_proxy.policy.credentials import (
    DEFAULT_HEADER,
    AwsSigning,
    Credential,
    parse_aws_signing,
    parse_credential,
)
from intercept_proxy.policy.domains import DomainEntry, parse_domain
from intercept_proxy.policy.errors import PolicyError as PolicyError  # re-exported
from intercept_proxy.policy.limits import (
    Budget,
    RateLimit,
    host_matches,
    parse_budget,
    parse_rate_limit,
)

DATA_ROOT = "intercept_policy"
CUSTOM_PACKAGE = "intercept.custom"

_GITHUB_USER = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38})$")
_GITHUB_REPO = re.compile(r"^[a-z0-9._-]{1,100}$")
_AWS_SERVICE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62})$")


_PACKAGE = re.compile(r"^package\s+([\w.]+)", re.MULTILINE)


@dataclass(frozen=True)
class RegoModule:
    path: str
    text: str

    @property
    def package(self) -> str | None:
        match = _PACKAGE.search(self.text)
        return match.group(1) if match else None


def _key(default: Any, help_: str, *, chart: bool = True) -> Any:
    """`chart` False: not in the chart's values (it mounts policy.yaml alone: no module comes
    with it)."""
    return field(default=default, metadata={"help": help_, "chart": chart})


@dataclass(frozen=True)
class Policy:
    source: str = "<default>"
    # Each key's help is its description in the chart's values schema (injector/schema.py).
    allowed_domains: tuple[DomainEntry, ...] = _key(
        (), "Domains allowed for reads (GET and HEAD, without a body)."
    )
    unrestricted_domains: tuple[DomainEntry, ...] = _key((), "Domains allowed for every method.")
    github_read_access_enabled: bool = _key(False, "Reads of GitHub.")
    github_allowed_users: tuple[str, ...] = _key(
        (), "GitHub users and organisations that may be written to."
    )
    github_allowed_repos: tuple[str, ...] = _key(
        (), "GitHub repositories (owner/name) that may be written to."
    )
    github_admin_access_enabled: bool = _key(
        False,
        "Administration (settings, hooks, keys, collaborators, secrets, ...) of the repositories "
        "that may be written to.",
    )
    aws_access_enabled: bool = _key(False, "Access to AWS.")
    aws_allowed_services: tuple[str, ...] = _key((), "AWS services allowed (e.g. s3).")
    rego_modules: tuple[RegoModule, ...] = _key(
        (), "Rego modules of package intercept.custom.", chart=False
    )
    credentials: tuple[Credential, ...] = _key(
        (), "Secrets Envoy adds to the allowed requests to a host (docs/policy.md)."
    )
    aws_signing: tuple[AwsSigning, ...] = _key(
        (), "Hosts whose requests Envoy signs with the operator's AWS keys (docs/policy.md)."
    )
    rate_limits: tuple[RateLimit, ...] = _key((), "Requests per minute to a host (docs/policy.md).")
    budgets: tuple[Budget, ...] = _key(
        (), "Requests and uploaded bytes to a host over a run or a pod's life (docs/policy.md)."
    )
    approvals: Approvals | None = _key(  # noqa: RUF009 - a field() with its help
        None, "Hosts a person may allow while the sandbox runs (docs/policy.md)."
    )

    def to_data(self) -> dict[str, Any]:
        # `approvals` only when set: the revisions of policies without it stay what they were.
        approvals = {"approvals": self.approvals.to_data()} if self.approvals else {}
        return {
            DATA_ROOT: {
                "allowed_domains": [e.to_data() for e in self.allowed_domains],
                "unrestricted_domains": [e.to_data() for e in self.unrestricted_domains],
                "github_read_access_enabled": self.github_read_access_enabled,
                "github_allowed_users": list(self.github_allowed_users),
                "github_allowed_repos": list(self.github_allowed_repos),
                "github_admin_access_enabled": self.github_admin_access_enabled,
                "aws_access_enabled": self.aws_access_enabled,
                "aws_allowed_services": list(self.aws_allowed_services),
                **approvals,
            }
        }

    @functools.cached_property  # read for every decision the agent makes
    def revision(self) -> str:
        """A short digest of everything that decides: data and custom modules."""
        digest = hashlib.sha256(json.dumps(self.to_data(), sort_keys=True).encode())
        for module in self.rego_modules:
            digest.update(module.text.encode())
        # What Envoy does besides deciding: what it sends upstream, how often.
        if self.approvals is not None:  # how long a held request waits
            digest.update(str(self.approvals.timeout_seconds).encode())
        for entries in (self.credentials, self.aws_signing, self.rate_limits, self.budgets):
            if entries:
                data = [dataclasses.asdict(e) for e in entries]
                digest.update(json.dumps(data, sort_keys=True).encode())
        return digest.hexdigest()[:12]


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a policy must not silently lose the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a name, not {key!r}", key_node.start_mark
                )
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise PolicyError(where, None, f"invalid YAML: {problem}") from None


def _bool(doc: dict[str, Any], key: str, source: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise PolicyError(source, key, f"expected true or false, got {value!r}")
    return value


def _listed(doc: dict[str, Any], key: str, source: str) -> list[tuple[str, Any]]:
    """The list under `key` as (location, item) pairs; a missing or null key is empty."""
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(source, key, f"expected a list, got {type(value).__name__}")
    return [(f"{key}[{i}]", item) for i, item in enumerate(value)]


def _strings(doc: dict[str, Any], key: str, source: str) -> list[tuple[str, str]]:
    """The list under `key` as (location, string) pairs."""
    items = _listed(doc, key, source)
    for where, item in items:
        if not isinstance(item, str):
            raise PolicyError(source, where, f"expected a string, got {item!r}")
    return items


def _domains(doc: dict[str, Any], key: str, source: str) -> tuple[DomainEntry, ...]:
    entries = []
    for where, item in _strings(doc, key, source):
        try:
            entries.append(parse_domain(item))
        except ValueError as e:
            raise PolicyError(source, where, str(e)) from None
    return tuple(entries)


def _matching(
    doc: dict[str, Any], key: str, source: str, pattern: re.Pattern[str], what: str
) -> tuple[str, ...]:
    values = []
    for where, item in _strings(doc, key, source):
        value = item.lower()
        if not pattern.fullmatch(value):
            raise PolicyError(source, where, f"{item!r} is not {what}")
        values.append(value)
    return tuple(values)


def _repos(doc: dict[str, Any], key: str, source: str) -> tuple[str, ...]:
    repos = []
    for where, item in _strings(doc, key, source):
        parts = item.lower().removesuffix(".git").split("/")
        if (
            len(parts) != 2
            or not _GITHUB_USER.fullmatch(parts[0])
            or not _GITHUB_REPO.fullmatch(parts[1])
            or parts[1] in (".", "..")
        ):
            raise PolicyError(source, where, f"{item!r} is not an 'owner/repository' name")
        repos.append("/".join(parts))
    return tuple(repos)


def _modules(doc: dict[str, Any], source: str, base: Path | None) -> tuple[RegoModule, ...]:
    modules = []
    for where, item in _strings(doc, "rego_modules", source):
        path = Path(item)
        if not path.is_absolute():
            if base is None:
                raise PolicyError(source, where, "a relative module path needs a policy file")
            path = base / path
        try:
            modules.append(RegoModule(str(path), path.read_text()))
        except (OSError, ValueError) as e:  # ValueError: undecodable text, NUL in the path
            raise PolicyError(source, where, f"cannot read Rego module: {e}") from None
    return tuple(modules)


# The policy file's keys: the fields that have a help.
KEYS = tuple(f.name for f in fields(Policy) if "help" in f.metadata)


# Where a person's approval puts a host (authz/approvals.py): reads, or every method.
GRANT_KEYS = ("allowed_domains", "unrestricted_domains")


def granting(policy: Policy, grants: tuple[tuple[str, str], ...]) -> Policy:
    """`policy` with each (key, domain entry) of `grants` added, if not there already."""
    added: dict[str, Any] = {}
    for key, text in grants:
        if key not in GRANT_KEYS:
            raise ValueError(f"a grant goes in {' or '.join(GRANT_KEYS)}, not {key}")
        entry = parse_domain(text)
        entries = added.get(key, getattr(policy, key))
        if entry not in entries:
            added[key] = (*entries, entry)
    return dataclasses.replace(policy, **added) if added else policy


def parse_policy(
    text: str, source: str = "<policy>", base: Path | None = None, *, modules: bool = True
) -> Policy:
    """Validate a policy document. `base` resolves relative `rego_modules` paths; without
    `modules` (a pod's own policy, from an annotation), naming a module or a credential is an
    error: the annotation's author must not make the agent read files or send its secrets."""
    doc = _load_yaml(text, source)
    if doc is None:
        raise PolicyError(source, None, "the policy is empty (write '{}' to deny everything)")
    if not isinstance(doc, dict):
        raise PolicyError(source, None, f"expected a mapping of keys, got {type(doc).__name__}")
    for key in doc:
        if key not in KEYS:
            raise PolicyError(source, str(key), f"unknown key; valid keys are {', '.join(KEYS)}")
    for key in (
        "rego_modules",
        "credentials",
        "aws_signing",
        "rate_limits",
        "budgets",
        "approvals",
    ):
        if not modules and doc.get(key):
            raise PolicyError(source, key, "not allowed in a pod's policy")
    github_allowed_users = _matching(
        doc, "github_allowed_users", source, _GITHUB_USER, "a GitHub user or organisation"
    )
    github_allowed_repos = _repos(doc, "github_allowed_repos", source)
    github_admin = _bool(doc, "github_admin_access_enabled", source)
    if github_admin and not (github_allowed_users or github_allowed_repos):
        raise PolicyError(
            source,
            "github_admin_access_enabled",
            "applies only to the repositories in github_allowed_repos and github_allowed_users,"
            " and both are empty: list the repositories it is meant for",
        )
    credentials = _credentials(doc, source)
    return Policy(
        source=source,
        allowed_domains=_domains(doc, "allowed_domains", source),
        unrestricted_domains=_domains(doc, "unrestricted_domains", source),
        github_read_access_enabled=_bool(doc, "github_read_access_enabled", source),
        github_allowed_users=github_allowed_users,
        github_allowed_repos=github_allowed_repos,
        github_admin_access_enabled=github_admin,
        aws_access_enabled=_bool(doc, "aws_access_enabled", source),
        aws_allowed_services=_matching(
            doc, "aws_allowed_services", source, _AWS_SERVICE, "an AWS service name (e.g. 's3')"
        ),
        rego_modules=_modules(doc, source, base),
        credentials=credentials,
        aws_signing=_aws_signing(doc, source, credentials),
        rate_limits=_rate_limits(doc, source),
        budgets=_budgets(doc, source),
        approvals=parse_approvals(doc.get("approvals"), source),
    )


def _host_entries(
    doc: dict[str, Any], key: str, source: str, port_message: str
) -> list[tuple[str, dict[str, Any], str]]:
    """The mappings listed under `key`, each with its location and its `host` (an exact name or
    `*.suffix`, no port)."""
    out = []
    for where, entry in _listed(doc, key, source):
        if not isinstance(entry, dict):
            raise PolicyError(source, where, f"expected a mapping, got {entry!r}")
        host = entry.get("host")
        if not isinstance(host, str):
            raise PolicyError(source, f"{where}.host", f"expected a host name, got {host!r}")
        try:
            domain = parse_domain(host)
        except ValueError as e:
            raise PolicyError(source, f"{where}.host", str(e)) from None
        if domain.port is not None:
            raise PolicyError(source, f"{where}.host", port_message)
        out.append((where, entry, f"*.{domain.host}" if domain.wildcard else domain.host))
    return out


def _credentials(doc: dict[str, Any], source: str) -> tuple[Credential, ...]:
    out: list[Credential] = []
    for where, entry, host in _host_entries(
        doc, "credentials", source, "a credential is sent to port 443 only"
    ):
        credential = parse_credential(entry, source, where, host)
        for other in out:
            if other.header == credential.header and _overlap(other.host, host):
                covers = f" (the one for {other.host} covers it)" if other.host != host else ""
                raise PolicyError(
                    source,
                    where,
                    f"a second credential for {host} in header {credential.header}{covers}",
                )
        out.append(credential)
    return tuple(out)


def _aws_signing(
    doc: dict[str, Any], source: str, credentials: tuple[Credential, ...]
) -> tuple[AwsSigning, ...]:
    out: list[AwsSigning] = []
    for where, entry, host in _host_entries(
        doc, "aws_signing", source, "requests are signed on port 443 only"
    ):
        signing = parse_aws_signing(entry, source, where, host)
        # Both would write the authorization header.
        taken = [c.host for c in credentials if c.header == DEFAULT_HEADER]
        taken += [s.host for s in out]
        covering = [other for other in taken if _overlap(other, host)]
        if covering:
            raise PolicyError(
                source, where, f"{host}: its authorization header is already {covering[0]}'s"
            )
        out.append(signing)
    return tuple(out)


def _overlap(a: str, b: str) -> bool:
    """Whether some host name matches both host patterns (exact names, or `*.suffix`)."""
    return host_matches(a, b) or host_matches(b, a)


def _budgets(doc: dict[str, Any], source: str) -> tuple[Budget, ...]:
    out: list[Budget] = []
    for where, entry, host in _host_entries(
        doc, "budgets", source, "a budget applies to every port of the host"
    ):
        budget = parse_budget(entry, source, where, host)
        covering = [b.host for b in out if _overlap(b.host, host)]
        if covering:
            raise PolicyError(source, where, f"{host} is already {covering[0]}'s budget")
        out.append(budget)
    return tuple(out)


def _rate_limits(doc: dict[str, Any], source: str) -> tuple[RateLimit, ...]:
    out: list[RateLimit] = []
    for where, entry, host in _host_entries(
        doc, "rate_limits", source, "a limit applies to every port of the host"
    ):
        limit = parse_rate_limit(entry, source, where, host)
        if any(r.host == host for r in out):
            raise PolicyError(source, where, f"a second rate limit for {host}")
        out.append(limit)
    return tuple(out)


def module_paths(path: Path) -> list[Path]:
    """The Rego modules a policy file names, read leniently (for watching a file that does not
    validate yet); [] when there is no such list."""
    try:
        doc = yaml.safe_load(path.read_text())
        names = doc.get("rego_modules") if isinstance(doc, dict) else None
    except (OSError, ValueError, yaml.YAMLError):
        return []
    if not isinstance(names, list):
        return []
    return [path.parent / n for n in names if isinstance(n, str) and "\0" not in n]


# The policy's file name where an agent reads it, its custom modules beside it.
POLICY_FILE_NAME = "policy.yaml"


def policy_files(policy: Policy, text: str) -> dict[str, str]:
    """The files `policy` (parsed from `text`, the file `policy.source`) is made of, by the
    name each has where an agent reads them side by side: its own and its custom modules'.
    PolicyError for a module not named by its file name alone (beside the policy file: an
    agent reading the copies reads what the policy names), or by a name of the agent's own."""
    files = {POLICY_FILE_NAME: text}
    written = (_load_yaml(text, policy.source) or {}).get("rego_modules") or []
    for i, (entry, module) in enumerate(zip(written, policy.rego_modules, strict=True)):
        name = Path(str(entry)).name
        if Path(str(entry)).parent != Path() or name == POLICY_FILE_NAME or name[0] == ".":
            raise PolicyError(
                policy.source,
                f"rego_modules[{i}]",
                f"{entry!r}: name a module beside the policy file by its file name alone "
                f"(not {POLICY_FILE_NAME}, not hidden)",
            )
        files[name] = module.text
    return files


def load_policy(path: Path, *, modules: bool = True) -> Policy:
    try:
        text = path.read_text()
    except (OSError, ValueError) as e:
        raise PolicyError(str(path), None, f"cannot read the policy: {e}") from None
    return parse_policy(text, str(path), path.parent, modules=modules)
