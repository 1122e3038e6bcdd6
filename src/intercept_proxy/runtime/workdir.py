"""What `intercept run` protects in the working directory it lets the workload write.

The workload edits the files where it was started: that is its job, and its changes are the
caller's to review. Git's metadata is different: hooks, `config` (core.fsmonitor, aliases,
filters), `commondir`, submodules' and worktrees' directories are run or read by the next `git`
on this machine, outside the sandbox, without anyone reviewing them. So every git directory in
reach is read-only inside the sandbox: the one of the repository the working directory belongs
to (when it lies inside the working directory) and those of repositories nested below it. The
workload reads history, diffs and status; commits are made outside. Repositories the workload
creates are listed when it ends (`created_repositories`): nothing in them is the caller's.
"""

from __future__ import annotations

import os
from pathlib import Path

GIT = ".git"
# Directories never searched for nested repositories: dependency trees, never run by `git`.
SKIPPED = frozenset({"node_modules"})
# Beyond this many directories the search stops: the working directory is too large to protect.
MAX_DIRECTORIES = 200_000


class WorkdirError(RuntimeError):
    """The working directory cannot be protected; the message says why and what to do."""


def _gitdir(dotgit: Path) -> Path | None:
    """Where a `.git` file (a worktree's, a submodule's) says the git directory is."""
    try:
        text = dotgit.read_text(errors="replace")
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    return (dotgit.parent / text.removeprefix("gitdir:").strip()).resolve()


def git_metadata(workdir: Path) -> list[Path]:
    """Every git directory inside `workdir`: each `.git` (directory or file) and the directory
    a `.git` file names when it lies inside `workdir`, parents first (a later read-only bind
    never hides an earlier one). A git directory above `workdir` is read-only already."""
    found = []
    for count, (directory, subdirectories, files) in enumerate(os.walk(workdir), 1):
        if count > MAX_DIRECTORIES:
            raise WorkdirError(
                f"{workdir} has more than {MAX_DIRECTORIES} directories to search for git "
                "metadata; start intercept run in a smaller working directory"
            )
        if GIT in subdirectories or GIT in files:
            dotgit = Path(directory) / GIT
            found.append(dotgit)
            target = _gitdir(dotgit) if dotgit.is_file() else None
            if target is not None and target.is_relative_to(workdir):
                found.append(target)
        subdirectories[:] = sorted(d for d in subdirectories if d != GIT and d not in SKIPPED)
    return sorted(dict.fromkeys(found), key=lambda p: len(p.parts))


def created_repositories(before: list[Path], after: list[Path]) -> list[Path]:
    """The repositories found after the run that were not there before (by their `.git`)."""
    known = set(before)
    return [path.parent for path in after if path.name == GIT and path not in known]
