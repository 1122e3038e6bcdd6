"""A JMESPath subset as Kyverno evaluates it, for the chart's policies (see kyverno.py).

Supported: identifiers (bare and quoted), sub-expressions, `[n]` indices, `[]` flatten and
`[?cond]` filter projections, JSON literals (backticks) and raw strings, `@`, multi-select
lists, `|`, `||`, `&&`, `!`, `==` / `!=`, parentheses, and the functions `length`,
`contains`, `keys`, `starts_with` and `to_upper` (Kyverno's). Anything else is a ParseError: the
chart must not depend on what is not simulated.

Missing keys: Kyverno's JMESPath fails on a key absent from an object (NotFoundError, "Unknown key")
rather than returning null, and its Query() then retries a query holding `||` operand by
operand, a missing operand counting as null (pkg/engine/context). Both are reproduced, so an
expression only resolves here if it resolves in Kyverno whatever its version's handling.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


class ParseError(ValueError):
    pass


class NotFoundError(LookupError):
    """A key absent from an object (Kyverno's NotFoundError)."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<quoted>"(?:\\.|[^"\\])*")
    | (?P<number>-?\d+)
    | (?P<literal>`(?:\\.|[^`\\])*`)
    | (?P<raw>'(?:\\.|[^'\\])*')
    | (?P<op>\[\?|\[\]|\|\||&&|==|!=|[.\[\](),@|!])
    )""",
    re.VERBOSE,
)

# Binding powers, as in the JMESPath reference implementation.
_BP = {
    "eof": 0, "]": 0, ")": 0, ",": 0,
    "|": 1, "||": 2, "&&": 3, "==": 5, "!=": 5,
    "[]": 9, "[?": 21, ".": 40, "!": 45, "[": 55, "(": 60,
}  # fmt: skip


@dataclass(frozen=True)
class Tok:
    kind: str  # ident, quoted, number, literal, raw, eof, or the operator itself
    value: Any = None


def _tokens(text: str) -> list[Tok]:
    out, pos = [], 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise ParseError(f"unsupported JMESPath at {text[pos:]!r} in {text!r}")
        pos = m.end()
        kind = m.lastgroup
        raw = m.group(kind)
        if kind == "ident":
            out.append(Tok("ident", raw))
        elif kind == "quoted":
            out.append(Tok("ident", json.loads(raw)))
        elif kind == "number":
            out.append(Tok("number", int(raw)))
        elif kind == "literal":
            out.append(Tok("literal", json.loads(raw[1:-1].replace("\\`", "`"))))
        elif kind == "raw":
            out.append(Tok("literal", raw[1:-1].replace("\\'", "'")))
        else:
            out.append(Tok(raw))
    out.append(Tok("eof"))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> Tok:
        return self.toks[self.i]

    def take(self, kind: str | None = None) -> Tok:
        tok = self.toks[self.i]
        if kind is not None and tok.kind != kind:
            raise ParseError(f"expected {kind!r}, got {tok.kind!r} in {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> tuple:
        node = self.expression(0)
        self.take("eof")
        return node

    def expression(self, bp: int) -> tuple:
        left = self.nud(self.take())
        while bp < _BP.get(self.peek().kind, 0):
            left = self.led(self.take(), left)
        return left

    def nud(self, tok: Tok) -> tuple:
        if tok.kind == "ident":
            if self.peek().kind == "(":
                self.take()
                args = []
                while self.peek().kind != ")":
                    args.append(self.expression(0))
                    if self.peek().kind == ",":
                        self.take()
                self.take(")")
                return ("function", tok.value, args)
            return ("field", tok.value)
        if tok.kind == "literal":
            return ("literal", tok.value)
        if tok.kind == "@":
            return ("current",)
        if tok.kind == "!":
            return ("not", self.expression(_BP["!"]))
        if tok.kind == "(":
            node = self.expression(0)
            self.take(")")
            return node
        if tok.kind == "[":
            items = [self.expression(0)]
            while self.peek().kind == ",":
                self.take()
                items.append(self.expression(0))
            self.take("]")
            return ("multi_list", items)
        if tok.kind in ("[]", "[?"):
            return self.led(tok, ("current",))
        raise ParseError(f"unsupported token {tok.kind!r} in {self.text!r}")

    def led(self, tok: Tok, left: tuple) -> tuple:
        if tok.kind == ".":
            nxt = self.take()
            if nxt.kind == "ident" and self.peek().kind == "(":
                return ("sub", left, self.nud(nxt))
            if nxt.kind == "ident":
                return ("sub", left, ("field", nxt.value))
            raise ParseError(f"unsupported after '.': {nxt.kind!r} in {self.text!r}")
        if tok.kind == "[":
            index = self.take("number").value
            self.take("]")
            return ("index", left, index)
        if tok.kind == "[]":
            return ("project", ("flatten", left), self.projection_rhs(_BP["[]"]))
        if tok.kind == "[?":
            cond = self.expression(0)
            self.take("]")
            return ("filter", left, cond, self.projection_rhs(_BP["[?"]))
        if tok.kind in ("|", "||", "&&"):
            name = {"|": "pipe", "||": "or", "&&": "and"}[tok.kind]
            return (name, left, self.expression(_BP[tok.kind]))
        if tok.kind in ("==", "!="):
            return ("compare", tok.kind, left, self.expression(_BP[tok.kind]))
        raise ParseError(f"unsupported operator {tok.kind!r} in {self.text!r}")

    def projection_rhs(self, bp: int) -> tuple:
        kind = self.peek().kind
        if _BP.get(kind, 0) < 10:
            return ("current",)
        if kind == ".":
            return self.led(self.take(), ("current",))
        if kind in ("[", "[]", "[?"):
            return self.expression(bp)
        raise ParseError(f"unsupported projection in {self.text!r}")


def _truthy(v: Any) -> bool:
    return not (v is None or v is False or v in ("", [], {}))


def equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return (type(a) is type(b) or {type(a), type(b)} <= {int, float}) and a == b


def _function(name: str, args: list[Any]) -> Any:
    if name == "length" and len(args) == 1 and isinstance(args[0], str | list | dict):
        return len(args[0])
    if name == "contains" and len(args) == 2 and isinstance(args[0], list):
        return any(equal(args[1], x) for x in args[0])
    if name == "starts_with" and len(args) == 2 and all(isinstance(a, str) for a in args):
        return args[0].startswith(args[1])
    if name == "to_upper" and len(args) == 1 and isinstance(args[0], str):
        return args[0].upper()
    if name == "keys" and len(args) == 1 and isinstance(args[0], dict):
        return list(args[0])
    raise ParseError(f"unsupported call {name}({args!r})")


def _eval(node: tuple, value: Any) -> Any:
    kind = node[0]
    if kind == "field":
        if isinstance(value, dict):
            if node[1] not in value:
                raise NotFoundError(node[1])
            return value[node[1]]
        return None
    if kind == "current":
        return value
    if kind == "literal":
        return node[1]
    if kind == "sub":
        left = _eval(node[1], value)
        return None if left is None else _eval(node[2], left)
    if kind == "index":
        left = _eval(node[1], value)
        if isinstance(left, list) and -len(left) <= node[2] < len(left):
            return left[node[2]]
        return None
    if kind == "flatten":
        left = _eval(node[1], value)
        if not isinstance(left, list):
            return None
        return [x for item in left for x in (item if isinstance(item, list) else [item])]
    if kind == "project":
        left = _eval(node[1], value)
        if not isinstance(left, list):
            return None
        return [r for item in left if (r := _eval(node[2], item)) is not None]
    if kind == "filter":
        left = _eval(node[1], value)
        if not isinstance(left, list):
            return None
        kept = [item for item in left if _truthy(_eval(node[2], item))]
        return [r for item in kept if (r := _eval(node[3], item)) is not None]
    if kind == "multi_list":
        return None if value is None else [_eval(n, value) for n in node[1]]
    if kind == "pipe":
        return _eval(node[2], _eval(node[1], value))
    if kind == "or":
        left = _eval(node[1], value)
        return left if _truthy(left) else _eval(node[2], value)
    if kind == "and":
        left = _eval(node[1], value)
        return _eval(node[2], value) if _truthy(left) else left
    if kind == "not":
        return not _truthy(_eval(node[1], value))
    if kind == "compare":
        same = equal(_eval(node[2], value), _eval(node[3], value))
        return same if node[1] == "==" else not same
    if kind == "function":
        return _function(node[1], [_eval(a, value) for a in node[2]])
    raise ParseError(f"unknown node {kind}")


def search(expression: str, data: Any) -> Any:
    """Evaluate strictly: a missing key raises NotFoundError."""
    return _eval(_Parser(expression).parse(), data)


def _split_or(query: str) -> list[str]:
    """Kyverno's safeSplitLogicalOr: split on `||` outside quotes, literals and brackets."""
    parts, current, depth, quote, i = [], "", 0, "", 0
    while i < len(query):
        c = query[i]
        if quote and c == "\\" and i + 1 < len(query):
            current += query[i : i + 2]
            i += 2
            continue
        if c in "'\"`" and (not quote or quote == c):
            quote = "" if quote else c
        elif not quote and c in "([{":
            depth += 1
        elif not quote and c in ")]}":
            depth -= 1
        if not quote and depth == 0 and query.startswith("||", i):
            parts.append(current.strip())
            current, i = "", i + 2
            continue
        current += c
        i += 1
    if current:
        parts.append(current.strip())
    return parts


def query(expression: str, data: Any) -> Any:
    """Kyverno's Query(): on NotFound, a top-level `||` chain is evaluated operand by operand,
    a missing operand counting as null; the first truthy operand wins, else the last."""
    try:
        return search(expression, data)
    except NotFoundError:
        parts = _split_or(expression.strip())
        trimmed = expression.strip()
        while len(parts) == 1 and trimmed.startswith("(") and trimmed.endswith(")"):
            trimmed = trimmed[1:-1].strip()
            parts = _split_or(trimmed)
        if len(parts) < 2:
            raise
    last = None
    for part in parts:
        try:
            last = query(part, data)
        except NotFoundError:
            last = None
            continue
        if _truthy(last):
            return last
    return last
