"""A domain entry added to a policy file as a person would add it: the rest of the file (its
comments, its order, its style) unchanged, the change shown as a diff and accepted before it is
written, into the same file."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path

import yaml

from intercept_proxy.policy.model import PolicyError, granting, parse_policy


def add_entry(
    text: str, key: str, entry: str, source: str = "<policy>", base: Path | None = None
) -> str:
    """`text` with `entry` appended to the list under top-level `key` (created at the end if
    missing); `text` itself if the entry is there already. PolicyError if the result is no
    valid policy, or does not hold the entry (a layout this edit does not understand)."""
    before = parse_policy(text, source, base)
    if any(e.entry == entry for e in getattr(before, key)):
        return text
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    root = yaml.compose(text)
    value = None
    if isinstance(root, yaml.MappingNode):
        value = next((v for k, v in root.value if k.value == key), None)
    if value is None or (isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null")):
        if value is not None:  # `key:` with nothing after it
            row = value.start_mark.line
            lines[row] = lines[row].rstrip("\n").rstrip() + "\n"
            lines.insert(row + 1, f"  - {entry}\n")
        elif isinstance(root, yaml.MappingNode) and root.flow_style:
            if root.value:
                raise PolicyError(source, key, "the policy is one {...} mapping; add it by hand")
            start, end = root.start_mark.index, root.end_mark.index  # `{}`: deny everything
            lines = [text[:start], f"{key}:\n  - {entry}", text[end:]]
        else:
            lines.append(f"{key}:\n  - {entry}\n")
    elif isinstance(value, yaml.SequenceNode) and value.flow_style:
        row, column = value.end_mark.line, value.end_mark.column - 1  # at the closing bracket
        separator = ", " if value.value else ""
        line = lines[row]
        lines[row] = line[:column] + separator + entry + line[column:]
    else:  # a block list (the policy is valid: a list, and a block one is never empty)
        last = value.value[-1]
        indent = " " * (last.start_mark.column - 2)
        row = last.end_mark.line if last.end_mark.column else last.end_mark.line - 1
        lines.insert(row + 1, f"{indent}- {entry}\n")
    edited = "".join(lines)
    # Exactly the grant, nothing else (an anchor shared with another key, a layout not foreseen).
    if parse_policy(edited, source, base) != granting(before, ((key, entry),)):
        raise PolicyError(source, key, f"could not add {entry} here; add it by hand")
    return edited


def diff(path: Path, before: str, after: str) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            f"{path} (now)",
            f"{path} (with the approval)",
        )
    )


def add_to_file(
    path: Path, key: str, entry: str, confirm: Callable[[str], bool], apply: Callable[[], object]
) -> bool:
    """Show the diff that adds `entry` under `key` (to `confirm`, which says whether to go on),
    `apply` it (the agent's grant: raises if it fails), then write it into the file it was made
    from (its inode, owner and mode kept: no file is made or renamed where others may write;
    never through a symbolic link), which must still hold what the diff was made from. False:
    the person declined, nothing changed."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "r+") as f:
        before = f.read()
        after = add_entry(before, key, entry, str(path), path.parent)
        if not confirm(diff(path, before, after)):
            return False
        f.seek(0)
        if f.read() != before:
            raise PolicyError(str(path), None, "it changed after the diff was made: not written")
        apply()
        f.seek(0)
        f.write(after)
        f.truncate()
    return True
