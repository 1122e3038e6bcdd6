"""Run by the workload: looks for a secret everywhere it can read, and prints where it found it.

The secret comes in two halves (argv[1], argv[2]) so that no process's command line or
environment, this one's included, holds it whole unless it leaked there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOTS = ("/run", "/var/run", "/tmp", "/var/tmp", "/dev/shm", "/home", "/etc")
# Bytes read from any one file.
LIMIT = 1 << 20
PROC = Path("/proc")


def files() -> list[Path]:
    out = [*PROC.glob("[0-9]*/environ"), *PROC.glob("[0-9]*/cmdline")]
    for root in (*ROOTS, str(Path.cwd())):
        for directory, _, names in os.walk(root):
            out += [Path(directory, n) for n in names]
    return out


def main() -> None:
    secret = (sys.argv[1] + sys.argv[2]).encode()
    found, unreadable, read = [], 0, 0
    for path in files():
        try:
            with path.open("rb") as f:
                data = f.read(LIMIT)
        except OSError:
            unreadable += 1
            continue
        read += 1
        if secret in data:
            found.append(str(path))
    # Other users' processes' memory (readable only with ptrace rights over them).
    memory = []
    for path in PROC.glob("[0-9]*/mem"):
        try:
            if path.parent.stat().st_uid == os.getuid():
                continue
            with path.open("rb"):
                memory.append(str(path))
        except OSError:
            pass
    print(json.dumps({"found": found, "read": read, "unreadable": unreadable, "mem": memory}))


if __name__ == "__main__":
    main()
