"""A container's root filesystem: this machine's files as its image, copy-on-write and private.

Images are not pulled: a container runs programs of this machine. Its root is an overlay whose
lower layer is this machine's root filesystem (read-only, nothing of it ever written) and whose
upper layer is an in-memory filesystem of the container's own, gone when it ends, so:

- what a container writes outside its volumes lands in its own layer (or nowhere, with
  `readOnlyRootFilesystem`), never in this machine's files;
- mount points the manifest asks for are made in that layer, never on this machine;
- /tmp, /var/tmp and /run start empty (opaque in the upper layer): nothing of this machine's or
  another sandbox's temporary files or runtime sockets (D-Bus, agents) is in reach;
- the other real filesystems of this machine (/home, /boot, ... when they are separate) are
  mirrored read-only, without setuid or device files;
- /dev holds only the usual devices and a pseudo-terminal instance of its own.

`prepare` builds it from inside the container's fresh mount namespace (as root), then makes it
the namespace's root: the old one is detached and out of reach.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from intercept_proxy.runtime.mounts import (
    ATTR_NODEV,
    ATTR_NOSUID,
    ATTR_RDONLY,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REMOUNT,
    MountError,
    beneath,
    bind_fd,
    fd_path,
    mount,
    open_beneath,
    pivot_root,
)

# Directories that start empty in every container (as in an image).
EMPTY = {"tmp": 0o1777, "var/tmp": 0o1777, "run": 0o755}
# The writable layer's size: what a container writes outside its volumes stays in memory.
LAYER_SIZE = "1g"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Filesystems of this machine that are not files (kernel interfaces, other containers' layers,
# runtime state): never mirrored.
VIRTUAL = frozenset(
    {
        "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
        "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs", "overlay", "proc",
        "pstore", "ramfs", "securityfs", "squashfs", "sysfs", "tmpfs", "tracefs",
    }
)  # fmt: skip
NOT_MIRRORED = ("/proc", "/sys", "/dev", "/run", "/var/run", "/tmp", "/var/tmp")
_OPAQUE = "trusted.overlay.opaque"


@dataclass(frozen=True)
class Bind:
    source: str
    target: str
    read_only: bool = False


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mirrored(mountinfo: str, excluded: Iterable[str] = ()) -> list[str]:
    """The mount points of this machine's other real filesystems, parents first. Pure."""
    skip = (*NOT_MIRRORED, *excluded)
    points = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, fstype = before.split(), after.split(" ", 1)[0]
        if len(fields) < 5 or fstype in VIRTUAL or fstype.startswith("fuse."):
            continue
        point = _unescape(fields[4])
        if point == "/" or any(point == s or point.startswith(s.rstrip("/") + "/") for s in skip):
            continue
        points.append(point)
    return sorted(dict.fromkeys(points), key=lambda p: p.count("/"))


def hidden(paths: Iterable[Path]) -> list[Path]:
    """Those of `paths` (absolute, resolved) a container would not see because they lie in a
    directory that starts empty, outermost first and without the ones inside them. Pure."""
    empty = [Path("/", relative) for relative in EMPTY]
    inside = sorted({p for p in paths if any(p.is_relative_to(e) and p != e for e in empty)})
    return [p for i, p in enumerate(inside) if not any(p.is_relative_to(q) for q in inside[:i])]


def _layer(scratch: Path) -> tuple[Path, Path, Path]:
    """The container's writable layer on a filesystem of its own, with the empty directories."""
    mount("tmpfs", str(scratch), "tmpfs", MS_NOSUID | MS_NODEV, f"size={LAYER_SIZE},mode=0700")
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "root"
    for path in (upper, work, merged):
        path.mkdir(mode=0o755)
    for relative, mode in EMPTY.items():
        path = upper / relative
        for parent in reversed(path.relative_to(upper).parents[:-1]):
            # Parents keep this machine's owner and mode (the upper one wins in an overlay).
            copy = upper / parent
            copy.mkdir(exist_ok=True)
            original = (Path("/") / parent).stat()
            os.chown(copy, original.st_uid, original.st_gid)
            copy.chmod(stat.S_IMODE(original.st_mode))
        path.mkdir()
        path.chmod(mode)
        os.setxattr(path, _OPAQUE, b"y")
    return upper, work, merged


def _dev(root: int) -> None:
    with beneath(root, "/dev") as dev:
        # nodev: no device a container could make (mknod) works; the binds below are mounts
        # of this machine's own nodes.
        mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k")
    for name in DEVICES:
        with beneath(root, f"/dev/{name}", file=True) as target:
            mount(f"/dev/{name}", target, None, MS_BIND)
    with beneath(root, "/dev/pts") as pts:
        mount("devpts", pts, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    with beneath(root, "/dev/shm") as shm:
        mount("tmpfs", shm, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    with beneath(root, "/dev") as dev:
        links = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0"}
        links |= {"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
        directory = os.open(dev, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, target in links.items():
                os.symlink(target, name, dir_fd=directory)
        finally:
            os.close(directory)


def bind(root: int, b: Bind) -> None:
    """`b.source` (a path of this machine, never through a symbolic link) at `b.target` inside
    the container's root, nosuid and nodev, read-only if asked, from the moment it appears."""
    try:
        source = os.open(b.source, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise MountError(e.errno, f"{b.source}: {e.strerror}") from None
    try:
        info = os.fstat(source)
        if stat.S_ISLNK(info.st_mode):
            raise MountError(0, f"{b.source} is a symbolic link: never bound")
        target = open_beneath(root, b.target, file=not stat.S_ISDIR(info.st_mode))
        try:
            attributes = ATTR_NOSUID | ATTR_NODEV | (ATTR_RDONLY if b.read_only else 0)
            bind_fd(source, target, attributes, f"{b.source} on {b.target}")
        finally:
            os.close(target)
    finally:
        os.close(source)


def prepare(scratch: Path, binds: list[Bind], read_only: bool, excluded: Iterable[str]) -> None:
    """Build the root in `scratch` (a directory of this machine only root may enter) and make
    it this mount namespace's root. `excluded`: paths of this machine never mirrored."""
    upper, work, merged = _layer(scratch)
    options = f"lowerdir=/,upperdir={upper},workdir={work},redirect_dir=off,metacopy=off"
    mount("overlay", str(merged), "overlay", MS_NOSUID | MS_NODEV, options)
    root = os.open(merged, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for point in mirrored(Path("/proc/self/mountinfo").read_text(), excluded):
            bind(root, Bind(point, point, read_only=True))
        with beneath(root, "/proc") as proc:
            mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        with beneath(root, "/sys") as sys_:
            mount("sysfs", sys_, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _dev(root)
        # Parents before children: a volume at /data/x lands inside the one at /data.
        for b in sorted(binds, key=lambda b: len([p for p in b.target.split("/") if p])):
            bind(root, b)
        if read_only:
            mount(
                None, fd_path(root), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
            )
    finally:
        os.close(root)
    pivot_root(str(merged))
