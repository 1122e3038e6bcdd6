"""Install rendered rules with iptables-restore/ip6tables-restore and check the rules in force.

Everything runs in a named network namespace (`ip netns exec`) or, with `netns=None`, in the
current one (the pod's init container).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from intercept_proxy import netns as netns_
from intercept_proxy.netfilter.builder import FAMILIES, Family, Rules

TABLES = ("nat", "filter")
_RESTORE = {"ipv4": "iptables-restore", "ipv6": "ip6tables-restore"}
_SAVE = {"ipv4": "iptables-save", "ipv6": "ip6tables-save"}
_TIMEOUT = 60  # seconds
# A legacy backend's restore waits for the machine's xtables lock (`-w`), held by kube-proxy or
# another pod's capture (CNI mode: the node's plugin shares it); nft's accepts and ignores it.
_WAIT = "-w"
# iptables-save names the match module of `-p PROTO` again (`-p tcp -m tcp --dport 80`):
# module -> the protocol that implies it.
_IMPLICIT_MATCH = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmp6": "ipv6-icmp"}


class NetfilterError(RuntimeError):
    """An iptables tool that is missing, not allowed, or failed; the message says which."""


@dataclass(frozen=True)
class Difference:
    """One way the rules in force differ from the intended ones."""

    family: Family
    table: str
    kind: Literal["missing", "unexpected", "order"]
    line: str  # a rule or chain declaration; for "order", the chain

    def __str__(self) -> str:
        if self.kind == "order":
            return f"{self.family} {self.table}: chain {self.line} has its rules in another order"
        return f"{self.family} {self.table}: {self.kind}: {self.line}"


def apply(rules: Rules, netns: str | None = None) -> None:
    """Replace the nat and filter tables of both families with `rules`.

    Each family is one atomic transaction. Both are test-parsed first, so rules the tools reject
    leave neither family changed; only the kernel refusing IPv6 rules after accepting IPv4 ones
    leaves IPv4 applied alone (the caller fails, so the pod never starts).
    """
    for family in FAMILIES:
        _run([_RESTORE[family], _WAIT, "--test"], netns, rules.of(family))
    for family in FAMILIES:
        _run([_RESTORE[family], _WAIT], netns, rules.of(family))


def save(netns: str | None = None) -> Rules:
    """The nat and filter tables in force, as iptables-save prints them."""
    ipv4, ipv6 = (
        "".join(_run([_SAVE[family], "-t", table], netns) for table in TABLES)
        for family in FAMILIES
    )
    return Rules(ipv4=ipv4, ipv6=ipv6)


def verify(rules: Rules, netns: str | None = None) -> list[Difference]:
    """How the rules in force differ from `rules` (empty: exactly as intended)."""
    return diff(rules, save(netns))


def diff(intended: Rules, actual: Rules) -> list[Difference]:
    """Differences between two sets of rules in iptables-restore/-save format, per chain."""
    differences = []
    for family in FAMILIES:
        want, have = normalise(intended.of(family)), normalise(actual.of(family))
        for table in sorted(want.keys() | have.keys()):
            differences += _diff_table(family, table, want.get(table, {}), have.get(table, {}))
    return differences


Table = dict[str, list[str]]  # chain -> its declaration, then its rules in order


def normalise(text: str) -> dict[str, Table]:
    """Tables of iptables-restore/-save text without counters, comment lines or quoting
    differences, and without the implicit `-m tcp` style matches iptables-save adds."""
    tables: dict[str, Table] = {}
    table: Table = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            table.setdefault(name, []).insert(0, f":{name} {policy}")
        else:
            tokens = shlex.split(line.split("] ", 1)[1] if line.startswith("[") else line)
            table.setdefault(tokens[1], []).append(shlex.join(_explicit_only(tokens)))
    return tables


def _explicit_only(tokens: list[str]) -> list[str]:
    """Without the `-m tcp` (etc.) that iptables-save writes for a `-p tcp` rule's options,
    wherever among the matches it put it."""
    protocol = tokens[tokens.index("-p") + 1] if "-p" in tokens else None
    kept: list[str] = []
    for token in tokens:
        if kept[-1:] == ["-m"] and protocol is not None and _IMPLICIT_MATCH.get(token) == protocol:
            kept.pop()
            continue
        kept.append(token)
    return kept


def _diff_table(family: Family, table: str, want: Table, have: Table) -> list[Difference]:
    differences = []
    for chain in [*want, *(c for c in have if c not in want)]:
        wanted, found = want.get(chain, []), have.get(chain, [])
        missing = Counter(wanted) - Counter(found)
        unexpected = Counter(found) - Counter(wanted)
        differences += [Difference(family, table, "missing", line) for line in missing.elements()]
        differences += [
            Difference(family, table, "unexpected", line) for line in unexpected.elements()
        ]
        if not missing and not unexpected and wanted != found:
            differences.append(Difference(family, table, "order", chain))
    return differences


def _run(argv: Sequence[str], netns: str | None, input: str | None = None) -> str:
    tool = argv[0]
    if shutil.which(tool) is None:
        raise NetfilterError(f"{tool} not found: install iptables")
    command = netns_.exec_argv(netns, argv) if netns is not None else list(argv)
    where = f" in network namespace {netns}" if netns is not None else ""
    try:
        result = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except FileNotFoundError as e:  # `ip`, for a named namespace
        raise NetfilterError(f"{e.filename} not found: install iproute2") from None
    except subprocess.TimeoutExpired:
        raise NetfilterError(f"{tool}{where} did not finish within {_TIMEOUT} s") from None
    if result.returncode == 0:
        return result.stdout
    detail = result.stderr.strip() or f"exit status {result.returncode}"
    if "Permission denied" in detail or "Operation not permitted" in detail:
        raise NetfilterError(
            f"{tool}{where}: not allowed: proxy-init needs root or CAP_NET_ADMIN in the "
            f"network namespace ({detail})"
        )
    raise NetfilterError(f"{tool}{where} failed: {detail}")
