"""Bare git repositories served by lab hosts, each born with one commit holding a README."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DEFAULT_BRANCH = "main"
# Fixed identity and dates: the initial commit of a repo is the same in every lab run.
_COMMIT_ENV = {
    "GIT_AUTHOR_NAME": "intercept-proxy lab",
    "GIT_AUTHOR_EMAIL": "lab@intercept-proxy.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "intercept-proxy lab",
    "GIT_COMMITTER_EMAIL": "lab@intercept-proxy.invalid",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
}


def git_env() -> dict[str, str]:
    """The environment for every lab git process: no system or user configuration leaks in."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "HOME": "/nonexistent",
    }


def create_bare_repo(path: Path, host: str, repo: str) -> None:
    """Create `path` as a bare repository accepting pushes over smart HTTP."""
    _git("init", "--quiet", "--bare", f"--initial-branch={DEFAULT_BRANCH}", str(path))
    # Pushes come from anonymous clients, which http-backend refuses unless told otherwise.
    _git("--git-dir", str(path), "config", "http.receivepack", "true")
    readme = f"# {repo}\n\nA repository served by the lab host {host}.\n"
    blob = _git("--git-dir", str(path), "hash-object", "-w", "--stdin", input=readme)
    tree = _git("--git-dir", str(path), "mktree", input=f"100644 blob {blob}\tREADME.md\n")
    commit = _git("--git-dir", str(path), "commit-tree", tree, "-m", "Initial commit")
    _git("--git-dir", str(path), "update-ref", f"refs/heads/{DEFAULT_BRANCH}", commit)


def _git(*args: str, input: str | None = None) -> str:
    result = subprocess.run(
        ["git", *args],
        input=input,
        capture_output=True,
        text=True,
        env={**git_env(), **_COMMIT_ENV},
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()
