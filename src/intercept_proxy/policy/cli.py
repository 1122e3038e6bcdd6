"""`intercept policy`: check, evaluate, compile and test policies (the policy author's tools)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from intercept_proxy.pki.files import SYSTEM_TRUST
from intercept_proxy.policy import cilium
from intercept_proxy.policy.bundle import BundleError, write_bundle
from intercept_proxy.policy.cilium import Target
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.input import InputError, url_input
from intercept_proxy.policy.model import Policy, PolicyError, RegoModule, load_policy
from intercept_proxy.policy.testing import builtin_tests, run_tests

USAGE_ERROR = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("policy", help="check, evaluate, compile and test policies")
    sub = parser.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    check = sub.add_parser("check", help="validate a policy file")
    check.add_argument("policy", type=Path)
    check.set_defaults(func=_check)

    evaluate = sub.add_parser(
        "eval",
        help="judge one request, print the decision as JSON",
        description="Judge one request and print the decision as one JSON object. Exits 0 "
        "whatever the decision, 2 when the policy or the request is invalid.",
    )
    evaluate.add_argument("--policy", type=Path, required=True)
    evaluate.add_argument(
        "--method", required=True, help="HTTP method, case-sensitive as on the wire (GET, not get)"
    )
    evaluate.add_argument("--url", required=True, help="e.g. https://api.github.com/user")
    evaluate.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (repeatable); 'Host: ...' overrides the URL's authority",
    )
    evaluate.add_argument(
        "--sni", help="TLS server name (https only; defaults to the URL's host, '' for none)"
    )
    evaluate.set_defaults(func=_eval)

    compile_ = sub.add_parser(
        "compile",
        help="print the data document the Rego policy reads, or write an OPA bundle",
        description="Print the validated policy as the JSON data document of the Rego policy. "
        "With --bundle, write an OPA bundle instead (.manifest, data, the Rego policy and the "
        "custom modules): a directory that `opa run --server -b DIR` or `opa eval -b DIR` "
        "loads, or, for a name ending in .tar.gz, the same files as the tarball OPA's bundle "
        "service serves. An existing directory must be empty or hold a bundle written by this "
        "command, which is replaced.",
    )
    compile_.add_argument("policy", type=Path)
    compile_.add_argument("--bundle", type=Path, metavar="DIR|FILE.tar.gz")
    compile_.set_defaults(func=_compile)

    test = sub.add_parser(
        "test",
        help="run the Rego unit tests (built-in and your own)",
        description="Run every test_* rule of the built-in tests and of the given modules.",
    )
    test.add_argument("modules", nargs="*", type=Path, help="your Rego test modules")
    test.add_argument("--policy", type=Path, help="add this policy's data and custom modules")
    test.set_defaults(func=_test)

    render = commands.add_parser("render", help="render the policy for another enforcer")
    targets = render.add_subparsers(dest="render_target", metavar="TARGET", required=True)
    defaults = Target()
    to_cilium = targets.add_parser(
        "cilium",
        help="a CiliumNetworkPolicy with L7 HTTP rules and the cert-manager objects it needs",
        description="Print, as YAML documents, the CA ClusterIssuer, a cert-manager Certificate "
        "per TLS destination (Secrets in the secrets namespace), the upstream CA bundle Secret "
        "and the CiliumNetworkPolicy that terminates TLS and judges requests. Cilium enforces "
        "a subset of the policy (docs/kubernetes.md#cilium); keys it cannot enforce are refused.",
    )
    to_cilium.add_argument("--policy", type=Path, required=True)
    to_cilium.add_argument("--name", default=defaults.name, help="the policy's name and prefix")
    to_cilium.add_argument("--namespace", default=defaults.namespace, help="the workloads'")
    to_cilium.add_argument(
        "--selector",
        action="append",
        metavar="KEY=VALUE",
        help="a label the workloads carry (repeatable; default: "
        + ", ".join(f"{k}={v}" for k, v in defaults.selector)
        + ")",
    )
    to_cilium.add_argument("--secrets-namespace", default=defaults.secrets_namespace)
    to_cilium.add_argument("--issuer", default=defaults.issuer, help="the CA ClusterIssuer")
    to_cilium.add_argument(
        "--upstream-ca",
        type=Path,
        default=SYSTEM_TRUST,
        help="the CA bundle upstreams are checked against (default: the system's)",
    )
    to_cilium.set_defaults(func=_render_cilium)


def _fail(message: str) -> int:
    print(f"intercept policy: {message}", file=sys.stderr)
    return USAGE_ERROR


def _load(path: Path) -> tuple[Policy, RegorusEngine]:
    policy = load_policy(path)
    return policy, RegorusEngine(policy)


def _check(args: argparse.Namespace) -> int:
    try:
        policy, _ = _load(args.policy)
    except PolicyError as e:
        return _fail(str(e))
    print(
        f"{args.policy}: valid (revision {policy.revision}): "
        f"{len(policy.allowed_domains)} allowed, {len(policy.unrestricted_domains)} unrestricted "
        f"domains, GitHub reads {'on' if policy.github_read_access_enabled else 'off'}, "
        f"{len(policy.github_allowed_repos)} repositories and "
        f"{len(policy.github_allowed_users)} users writable, "
        f"AWS {'on' if policy.aws_access_enabled else 'off'}, "
        f"{len(policy.rego_modules)} custom modules"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    try:
        policy, engine = _load(args.policy)
        input_doc = url_input(args.method, args.url, args.header, args.sni)
    except (PolicyError, InputError) as e:
        return _fail(str(e))
    decision = engine.evaluate(input_doc)
    out = {
        "allow": decision.allow,
        "rule": decision.rule,
        "reason": decision.reason,
        "policy_revision": policy.revision,
    }
    print(json.dumps(out))
    return 0


def _compile(args: argparse.Namespace) -> int:
    try:
        policy, _ = _load(args.policy)
    except PolicyError as e:
        return _fail(str(e))
    if args.bundle is None:
        sys.stdout.write(json.dumps(policy.to_data(), indent=2, sort_keys=True) + "\n")
        return 0
    try:
        write_bundle(policy, args.bundle)
    except (BundleError, OSError) as e:
        return _fail(f"cannot write the bundle: {e}")
    print(f"bundle written to {args.bundle} (revision {policy.revision})")
    return 0


def _render_cilium(args: argparse.Namespace) -> int:
    selector = []
    for item in args.selector or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return _fail(f"--selector {item!r}: expected KEY=VALUE")
        selector.append((key, value))
    target = Target(
        name=args.name,
        namespace=args.namespace,
        selector=tuple(selector) or Target().selector,
        secrets_namespace=args.secrets_namespace,
        issuer=args.issuer,
    )
    try:
        policy = load_policy(args.policy)
        upstream_ca = args.upstream_ca.read_text()
        objects = cilium.render(policy, target, upstream_ca)
    except PolicyError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"cannot read {e.filename}: {e.strerror}")
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)
    return 0


def _test(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.policy) if args.policy else None
        modules = [builtin_tests()] + [RegoModule(str(p), p.read_text()) for p in args.modules]
    except PolicyError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"cannot read test module: {e}")
    try:
        results = run_tests(modules, policy)
    except RuntimeError as e:
        return _fail(f"a module does not compile: {str(e).split('Stack')[0].strip()}")
    for r in results:
        status = "PASS" if r.passed else "FAIL"
        print(f"{status} {r.module}: {r.name}" + (f"\n     {r.error}" if r.error else ""))
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0
