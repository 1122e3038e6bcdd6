"""`intercept agent`: run the sidecar agent. Its options are AgentSettings' (settings.py).
`intercept approvals`: the requests an agent holds for a person's approval, and the answers."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from pathlib import Path
from typing import Any

from intercept_proxy.agent import control
from intercept_proxy.agent.main import AgentError, run
from intercept_proxy.agent.settings import AgentSettings
from intercept_proxy.authz.approvals import Answer
from intercept_proxy.options import add_arguments, from_arguments
from intercept_proxy.pki import PkiError
from intercept_proxy.policy import edit
from intercept_proxy.policy.model import PolicyError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("agent", help="the sidecar agent (xDS, certificates, ext_authz)")
    sub = parser.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)
    run_ = sub.add_parser(
        "run",
        help="serve xDS, on-demand certificates and ext_authz to one Envoy",
        description="Serve Envoy's configuration (ADS), its certificates (on-demand SDS) and "
        "its authorization checks (ext_authz). Refuses to start without a valid policy and CA.",
    )
    add_arguments(run_, AgentSettings)
    run_.set_defaults(func=_run)
    approvals = commands.add_parser(
        "approvals",
        help="list and answer the requests an agent holds for a person's approval",
        description="The requests the policy's approvals hold, and their answers. Talks to the "
        "agent's control socket: in a pod, run it in the agent's container (kubectl exec -c "
        "intercept-agent); on this machine it finds the sandboxes of intercept run.",
    )
    approvals.add_argument(
        "--socket", type=Path, help="the agent's control socket (default: found, see above)"
    )
    actions = approvals.add_subparsers(dest="approvals_command", metavar="COMMAND", required=True)
    actions.add_parser("list", help="the pending questions").set_defaults(func=_list)
    allow = actions.add_parser("allow", help="allow the requests waiting for a question")
    allow.add_argument("id")
    allow.add_argument(
        "--for",
        dest="scope",
        choices=[Answer.ONCE.value, Answer.RUN.value, Answer.ALWAYS.value],
        default=Answer.ONCE.value,
        help="once: the requests waiting for this question; run: until the sandbox stops; "
        "always: for this run, and written into --policy FILE once you accept its diff "
        "(default: once)",
    )
    allow.add_argument("--policy", type=Path, help="with --for always: the policy file to edit")
    allow.set_defaults(func=_allow)
    deny = actions.add_parser("deny", help="refuse them, and the same grant until it stops")
    deny.add_argument("id")
    deny.set_defaults(func=_deny)


def _run(args: argparse.Namespace) -> int:
    try:
        run(from_arguments(AgentSettings, args))
    except (PolicyError, PkiError, AgentError) as e:
        print(f"intercept agent: {e}", file=sys.stderr)
        return 2
    return 0


def _sockets(args: argparse.Namespace) -> list[Path]:
    if args.socket is not None:
        return [args.socket]
    if Path(control.CONTROL_SOCKET).exists():  # in the agent's container
        return [Path(control.CONTROL_SOCKET)]
    from intercept_proxy.runtime.pod import control_sockets

    return control_sockets()


def _each(args: argparse.Namespace, message: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    sockets = _sockets(args)
    if not sockets:
        raise control.ControlError("no agent found: give --socket")
    return [(path, control.request(path, message)) for path in sockets]


def _list(args: argparse.Namespace) -> int:
    try:
        replies = _each(args, {"op": "list"})
    except control.ControlError as e:
        print(f"intercept approvals: {e}", file=sys.stderr)
        return 1
    questions = [q for _, reply in replies for q in reply["questions"]]
    for q in questions:
        grant = q["grant"]
        print(
            f"{q['id']}  {q['request']}  (allowing it adds {grant['key']}: [{grant['entry']}]; "
            f"{q['waiting']} waiting, {q['expires_in_s']} s left)"
        )
    if not questions:
        print("no request waits for approval")
    return 0


def holder(sockets: list[Path], question: str) -> tuple[Path, dict[str, Any]]:
    """The agent whose pending questions hold `question`, and the question."""
    for path in sockets:
        with contextlib.suppress(control.ControlError):  # that agent stopped meanwhile
            for asked in control.request(path, {"op": "list"})["questions"]:
                if asked["id"] == question:
                    return path, dict(asked)
    raise control.ControlError(f"no question {question!r} is pending (answered or expired)")


def answer(path: Path, question: str, given: Answer) -> dict[str, Any]:
    """Answer `question` at the agent of `path`; its description."""
    reply = control.request(path, {"op": "answer", "id": question, "answer": given})
    return dict(reply["question"])


def _confirm(shown_diff: str) -> bool:
    print(shown_diff, end="")
    print("write it, and allow the request? [y/N] ", end="", flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _allow(args: argparse.Namespace) -> int:
    scope = Answer(args.scope)
    try:
        path, question = holder(_sockets(args), args.id)
        if scope is not Answer.ALWAYS:
            answer(path, args.id, scope)
        elif args.policy is None:
            raise control.ControlError("--for always needs --policy FILE (the file to edit)")
        else:
            grant = question["grant"]
            apply = functools.partial(answer, path, args.id, scope)
            if not edit.add_to_file(args.policy, grant["key"], grant["entry"], _confirm, apply):
                print("not allowed: nothing changed")
                return 1
    except (control.ControlError, PolicyError, OSError) as e:
        print(f"intercept approvals: {e}", file=sys.stderr)
        return 1
    print(f"allowed ({scope}): {question['request']}")
    return 0


def _deny(args: argparse.Namespace) -> int:
    try:
        path, question = holder(_sockets(args), args.id)
        answer(path, args.id, Answer.DENY)
    except control.ControlError as e:
        print(f"intercept approvals: {e}", file=sys.stderr)
        return 1
    print(f"denied: {question['request']}")
    return 0
