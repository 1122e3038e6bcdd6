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


@pytest.fixture
def installation() -> Iterator[Path]:
    """A virtual environment under /tmp whose own copy of the package is the one imported; the
    dependencies come from the project's environment (outside /tmp)."""
    top = Path(tempfile.mkdtemp(prefix="intercept-installation-", dir="/tmp"))
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
