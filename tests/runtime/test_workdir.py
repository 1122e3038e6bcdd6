"""What `intercept run` keeps read-only in the working directory it lets the workload write."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from intercept_proxy.runtime import workdir
from intercept_proxy.runtime.workdir import (
    WorkdirError,
    check_workdir,
    created_repositories,
    git_metadata,
)


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_every_git_directory_inside_is_found_parents_first(tmp_path):
    git("init", "-q", cwd=tmp_path)
    (tmp_path / "vendor" / "lib").mkdir(parents=True)
    git("init", "-q", cwd=tmp_path / "vendor" / "lib")
    # A worktree-style .git file naming a git directory inside the working directory.
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / ".git").write_text("gitdir: ../.git/worktrees/linked\n")
    (tmp_path / ".git" / "worktrees" / "linked").mkdir(parents=True)
    # Dependency trees are not searched.
    (tmp_path / "node_modules" / "dep").mkdir(parents=True)
    git("init", "-q", cwd=tmp_path / "node_modules" / "dep")
    # A bare repository, and a link named .git to a directory outside (never bound).
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "mirror")], check=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / ".git").symlink_to("/etc")
    found = git_metadata(tmp_path)
    assert found.git_dirs == (
        tmp_path / ".git",
        tmp_path / "mirror",
        tmp_path / "linked" / ".git",
        tmp_path / ".git" / "worktrees" / "linked",
        tmp_path / "vendor" / "lib" / ".git",
    )
    # Every directory between the working directory and a git directory is pinned.
    assert found.pinned == (tmp_path / "linked", tmp_path / "vendor", tmp_path / "vendor" / "lib")


def test_a_git_directory_above_the_working_directory_is_left_alone(tmp_path):
    git("init", "-q", cwd=tmp_path)
    (tmp_path / "src").mkdir()
    assert git_metadata(tmp_path / "src").git_dirs == ()  # outside what it may write


def test_repositories_created_during_the_run(tmp_path):
    git("init", "-q", cwd=tmp_path)
    before = git_metadata(tmp_path)
    (tmp_path / "new").mkdir()
    git("init", "-q", cwd=tmp_path / "new")
    assert created_repositories(before, git_metadata(tmp_path)) == [tmp_path / "new" / ".git"]
    # Renamed: still the same repository, and the new one in its place is named.
    (tmp_path / "new").rename(tmp_path / "moved")
    (tmp_path / "new").mkdir()
    git("init", "-q", cwd=tmp_path / "new")
    created = created_repositories(before, git_metadata(tmp_path))
    assert created == [tmp_path / "moved" / ".git", tmp_path / "new" / ".git"]


def test_a_working_directory_too_large_to_search_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir, "MAX_DIRECTORIES", 3)
    for name in "abcd":
        (tmp_path / name).mkdir()
    with pytest.raises(WorkdirError, match="smaller working directory"):
        git_metadata(tmp_path)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/", "holds /proc"),
        ("/var", "holds /var/tmp"),
        ("/tmp", "holds /tmp"),
        ("/run/user/0", "lies in /run"),
        ("/proc/self", "lies in /proc"),
    ],
)
def test_a_working_directory_holding_what_each_container_gets_its_own_of_is_refused(path, problem):
    with pytest.raises(WorkdirError, match=problem):
        check_workdir(Path(path))


@pytest.mark.parametrize("path", ["/tmp/project", "/srv/work", "/home/alice", "/usr/src"])
def test_project_directories_are_working_directories(path):
    check_workdir(Path(path))


def test_the_installation_in_the_working_directory_is_protected_and_pinned():
    install = (Path("/w/clone/.venv"), Path("/w/clone/src"), Path("/w/clone/.venv/lib"))
    own = workdir.installation_inside(Path("/w"), (*install, Path("/usr/lib/python3")))
    assert own == [Path("/w/clone/.venv"), Path("/w/clone/src")]
    assert workdir.pinned(Path("/w"), own) == (Path("/w/clone"),)
    with pytest.raises(WorkdirError, match="own installation"):
        workdir.installation_inside(Path("/w/clone/src/pkg"), install)
