"""The first step of every local container, run as root inside the pod's network namespace and a
fresh private mount namespace (`unshare --mount --propagation private`): bind its volumes at
their mount paths, make the root filesystem read-only if asked, then exec the container's
process through `setpriv` with exactly the identity it was given.

Usage: python -m intercept_proxy.runtime.enter SPEC_JSON
SPEC: {"mounts": [{"source", "target", "read_only"}], "read_only_root": bool,
       "working_dir": str | null, "env": {...}, "argv": [...] (setpriv ... -- command)}
Mounts die with the mount namespace, so a container leaves none behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"intercept runtime: mount {' '.join(args)}: {result.stderr.strip()}")


def enter(spec: dict[str, Any]) -> None:
    for mount in spec["mounts"]:
        _mount("--bind", mount["source"], mount["target"])
        if mount.get("read_only"):
            _mount("-o", "remount,bind,ro", mount["target"])
    # After the binds: a volume bound from a read-only filesystem would be read-only too.
    if spec.get("read_only_root"):
        _mount("-o", "remount,bind,ro", "/")
    if spec.get("working_dir"):
        os.chdir(spec["working_dir"])
    argv = spec["argv"]
    os.execvpe(argv[0], argv, spec["env"])


if __name__ == "__main__":
    enter(json.loads(sys.argv[1]))
