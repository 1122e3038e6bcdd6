"""The container image (built elsewhere: no Docker engine here): pinned and non-root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import intercept_proxy
from intercept_proxy import cli
from intercept_proxy.injector.pod import interceptor_containers
from intercept_proxy.injector.settings import InjectorSettings
from intercept_proxy.runtime.containers import PROJECT_IMAGE

DOCKERFILE = Path(__file__).parent.parent / "images" / "Dockerfile"
GO = shutil.which("go") or "/usr/local/go/bin/go"


def test_base_images_are_pinned_and_the_user_is_the_agents():
    text = DOCKERFILE.read_text()
    builder, base = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-bookworm", base), base
    # The CNI plugin's builder: the Go `make install` builds it with.
    go = subprocess.run([GO, "version"], capture_output=True, text=True, check=True).stdout
    version = re.search(r"go(\d+\.\d+\.\d+)", go)
    assert version is not None and builder == f"golang:{version[1]}-bookworm"
    assert re.findall(r"^USER (\S+)", text, re.MULTILINE) == ["102:102"]
    assert "iptables" in text
    assert ":latest" not in text


def test_the_image_leaves_out_the_lab_and_the_bench_and_still_runs_the_sidecars(tmp_path):
    """The package as the Dockerfile installs it runs every command the injector gives the
    project's image, and offers nothing that needs what it left out."""
    removed = re.findall(r"src/intercept_proxy/(\w+)", DOCKERFILE.read_text())
    assert sorted(removed) == sorted(cli.NOT_IN_IMAGE)
    source = Path(next(iter(intercept_proxy.__path__)))
    skipped = shutil.ignore_patterns("__pycache__", *removed)
    shutil.copytree(source, tmp_path / "intercept_proxy", ignore=skipped)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}  # before the installed package

    def intercept(*args: str) -> str:
        code = "import sys; from intercept_proxy.cli import main; sys.exit(main(sys.argv[1:]))"
        argv = [sys.executable, "-c", code, *args]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    commands = [
        c["command"]
        for c in interceptor_containers(InjectorSettings())
        if c["image"].split(":")[0].endswith(PROJECT_IMAGE)
    ]
    assert len(commands) == 2  # proxy-init and the agent
    for command in commands:
        assert command[0] == "intercept"
        assert "usage: intercept" in intercept(*command[1:], "--help")
    offered = intercept("--help")
    assert "proxy-init" in offered and "cni-node" in offered
    assert " lab " not in offered and " bench " not in offered
    where = "import intercept_proxy; print(intercept_proxy.__file__)"
    out = subprocess.run([sys.executable, "-c", where], env=env, capture_output=True, text=True)
    assert out.stdout.startswith(str(tmp_path))
