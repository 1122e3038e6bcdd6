"""Another program's command line after `--` reaches it whole, its own `--` included."""

import pytest

from intercept_proxy.argv import after_separator
from intercept_proxy.cli import build_parser


@pytest.mark.parametrize(
    ("argv", "attribute", "theirs"),
    [
        (["run", "--", "git", "log", "--", "f"], "command", ["git", "log", "--", "f"]),
        (["envoy", "run", "--", "-l", "info", "--", "x"], "envoy_args", ["-l", "info", "--", "x"]),
    ],
)
def test_only_the_first_separator_is_ours(argv, attribute, theirs):
    args = build_parser().parse_args(argv)
    assert after_separator(getattr(args, attribute)) == theirs
