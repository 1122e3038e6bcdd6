"""Everything a cluster left on this machine, found by its name alone and removed: `down` after
a clean stop, after an `up` that crashed half-way, after the supervisor was SIGKILLed.

What a cluster named NAME (prefix P = prefix_for(NAME), state dir S) can leave:
- processes: every process whose command line names S (the engines, the node agent, the lab
  server), and every process in a network namespace named P* (pods' containers, probes);
- network namespaces and interfaces named P* (pods, the node's network, the lab, the host
  uplink's veth);
- the rules of the node network's host uplink (comment `intercept-proxy P...`) and its record;
- the local runtime's records (/run/intercept-proxy/pods/P*.json) and pod directories
  (/tmp/intercept-pod-P*), with the tmpfs mounts of in-memory emptyDirs below them;
- S itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from intercept_proxy import netns
from intercept_proxy.runtime import state as runtime_state
from intercept_proxy.runtime.mounts import unmount_under
from intercept_proxy.runtime.network import UPLINKS, release_host_uplink
from intercept_proxy.runtime.pod import POD_ROOT


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


# What a cluster runs outside its pods: the engines, and Python (the supervisor, the node agent,
# the lab server). Someone's `tail -f` of a log in the state dir is not the cluster's.
PROGRAMS = frozenset(
    {"etcd", "kube-apiserver", "kube-controller-manager", "kyverno", "background-controller"}
)


def processes_of(state_dir: Path) -> list[int]:
    """The cluster's processes: engines and Python programs whose command line names the state
    dir (or a file in it)."""
    target = str(state_dir)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        args = _cmdline(int(entry.name))
        if not args:
            continue
        program = Path(args[0]).name
        if program not in PROGRAMS and not program.startswith("python"):
            continue
        if any(a == target or f"{target}/" in a for a in args):
            found.append(int(entry.name))
    return found


def kill_all(pids: list[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state == "Z":  # dead, its parent (gone or not ours) has yet to reap it
                break
            time.sleep(0.02)


def uplink_names(prefix: str) -> set[str]:
    """Host uplinks (by name) of this cluster (its node network's): from the rules and the
    records."""
    names = set()
    comment = re.compile(rf'--comment "intercept-proxy ({re.escape(prefix)}[a-z0-9]*)"')
    for tool in ("iptables-save", "ip6tables-save"):
        out = subprocess.run([tool], capture_output=True, text=True, check=False).stdout
        names.update(comment.findall(out))
    if UPLINKS.is_dir():
        names.update(p.name for p in UPLINKS.iterdir() if p.name.startswith(prefix))
    return names


def cleanup(prefix: str, state_dir: Path) -> list[str]:
    """Remove everything of the cluster with this prefix and state dir; what was removed."""
    if not prefix or not state_dir.name:
        raise ValueError("cleanup needs a prefix and a state dir")
    removed = []
    # Again until none is left: a process may fork (a probe, a restart) while it is killed.
    for _ in range(10):
        pids = processes_of(state_dir)
        for name in netns.namespaces():
            if name.startswith(prefix):
                pids += netns.pids(name)
        if not pids:
            break
        kill_all(sorted(set(pids)))
        removed += [f"process {pid}" for pid in sorted(set(pids))]
    removed += netns.cleanup(prefix)
    for name in sorted(uplink_names(prefix)):
        release_host_uplink(name)
        removed.append(f"host uplink {name}")
    if runtime_state.STATE_DIR.is_dir():
        for record in runtime_state.STATE_DIR.glob(f"{prefix}*.json"):
            runtime_state.release(record.stem)
            removed.append(f"record {record}")
    for leftover in POD_ROOT.glob(f"intercept-pod-{prefix}*"):
        unmount_under(leftover)  # in-memory emptyDirs are tmpfs mounts of this machine's
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(str(leftover))
    if state_dir.exists():
        unmount_under(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)
        removed.append(str(state_dir))
    return removed
