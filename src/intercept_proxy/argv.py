"""Command lines that carry another program's command line after `--`."""

from __future__ import annotations


def after_separator(remainder: list[str]) -> list[str]:
    """The other program's arguments: argparse's REMAINDER without our separator, and only it
    (`intercept run -- git log -- FILE`: the second `--` is git's)."""
    return remainder[1:] if remainder[:1] == ["--"] else remainder
