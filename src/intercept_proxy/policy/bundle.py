"""The policy as an OPA bundle: what `intercept policy compile --bundle` writes.

The layout is OPA's (https://www.openpolicyagent.org/docs/management-bundles):

    .manifest                     revision (the policy's), roots, rego_version 1
    intercept_policy/data.json    the policy file's data, at data.intercept_policy
    intercept.rego                the built-in policy (package intercept)
    custom/<n>_<name>.rego        the policy's custom modules (package intercept.custom...)

The roots, `intercept` and `intercept_policy`, are the two trees the bundle owns: OPA refuses
another bundle, or data pushed over its API, that writes below them. `opa run --server -b DIR`,
`opa eval -b DIR` and OPA's bundle service (the same files as a .tar.gz) load it as it is.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

from intercept_proxy.pki.files import write_public
from intercept_proxy.policy.engine import BUILTIN_MODULE, builtin_rego
from intercept_proxy.policy.model import DATA_ROOT, Policy

MANIFEST = ".manifest"
ROOTS = ("intercept", DATA_ROOT)
# Marks a bundle this module wrote: only such a directory is ever replaced.
GENERATOR = "intercept policy compile"


class BundleError(ValueError):
    """A bundle that cannot be written where it was asked for."""


def bundle_files(policy: Policy) -> dict[str, bytes]:
    """Every file of the bundle, by its path inside the bundle."""
    manifest = {
        "revision": policy.revision,
        "roots": list(ROOTS),
        "rego_version": 1,
        "metadata": {"generator": GENERATOR},
    }
    files = {
        MANIFEST: json.dumps(manifest, indent=2) + "\n",
        f"{DATA_ROOT}/data.json": json.dumps(policy.to_data()[DATA_ROOT], indent=2, sort_keys=True)
        + "\n",
        BUILTIN_MODULE: builtin_rego(),
    }
    for i, module in enumerate(policy.rego_modules):
        files[f"custom/{i}_{Path(module.path).name}"] = module.text
    return {name: text.encode() for name, text in files.items()}


def _ours(directory: Path) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        return bool(manifest["metadata"]["generator"] == GENERATOR)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_bundle(policy: Policy, target: Path) -> None:
    """Write the bundle to `target`: a directory, or a gzipped tarball when the name ends in
    `.tar.gz`. An existing directory must be empty or a bundle written here before, which is
    then replaced as a whole (a stale module left behind would still be loaded by OPA)."""
    files = bundle_files(policy)
    if target.name.endswith(".tar.gz"):
        write_public(target, _tarball(files))
        return
    if target.exists():
        if not target.is_dir():
            raise BundleError(f"{target} exists and is not a directory")
        if any(target.iterdir()) and not _ours(target):
            raise BundleError(
                f"{target} is not empty and holds no bundle written by `{GENERATOR}`: "
                "name an empty or a new directory"
            )
        for entry in target.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    for name, data in files.items():
        write_public(target / name, data)


def _tarball(files: dict[str, bytes]) -> bytes:
    """The files as OPA's bundle service serves them; reproducible (no times, no owners)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue(), mtime=0)
