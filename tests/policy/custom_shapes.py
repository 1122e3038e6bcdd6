"""Custom modules in every shape the docs allow or a user may write, with what each must do.

Each shape is a set of modules (package intercept.custom, or below it) over BASE_POLICY, and its
expected decisions for three probes: a request the module is about that the base policy allows
(`hit_allowed`), one it is about that the base policy denies (`hit_denied`), and one it is not
about (`miss`). None for a shape both engines must refuse to load. The same shapes go through
regorus and OPA (tests/policy/test_opa.py, and the corpus in tests/integration/test_opa.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from intercept_proxy.policy.input import url_input

BASE_POLICY = """\
allowed_domains: [pypi.org, "*.pythonhosted.org"]
unrestricted_domains: [api.anthropic.com]
github_read_access_enabled: true
github_allowed_repos: [octo/hello]
"""

HIT = 'data.intercept.request.host in {"pypi.org", "unknown.example"}'

PROBES = {
    "hit_allowed": url_input("GET", "https://pypi.org/simple/"),
    "hit_denied": url_input("GET", "https://unknown.example/"),
    "miss": url_input("GET", "https://files.pythonhosted.org/x.whl"),
}
# What BASE_POLICY alone decides for each probe.
BASE = {
    "hit_allowed": (True, "allowed_domains"),
    "hit_denied": (False, "default_deny"),
    "miss": (True, "allowed_domains"),
}

Expected = tuple[bool, str]

NOT_CALLED = "used as reference, not called"


@dataclass(frozen=True)
class Shape:
    modules: dict[str, str]  # file name: text
    hit_allowed: Expected | None = None
    hit_denied: Expected | None = None
    miss: Expected | None = None
    # A shape both engines refuse: what the agent's error says, and OPA's.
    refused: str | None = None
    opa_refused: str | None = None

    def expected(self) -> dict[str, Expected]:
        return {
            name: BASE[name] if value is None else value
            for name, value in (
                ("hit_allowed", self.hit_allowed),
                ("hit_denied", self.hit_denied),
                ("miss", self.miss),
            )
        }


def custom(body: str) -> dict[str, str]:
    return {"custom.rego": f"package intercept.custom\n\n{body}\n"}


def _deny(rule: str) -> dict[str, Expected]:
    return {"hit_allowed": (False, rule), "hit_denied": (False, rule)}


def _grant(rule: str) -> dict[str, Expected]:
    return {"hit_denied": (True, rule)}


def _all_denied(rule: str) -> dict[str, Expected]:
    return {"hit_allowed": (False, rule), "hit_denied": (False, rule), "miss": (False, rule)}


SHAPES: dict[str, Shape] = {
    # --- deny -----------------------------------------------------------------------------
    "deny_set_of_objects": Shape(
        custom(f'deny contains {{"rule": "no_hit", "reason": "blocked"}} if {HIT}'),
        **_deny("no_hit"),
    ),
    "deny_set_of_strings": Shape(
        custom(f'deny contains "blocked by a test" if {HIT}'), **_deny("custom_deny")
    ),
    "deny_entry_without_reason": Shape(
        custom(f'deny contains {{"rule": "no_hit"}} if {HIT}'), **_deny("no_hit")
    ),
    "deny_entry_with_wrong_types": Shape(
        custom(f'deny contains {{"rule": 1, "reason": ["x"]}} if {HIT}'), **_deny("custom_deny")
    ),
    "deny_entries_mixed": Shape(
        custom(
            f'deny contains {{"rule": "no_hit", "reason": "blocked"}} if {HIT}\n'
            f'deny contains "a string too" if {HIT}\n'
            f"deny contains 42 if {HIT}"
        ),
        **_deny("custom_deny"),
    ),
    "deny_entry_with_an_empty_set": Shape(
        custom(f'deny contains {{"rule": "no_hit", "reason": "r", "extra": set()}} if {HIT}'),
        **_deny("no_hit"),
    ),
    "deny_boolean": Shape(custom(f"deny if {HIT}"), **_deny("custom_deny")),
    "deny_boolean_with_default": Shape(
        custom(f"default deny := false\n\ndeny if {HIT}"), **_deny("custom_deny")
    ),
    "deny_true": Shape(custom("deny := true"), **_all_denied("custom_deny")),
    "deny_false": Shape(custom("deny := false")),
    "deny_array": Shape(
        custom(f'deny := [{{"rule": "no_hit", "reason": "blocked"}}] if {HIT}'),
        **_deny("no_hit"),
    ),
    "deny_empty_array": Shape(custom("deny := []")),
    "deny_empty_set": Shape(custom("deny := set()")),
    "deny_single_object": Shape(
        custom(f'deny := {{"rule": "no_hit", "reason": "blocked"}} if {HIT}'), **_deny("no_hit")
    ),
    "deny_partial_object": Shape(
        custom(f'deny[h] := "blocked" if {{\n\th := data.intercept.request.host\n\t{HIT}\n}}'),
        **_deny("custom_deny"),
    ),
    "deny_string": Shape(custom(f'deny := "blocked" if {HIT}'), **_deny("custom_deny")),
    "deny_number": Shape(custom(f"deny := 1e6 if {HIT}"), **_deny("custom_deny")),
    "deny_null": Shape(custom(f"deny := null if {HIT}"), **_deny("custom_deny")),
    "deny_complete_rules": Shape(
        custom(f"deny := true if {HIT}\n\ndeny := false if not {HIT}"), **_deny("custom_deny")
    ),
    "deny_in_two_modules": Shape(
        {
            "a.rego": 'package intercept.custom\n\ndeny contains {"rule": "no_pypi", '
            '"reason": "r"} if data.intercept.request.host == "pypi.org"\n',
            "b.rego": 'package intercept.custom\n\ndeny contains {"rule": "no_unknown", '
            '"reason": "r"} if data.intercept.request.host == "unknown.example"\n',
        },
        hit_allowed=(False, "no_pypi"),
        hit_denied=(False, "no_unknown"),
    ),
    "deny_from_the_raw_input": Shape(
        custom(
            "import input.attributes.request.http\n\n"
            'deny contains {"rule": "no_pypi", "reason": "r"} if http.host == "pypi.org"'
        ),
        hit_allowed=(False, "no_pypi"),
    ),
    "deny_function": Shape(
        custom("deny(x) := x == 1"), refused="`deny` is a function", opa_refused=NOT_CALLED
    ),
    "deny_default_function": Shape(
        custom("default deny(_) := false"), refused="`deny` is a function", opa_refused=NOT_CALLED
    ),
    # Both engines find the cycle: decision -> custom deny -> decision.
    "deny_recursive": Shape(
        custom("deny if data.intercept.allow"),
        refused="recursion detected",
        opa_refused="rego_recursion_error",
    ),
    "deny_rego_v0": Shape(
        custom('deny[msg] { msg := "x" }'), refused="`if` keyword", opa_refused="rego_parse_error"
    ),
    # --- allow ----------------------------------------------------------------------------
    "allow_set_of_objects": Shape(
        custom(f'allow contains {{"rule": "hit_mirror", "reason": "the mirror"}} if {HIT}'),
        **_grant("hit_mirror"),
    ),
    "allow_array": Shape(
        custom(f'allow := [{{"rule": "hit_mirror", "reason": "the mirror"}}] if {HIT}'),
        **_grant("hit_mirror"),
    ),
    "allow_set_of_strings": Shape(custom(f'allow contains "hit_mirror" if {HIT}')),
    "allow_entry_without_reason": Shape(custom(f'allow contains {{"rule": "r"}} if {HIT}')),
    "allow_entry_with_wrong_types": Shape(
        custom(f'allow contains {{"rule": "r", "reason": 1}} if {HIT}')
    ),
    "allow_boolean": Shape(custom(f"allow if {HIT}")),
    "allow_true": Shape(custom("allow := true")),
    "allow_single_object": Shape(
        custom(f'allow := {{"rule": "hit_mirror", "reason": "the mirror"}} if {HIT}')
    ),
    "allow_partial_object": Shape(custom(f'allow["hit_mirror"] := "the mirror" if {HIT}')),
    "allow_function": Shape(
        custom("allow(x) := true"), refused="`allow` is a function", opa_refused=NOT_CALLED
    ),
    "allow_that_reads_the_decision": Shape(
        custom('allow contains {"rule": "r", "reason": "r"} if data.intercept.allow'),
        refused="recursion detected",
        opa_refused="rego_recursion_error",
    ),
    # --- both, neither ----------------------------------------------------------------------
    "deny_wins_over_allow": Shape(
        custom(
            f'allow contains {{"rule": "hit_mirror", "reason": "m"}} if {HIT}\n'
            f'deny contains {{"rule": "no_hit", "reason": "d"}} if {HIT}'
        ),
        **_deny("no_hit"),
    ),
    "documented_example": Shape(
        custom(
            'allow contains {"rule": "internal_mirror", "reason": "the company mirror"} if {\n'
            '\tdata.intercept.request.host == "unknown.example"\n'
            '\tdata.intercept.request.method in {"GET", "HEAD"}\n'
            "}\n\n"
            'deny contains {"rule": "no_uploads", "reason": "uploads are forbidden"} if {\n'
            '\tdata.intercept.request.segments[0] == "upload"\n'
            "}"
        ),
        hit_denied=(True, "internal_mirror"),
    ),
    "helpers_only": Shape(
        custom('hit_hosts := {"pypi.org"}\n\nis_hit(h) if h in hit_hosts\n\nallowed_count := 0')
    ),
    "empty_module": Shape(custom("")),
    "helpers_in_a_subpackage": Shape(
        {
            "lib.rego": f"package intercept.custom.lib\n\nhit if {HIT}\n",
            "custom.rego": "package intercept.custom\n\nimport data.intercept.custom.lib\n\n"
            'deny contains {"rule": "no_hit", "reason": "r"} if lib.hit\n',
        },
        **_deny("no_hit"),
    ),
    "deny_in_a_subpackage_is_not_read": Shape(
        {"sub.rego": "package intercept.custom.sub\n\ndeny := true\n"}
    ),
    "import_rego_v1": Shape(
        {
            "custom.rego": "package intercept.custom\n\nimport rego.v1\n"
            "import data.intercept.request\n\n"
            'deny contains {"rule": "no_hit", "reason": "r"} if '
            'request.host in {"pypi.org", "unknown.example"}\n'
        },
        **_deny("no_hit"),
    ),
}


def write_shape(shape: Shape, directory: Path, policy: str = BASE_POLICY) -> Path:
    """The shape's modules and a policy file naming them, in `directory`; the policy's path."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in shape.modules.items():
        (directory / name).write_text(text)
    path = directory / "policy.yaml"
    path.write_text(policy + f"rego_modules: {json.dumps(sorted(shape.modules))}\n")
    return path
