"""Non-LLM baselines of sql_qa, scored by the task's own execution-accuracy evaluator.

- ``copy``           the SQL of the most similar train question (same database, most shared
                     words), verbatim;
- ``copy_adapt``     the same retrieval, then the train question's literals (quoted values and
                     numbers the question repeats) replaced by the ones at the same place in the
                     asked question, when the two questions share a phrasing;
- ``oracle_gold_template``  ORACLE, not a method: ``copy_adapt`` restricted to train queries of
                     the example's gold template, read from the evaluator-side target. It bounds
                     what copying can reach; with ``split_by=template`` no train query has the
                     template, so it answers nothing.

The retrieval and adaptation functions are pure Python because the seed harness carries a copy
of them (a harness imports nothing from tasks/); a test checks both copies agree.
"""
from __future__ import annotations

import re
from typing import Sequence

from sia.tasks import Baseline, Example, Splits

STRING_LITERAL = re.compile(r"'((?:[^']|'')*)'")
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")


# ---- copied into seed_harness.py (keep both in sync) ------------------------------------------
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
# ---- end of the copy --------------------------------------------------------------------------


def _public_train(splits: Splits) -> list[dict]:
    return [{"question": e.inputs["question"], "sql": e.target["sql"], "db_id": e.inputs["db_id"]}
            for e in splits.train]


def copy(splits: Splits, examples: Sequence[Example]) -> list[str | None]:
    train = _public_train(splits)
    answers = []
    for e in examples:
        ranked = ranked_train(e.inputs["question"], e.inputs["db_id"], train)
        answers.append(ranked[0]["sql"] if ranked else None)
    return answers


def copy_adapted(splits: Splits, examples: Sequence[Example]) -> list[str | None]:
    train = _public_train(splits)
    return [copy_adapt(e.inputs["question"], e.inputs["db_id"], train)[0] or None for e in examples]


def oracle_gold_template(splits: Splits, examples: Sequence[Example]) -> list[str | None]:
    """ORACLE: reads each example's gold template (evaluator-side); never shown to a harness."""
    by_template: dict[str, list[dict]] = {}
    for e in splits.train:
        by_template.setdefault((e.target or {}).get("template"), []).append(
            {"question": e.inputs["question"], "sql": e.target["sql"], "db_id": e.inputs["db_id"]})
    answers = []
    for e in examples:
        template = (e.target or {}).get("template")
        pool = by_template.get(template, []) if template is not None else []
        sql, _ = copy_adapt(e.inputs["question"], e.inputs["db_id"], pool)
        answers.append(sql or None)
    return answers


def baselines() -> list[Baseline]:
    return [
        Baseline("copy", "The SQL of the most similar train question (same database, most shared words).", copy),
        Baseline("copy_adapt", "The most similar train question of the same phrasing, its literals replaced "
                               "by the question's (else the most similar train SQL).", copy_adapted),
        Baseline("oracle_gold_template", "ORACLE (reads the gold template, evaluator-side): copy_adapt among "
                                         "train queries of the example's own template; an upper bound of "
                                         "copying, not a method.", oracle_gold_template),
    ]
