"""What `intercept run` protects in the working directory it lets the workload write.

The workload edits the files where it was started: that is its job, and its changes are the
caller's to review. Git's metadata is different: hooks, `config` (core.fsmonitor, aliases,
filters), `commondir`, submodules' and worktrees' directories are run or read by the next `git`
on this machine, outside the sandbox, without anyone reviewing them. So every git directory in
reach is read-only inside the sandbox: `.git` directories and files, the git directories a `.git`
file or link names inside the working directory, and bare repositories; and every directory
between the working directory and one of them is pinned (a mount point cannot be renamed), so
that no repository can be moved aside and replaced by one of the workload's. The workload reads
history, diffs and status; commits are made outside. Repositories the workload creates are named
when it ends (`created_repositories`), by the identity of their git directory (device, inode), so
that a rename cannot hide one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GIT = ".git"
# Directories never searched for nested repositories: dependency trees, never run by `git`.
SKIPPED = frozenset({"node_modules"})
# Beyond this many directories the search stops: the working directory is too large to protect.
MAX_DIRECTORIES = 200_000


class WorkdirError(RuntimeError):
    """The working directory cannot be protected; the message says why and what to do."""


@dataclass(frozen=True)
class Protection:
    """Git directories (read-only inside) and the directories pinned above them."""

    git_dirs: tuple[Path, ...]
    pinned: tuple[Path, ...]
    identities: frozenset[tuple[int, int]]


# What the runtime makes for each container itself: a working directory holding one of them
# would replace it with this machine's own, writable. Those of the first kind are not files to
# work on at any depth.
NOT_FILES = tuple(Path(p) for p in ("/proc", "/sys", "/dev", "/run"))
CONTAINER_OWN = (*NOT_FILES, Path("/tmp"), Path("/var/tmp"))


def check_workdir(workdir: Path) -> None:
    """Refuse a working directory that cannot be handed to the workload. Pure."""
    for own in CONTAINER_OWN:
        if own.is_relative_to(workdir):
            raise WorkdirError(
                f"the working directory {workdir} holds {own}, of which the sandbox gives the "
                "workload its own; start intercept run in the directory it should work in"
            )
    for kernel in NOT_FILES:
        if workdir.is_relative_to(kernel):
            raise WorkdirError(f"the working directory {workdir} lies in {kernel}: not files")


def _gitdir(dotgit: Path) -> Path | None:
    """Where a `.git` file (a worktree's, a submodule's) says the git directory is."""
    try:
        text = dotgit.read_text(errors="replace")
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    return (dotgit.parent / text.removeprefix("gitdir:").strip()).resolve()


def _is_bare(directory: str, subdirectories: list[str], files: list[str]) -> bool:
    return "HEAD" in files and {"objects", "refs"} <= set(subdirectories)


def git_metadata(workdir: Path) -> Protection:
    """Every git directory inside `workdir` (a git directory above it is read-only already)."""
    found: list[Path] = []
    for count, (directory, subdirectories, files) in enumerate(os.walk(workdir), 1):
        if count > MAX_DIRECTORIES:
            raise WorkdirError(
                f"{workdir} has more than {MAX_DIRECTORIES} directories to search for git "
                "metadata; start intercept run in a smaller working directory"
            )
        here = Path(directory)
        if here != workdir and _is_bare(directory, subdirectories, files):
            found.append(here)
            subdirectories[:] = []
            continue
        if GIT in subdirectories or GIT in files:
            dotgit = here / GIT
            target: Path | None
            if dotgit.is_symlink():
                target = dotgit.resolve()  # its target, where it lies inside: never the link
            elif dotgit.is_file():
                found.append(dotgit)
                target = _gitdir(dotgit)
            else:
                target = dotgit
            if target is not None and target.is_relative_to(workdir) and target.exists():
                found.append(target)
        subdirectories[:] = sorted(
            d
            for d in subdirectories
            if d != GIT and d not in SKIPPED and not (here / d).is_symlink()
        )
    git_dirs = sorted(dict.fromkeys(found), key=lambda p: len(p.parts))
    # Never a directory inside a git directory: pinned means a writable mount of its own.
    identities = frozenset((p.stat().st_dev, p.stat().st_ino) for p in git_dirs)
    return Protection(tuple(git_dirs), pinned(workdir, git_dirs), identities)


def pinned(workdir: Path, protected: list[Path]) -> tuple[Path, ...]:
    """The directories between `workdir` and each of `protected` (read-only inside): bound
    writable at their own path, they become mount points, which cannot be renamed, so no
    protected directory can be moved aside and replaced. Never one inside a protected one. Pure."""
    between = {
        parent
        for g in protected
        for parent in g.parents
        if parent.is_relative_to(workdir)
        and parent != workdir
        and not any(parent.is_relative_to(h) for h in protected)
    }
    return tuple(sorted(between, key=lambda p: (len(p.parts), str(p))))


def installation_inside(workdir: Path, installation: tuple[Path, ...]) -> list[Path]:
    """The parts of this interceptor's installation in `workdir`: root runs that code (the
    runtime, the sidecars), so the workload must never write it. A working directory inside
    the installation is refused. Pure."""
    for path in installation:
        if workdir.is_relative_to(path):
            raise WorkdirError(
                f"the working directory {workdir} lies in {path}, intercept-proxy's own "
                "installation, which root runs: start intercept run elsewhere"
            )
    inside = sorted({p for p in installation if p.is_relative_to(workdir)})
    return [p for i, p in enumerate(inside) if not any(p.is_relative_to(q) for q in inside[:i])]


def created_repositories(before: Protection, after: Protection) -> list[Path]:
    """The git directories found after the run that were not there before, by identity."""
    known = before.identities
    return [g for g in after.git_dirs if (g.stat().st_dev, g.stat().st_ino) not in known]
