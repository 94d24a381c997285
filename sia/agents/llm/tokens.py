"""An offline token estimate for request sizing and cost estimates. Claude's tokenizer is not
public and the SDK's counter calls the API, so this is an APPROXIMATION: about 3.5 characters
per token for ASCII text and one token per non-ASCII character (CJK text runs near that)."""
from __future__ import annotations

import json
from typing import Any

ASCII_CHARS_PER_TOKEN = 3.5
LABEL = "approximation: ASCII chars/3.5 + 1 token per non-ASCII char (Claude's tokenizer is not offline)"


def approx_tokens(value: Any) -> int:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    non_ascii = sum(1 for ch in text if ord(ch) > 127)
    return int((len(text) - non_ascii) / ASCII_CHARS_PER_TOKEN + non_ascii) + 1
