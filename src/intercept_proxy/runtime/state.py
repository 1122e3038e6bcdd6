"""Host-wide state of local pods: which are alive, so that what a runtime killed without
warning left behind can be found and removed. Records live under /run (cleared at boot), guarded
by a lock, so concurrent pods and a crashed run are safe. (Mount points are never made on this
machine: each container's root has its own writable layer.)"""

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
        loaded: dict[str, object] = json.loads(path.read_text())
        return loaded
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


def register(pod: str, netns_name: str, control: Path | None = None) -> None:
    """`control`: the control socket of its agent (a gateway's, which has no pod directory
    for `intercept approvals` to find it in)."""
    record = {"pid": os.getpid(), "netns": netns_name}
    with _locked():
        _record(pod).write_text(json.dumps(record | ({"control": str(control)} if control else {})))


def release(pod: str) -> None:
    """Forget `pod`."""
    with _locked():
        _record(pod).unlink(missing_ok=True)


def control_sockets() -> list[Path]:
    """The control sockets the runtimes alive now recorded."""
    with _locked():
        records = [_read(p) for p in STATE_DIR.glob("*.json")]
    return [Path(str(r["control"])) for r in records if r.get("control") and _alive(r)]


def stale() -> list[dict[str, object]]:
    """Records of pods whose runtime died without cleaning up."""
    with _locked():
        records = [(_read(p) | {"pod": p.stem}) for p in STATE_DIR.glob("*.json")]
    return [r for r in records if not _alive(r)]
