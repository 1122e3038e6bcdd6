"""One lab and one running sandbox per module; everything removed at the end."""

from __future__ import annotations

import os

import pytest

from intercept_proxy import netns
from tests.sandbox.harness import Sandbox, start_lab


@pytest.fixture(scope="session")
def sandbox_prefix():
    if os.geteuid() != 0:
        pytest.fail("sandbox tests need root")
    prefix = netns.unique_prefix("ipr")
    yield prefix
    netns.cleanup(prefix)


@pytest.fixture(scope="module")
def lab(sandbox_prefix):
    lab = start_lab(sandbox_prefix)
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def sandbox(lab):
    box = Sandbox(lab).start()
    try:
        yield box
    finally:
        box.close()
