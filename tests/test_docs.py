"""The documents state ports and users as intercept_proxy declares them (ports.py,
identities.py): a renumbered port or user fails here until the prose follows."""

from __future__ import annotations

import re
from pathlib import Path

from intercept_proxy import identities, ports
from intercept_proxy.policy.engine import rego_values

ROOT = Path(__file__).resolve().parents[1]
# Not performance.md: its figures (requests/s, 15144-15986 say) are measurements, not ports.
TEXTS = [
    *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "performance.md"),
    ROOT / "README.md",
    ROOT / "charts" / "intercept-proxy" / "values.yaml",
    ROOT / "charts" / "intercept-proxy" / "templates" / "NOTES.txt",
]
DECLARED = {
    name: value for name, value in vars(ports).items() if name.isupper() and isinstance(value, int)
}


def test_every_sidecar_port_in_the_documents_is_declared():
    low, high = ports.SIDECAR_RANGE
    known = {*DECLARED.values(), low, high}
    for path in TEXTS:
        for number in re.findall(r"(?<![\d.])1[45]\d{3}(?![\d.])", path.read_text()):
            if low <= int(number) <= high:
                assert int(number) in known, f"{path.name}: {number} is no port of ports.py"
        for span in re.findall(r"\b(1[45]\d{3})-(1[45]\d{3})\b", path.read_text()):
            assert tuple(map(int, span)) == (low, high), f"{path.name}: {'-'.join(span)}"


def test_the_ports_table_lists_each_declared_port_and_its_process():
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", text, re.MULTILINE)
    owners = {int(port): process.strip() for port, process in rows}
    assert set(owners) == set(DECLARED.values())
    users = {"Envoy": identities.ENVOY_UID, "agent": identities.AGENT_UID}
    for name, port in DECLARED.items():
        process = "Envoy" if name.startswith("ENVOY_") else "agent"
        assert owners[port].startswith(process), f"{port} ({name}): {owners[port]}"
        uid = re.search(r"UID (\d+)", owners[port])
        assert uid is None or int(uid.group(1)) == users[process], owners[port]
    assert f"{ports.SIDECAR_RANGE[0]}-{ports.SIDECAR_RANGE[1]} is reserved" in text


def test_the_administration_table_names_every_word_of_the_rego():
    """docs/policy.md lists what the Rego's github_admin_paths hold, word for word."""
    text = (ROOT / "docs" / "policy.md").read_text()
    section = text[text.index("### Administration") : text.index("The list follows")]
    named = set(re.findall(r"[a-z][a-z-]+", " ".join(re.findall(r"`([^`]+)`", section))))
    (paths,) = rego_values("github_admin_paths").values()
    words = {w for p in paths for w in re.findall(r"[a-z][a-z-]+", re.sub(r"\[\^/\]", "", p))}
    assert words <= named, sorted(words - named)
