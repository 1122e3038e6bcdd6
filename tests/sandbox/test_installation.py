"""An installation of intercept-proxy under /tmp (a fresh clone, as in a review) runs sandboxes:
every container starts with an empty /tmp of its own, so the runtime binds the installation into
it, read-only, and nothing else of this machine's /tmp."""

from __future__ import annotations

import json
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import intercept_proxy

pytestmark = pytest.mark.netns

LAB = "hosts: [{name: pypi.org}]\n"
SCRIPT = """\
#!{python}
import sys
from intercept_proxy.cli import main
sys.exit(main())
"""


@pytest.fixture(params=["/tmp"])
def installation(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A virtual environment (under /tmp unless parametrized) whose own copy of the package is
    the one imported; the dependencies come from the project's environment."""
    top = Path(tempfile.mkdtemp(prefix="intercept-installation-", dir=request.param))
    try:
        top.chmod(0o755)
        package = Path(next(iter(intercept_proxy.__path__)))
        shutil.copytree(package, top / "src" / "intercept_proxy",
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        venv = top / ".venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", venv], check=True)
        (site,) = venv.glob("lib/python3*/site-packages")
        (site / "intercept.pth").write_text(f"{top / 'src'}\n{sysconfig.get_path('purelib')}\n")
        intercept = venv / "bin" / "intercept"
        intercept.write_text(SCRIPT.format(python=venv / "bin" / "python"))
        intercept.chmod(0o755)
        (top / "lab.yaml").write_text(LAB)
        (top / "policy.yaml").write_text("allowed_domains: [pypi.org]\n")
        (top / "secret").write_text("not the image's")
        (top / "work").mkdir(mode=0o755)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_an_installation_under_tmp_runs_an_intercepted_workload(installation):
    python = installation / ".venv" / "bin" / "python"
    imported = subprocess.run(
        [python, "-c", "import intercept_proxy; print(intercept_proxy.__file__)"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert imported.startswith(str(installation / "src"))
    script = (
        f"curl -sS --fail https://pypi.org/from-tmp; echo; ls -A {installation}; "
        f"cat {installation / 'secret'} || echo hidden; "
        f"touch {installation / 'src' / 'planted'} || echo read-only"
    )
    result = subprocess.run(
        [installation / ".venv" / "bin" / "intercept", "run",
         "--lab", installation / "lab.yaml", "--policy", installation / "policy.yaml", "--",
         "sh", "-c", script],
        cwd=installation / "work", capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    echo, *rest = result.stdout.splitlines()
    assert json.loads(echo)["path"] == "/from-tmp"
    # The environment, the package and the working directory, not the rest of the directory.
    assert sorted(rest[: rest.index("hidden")]) == [".venv", "src", "work"]
    assert rest[-1] == "read-only"
    assert not (installation / "src" / "planted").exists()


def run_from(installation: Path, cwd: Path, script: str) -> subprocess.CompletedProcess[str]:
    argv = [installation / ".venv" / "bin" / "intercept", "run", "--lab",
            installation / "lab.yaml", "--policy", installation / "policy.yaml", "--",
            "sh", "-c", script]  # fmt: skip
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


# Under /tmp the installation is bound into containers anyway; elsewhere it is the image's.
@pytest.mark.parametrize("installation", ["/tmp", "/srv"], indirect=True)
def test_the_workload_never_writes_the_installation_in_its_working_directory(installation):
    """Root runs that code (the runtime, the sidecars): in the working directory it is
    read-only, and cannot be moved aside and replaced."""
    attempts = [
        "touch src/planted.py", "touch .venv/bin/planted", "mv src moved", "mv .venv moved",
        "mv src/intercept_proxy src/other",
    ]  # fmt: skip
    script = "".join(f"{a} 2>/dev/null && echo 'done: {a}'; " for a in attempts)
    installation.chmod(0o777)  # the workload's own directory: only the mounts protect
    result = run_from(installation, installation, script + "touch mine && echo wrote")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["wrote"]
    assert (installation / "mine").exists()
    assert sorted(p.name for p in installation.iterdir()) == [
        ".venv", "lab.yaml", "mine", "policy.yaml", "secret", "src", "work",
    ]  # fmt: skip
    assert [p.name for p in (installation / "src").iterdir()] == ["intercept_proxy"]
    assert not (installation / "src" / "planted.py").exists()


def test_a_working_directory_inside_the_installation_is_refused(installation):
    result = run_from(installation, installation / "src" / "intercept_proxy", "true")
    assert result.returncode == 2
    assert "intercept-proxy's own installation" in result.stderr
