"""Untrusted text quoted into an agent's request so that it stays data: in a code fence it cannot
close, or as JSON whose every string is escaped (no line of it can start a header, a fence or an
instruction of its own)."""
from __future__ import annotations

import json
import re
from typing import Any


def fenced(text: str, lang: str = "") -> str:
    """``text`` in a code fence longer than any backtick run inside it (CommonMark), so quoted
    text can never close the fence and continue as request text."""
    longest = max((len(m) for m in re.findall(r"`+", text or "")), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def quoted_json(value: Any) -> str:
    """Untrusted data as indented JSON in a fence: every string is escaped, so no line of it can
    start with a header, a fence or an instruction of its own."""
    return fenced(json.dumps(value, ensure_ascii=False, indent=1, default=str), "json")
