"""A strict unified-diff applier for harness rewrites: every context and removed line must
match the incumbent exactly (no fuzz, no whitespace forgiveness). A hunk is placed at its
stated line, or, when the line numbers are off, at the one place its lines match; a hunk that
matches nowhere or in several places makes the whole diff invalid."""
from __future__ import annotations

import re

HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class DiffError(ValueError):
    pass


def _hunks(diff: str) -> list[tuple[int, list[str], list[str]]]:
    """(stated old start, old lines, new lines) per hunk."""
    hunks, current = [], None
    for n, line in enumerate(diff.splitlines(), 1):
        if line.startswith(("--- ", "+++ ")) and current is None or line.startswith(("diff ", "index ")):
            continue
        m = HUNK.match(line)
        if m:
            current = (int(m.group(1)), [], [])
            hunks.append(current)
            continue
        if line.startswith(("--- ", "+++ ")) and current is not None and not current[1] and not current[2]:
            continue
        if current is None:
            if line.strip():
                raise DiffError(f"diff line {n} comes before any '@@ -a,b +c,d @@' hunk header: {line[:80]!r}")
            continue
        if line.startswith("\\"):           # "\ No newline at end of file"
            continue
        tag, text = (line[:1], line[1:]) if line else (" ", "")   # a bare empty line is blank context
        if tag == " ":
            current[1].append(text)
            current[2].append(text)
        elif tag == "-":
            current[1].append(text)
        elif tag == "+":
            current[2].append(text)
        else:
            raise DiffError(f"diff line {n} starts with {tag!r}; hunk lines start with ' ', '-' or '+': {line[:80]!r}")
    if not hunks:
        raise DiffError("no '@@ -a,b +c,d @@' hunk header: not a unified diff")
    return hunks


def _matches(lines: list[str], old: list[str], at: int) -> bool:
    return at >= 0 and lines[at:at + len(old)] == old


def apply_diff(original: str, diff: str) -> str:
    lines = original.splitlines()
    out: list[str] = []
    pos = 0                                  # next line of ``lines`` not yet copied
    for i, (start, old, new) in enumerate(_hunks(diff), 1):
        if not old:                          # pure insertion: at the stated line
            at = min(max(start, 0), len(lines)) if start else 0
            if at < pos:
                raise DiffError(f"hunk {i} inserts at line {start}, before the previous hunk's end")
        else:
            at = start - 1
            if at < pos or not _matches(lines, old, at):
                found = [j for j in range(pos, len(lines) - len(old) + 1) if _matches(lines, old, j)]
                if len(found) != 1:
                    where = "nowhere" if not found else f"at {len(found)} places (lines {[j + 1 for j in found][:5]})"
                    raise DiffError(f"hunk {i} (@@ -{start}) does not apply: its context/removed lines match "
                                    f"the incumbent {where}; first expected line: {old[0][:80]!r}")
                at = found[0]
        out += lines[pos:at] + new
        pos = at + len(old)
    out += lines[pos:]
    text = "\n".join(out)
    return text + "\n" if original.endswith("\n") or not original else text
