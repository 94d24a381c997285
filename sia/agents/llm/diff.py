"""Harness edits from the Feedback-Agent: SEARCH/REPLACE blocks (as aider and OpenEvolve use) or a
unified diff, applied as a sequence of "this block of the incumbent becomes that block".

Each block must be found EXACTLY ONCE in the file as it stands (earlier blocks applied), so an
edit can never land somewhere unintended. Matching forgives what models commonly get wrong and
nothing else, from strict to loose, stopping at the first level that finds anything:

    1. exact lines
    2. trailing whitespace ignored
    3. indentation ignored (the replacement is re-indented by the same offset)

Blank lines at the start or end of a block, a fence around the edit, ``@@ @@`` headers without
line numbers and hunks out of order are all accepted; line numbers are never trusted. A block
found nowhere, or in several places, refuses the whole edit, and the error quotes the closest
lines of the incumbent (difflib) so the next answer can copy them."""
from __future__ import annotations

import difflib
import re

HUNK = re.compile(r"^@@.*@@")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
SEARCH, DIVIDER, REPLACE = re.compile(r"^\s*<{5,}\s*SEARCH\s*$"), re.compile(r"^\s*={5,}\s*$"), \
    re.compile(r"^\s*>{5,}\s*REPLACE\s*$")


class DiffError(ValueError):
    pass


Block = tuple[list[str], list[str]]        # (lines to find, lines to put in their place)


def _unfence(text: str) -> list[str]:
    """The edit's lines without a surrounding ```diff / ``` fence (a fence inside stays)."""
    lines = text.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    if lines and FENCE.match(lines[0]) and FENCE.match(lines[-1]) and len(lines) >= 2:
        lines = lines[1:-1]
    return lines


def is_search_replace(text: str) -> bool:
    return any(SEARCH.match(line) for line in (text or "").splitlines())


def search_replace_blocks(text: str) -> list[Block]:
    blocks, state, old, new = [], None, [], []
    for n, line in enumerate(_unfence(text), 1):
        if state is None:
            if SEARCH.match(line):
                state, old, new = "search", [], []
            elif FENCE.match(line) or not line.strip():
                continue
        elif state == "search":
            if DIVIDER.match(line):
                state = "replace"
            else:
                old.append(line)
        elif REPLACE.match(line):
            blocks.append((old, new))
            state = None
        else:
            new.append(line)
    if state is not None:
        raise DiffError("a SEARCH/REPLACE block is not closed: each needs '<<<<<<< SEARCH', the lines to find, "
                        "'=======', the new lines, '>>>>>>> REPLACE'")
    if not blocks:
        raise DiffError("no SEARCH/REPLACE block found")
    return blocks


def _is_file_header(lines: list[str], i: int) -> bool:
    """``--- a`` + ``+++ b`` + a hunk header: a file header, not a removed line ``-- a``."""
    return (lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")
            and (i + 2 >= len(lines) or HUNK.match(lines[i + 2]) is not None))


def diff_blocks(text: str) -> list[Block]:
    lines = _unfence(text)
    blocks: list[Block] = []
    current: Block | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if _is_file_header(lines, i):
            i += 2
            continue
        if line.startswith(("diff --git ", "index ")):     # git's file lines: no hunk line starts so
            i += 1
            continue
        if HUNK.match(line):
            current = ([], [])
            blocks.append(current)
        elif current is None:
            if line.strip():
                raise DiffError(f"diff line {i + 1} comes before any '@@' hunk header: {line[:80]!r}")
        elif line.startswith("\\"):          # "\ No newline at end of file"
            pass
        elif line == "" or line[0] == " ":   # context (a bare empty line is blank context)
            current[0].append(line[1:])
            current[1].append(line[1:])
        elif line[0] == "-":
            current[0].append(line[1:])
        elif line[0] == "+":
            current[1].append(line[1:])
        else:
            raise DiffError(f"diff line {i + 1} starts with {line[0]!r}; hunk lines start with ' ', '-' or '+': "
                            f"{line[:80]!r}")
        i += 1
    if not blocks:
        raise DiffError("no '@@' hunk header: not a unified diff (or give SEARCH/REPLACE blocks)")
    return blocks


def _trim(block: Block) -> Block:
    """Blank lines at both ends of a block carry no placement and are often added or lost."""
    old, new = list(block[0]), list(block[1])
    while old and new and not old[-1].strip() and not new[-1].strip():
        old.pop(), new.pop()
    while old and new and not old[0].strip() and not new[0].strip():
        old.pop(0), new.pop(0)
    while old and not old[-1].strip():
        old.pop()
    while old and not old[0].strip():
        old.pop(0)
    return old, new


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


LEVELS = (("exact", lambda s: s), ("trailing whitespace ignored", str.rstrip), ("indentation ignored", str.strip))


def _find(lines: list[str], old: list[str]) -> tuple[list[int], str]:
    """(start lines where ``old`` matches at the strictest level that matches anywhere, level)."""
    n = len(old)
    for name, norm in LEVELS:
        want = [norm(x) for x in old]
        have = [norm(x) for x in lines]
        found = [j for j in range(len(lines) - n + 1) if have[j:j + n] == want]
        if found:
            return found, name
    return [], ""


def _reindent(new: list[str], old: list[str], matched: list[str]) -> list[str]:
    """``new`` shifted by the indent difference between the block as written and as found."""
    first = next((k for k, x in enumerate(old) if x.strip()), None)
    if first is None:
        return new
    delta = _indent(matched[first]) - _indent(old[first])
    if delta == 0:
        return new
    out = []
    for line in new:
        if not line.strip():
            out.append(line)
        elif delta > 0:
            out.append(" " * delta + line)
        else:
            out.append(line[min(-delta, _indent(line)):])
    return out


def _numbered(lines: list[str], start: int, end: int) -> str:
    start, end = max(0, start), min(len(lines), end)
    return "\n".join(f"{k + 1:5d}| {lines[k]}" for k in range(start, end))


def closest_lines(lines: list[str], old: list[str], shown: int = 2) -> str:
    """The incumbent's windows most like ``old`` (line numbers, text), for the error message."""
    n = max(1, len(old))
    want = "\n".join(x.strip() for x in old)
    scored = []
    for j in range(max(1, len(lines) - n + 1)):
        window = lines[j:j + n]
        ratio = difflib.SequenceMatcher(None, want, "\n".join(x.strip() for x in window), autojunk=False).ratio()
        scored.append((ratio, j))
    scored.sort(key=lambda t: (-t[0], t[1]))
    parts = []
    for ratio, j in scored[:shown]:
        parts.append(f"lines {j + 1}-{min(j + n, len(lines))} ({ratio:.0%} alike):\n{_numbered(lines, j, j + n)}")
    return "\n".join(parts) or "(the incumbent is empty)"


def _apply_block(lines: list[str], block: Block, i: int) -> list[str]:
    old, new = _trim(block)
    if not old:
        raise DiffError(f"block {i} has nothing to find (no context or removed lines): an insertion needs at "
                        f"least one unchanged neighbouring line to be placed")
    found, level = _find(lines, old)
    if len(found) != 1:
        if found:
            where = ", ".join(str(j + 1) for j in found[:6])
            places = "\n".join(f"at line {j + 1}:\n{_numbered(lines, j - 1, j + len(old) + 1)}" for j in found[:3])
            raise DiffError(f"block {i} is ambiguous: its lines match the incumbent at {len(found)} places "
                            f"({level}; lines {where}); add unchanged neighbouring lines until it matches "
                            f"exactly once. The places, with one line around each:\n{places}")
        raise DiffError(f"block {i} does not apply: its lines to find (first: {old[0][:80]!r}) are not in the "
                        f"incumbent (blocks are applied in order, each to the result of the ones before). "
                        f"Closest lines of the incumbent:\n{closest_lines(lines, old)}")
    at = found[0]
    if level == "indentation ignored":
        new = _reindent(new, old, lines[at:at + len(old)])
    return lines[:at] + new + lines[at + len(old):]


def parse_edit(text: str) -> list[Block]:
    if not isinstance(text, str) or not text.strip():
        raise DiffError("the edit is empty")
    return search_replace_blocks(text) if is_search_replace(text) else diff_blocks(text)


def apply_edit(original: str, text: str) -> str:
    """``original`` with every block of ``text`` (SEARCH/REPLACE blocks or a unified diff) applied."""
    lines = original.splitlines()
    for i, block in enumerate(parse_edit(text), 1):
        lines = _apply_block(lines, block, i)
    out = "\n".join(lines)
    return out + "\n" if original.endswith("\n") or not original else out


apply_diff = apply_edit     # the old name: a unified diff is one of the two formats
