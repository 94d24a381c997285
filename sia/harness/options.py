"""Read and rewrite the ``OPTIONS = {...}`` dict literal of a harness file.

Harness edits from a task's library are real source rewrites: they replace that literal and
leave the rest of the file (comments included) untouched.
"""
from __future__ import annotations

import ast
import pprint
from typing import Any, Callable


def _options_node(source: str) -> ast.Assign | None:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "OPTIONS"
            and isinstance(node.value, ast.Dict)
        ):
            return node
    return None


def read_options(source: str) -> dict[str, Any] | None:
    """The OPTIONS literal as a dict, or None when the file has none (or it is not a literal)."""
    node = _options_node(source)
    if node is None:
        return None
    try:
        return ast.literal_eval(node.value)
    except ValueError:
        return None


def with_options(source: str, **changes: Any) -> str | None:
    """``source`` with OPTIONS updated by ``changes``; None if there is no OPTIONS literal,
    a key is unknown to it, or nothing would change."""
    node = _options_node(source)
    current = read_options(source)
    if node is None or current is None or any(k not in current for k in changes):
        return None
    updated = {**current, **changes}
    if updated == current:
        return None
    lines = source.splitlines(keepends=True)
    body = pprint.pformat(updated, indent=4, sort_dicts=False, width=88)
    new = "OPTIONS = " + body + "\n"
    return "".join(lines[: node.lineno - 1]) + new + "".join(lines[node.end_lineno :])


def option_edit(**changes: Any) -> Callable[[str], str | None]:
    """A ``HarnessEdit.apply`` that sets these OPTIONS values (see ``with_options`` for None):
    most edits of a task's library are one such change of its seed harness's options."""
    return lambda source: with_options(source, **changes)
