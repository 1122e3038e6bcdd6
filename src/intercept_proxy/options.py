"""Settings declared once: a frozen dataclass whose fields carry their command-line option.

A component's settings class is the one declaration of each of its options: the name, the type,
the default (the field's), the flag, the help, how the flag's text becomes the value and back.
From it come the component's argparse options (`add_arguments`), the settings a parsed command
line gives (`from_arguments`), and the command lines other components write to start it
(`command_line`: the injector's containers, the tests, the bench). A field whose type is itself
such a dataclass (a `group`) contributes its options as if they were the outer class's.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar

T = TypeVar("T")
OPTION, GROUP = "option", "group"


@dataclass(frozen=True)
class Flag:
    name: str  # "--cert-cache-size"
    help: str
    parse: Callable[[str], Any] = str  # the flag's text → the value
    show: Callable[[Any], str] = str  # the value → the flag's text
    repeatable: bool = False  # a tuple: the flag once per item
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


def option(
    name: str,
    help: str,
    *,
    default: Any = MISSING,
    parse: Callable[[str], Any] = str,
    show: Callable[[Any], str] = str,
    repeatable: bool = False,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field that is also a command-line option (no default: a required one)."""
    flag = Flag(name, help, parse, show, repeatable, metavar, choices)
    return dataclasses.field(default=default, metadata={OPTION: flag})


def group(factory: Callable[[], Any]) -> Any:
    """A dataclass field whose own options are the outer class's."""
    return dataclasses.field(default_factory=factory, metadata={GROUP: factory})


def _options(cls: type) -> list[tuple[tuple[str, ...], dataclasses.Field[Any], Flag]]:
    """(the path of field names, the field, its flag) of every option, groups flattened."""
    out: list[tuple[tuple[str, ...], dataclasses.Field[Any], Flag]] = []
    for f in dataclasses.fields(cls):
        if OPTION in f.metadata:
            out.append(((f.name,), f, f.metadata[OPTION]))
        elif GROUP in f.metadata:
            inner = type(f.metadata[GROUP]())
            out += [((f.name, *path), g, flag) for path, g, flag in _options(inner)]
    return out


def flag_of(cls: type, name: str) -> str | None:
    """The flag that sets field `name` (groups flattened), for messages about its value."""
    return next((flag.name for path, _, flag in _options(cls) if path[-1] == name), None)


def _dest(path: tuple[str, ...]) -> str:
    return "__".join(path)


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    for path, f, flag in _options(cls):
        required = f.default is MISSING and f.default_factory is MISSING
        default: Any = None if required else f.default
        items = default if flag.repeatable else (default,)
        shown = (
            ""
            if not items or default is None
            else f" (default: {', '.join(map(flag.show, items))})"
        )
        parser.add_argument(
            flag.name,
            dest=_dest(path),
            type=flag.parse,
            required=required,
            default=None if flag.repeatable else default,
            action="append" if flag.repeatable else "store",
            metavar=flag.metavar or flag.name.rsplit("-", 1)[-1].upper(),
            choices=[flag.parse(c) for c in flag.choices] if flag.choices else None,
            help=(flag.help + shown).replace("%", "%%"),
        )


def from_arguments(cls: type[T], args: argparse.Namespace) -> T:
    """The settings a parsed command line gives: an option not given keeps its default."""

    def build(c: type, prefix: tuple[str, ...]) -> Any:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(c):
            path = (*prefix, f.name)
            if OPTION in f.metadata:
                value = getattr(args, _dest(path))
                if value is not None:
                    values[f.name] = tuple(value) if f.metadata[OPTION].repeatable else value
            elif GROUP in f.metadata:
                values[f.name] = build(type(f.metadata[GROUP]()), path)
        return c(**values)

    result: T = build(cls, ())
    return result


def command_line(cls: type, **values: Any) -> list[str]:
    """The options that give `values` (field names, groups flattened), in declaration order;
    a value of None is no option (the default)."""
    known = {path[-1]: (path, flag) for path, _, flag in _options(cls)}
    if len(known) != len(_options(cls)):
        raise TypeError(f"{cls.__name__}: two options of the same field name")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TypeError(f"{cls.__name__} has no option {', '.join(unknown)}")
    argv: list[str] = []
    for name, (_, flag) in known.items():
        if values.get(name) is None:
            continue
        value = values[name]
        items: Sequence[Any] = value if flag.repeatable else (value,)
        for item in items:
            argv += [flag.name, flag.show(item)]
    return argv
