"""The policy engine interface and its in-process implementation on regorus.

Evaluation never raises: any failure (a custom module's runtime error, a malformed result) is a
denial with rule `evaluation_error`, so a broken policy fails closed.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from intercept_proxy.decision import ErrorCode
from intercept_proxy.policy.approvals import Grant
from intercept_proxy.policy.model import (
    CUSTOM_PACKAGE,
    GRANT_KEYS,
    Policy,
    PolicyError,
    RegoModule,
)

# regorus allocates with mimalloc, which commits its first arena whole where the kernel
# overcommits: the agent is about 10 MB more resident than when it commits on use (measured
# with and without). mimalloc reads the option as regorus loads; the environment is then put
# back, so that nothing this process starts inherits it. An operator's own setting stands.
_EAGER_COMMIT = "MIMALLOC_ARENA_EAGER_COMMIT"
_operators = os.environ.get(_EAGER_COMMIT)
os.environ[_EAGER_COMMIT] = "0" if _operators is None else _operators
import regorus  # noqa: E402

if _operators is None:
    del os.environ[_EAGER_COMMIT]


def new_engine() -> regorus.Engine:
    """A regorus engine: every one comes from here, so regorus loads with the setting above."""
    return regorus.Engine()


DECISION_RULE = "data.intercept.decision"
BUILTIN_MODULE = "intercept.rego"


@dataclass(frozen=True)
class Decision:
    allow: bool
    rule: str
    reason: str
    code: ErrorCode = ErrorCode.POLICY_BLOCKED  # a denial's
    # A denial a person may lift (approval_required): what allowing it for the run adds.
    grant: Grant | None = None


class PolicyEngine(Protocol):
    @property
    def revision(self) -> str: ...

    def evaluate(self, input_doc: dict[str, Any]) -> Decision: ...


def builtin_rego() -> str:
    return resources.files(__package__).joinpath(BUILTIN_MODULE).read_text()


# A request every policy must be able to judge: loading evaluates it once, so errors that only
# show at evaluation time reject the policy instead of denying every request later.
_PROBE_INPUT = {
    "attributes": {
        "request": {
            "http": {"method": "GET", "host": "probe.invalid", "path": "/", "scheme": "https"}
        },
        "tlsSession": {"sni": "probe.invalid"},
    }
}


def rego_values(*rules: str) -> dict[str, Any]:
    """The values of rules of the built-in policy that depend on neither input nor data (the
    facts other code must share with it rather than copy)."""
    engine = new_engine()
    engine.add_policy(BUILTIN_MODULE, builtin_rego())
    return {rule: engine.eval_rule(f"data.intercept.{rule}") for rule in rules}


def _grant(value: Any) -> Grant | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or value.get("key") not in GRANT_KEYS
        or not isinstance(value.get("entry"), str)
    ):
        raise ValueError(f"malformed grant {value!r}")
    return Grant(value["key"], value["entry"])


class RegorusEngine:
    """Not thread-safe: the agent evaluates from its single event-loop thread; the lock only
    protects callers that share an engine across threads."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._lock = threading.Lock()
        self._engine = new_engine()
        self._engine.add_policy(BUILTIN_MODULE, builtin_rego())
        for i, module in enumerate(policy.rego_modules):
            self._add_custom_module(i, module)
        self._engine.add_data(policy.to_data())
        try:
            self._decide(_PROBE_INPUT)
        except (RuntimeError, ValueError) as e:
            raise PolicyError(
                policy.source, "rego_modules", f"evaluation fails: {_first_lines(e)}"
            ) from None

    def _add_custom_module(self, index: int, module: RegoModule) -> None:
        where = f"rego_modules[{index}]"
        package = module.package
        if package != CUSTOM_PACKAGE and not (package or "").startswith(CUSTOM_PACKAGE + "."):
            raise PolicyError(
                self._policy.source,
                where,
                f"{module.path}: package {package} is not allowed; custom modules use package "
                f"{CUSTOM_PACKAGE} (or below it)",
            )
        try:
            self._engine.add_policy(module.path, module.text)
        except RuntimeError as e:
            raise PolicyError(
                self._policy.source, where, f"{module.path}: {_first_lines(e)}"
            ) from None
        functions, calls = _functions_and_calls(module)
        if package == CUSTOM_PACKAGE:
            for name in sorted(functions & {"allow", "deny"}):
                # regorus reads a function as undefined (a deny that denies nothing), OPA
                # refuses to compile the policy: refuse it here too, and say why.
                raise PolicyError(
                    self._policy.source,
                    where,
                    f"{module.path}: `{name}` is a function; define it as a rule: "
                    f'`{name} contains {{"rule": ..., "reason": ...}} if {{...}}`',
                )
        for name in sorted(calls & _UNAVAILABLE.keys()):
            raise PolicyError(self._policy.source, where, f"{module.path}: {_UNAVAILABLE[name]}")

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def revision(self) -> str:
        return self._policy.revision

    def _decide(self, input_doc: dict[str, Any]) -> Decision:
        with self._lock:
            self._engine.set_input(input_doc)
            result = self._engine.eval_rule(DECISION_RULE)
        if (
            not isinstance(result, dict)
            or not isinstance(result.get("allow"), bool)
            or not isinstance(result.get("rule"), str)
            or not isinstance(result.get("reason"), str)
        ):
            raise ValueError(f"malformed decision {result!r}")
        grant = _grant(result.get("grant"))
        code = ErrorCode.HITL_REQUIRED if grant is not None else ErrorCode.POLICY_BLOCKED
        return Decision(result["allow"], result["rule"], result["reason"], code, grant)

    def evaluate(self, input_doc: dict[str, Any]) -> Decision:
        try:
            return self._decide(input_doc)
        except (RuntimeError, ValueError, TypeError) as e:
            return Decision(
                False, "evaluation_error", f"policy evaluation failed: {_first_lines(e)}"
            )


# Built-ins regorus knows but does not run: it reads a call as undefined, where OPA runs it.
_UNAVAILABLE = {
    "http.send": "http.send is not available: the agent makes no network request to decide, "
    "and its engine (regorus) reads the call as undefined, so a rule using it would never hold",
}


def _functions_and_calls(module: RegoModule) -> tuple[set[str], set[str]]:
    """The names of the functions a module defines at its top level (`deny(x) := ...`), and the
    dotted names it calls (`http.send`), from regorus's AST."""
    parser = new_engine()
    parser.add_policy(module.path, module.text)
    functions: set[str] = set()
    calls: set[str] = set()
    for parsed in json.loads(parser.get_ast_as_json()):
        for rule in parsed["ast"]["rules"]:
            # {"Spec": {"head": {"Func": {"refr": ..., "args": [...]}}}} or
            # {"Default": {"refr": ..., "args": [...]}}: a function has arguments.
            head = rule.get("Default") or rule.get("Spec", {}).get("head", {}).get("Func") or {}
            name = _dotted(head.get("refr"))
            if head.get("args") and name:
                functions.add(name)
        _collect_calls(parsed["ast"]["rules"], calls)
    return functions, calls


def _collect_calls(node: Any, calls: set[str]) -> None:
    if isinstance(node, dict):
        call = node.get("Call")
        if isinstance(call, dict) and (name := _dotted(call.get("fcn"))):
            calls.add(name)
        for value in node.values():
            _collect_calls(value, calls)
    elif isinstance(node, list):
        for value in node:
            _collect_calls(value, calls)


def _dotted(ref: Any) -> str | None:
    """`a.b.c` for regorus's {"RefDot": {"refr": ..., "field": [span, "c"]}} chains over a Var."""
    if not isinstance(ref, dict):
        return None
    if "Var" in ref:
        value = ref["Var"].get("value")
        return value if isinstance(value, str) else None
    dot = ref.get("RefDot")
    if isinstance(dot, dict):
        base, field = _dotted(dot.get("refr")), dot.get("field")
        if base and isinstance(field, list) and field and isinstance(field[-1], str):
            return f"{base}.{field[-1]}"
    return None


def _first_lines(error: Exception, limit: int = 6) -> str:
    """regorus appends a native stack trace to its messages; keep the part a person reads."""
    text = str(error).split("Stack backtrace:")[0].strip()
    return "\n".join(text.splitlines()[:limit])
