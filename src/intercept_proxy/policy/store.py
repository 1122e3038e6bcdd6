"""The policy in force, replaced atomically when its files change and the new one is valid."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.model import PolicyError, load_policy, module_paths

log = logging.getLogger(__name__)


class PolicyStore:
    def __init__(self, path: Path, on_reload: Callable[[bool], None] = lambda ok: None) -> None:
        """Load the policy at `path`; an invalid policy raises PolicyError (fail closed: an agent
        without a valid policy does not start)."""
        self.path = path
        self._on_reload = on_reload
        self.engine = RegorusEngine(load_policy(path))
        # Modules a rejected version names: watched too, so creating them applies the policy.
        self._wanted: list[Path] = []

    def files(self) -> list[Path]:
        in_force = [Path(m.path) for m in self.engine.policy.rego_modules]
        return list(dict.fromkeys([self.path, *in_force, *self._wanted]))

    def reload(self) -> bool:
        """Apply the files' current content; keep the last good policy if it is invalid."""
        try:
            engine = RegorusEngine(load_policy(self.path))
        except Exception as e:  # whatever fails, the last good policy stays in force
            detail = str(e) if isinstance(e, PolicyError) else f"{type(e).__name__}: {e}"
            log.error(
                "policy change rejected, revision %s stays in force: %s",
                self.engine.revision,
                detail,
            )
            self._wanted = module_paths(self.path)
            self._on_reload(False)
            return False
        self._wanted = []
        if engine.revision != self.engine.revision:
            log.info("policy revision %s applied (was %s)", engine.revision, self.engine.revision)
        self.engine = engine
        self._on_reload(True)
        return True
