"""Mount system calls, and paths resolved inside a container's root as the container would see them.

Every mount target comes from a Pod manifest, which is untrusted: `open_beneath` walks the path one
component at a time from the container's root, never following a symbolic link out of it (an
absolute link restarts at the container's root, `..` stops there), creating what is missing inside
the container's own writable layer, never on this machine. The mount is then made on the file
descriptor it returns (`/proc/self/fd/N`), so nothing can swap the path in between.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
from collections.abc import Iterator
from pathlib import Path

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 0x2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# The new mount API (Linux 5.12), the same numbers on every architecture.
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE, _AT_EMPTY_PATH, _AT_RECURSIVE = 0x1, 0x1000, 0x8000
_MOVE_MOUNT_F_EMPTY_PATH, _MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
ATTR_RDONLY, ATTR_NOSUID, ATTR_NODEV = 0x1, 0x2, 0x4
_MAX_LINKS = 40

_libc = ctypes.CDLL(None, use_errno=True)


class MountError(OSError):
    """A mount the container needs could not be made; the message says which and why."""


def _fail(what: str) -> MountError:
    errno = ctypes.get_errno()
    return MountError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    def b(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    if _libc.mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data) or None) != 0:
        raise _fail(f"mount {source or fstype} on {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def bind_fd(source: int, target: int, attributes: int, what: str) -> None:
    """Bind `source` on `target` (both descriptors) with `attributes` already set: the mount is
    made read-only, nosuid, nodev (as asked) before it appears, on the very file the target
    descriptor holds, with no path resolved twice."""
    flags = _OPEN_TREE_CLONE | _AT_EMPTY_PATH | os.O_CLOEXEC
    tree = _libc.syscall(_SYS_OPEN_TREE, source, b"", flags)
    if tree < 0:
        raise _fail(f"open_tree {what}")
    try:
        attr = _MountAttr(attributes, 0, 0, 0)
        if _libc.syscall(
            _SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)
        ):
            raise _fail(f"mount_setattr {what}")
        move = _MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_EMPTY_PATH
        if _libc.syscall(_SYS_MOVE_MOUNT, tree, b"", target, b"", move):
            raise _fail(f"move_mount {what}")
    finally:
        os.close(tree)


def unmount(target: str, flags: int = 0) -> None:
    if _libc.umount2(os.fsencode(target), flags) != 0:
        raise _fail(f"umount {target}")


def pivot_root(new_root: str) -> None:
    """Make `new_root` (a mount point) this mount namespace's root and detach the old root."""
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise MountError(0, f"no pivot_root system call number for {os.uname().machine}")
    os.chdir(new_root)
    # pivot_root(".", "."): the old root ends up stacked on the new one, then is detached.
    if _libc.syscall(number, b".", b".") != 0:
        raise _fail(f"pivot_root {new_root}")
    unmount(".", MNT_DETACH)
    os.chdir("/")


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def open_beneath(root: int, path: str, *, file: bool = False) -> int:
    """An O_PATH descriptor of `path` inside the directory `root`, creating what is missing (the
    last component as an empty file when `file`, every other as a directory)."""
    parts = [p for p in path.split("/") if p]
    stack = [os.dup(root)]
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            if name == ".":
                continue
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            here = stack[-1]
            try:
                info = os.stat(name, dir_fd=here, follow_symlinks=False)
            except FileNotFoundError:
                if file and not parts:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                    os.close(os.open(name, flags, 0o644, dir_fd=here))
                else:
                    os.mkdir(name, 0o755, dir_fd=here)
                info = os.stat(name, dir_fd=here, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    raise MountError(0, f"{path}: too many symbolic links")
                target = os.readlink(name, dir_fd=here)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts = [p for p in target.split("/") if p] + parts
                continue
            if parts and not stat.S_ISDIR(info.st_mode):
                raise MountError(0, f"{path}: {name} is not a directory")
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            stack.append(os.open(name, flags, dir_fd=here))
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


@contextlib.contextmanager
def beneath(root: int, path: str, *, file: bool = False) -> Iterator[str]:
    """`open_beneath` as a path the mount system calls accept, closed afterwards."""
    fd = open_beneath(root, path, file=file)
    try:
        yield fd_path(fd)
    finally:
        os.close(fd)


def mount_points_under(directory: Path, mountinfo: str) -> list[str]:
    """The mount points below `directory` (deepest first), from /proc/self/mountinfo. Pure."""
    prefix = str(directory).rstrip("/") + "/"
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def unmount_under(directory: Path) -> None:
    """Detach whatever is mounted below `directory` (before it is removed)."""
    for point in mount_points_under(directory, Path("/proc/self/mountinfo").read_text()):
        unmount(point, MNT_DETACH)
