"""The directory `intercept run` is started in by a test: the operator's files, readable by the
sandbox's users (it runs there), removed afterwards."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def operator_workdir(prefix: str, files: dict[str, str]) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o755)
        for name, text in files.items():
            (path / name).write_text(text)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
