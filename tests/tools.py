"""The real engines the tests run (scripts/install-tools builds them): a missing one fails the
test with the command that installs it, never skips it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from intercept_proxy.cluster.tools import INSTALL_HINT, Tools


def tool(name: str) -> Path:
    path = Tools(Path(os.environ.get("INTERCEPT_TOOLS", "/opt/intercept-tools"))).binary(name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: {INSTALL_HINT}")
    return path
