"""A node's CNI configuration directory as container runtimes read it (libcni's rule, which
containerd and CRI-O follow): of its `*.conf`, `*.conflist` and `*.json` files, the first by
name is the network. CNI mode's node agent edits that file; the test node's runtime reads it."""

from __future__ import annotations

from pathlib import Path

EXTENSIONS = (".conf", ".conflist", ".json")


def network_file(conf_dir: Path) -> Path | None:
    """The file a runtime takes its network from; None if there is none."""
    found = (p for p in conf_dir.iterdir() if p.suffix in EXTENSIONS and p.is_file())
    return min(found, default=None)
