"""The policy in force (with its credentials' secrets), replaced atomically when its files
change and the new one is valid."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from intercept_proxy.policy import credentials
from intercept_proxy.policy.credentials import AwsKeys
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.model import PolicyError, granting, load_policy, module_paths

log = logging.getLogger(__name__)


class PolicyStore:
    def __init__(
        self,
        path: Path,
        on_reload: Callable[[bool], None] = lambda ok: None,
        *,
        optional: bool = False,
    ) -> None:
        """Load the policy at `path`; an invalid policy raises PolicyError (fail closed: an agent
        without a valid policy does not start).

        `optional`: a pod's own policy, from an annotation. An empty or missing file means no
        policy (`engine` is None), and it may not load Rego modules (it names no files)."""
        self.path = path
        self._on_reload = on_reload
        self._optional = optional
        # What people allowed while the agent runs (authz/approvals.py): part of every version.
        self.grants: tuple[tuple[str, str], ...] = ()
        self.engine, self.secrets, self.aws_keys = self._load()
        # Modules a rejected version names: watched too, so creating them applies the policy.
        self._wanted: list[Path] = []
        # Reloads applied and refused since the start (readiness reports them: whoever wrote a
        # change learns whether it is in force; why not is in the log, not on a port others
        # may reach).
        self.reloads = self.rejections = 0

    def _load(self) -> tuple[RegorusEngine | None, tuple[str, ...], tuple[AwsKeys, ...]]:
        """The engine, each credential's secret and each AWS signing's keys (a policy whose
        secrets cannot be read is as invalid as one that does not parse)."""
        if self._optional:
            try:
                if not self.path.read_text().strip():
                    return None, (), ()
            except FileNotFoundError:
                return None, (), ()
        policy = granting(load_policy(self.path, modules=not self._optional), self.grants)
        secrets = credentials.resolve(policy.credentials, str(self.path))
        keys = credentials.resolve_aws(policy.aws_signing, str(self.path))
        return RegorusEngine(policy), secrets, keys

    @property
    def required(self) -> RegorusEngine:
        """The engine of a store that is not optional: loaded at the start, only ever replaced."""
        if self.engine is None:
            raise RuntimeError(f"{self.path}: an optional policy store used as a required one")
        return self.engine

    @property
    def revision(self) -> str:
        return self.engine.revision if self.engine is not None else "none"

    def files(self) -> list[Path]:
        """What to watch: the policy, its modules, its credentials' files (a rotated secret is
        sent at once)."""
        policy = self.engine.policy if self.engine is not None else None
        in_force = [Path(m.path) for m in policy.rego_modules] if policy else []
        in_force += [Path(c.file) for c in policy.credentials if c.file] if policy else []
        return list(dict.fromkeys([self.path, *in_force, *self._wanted]))

    def grant(self, key: str, entry: str) -> None:
        """Add a domain entry under `key` to this and every later version of the policy, until
        the agent stops; ValueError if it is no entry, or the policy's files cannot be read now
        (then nothing changes)."""
        granting(self.required.policy, ((key, entry),))  # refused here, before it is kept
        self.grants = (*self.grants, (key, entry))
        if not self.reload():
            self.grants = self.grants[:-1]
            raise ValueError("the policy's files are invalid now (see the agent's log)")

    def reload(self) -> bool:
        """Apply the files' current content; keep the last good policy if it is invalid."""
        try:
            engine, secrets, keys = self._load()
        except Exception as e:  # whatever fails, the last good policy stays in force
            detail = str(e) if isinstance(e, PolicyError) else f"{type(e).__name__}: {e}"
            log.error(
                "policy change rejected, revision %s stays in force: %s", self.revision, detail
            )
            self.rejections += 1
            self._wanted = module_paths(self.path)
            self._on_reload(False)
            return False
        self._wanted = []
        revision = engine.revision if engine is not None else "none"
        if revision != self.revision:
            log.info("policy %s: revision %s applied (was %s)", self.path, revision, self.revision)
        self.engine, self.secrets, self.aws_keys = engine, secrets, keys
        self.reloads += 1
        self._on_reload(True)
        return True
