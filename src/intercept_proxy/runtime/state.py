"""Host-wide state of local pods: which are alive, and the mount points they had to create.

A container's volume must be bound at its mount path, which may not exist on this machine;
the runtime creates it and removes it again when the last pod needing it is gone. Records live
under /run (cleared at boot), guarded by a lock, so concurrent pods and a crashed run are safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

STATE_DIR = Path("/run/intercept-proxy/pods")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (STATE_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _record(pod: str) -> Path:
    return STATE_DIR / f"{pod}.json"


def _read(path: Path) -> dict[str, object]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _alive(record: dict[str, object]) -> bool:
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def register(pod: str, netns_name: str) -> None:
    with _locked():
        data = {"pid": os.getpid(), "netns": netns_name, "created": [], "uses": []}
        _record(pod).write_text(json.dumps(data))


def ensure_mount_point(pod: str, target: Path) -> None:
    """Create `target` (and missing parents) if absent; remember what this pod created and
    that it uses `target`, so another pod never removes a mount point still in use."""
    with _locked():
        missing = []
        path = target
        while not path.exists():
            missing.append(path)
            path = path.parent
        for p in reversed(missing):
            p.mkdir(mode=0o755)
        record = _read(_record(pod))
        record["created"] = [*record.get("created", []), *(str(p) for p in missing)]  # type: ignore[misc]
        record["uses"] = [*record.get("uses", []), str(target)]  # type: ignore[misc]
        _record(pod).write_text(json.dumps(record))


def release(pod: str) -> None:
    """Forget `pod`; remove the mount points it created that no living pod still needs."""
    with _locked():
        record = _read(_record(pod))
        _record(pod).unlink(missing_ok=True)
        needed: set[str] = set()
        for other in STATE_DIR.glob("*.json"):
            data = _read(other)
            if _alive(data):
                needed.update(data.get("uses", []))  # type: ignore[arg-type]
        # Deepest first: a created parent is removed after its created children.
        for path in sorted(record.get("created", []), key=len, reverse=True):  # type: ignore[arg-type]
            if path not in needed:
                with contextlib.suppress(OSError):
                    Path(path).rmdir()  # only if empty: never anything but our own mount point


def stale() -> list[dict[str, object]]:
    """Records of pods whose runtime died without cleaning up."""
    with _locked():
        records = [(_read(p) | {"pod": p.stem}) for p in STATE_DIR.glob("*.json")]
    return [r for r in records if not _alive(r)]
