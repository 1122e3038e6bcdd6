"""What /proc says of a process: one parser of its status file."""

from __future__ import annotations

from pathlib import Path


def status(pid: int | str = "self") -> dict[str, str]:
    """/proc/PID/status as fields (`Uid`, `VmRSS`, `CapEff`, ...) to their text."""
    return parse_status(Path(f"/proc/{pid}/status").read_text())


def parse_status(text: str) -> dict[str, str]:
    """A status file's fields to their text. Pure."""
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def memory_mib(fields: dict[str, str], name: str = "VmRSS") -> float:
    """A memory field (kB) of a status, in MiB; 0 for a process that has none (a zombie)."""
    value = fields.get(name, "0 kB").split()[0]
    return int(value) / 1024
