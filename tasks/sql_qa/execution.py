"""Trusted execution of predicted SQL and the execution-accuracy comparison.

A predicted query is untrusted data. It runs on a read-only, immutable connection with an
authorizer that allows reading only (no ATTACH, writes, PRAGMA, transactions or extension
loading), a wall-clock limit enforced by the progress handler, a cap on rows and on value
size (100 kB: no result needs more, and quadratic functions such as ``instr`` or ``ltrim``
stay short). The loop runs the batch in a separate Python process, this file run as a script
with its own memory limit (``supervised.evaluate_in_child``, the parent side, under
``sia.harness.supervisor``): the progress handler never fires inside one long function call,
so the parent also kills the process when a query runs past its limit, records that query as
timed out, and goes on with a new process.

Reasons go to the feedback side: they say what kind of mismatch it was (row count, values,
order, columns) and never quote a gold value; counts and gold-side figures stay in details.

Stdlib only and free of relative imports: this file is also the child's entry point, and it
imports nothing of the parent side (``supervised.py`` imports it, never the other way).
"""
from __future__ import annotations

import json
import math
import re
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

# Actions a SELECT needs; the authorizer denies every other one.
_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                    getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}
_AUTHORIZER_ACTIONS = (
    "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER",
    "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DELETE", "DROP_INDEX", "DROP_TABLE",
    "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW", "DROP_TRIGGER",
    "DROP_VIEW", "INSERT", "PRAGMA", "READ", "SELECT", "TRANSACTION", "UPDATE", "ATTACH", "DETACH",
    "ALTER_TABLE", "REINDEX", "ANALYZE", "CREATE_VTABLE", "DROP_VTABLE", "FUNCTION", "SAVEPOINT",
    "RECURSIVE")
# sqlite3 also exports result codes with the same numbers (SQLITE_FORMAT == SQLITE_ATTACH),
# so the names come from the authorizer's own list.
_ACTION_NAMES = {getattr(sqlite3, "SQLITE_" + n): n for n in _AUTHORIZER_ACTIONS if hasattr(sqlite3, "SQLITE_" + n)}
_PROGRESS_EVERY = 1000        # SQLite VM instructions between time checks
_MAX_VALUE_BYTES = 100_000    # longest string/blob a query may build
FLOAT_DIGITS = 6


@dataclass
class QueryResult:
    rows: list[tuple] | None = None
    columns: list[str] = field(default_factory=list)
    outcome: str = "ok"        # ok | invalid_sql | timeout | too_many_rows
    error: str = ""


@dataclass
class Verdict:
    score: float
    outcome: str  # correct | no_sql | invalid_sql | timeout | too_many_rows | wrong_result | gold_failed | crashed
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def readonly_uri(db_path: str | Path) -> str:
    # immutable=1: no locks and no journal lookups, so the file is only ever read.
    return Path(db_path).resolve().as_uri() + "?mode=ro&immutable=1"


def open_readonly(db_path: str | Path) -> tuple[sqlite3.Connection, dict]:
    """A connection that can only read; ``state["denied"]`` names the last denied action."""
    conn = sqlite3.connect(readonly_uri(db_path), uri=True, check_same_thread=False)
    state: dict[str, Any] = {"denied": None, "deadline": None, "timed_out": False}

    def authorize(action, arg1, arg2, _db, _trigger):
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
            state["denied"] = f"function {arg2}()"
            return sqlite3.SQLITE_DENY
        if action in _ALLOWED_ACTIONS:
            return sqlite3.SQLITE_OK
        state["denied"] = _ACTION_NAMES.get(action, f"action {action}")
        return sqlite3.SQLITE_DENY

    def progress():
        if state["deadline"] is not None and time.monotonic() > state["deadline"]:
            state["timed_out"] = True
            return 1  # non-zero interrupts the statement
        return 0

    conn.set_authorizer(authorize)
    conn.set_progress_handler(progress, _PROGRESS_EVERY)
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_VALUE_BYTES)
    return conn, state


def run_query(conn: sqlite3.Connection, state: dict, sql: str, timeout_s: float, max_rows: int) -> QueryResult:
    """Execute one statement within ``timeout_s``, keeping at most ``max_rows`` rows."""
    state.update(denied=None, timed_out=False, deadline=time.monotonic() + timeout_s)
    try:
        cursor = conn.execute(sql)
        rows = list(islice(cursor, max_rows + 1))
        columns = [d[0] for d in cursor.description or []]
        if len(rows) > max_rows:
            return QueryResult(outcome="too_many_rows", error=f"more than {max_rows} rows")
        return QueryResult(rows=rows, columns=columns)
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError) as exc:
        if state["timed_out"]:
            return QueryResult(outcome="timeout", error=f"timed out after {timeout_s:g}s")
        message = str(exc)
        if state["denied"]:
            message = f"not allowed: {state['denied']} ({message})"
        return QueryResult(outcome="invalid_sql", error=message)
    finally:
        state["deadline"] = None


# ---- comparison -------------------------------------------------------------------------

def normalise_value(value: Any) -> Any:
    """Floats rounded to FLOAT_DIGITS, integral floats as ints (AVG gives 3.0 where COUNT gives 3)."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return repr(value)
        value = round(value, FLOAT_DIGITS) + 0.0   # + 0.0 turns -0.0 into 0.0
        return int(value) if value.is_integer() and abs(value) < 2 ** 53 else value
    if isinstance(value, (bytes, memoryview)):
        return ("blob", bytes(value).hex())
    return value


def normalise_rows(rows: list[tuple]) -> list[tuple]:
    return [tuple(normalise_value(v) for v in row) for row in rows]


def strip_sql_text(sql: str) -> str:
    """Blank out string literals, quoted identifiers and comments so keywords can be found."""
    out, i, n = [], 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`[":
            close = "]" if ch == "[" else ch
            j = i + 1
            while j < n:
                if sql[j] == close:
                    if close != "]" and j + 1 < n and sql[j + 1] == close:  # doubled quote escapes
                        j += 2
                        continue
                    break
                j += 1
            out.append(" " * (min(j, n - 1) - i + 1))
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(" " * (j - i))
            i = j
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def has_top_level_order_by(sql: str) -> bool:
    """True when the outermost query orders its rows (ORDER BY inside a subquery or a
    window's OVER (...) does not order the result)."""
    depth, top = 0, []
    for ch in strip_sql_text(sql):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(depth - 1, 0)
        top.append(ch if depth == 0 and ch != ")" else " ")
    return re.search(r"\border\s+by\b", "".join(top), re.IGNORECASE) is not None


def _column_permutations(gold: list[tuple], pred: list[tuple], limit: int = 2000):
    """Mappings gold column -> predicted column under which each column holds the same
    multiset of values (the result may list the asked-for columns in another order)."""
    width = len(gold[0])
    gold_cols = [Counter(r[j] for r in gold) for j in range(width)]
    pred_cols = [Counter(r[k] for r in pred) for k in range(width)]
    candidates = [[k for k in range(width) if pred_cols[k] == gold_cols[j]] for j in range(width)]
    found = 0

    def extend(prefix: list[int]):
        nonlocal found
        if found >= limit:
            return
        if len(prefix) == width:
            found += 1
            yield list(prefix)
            return
        # the identity column first: the common case costs one comparison
        j = len(prefix)
        for k in sorted(candidates[j], key=lambda k: k != j):
            if k not in prefix:
                yield from extend(prefix + [k])

    yield from extend([])


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def compare_results(gold: list[tuple], pred: list[tuple], ordered: bool) -> tuple[bool, str]:
    """(equal, reason). Rows compare as multisets, or as lists when ``ordered``; columns may
    come in any order. Values are compared after ``normalise_value`` (NULL equals NULL).
    The reason names the kind of mismatch and the prediction's own shape, never gold data."""
    gold, pred = normalise_rows(gold), normalise_rows(pred)
    if not gold and not pred:
        return True, ""
    if len(pred) != len(gold):
        return False, f"wrong result: the row count differs from the expected result ({_rows(len(pred))} returned)"
    if len(pred[0]) != len(gold[0]):
        return False, (f"wrong result: the columns differ from the expected result "
                       f"({len(pred[0])} columns returned)")
    for perm in _column_permutations(gold, pred):
        permuted = [tuple(row[k] for k in perm) for row in pred]
        if Counter(permuted) != Counter(gold):
            continue
        if not ordered or permuted == gold:
            return True, ""
        return False, "wrong result: right rows in the wrong order (the question asks for an order)"
    return False, "wrong result: the row count matches but the values differ from the expected result"


# ---- one batch ------------------------------------------------------------------------

def clean_answer_sql(answer: Any) -> str | None:
    """The SQL text of an answer: a string, unwrapped from a ```sql fence and a final ';'."""
    if not isinstance(answer, str):
        return None
    text = answer.strip()
    fenced = re.search(r"```[a-zA-Z]*\s*(.*?)(?:```|$)", text, re.S)
    if fenced:
        text = fenced.group(1).strip()
    text = text.rstrip().rstrip(";").strip()
    return text or None


def evaluate_batch(items: list[dict], timeout_s: float, max_rows: int) -> list[Verdict]:
    """``items``: dicts with db_path, gold and pred (pred None: no SQL in the answer)."""
    connections: dict[str, tuple[sqlite3.Connection, dict]] = {}
    gold_cache: dict[tuple[str, str], QueryResult] = {}
    verdicts = []
    for item in items:
        verdicts.append(_judge(item, connections, gold_cache, timeout_s, max_rows))
    for conn, _ in connections.values():
        conn.close()
    return verdicts


def _judge(item, connections, gold_cache, timeout_s, max_rows, mark=lambda phase: None) -> Verdict:
    pred, gold_sql, db_path = item.get("pred"), item["gold"], item["db_path"]
    if not pred:
        return Verdict(0.0, "no_sql", "no SQL in the answer")
    if db_path not in connections:
        connections[db_path] = open_readonly(db_path)
    conn, state = connections[db_path]
    key = (db_path, gold_sql)
    if key not in gold_cache:   # gold is trusted: a generous limit, no row cap that matters
        mark("gold")
        gold_cache[key] = run_query(conn, state, gold_sql, gold_timeout(timeout_s), 10 ** 7)
    gold = gold_cache[key]
    if gold.outcome != "ok":
        return Verdict(0.0, "gold_failed", f"gold query failed ({gold.error}); this example cannot be scored")
    mark("pred")
    result = run_query(conn, state, pred, timeout_s, max_rows)
    details = {"rows": None if result.rows is None else len(result.rows), "expected_rows": len(gold.rows)}
    if result.outcome == "invalid_sql":
        return Verdict(0.0, "invalid_sql", f"invalid SQL: {result.error}", details)
    if result.outcome == "timeout":
        return Verdict(0.0, "timeout", f"query {result.error}", details)
    if result.outcome == "too_many_rows":
        return Verdict(0.0, "too_many_rows", f"wrong result: {result.error}", details)
    ordered = has_top_level_order_by(gold_sql)
    equal, reason = compare_results(gold.rows, result.rows, ordered)
    details["ordered"] = ordered
    if equal:
        return Verdict(1.0, "correct", "", details)
    return Verdict(0.0, "wrong_result", reason, details)


# ---- the evaluator's own process --------------------------------------------------------

def gold_timeout(timeout_s: float) -> float:
    """The trusted gold query's limit: generous, it is not what is being judged."""
    return max(timeout_s, 10.0) * 3


def _child_main() -> None:
    import resource

    request = json.loads(sys.stdin.read())
    limit = int(request["memory_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    items = request["items"]
    connections, gold_cache = {}, {}

    def mark(phase: str) -> None:   # the parent starts this query's clock now
        sys.stdout.write(json.dumps({"phase": phase}) + "\n")
        sys.stdout.flush()

    for item in items:
        verdict = _judge(item, connections, gold_cache, request["timeout_s"], request["max_rows"], mark)
        sys.stdout.write(json.dumps(asdict(verdict)) + "\n")
        sys.stdout.flush()   # verdicts written so far survive a crash on a later item


if __name__ == "__main__":
    _child_main()
