"""Writing key material: private files are 0600 from their first byte, and replaced atomically."""

import os
import tempfile
from pathlib import Path

# The system's trust bundle (Debian's layout, the image's too): what upstreams are checked
# against unless told otherwise, and what a node's workloads trust.
SYSTEM_TRUST = Path("/etc/ssl/certs/ca-certificates.crt")


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically replace `path` with `data`, created with `mode` (never wider, whatever the umask
    would have allowed in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    write_file(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    write_file(path, data, 0o644)
