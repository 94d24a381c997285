"""Non-LLM baselines of legal_charge, scored by the task's own evaluator (LawBench charge F1).

Every method reads only the train split (facts with their charges) and the facts of the
cases it answers. Hyper-parameters are fixed here, never tuned on val or test:

- ``majority``       the most frequent train charge for every case;
- ``tfidf_1nn``      the charges of the most similar train case (character 1-3-gram TF-IDF, cosine);
- ``tfidf_knn``      k=5 nearest train cases vote, weighted by similarity; a charge is kept when
                     it holds at least half the vote (the top charge always);
- ``tfidf_linear``   one-vs-rest logistic regression on the same features; the top charge
                     always, any other whose probability is at least MULTI_LABEL_RATIO of the top's.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from sia.tasks import Baseline, Example, Splits

FACT_PREFIX = "事实:"
NGRAMS = (1, 3)
KNN_K = 5
MULTI_LABEL_RATIO = 0.5


def _text(example: Example) -> str:
    fact = str(example.inputs.get("fact", ""))
    return fact[len(FACT_PREFIX):] if fact.startswith(FACT_PREFIX) else fact


def _charges(example: Example) -> list[str]:
    return list(example.target or [])


def majority(splits: Splits, examples: Sequence[Example]) -> list[list[str]]:
    counts = Counter(c for e in splits.train for c in _charges(e))
    if not counts:
        raise ValueError("legal_charge baselines need train examples with charges; the train split is empty")
    top = counts.most_common(1)[0][0]
    return [[top] for _ in examples]


def _similarities(splits: Splits, examples: Sequence[Example]) -> np.ndarray:
    """examples x train cosine similarities of character n-gram TF-IDF vectors (fit on train)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not splits.train:
        raise ValueError("legal_charge baselines need train examples with charges; the train split is empty")
    vectoriser = TfidfVectorizer(analyzer="char", ngram_range=NGRAMS, sublinear_tf=True)
    train = vectoriser.fit_transform([_text(e) for e in splits.train])
    query = vectoriser.transform([_text(e) for e in examples])
    return (query @ train.T).toarray()


def vote(neighbours: Sequence[tuple[float, Sequence[str]]]) -> list[str]:
    """Charges holding at least half of the similarity-weighted vote (the top one always);
    ties keep the order of the nearest neighbour's charges."""
    weight: dict[str, float] = {}
    for similarity, charges in neighbours:
        for charge in dict.fromkeys(charges):
            weight[charge] = weight.get(charge, 0.0) + max(similarity, 1e-9)
    if not weight:
        return []
    total = sum(max(s, 1e-9) for s, _ in neighbours)
    ranked = sorted(weight, key=lambda c: -weight[c])   # stable: first seen wins ties
    return [c for c in ranked if 2 * weight[c] >= total] or ranked[:1]


def tfidf_knn(splits: Splits, examples: Sequence[Example], k: int = KNN_K) -> list[list[str]]:
    if not examples:
        return []
    sims = _similarities(splits, examples)
    answers = []
    for row in sims:
        best = np.argsort(-row, kind="stable")[:k]
        answers.append(vote([(float(row[i]), _charges(splits.train[i])) for i in best]))
    return answers


def tfidf_1nn(splits: Splits, examples: Sequence[Example]) -> list[list[str]]:
    return tfidf_knn(splits, examples, k=1)


def tfidf_linear(splits: Splits, examples: Sequence[Example]) -> list[list[str]]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    if not examples:
        return []
    if not splits.train:
        raise ValueError("legal_charge baselines need train examples with charges; the train split is empty")
    binariser = MultiLabelBinarizer()
    y = binariser.fit_transform([_charges(e) for e in splits.train])
    vectoriser = TfidfVectorizer(analyzer="char", ngram_range=NGRAMS, sublinear_tf=True)
    x = vectoriser.fit_transform([_text(e) for e in splits.train])
    classes = list(binariser.classes_)
    if len(classes) == 1:
        return [[classes[0]] for _ in examples]
    # Charges seen once still get a classifier: C is high because the features are many and
    # the cases few (the default C=1 predicts the frequent charges for everything).
    model = OneVsRestClassifier(LogisticRegression(C=20.0, solver="liblinear")).fit(x, y)
    proba = model.predict_proba(vectoriser.transform([_text(e) for e in examples]))
    answers = []
    for row in proba:
        top = float(row.max())
        order = np.argsort(-row, kind="stable")
        answers.append([classes[i] for i in order if row[i] >= MULTI_LABEL_RATIO * top and row[i] > 0])
    return answers


def baselines() -> list[Baseline]:
    return [
        Baseline("majority", "The most frequent train charge for every case.", majority),
        Baseline("tfidf_1nn", "The charges of the most similar train case (character 1-3-gram TF-IDF, "
                              "cosine).", tfidf_1nn),
        Baseline("tfidf_knn", f"The {KNN_K} most similar train cases vote (similarity-weighted, "
                              f"charges with half the vote).", tfidf_knn),
        Baseline("tfidf_linear", "Character TF-IDF + one-vs-rest logistic regression; the top charge and "
                                 f"any with >= {MULTI_LABEL_RATIO:g} of its probability.", tfidf_linear),
    ]
