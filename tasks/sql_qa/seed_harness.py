"""Seed harness for sql_qa: schema + question in, one SQLite query out.

Stdlib only (it runs in a sandboxed worker). The database is ``ctx.files[inputs["db_id"]]``,
opened read-only by ``run_sql``; its schema is ``ctx.resources["schemas"][db_id]``.
Knobs (OPTIONS), the levers a rewrite can turn:
  schema_format   "compact": one line per table, columns and foreign keys; "create": the
                  CREATE statements (longer; SmolLM2 has a 2k-token context)
  sample_values   add a few frequent values of each text column to the compact schema
  few_shot        k train questions with their SQL (same database first, most shared words)
  retry_on_error  run the query; if SQLite rejects it (or no SQL came back), ask again with
                  the error message, up to max_retries times
  execute_check   run the query; if it returns no rows, ask once to check names and values
  copy_adapt      "off"; "fallback": when the final query is missing or SQLite rejects it,
                  answer the most similar train query instead, its literals replaced by the
                  question's when the two questions share a phrasing; "prefer": answer such
                  an adapted train query without asking the model, the model otherwise
  value_hints     tell the model which column holds each database value the question names
                  ('Ireland' -> customers.country), found by looking the values up in the database
  vote_samples    n > 0: also sample n queries at vote_temperature, run every candidate and
                  answer one of those whose result most candidates agree on (rejected or empty
                  results get no vote; execution-guided self-consistency)
  max_tokens      per model call
  query_timeout_s time limit of one run_sql query
"""
import re
import sqlite3
import time
from pathlib import Path

OPTIONS = {
    "schema_format": "compact",
    "sample_values": False,
    "few_shot": 0,
    "retry_on_error": False,
    "max_retries": 1,
    "execute_check": False,
    "copy_adapt": "off",
    "value_hints": False,
    "vote_samples": 0,
    "vote_temperature": 0.7,
    "max_tokens": 96,
    "query_timeout_s": 2.0,
}

SYSTEM = ("You translate questions into SQLite queries. Use only the tables and columns of the "
          "schema. Answer with one SQL query in a ```sql block.")
MAX_ROWS_SHOWN = 5
MAX_VALUES_SCANNED = 5000   # distinct values read per text column when looking for hints
MAX_HINTS = 4


# ---- the database tool --------------------------------------------------------------------
def run_sql(sql, db_path, ctx=None, timeout_s=None, max_rows=50):
    """Run one query on the read-only database: {"columns", "rows", "truncated"} or {"error"}."""
    timeout_s = OPTIONS["query_timeout_s"] if timeout_s is None else timeout_s
    uri = Path(db_path).resolve().as_uri() + "?mode=ro&immutable=1"
    deadline = time.monotonic() + timeout_s
    conn = sqlite3.connect(uri, uri=True)
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        cursor = conn.execute(sql)
        rows = cursor.fetchmany(max_rows + 1)
        result = {"columns": [d[0] for d in cursor.description or []],
                  "rows": [[_plain(v) for v in row] for row in rows[:max_rows]],
                  "truncated": len(rows) > max_rows}
    except (sqlite3.Error, sqlite3.Warning, ValueError) as exc:
        late = time.monotonic() > deadline
        result = {"error": f"timed out after {timeout_s:g}s" if late else str(exc)}
    finally:
        conn.close()
    if ctx is not None:
        shown = result if "error" in result else {**result, "rows": result["rows"][:MAX_ROWS_SHOWN]}
        ctx.log("tool_call", name="run_sql", args={"sql": sql}, result=shown)
    return result


def _plain(value):
    return value.hex() if isinstance(value, bytes) else value


# ---- prompt --------------------------------------------------------------------------------
def schema_text(schema, fmt="compact", samples=False):
    if fmt == "create":
        return schema["create"]
    lines = []
    for table in schema["tables"]:
        refs = {fk["column"]: f"{fk['ref_table']}.{fk['ref_column'] or 'id'}" for fk in table["foreign_keys"]}
        cols = []
        for col in table["columns"]:
            text = col["name"] + (f" -> {refs[col['name']]}" if col["name"] in refs else "")
            values = table.get("samples", {}).get(col["name"]) if samples else None
            if values:
                text += " e.g. " + ", ".join(repr(v) for v in values)
            cols.append(text)
        lines.append(f"{table['name']}({', '.join(cols)})")
    return "\n".join(lines)


def _ident(name):
    return '"' + name.replace('"', '""') + '"'


def _is_text(column):
    kind = (column.get("type") or "").upper()
    return "CHAR" in kind or "TEXT" in kind or "CLOB" in kind


_TEXT_VALUES = {}   # db path -> its text values: read once per worker, not per question and shot


def text_values(schema, db_path):
    """(value, table, column) for the distinct text values of each text column."""
    key = str(db_path)
    if key not in _TEXT_VALUES:
        values = []
        for table in schema["tables"]:
            for column in table["columns"]:
                if not _is_text(column):
                    continue
                sql = (f"SELECT DISTINCT {_ident(column['name'])} FROM {_ident(table['name'])} "
                       f"WHERE {_ident(column['name'])} IS NOT NULL")
                values += [(value, table["name"], column["name"])
                           for (value,) in run_sql(sql, db_path, max_rows=MAX_VALUES_SCANNED).get("rows", [])
                           if isinstance(value, str) and len(value) >= 2]
        _TEXT_VALUES[key] = values
    return _TEXT_VALUES[key]


def mentioned_values(question, schema, db_path):
    """(value, table, column) for each text value of the database the question names as a
    whole phrase; longest first, a value inside a longer one found is dropped."""
    text = question.lower()
    found = [(value, table, column) for value, table, column in text_values(schema, db_path)
             if re.search(r"(?<!\w)" + re.escape(value.lower()) + r"(?!\w)", text)]
    found.sort(key=lambda f: (-len(f[0]), f))
    kept = []
    for value, table, column in found:
        if not any(value.lower() in longer.lower() and value != longer for longer, _, _ in kept):
            kept.append((value, table, column))
    return kept[:MAX_HINTS]


def hinted(question, db_id, ctx):
    """The question as the model sees it: with value hints when that option is on."""
    if not OPTIONS["value_hints"]:
        return "Question: " + question
    schema = ctx.resources["schemas"][db_id]
    hints = mentioned_values(question, schema, ctx.files[db_id])
    if not hints:
        return "Question: " + question
    said = "; ".join(f"{value!r} is a value of {table}.{column}" for value, table, column in hints)
    return f"Question: {question}\nValues: {said}"


def _words(text):
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def few_shot_examples(question, db_id, train, k):
    """The k train items sharing most words with the question (same database first)."""
    words = _words(question)
    pool = [t for t in train if t["question"] != question]
    scored = sorted(pool, key=lambda t: (t.get("db_id") == db_id, len(words & _words(t["question"]))),
                    reverse=True)
    return scored[:k]


def fenced(sql):
    return "```sql\n" + sql.strip().rstrip(";") + ";\n```"


def build_messages(inputs, ctx):
    resources = ctx.resources or {}
    db_id = inputs["db_id"]
    schema = resources["schemas"][db_id]
    system = SYSTEM + "\n\nSchema:\n" + schema_text(schema, OPTIONS["schema_format"], OPTIONS["sample_values"])
    messages = [{"role": "system", "content": system}]
    for shot in few_shot_examples(inputs["question"], db_id, resources.get("train", []), OPTIONS["few_shot"]):
        messages.append({"role": "user", "content": hinted(shot["question"], shot.get("db_id", db_id), ctx)})
        messages.append({"role": "assistant", "content": fenced(shot["sql"])})
    messages.append({"role": "user", "content": hinted(inputs["question"], db_id, ctx)})
    return messages


# ---- copy and adapt a train query (the trusted copy is tasks/sql_qa/baselines.py) ----------
STRING_LITERAL = re.compile(r"'((?:[^']|'')*)'")
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")


def words(text):
    return set(re.findall(r"[a-z0-9]+", (text or "").lower()))


def ranked_train(question, db_id, train):
    """Train items, most similar first: same database, then most shared words (Jaccard);
    ties keep the train order. The question itself is skipped (SFT renders train)."""
    asked = words(question)
    scored = []
    for i, item in enumerate(train):
        if item.get("question") == question:
            continue
        other = words(item.get("question"))
        jaccard = len(asked & other) / (len(asked | other) or 1)
        scored.append((item.get("db_id") != db_id, -jaccard, i))
    return [train[i] for _, _, i in sorted(scored)]


def sql_values(sql):
    """The literals of a query a question may repeat: quoted strings (unescaped), then the
    numbers outside them; longest first so '2021-01-01' is found before 2021."""
    values = [m.group(1).replace("''", "'") for m in STRING_LITERAL.finditer(sql)]
    bare = STRING_LITERAL.sub(" ", sql)
    values += NUMBER.findall(bare)
    values += [n for m in STRING_LITERAL.finditer(sql) for n in NUMBER.findall(m.group(1))]
    return sorted({v for v in values if v.strip()}, key=lambda v: (-len(v), v))


def question_pattern(question, values):
    """A regex matching questions of the same phrasing, with one group per literal of
    ``values`` the question contains (later mentions of a value are back-references),
    and the list of values those groups stand for; None when it contains none."""
    spans, taken = [], [False] * len(question)
    for value in values:
        for match in re.finditer(re.escape(value), question):
            a, b = match.span()
            word_edge = (a == 0 or not question[a - 1].isalnum()) and (b == len(question) or not question[b].isalnum())
            if word_edge and not any(taken[a:b]):
                spans.append((a, b, value))
                for k in range(a, b):
                    taken[k] = True
    if not spans:
        return None
    spans.sort()
    pattern, order, last = "", [], 0
    for a, b, value in spans:
        pattern += re.escape(question[last:a])
        if value in order:
            pattern += f"(?P={_group(order.index(value))})"
        else:
            kind = r"\d+(?:\.\d+)?" if NUMBER.fullmatch(value) else r".+?"
            pattern += f"(?P<{_group(len(order))}>{kind})"
            order.append(value)
        last = b
    pattern += re.escape(question[last:])
    return pattern, order


def _group(k):
    return f"v{k}"


def adapt_sql(train_question, train_sql, question):
    """``train_sql`` with its literals replaced by the asked question's, when the two questions
    share a phrasing that differs only in those literals; None otherwise."""
    found = question_pattern(train_question, sql_values(train_sql))
    if found is None:
        return None
    pattern, order = found
    match = re.fullmatch(pattern, question.strip()) or re.fullmatch(pattern, question)
    if match is None:
        return None
    mapping = {old: match.group(_group(k)) for k, old in enumerate(order)}

    def quoted(m):
        inner = m.group(1).replace("''", "'")
        if inner in mapping:
            inner = mapping[inner]
        else:
            inner = NUMBER.sub(lambda n: mapping.get(n.group(0), n.group(0)), inner)
        return "'" + inner.replace("'", "''") + "'"

    out, last = [], 0
    for m in STRING_LITERAL.finditer(train_sql):
        bare = train_sql[last:m.start()]
        out.append(NUMBER.sub(lambda n: mapping.get(n.group(0), n.group(0)), bare))
        out.append(quoted(m))
        last = m.end()
    out.append(NUMBER.sub(lambda n: mapping.get(n.group(0), n.group(0)), train_sql[last:]))
    return "".join(out)


def copy_adapt(question, db_id, train):
    """(sql, adapted): the first ranked train query whose question shares the phrasing, with the
    literals adapted; else the most similar train query verbatim; ("", False) with no train."""
    ranked = ranked_train(question, db_id, train)
    for item in ranked:
        if item.get("db_id") != db_id:
            break
        adapted = adapt_sql(item["question"], item["sql"], question)
        if adapted is not None:
            return adapted, True
    return (ranked[0]["sql"], False) if ranked else ("", False)


# ---- answer --------------------------------------------------------------------------------
def _cut_statement(sql):
    """Text up to the first ';' outside string literals."""
    quote = None
    for i, ch in enumerate(sql):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            return sql[:i]
    return sql


# SELECT, or WITH only in the shape of a common table expression ("with" is also English).
QUERY_START = re.compile(r"\bSELECT\b|\bWITH\s+(?:RECURSIVE\s+)?\w+\s*(?:\([^)]*\)\s*)?AS\s*\(", re.I)


def extract_sql(text):
    """The query in a completion: the first ```sql block (closed or not), else the first
    SELECT/WITH statement up to ';' or a blank line. '' when there is none."""
    block = re.search(r"```[ \t]*(?:sqlite|sql)?[ \t]*\n?(.*?)(?:```|$)", text or "", re.S | re.I)
    if block and QUERY_START.search(block.group(1)):
        sql = block.group(1)
    else:
        start = QUERY_START.search(text or "")
        if not start:
            return ""
        sql = re.split(r"\n\s*\n", text[start.start():])[0]
    return _cut_statement(sql).strip()


def ask_call(messages, ctx):
    """(sql, completion) of one greedy model call."""
    # stop at ';': the query is complete there and CPU time is not spent on prose
    completion = ctx.llm.chat(messages, max_tokens=OPTIONS["max_tokens"], stop=[";"])
    return extract_sql(completion.text), completion


def ask(messages, ctx):
    return ask_call(messages, ctx)[0]


def result_key(result):
    """Candidates agree when their results hold the same rows (in any order)."""
    return repr(sorted(repr(row) for row in result["rows"])) + repr(result["truncated"])


def vote(messages, sql, completion, db_path, ctx):
    """The query whose result most candidates share: ``sql`` (the greedy answer, from
    ``completion``) and vote_samples sampled ones; ``sql`` unless some candidate runs and
    returns rows. The call that gave the chosen query is credited (``mark_used``)."""
    samples = ctx.llm.sample(messages, OPTIONS["vote_samples"], temperature=OPTIONS["vote_temperature"],
                             max_tokens=OPTIONS["max_tokens"], stop=[";"])
    candidates = [(sql, completion)] + [(extract_sql(c.text), c) for c in samples]
    groups = {}
    for k, (query, _) in enumerate(candidates):
        result = run_sql(query, db_path) if query else {"error": "no query"}
        if "error" not in result and result["rows"]:
            groups.setdefault(result_key(result), []).append(k)
    ctx.log("vote", candidates=[q for q, _ in candidates], groups=sorted(groups.values(), key=len, reverse=True))
    if not groups:
        return sql
    best = min(groups.values(), key=lambda ks: (-len(ks), ks[0]))   # most votes, then the earliest
    query, chosen = candidates[best[0]]
    ctx.llm.mark_used(chosen)
    return query


def feedback_for(sql, db_path, ctx, schema):
    """What to tell the model about its query, or None when it may stand."""
    if not sql:
        return "No SQL query found. Answer with one SQL query in a ```sql block." if OPTIONS["retry_on_error"] else None
    result = run_sql(sql, db_path, ctx)
    if "error" in result:
        if OPTIONS["retry_on_error"]:
            return f"SQLite error: {result['error']}.{columns_hint(result['error'], sql, schema)} Write a corrected query."
        return None
    if OPTIONS["execute_check"] and not result["rows"]:
        return "The query returned no rows. Check table names, columns and values, then write a corrected query."
    return None


def columns_hint(error, sql, schema):
    """For an unknown column or table: the columns of the tables the query names."""
    if "no such column" not in error and "no such table" not in error:
        return ""
    named = words(sql)
    return "".join(f" {t['name']} has columns {', '.join(c['name'] for c in t['columns'])}."
                   for t in schema["tables"] if t["name"].lower() in named)


def copied(inputs, ctx):
    """(sql, adapted) from the train queries (see copy_adapt), logged as a tool call."""
    sql, adapted = copy_adapt(inputs["question"], inputs["db_id"], (ctx.resources or {}).get("train", []))
    ctx.log("tool_call", name="copy_adapt", args={"question": inputs["question"]},
            result={"sql": sql, "adapted": adapted})
    return sql, adapted


def solve(inputs, ctx):
    if OPTIONS["copy_adapt"] == "prefer":
        sql, adapted = copied(inputs, ctx)
        if adapted:
            return sql
    sql = solve_with_model(inputs, ctx)
    if OPTIONS["copy_adapt"] in ("fallback", "prefer"):
        failed = not sql or "error" in run_sql(sql, ctx.files[inputs["db_id"]], ctx)
        if failed:
            ctx.log("fallback", reason="the model's query is missing or invalid", sql=sql or "")
            sql = copied(inputs, ctx)[0] or sql
    return sql or None


def solve_with_model(inputs, ctx):
    messages = build_messages(inputs, ctx)
    sql, completion = ask_call(messages, ctx)
    if OPTIONS["vote_samples"] > 0:
        sql = vote(messages, sql, completion, ctx.files[inputs["db_id"]], ctx)
    if OPTIONS["retry_on_error"] or OPTIONS["execute_check"]:
        db_path = ctx.files[inputs["db_id"]]
        # execute_check alone gets one look at the result; retry_on_error gets max_retries
        tries = max(OPTIONS["max_retries"] if OPTIONS["retry_on_error"] else 0, 1 if OPTIONS["execute_check"] else 0)
        for _ in range(tries):
            feedback = feedback_for(sql, db_path, ctx, ctx.resources["schemas"][inputs["db_id"]])
            if feedback is None:
                break
            ctx.log("retry", reason=feedback, sql=sql)
            messages = messages + [{"role": "assistant", "content": fenced(sql) if sql else "(no query)"},
                                   {"role": "user", "content": feedback}]
            sql = ask(messages, ctx) or sql
    return sql


def sft_pair(inputs, target, ctx):
    """A train example rendered exactly as solve() prompts, with the gold query as the reply."""
    return {"messages": build_messages(inputs, ctx), "completion": fenced(target["sql"])}
