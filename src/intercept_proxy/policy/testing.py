"""A Rego unit-test runner: every rule named `test_*` must evaluate to true.

It runs the built-in tests of intercept.rego and policy authors' own test modules, against the
built-in policy plus the custom modules (and data) of a policy file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from intercept_proxy.policy.engine import BUILTIN_MODULE, builtin_rego, new_engine
from intercept_proxy.policy.model import Policy, RegoModule

BUILTIN_TESTS = "intercept_test.rego"
_TEST_RULE = re.compile(r"^(test_\w+)\b", re.MULTILINE)


@dataclass(frozen=True)
class TestResult:
    module: str
    name: str
    passed: bool
    error: str | None = None


def builtin_tests() -> RegoModule:
    text = resources.files(__package__).joinpath(BUILTIN_TESTS).read_text()
    return RegoModule(BUILTIN_TESTS, text)


def run_tests(test_modules: Iterable[RegoModule], policy: Policy | None = None) -> list[TestResult]:
    engine = new_engine()
    engine.add_policy(BUILTIN_MODULE, builtin_rego())
    if policy is not None:
        for module in policy.rego_modules:
            engine.add_policy(module.path, module.text)
        engine.add_data(policy.to_data())
    modules = list(test_modules)
    for module in modules:
        engine.add_policy(module.path, module.text)
    results = []
    for module in modules:
        package = module.package
        if package is None:
            results.append(TestResult(module.path, "<package>", False, "no package declaration"))
            continue
        for name in dict.fromkeys(_TEST_RULE.findall(module.text)):
            try:
                value = engine.eval_rule(f"data.{package}.{name}")
            except RuntimeError as e:
                results.append(TestResult(module.path, name, False, str(e).split("Stack")[0]))
                continue
            error = None if value is True else f"evaluated to {value!r}, expected true"
            results.append(TestResult(module.path, name, value is True, error))
    return results
