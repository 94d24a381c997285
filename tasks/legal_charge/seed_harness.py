"""Seed harness for legal_charge: LawBench's plain zero-shot prompt, the answer read back.

Stdlib only (it runs in a sandboxed worker). Knobs, all off in the seed:
  system_prompt     cast the model as a criminal judge
  label_list        list the valid charge names (ctx.resources["labels"], most frequent
                    first) in the prompt, cut to label_list_chars characters
  few_shot          k train cases most similar by character bigrams, as earlier chat turns
                    (facts cut to shot_chars characters)
  max_fact_chars    the case fact is cut to this many characters (2k-token context)
  parser            "raw": the [罪名]...<eoa> span as text; "nearest": the closest valid
                    charge names by character overlap, as a list
  retry             when no valid charge name came back, ask once more listing valid names
  votes             > 1: sample that many answers, keep the charges at least half name
  retrieval_vote    "off"; "fallback": when no valid charge name came back, answer the vote of
                    the vote_k train cases most similar by character-bigram TF-IDF (cosine,
                    weighted by similarity, the charges with half the vote); "ensemble": the
                    model's names join that vote with ensemble_weight of its total weight;
                    "only": the vote without asking the model
"""
import math
import re
from collections import Counter

OPTIONS = {
    "system_prompt": False,
    "label_list": False,
    "label_list_chars": 240,
    "few_shot": 0,
    "shot_chars": 120,
    "max_fact_chars": 300,
    "parser": "raw",
    "retry": False,
    "votes": 1,
    "retrieval_vote": "off",
    "vote_k": 5,
    "vote_chars": 600,
    "ensemble_weight": 0.5,
    "temperature": 0.7,
    "max_tokens": 40,
}

ANSWER_OPEN, ANSWER_CLOSE = "[罪名]", "<eoa>"
FACT_PREFIX = "事实:"
DEFAULT_INSTRUCTION = (
    "请你模拟法官依据下面事实给出罪名，只需要给出罪名的名称，将答案写在[罪名]和<eoa>之间。"
    "例如[罪名]盗窃;诈骗<eoa>。请你严格按照这个格式回答。"
)
SYSTEM_PROMPT = "你是一名熟悉中华人民共和国刑法的刑事法官，只按要求的格式给出罪名。"
# Label names contain "、", so it is not a separator between names.
PIECE_SEPARATORS = r"[;；,，。\n\s]+"
NEAREST_MIN_OVERLAP = 0.5


# ---- prompt -------------------------------------------------------------------------------
def _labels(ctx):
    return list((getattr(ctx, "resources", None) or {}).get("labels") or [])


def _label_text(labels, max_chars):
    shown, used = [], 0
    for label in labels:
        if shown and used + len(label) + 1 > max_chars:
            break
        shown.append(label)
        used += len(label) + 1
    return ";".join(shown)


def _fact(text, max_chars):
    text = (text or "").strip()
    body = text[len(FACT_PREFIX):] if text.startswith(FACT_PREFIX) else text
    return FACT_PREFIX + body[:max_chars]


def _bigrams(text):
    text = text[len(FACT_PREFIX):] if text.startswith(FACT_PREFIX) else text
    return {text[i:i + 2] for i in range(len(text) - 1)}


_INDEX = {"key": None, "grams": []}


def _train_index(train):
    # Bigram sets of the train facts, built once per worker process (resources do not change).
    key = (id(train), len(train), train[0].get("fact"), train[-1].get("fact"))
    if _INDEX["key"] != key:
        _INDEX["key"], _INDEX["grams"] = key, [_bigrams(t.get("fact", "")[:600]) for t in train]
    return _INDEX["grams"]


def retrieve(fact, train, k):
    """The k train cases most similar to ``fact`` (Jaccard of character bigrams), most similar
    last so it sits next to the question. The case itself is skipped (SFT renders train)."""
    if k <= 0 or not train:
        return []
    query = _bigrams(fact[:600])
    similarity = {}
    for i, grams in enumerate(_train_index(train)):
        if train[i].get("fact", "").strip() != fact.strip():
            similarity[i] = len(query & grams) / (len(query | grams) or 1)
    best = sorted(similarity, key=lambda i: (-similarity[i], i))[:k]
    return [train[i] for i in reversed(best)]


_VOTE_INDEX = {"key": None}


def _gram_counts(text):
    text = text[len(FACT_PREFIX):] if text.startswith(FACT_PREFIX) else text
    return Counter(text[i:i + 2] for i in range(len(text) - 1))


def _unit(weights):
    norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
    return {g: w / norm for g, w in weights.items()}


def _tfidf(counts, idf):
    # sublinear tf; bigrams unseen in train carry no weight (they match nothing)
    return _unit({g: (1 + math.log(c)) * idf[g] for g, c in counts.items() if g in idf})


def _vote_index(train, max_chars):
    """Train TF-IDF vectors and the idf table, built once per worker process."""
    key = (id(train), len(train), max_chars, train[0].get("fact") if train else None)
    if _VOTE_INDEX["key"] != key:
        counts = [_gram_counts(t.get("fact", "")[:max_chars]) for t in train]
        df = Counter(g for c in counts for g in c)
        idf = {g: math.log((1 + len(train)) / (1 + n)) + 1 for g, n in df.items()}
        _VOTE_INDEX.update(key=key, idf=idf, vectors=[_tfidf(c, idf) for c in counts])
    return _VOTE_INDEX


def neighbours(fact, train, k, max_chars=None):
    """(similarity, charges) of the k train cases nearest to ``fact`` by TF-IDF cosine over
    character bigrams, nearest first; the case itself is skipped."""
    max_chars = OPTIONS["vote_chars"] if max_chars is None else max_chars
    if k <= 0 or not train:
        return []
    index = _vote_index(train, max_chars)
    query = _tfidf(_gram_counts(fact[:max_chars]), index["idf"])
    scored = []
    for i, vector in enumerate(index["vectors"]):
        if train[i].get("fact", "").strip() == fact.strip():
            continue
        small, large = (query, vector) if len(query) < len(vector) else (vector, query)
        scored.append((-sum(w * large.get(g, 0.0) for g, w in small.items()), i))
    return [(-s, list(train[i].get("charges") or [])) for s, i in sorted(scored)[:k]]


def vote(nearest, extra=(), extra_weight=0.0):
    """Charges holding at least half of the similarity-weighted vote (the top one always).
    ``extra`` names (the model's) get ``extra_weight`` times the neighbours' total weight."""
    weight, total = {}, sum(max(s, 1e-9) for s, _ in nearest)
    for similarity, charges in nearest:
        for charge in dict.fromkeys(charges):
            weight[charge] = weight.get(charge, 0.0) + max(similarity, 1e-9)
    bonus = extra_weight * (total or 1.0)
    for charge in dict.fromkeys(extra):
        weight[charge] = weight.get(charge, 0.0) + bonus
    total += bonus if extra else 0.0
    ranked = sorted(weight, key=lambda c: -weight[c])
    return [c for c in ranked if 2 * weight[c] >= total] or ranked[:1]


def retrieval_answer(inputs, ctx, model_names=()):
    train = (getattr(ctx, "resources", None) or {}).get("train") or []
    nearest = neighbours(inputs.get("fact", ""), train, OPTIONS["vote_k"])
    weight = OPTIONS["ensemble_weight"] if model_names else 0.0
    names = vote(nearest, model_names, weight)
    ctx.log("tool_call", name="retrieval_vote", args={"k": OPTIONS["vote_k"], "model": list(model_names)},
            result={"charges": names, "similarity": [round(s, 3) for s, _ in nearest]})
    return names


def build_messages(inputs, ctx, few_shot=None, label_list=None):
    """The chat prompt; ``few_shot``/``label_list`` override OPTIONS (the retry turns them off
    to stay inside the context)."""
    few_shot = OPTIONS["few_shot"] if few_shot is None else few_shot
    label_list = OPTIONS["label_list"] if label_list is None else label_list
    resources = getattr(ctx, "resources", None) or {}
    instruction = inputs.get("instruction") or resources.get("instruction") or DEFAULT_INSTRUCTION
    header = instruction
    if label_list and _labels(ctx):
        header += "\n可选罪名：" + _label_text(_labels(ctx), OPTIONS["label_list_chars"])
    fact = _fact(inputs.get("fact", ""), OPTIONS["max_fact_chars"])

    messages = []
    if OPTIONS["system_prompt"]:
        messages.append({"role": "system", "content": SYSTEM_PROMPT})
    shots = retrieve(inputs.get("fact", ""), resources.get("train") or [], few_shot)
    for i, shot in enumerate(shots):
        shot_fact = _fact(shot["fact"], OPTIONS["shot_chars"])
        messages.append({"role": "user", "content": header + "\n" + shot_fact if i == 0 else shot_fact})
        messages.append({"role": "assistant", "content": render_answer(shot["charges"])})
    messages.append({"role": "user", "content": fact if shots else header + "\n" + fact})
    return messages


def render_answer(charges):
    return ANSWER_OPEN + ";".join(charges) + ANSWER_CLOSE


# ---- answer -------------------------------------------------------------------------------
def extract_span(text):
    """The text after the last non-empty "[罪名]" up to "<eoa>"; the raw text when absent."""
    text = text or ""
    spans = [part.split(ANSWER_CLOSE)[0].strip() for part in text.split(ANSWER_OPEN)[1:]]
    spans = [s for s in spans if s]
    if spans:
        return spans[-1]
    text = text.split(ANSWER_CLOSE)[0].strip()
    for prefix in ("罪名:", "罪名："):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    return text


def exact_labels(text, labels):
    """Labels found in the text; a label inside a longer found one (诈骗 in 合同诈骗) is dropped."""
    found = [label for label in labels if label and label in text]
    return [a for a in found if not any(a != b and a in b for b in found)]


def _overlap(piece, label):
    a, b = set(piece), set(label)
    return 2 * len(a & b) / (len(a) + len(b)) if a and b else 0.0


def nearest_labels(text, labels):
    """Per piece of the text (split on ; , 。 and spaces): the valid names it contains, else
    the label sharing the most characters with it (Dice >= NEAREST_MIN_OVERLAP; ties go to
    the earlier, more frequent label)."""
    chosen = []
    for piece in re.split(PIECE_SEPARATORS, text or ""):
        piece = piece.strip("[]【】()（）\"'“”")
        if piece.endswith("罪"):
            piece = piece[:-1]
        if not piece or not labels:
            continue
        found = exact_labels(piece, labels)
        if not found and len(piece) <= 30:
            # max() keeps the first of equal scores: the more frequent label.
            best = max(labels, key=lambda label: _overlap(piece, label))
            found = [best] if _overlap(piece, best) >= NEAREST_MIN_OVERLAP else []
        chosen += [label for label in found if label not in chosen]
    return [a for a in chosen if not any(a != b and a in b for b in chosen)]


def parse(text, labels):
    """(answer to return, valid labels in it) for one completion, per OPTIONS["parser"]."""
    span = extract_span(text)
    if OPTIONS["parser"] == "nearest":
        names = nearest_labels(span, labels)
        return names, names
    return span, exact_labels(span, labels)


def _majority(label_lists, n):
    counts = Counter(label for names in label_lists for label in set(names))
    kept = [label for label, c in counts.most_common() if 2 * c >= n]
    return kept or [label for label, _ in counts.most_common(1)]


def _ask(messages, ctx):
    kwargs = {"max_tokens": OPTIONS["max_tokens"], "stop": [ANSWER_CLOSE]}
    if OPTIONS["votes"] > 1:
        samples = ctx.llm.sample(messages, OPTIONS["votes"], temperature=OPTIONS["temperature"], **kwargs)
        return [c.text for c in samples]
    return [ctx.llm.chat(messages, temperature=0.0, **kwargs).text]


def _answer(texts, labels):
    parsed = [parse(text, labels) for text in texts]
    if len(parsed) == 1:
        return parsed[0]
    names = _majority([valid for _, valid in parsed], len(parsed))
    return (names, names) if names else parsed[0]


def solve(inputs, ctx):
    mode = OPTIONS["retrieval_vote"]
    if mode == "only":
        return retrieval_answer(inputs, ctx)
    answer, valid = solve_with_model(inputs, ctx)
    if mode == "fallback" and not valid:
        ctx.log("fallback", reason="no valid charge name from the model: the neighbours' vote answers")
        return retrieval_answer(inputs, ctx)
    if mode == "ensemble":
        return retrieval_answer(inputs, ctx, valid)
    return answer


def solve_with_model(inputs, ctx):
    """(answer, the valid charge names in it) from the model, retry included."""
    labels = _labels(ctx)
    messages = build_messages(inputs, ctx)
    texts = _ask(messages, ctx)
    answer, valid = _answer(texts, labels)
    if OPTIONS["retry"] and not valid:
        ctx.log("retry", reason="no valid charge name in the output", output=texts[0][:100])
        feedback = (
            "你的回答中没有有效的罪名。请只从以下罪名中选择："
            + _label_text(labels, OPTIONS["label_list_chars"])
            + "。按[罪名]罪名<eoa>的格式回答。"
        )
        # Without few-shot turns or the label list (the feedback lists labels): fits 2k tokens.
        retry_messages = build_messages(inputs, ctx, few_shot=0, label_list=False) + [
            {"role": "assistant", "content": texts[0]},
            {"role": "user", "content": feedback},
        ]
        retry_answer, retry_valid = _answer(_ask(retry_messages, ctx), labels)
        if retry_valid:
            answer, valid = retry_answer, retry_valid
    return answer, valid


def sft_pair(inputs, target, ctx):
    """A train example rendered through this harness's prompt and answer format."""
    return {"messages": build_messages(inputs, ctx), "completion": render_answer(list(target))}
