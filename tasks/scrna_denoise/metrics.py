"""The OpenProblems denoising metrics, normalised so that 0 = no denoising, 1 = perfect.

- ``mse``: normalise prediction and test counts to 1e4 per cell, log1p, mean squared error.
- ``poisson``: scale the prediction by (test total / train total), then the mean Poisson
  negative log-likelihood ``pred - test * log(pred + 1e-6)`` (constant terms dropped).
  OpenProblems v1 passed these two arguments in swapped order, so an all-zero prediction
  scored near perfect there; this is the order the likelihood needs.

Reference points, computed on the same cells: "no denoising" predicts the train counts,
"perfect" predicts the test counts (scaled to the train total, so the Poisson scaling maps
them back onto the test counts). Both losses are minimised by the perfect prediction, so a
normalised score is at most 1; it is negative when a prediction is worse than the input.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TARGET_SUM = 1e4
POISSON_EPS = 1e-6


def log_normalise(counts: np.ndarray) -> np.ndarray:
    """log1p of counts scaled to 1e4 per cell; all-zero cells stay zero (as in scanpy)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(counts * scale)


def mse(pred: np.ndarray, test: np.ndarray) -> float:
    return float(np.mean((log_normalise(pred) - log_normalise(test)) ** 2))


def poisson(pred: np.ndarray, test: np.ndarray, train: np.ndarray) -> float:
    pred = np.asarray(pred, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    scaled = pred * (test.sum() / np.asarray(train, dtype=np.float64).sum())
    return float(np.mean(scaled - test * np.log(scaled + POISSON_EPS)))


def perfect_prediction(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """The test counts, scaled so that the Poisson metric's rescaling returns them exactly."""
    test = np.asarray(test, dtype=np.float64)
    return test * (np.asarray(train, dtype=np.float64).sum() / test.sum())


@dataclass(frozen=True)
class Scores:
    mse: float
    poisson: float
    mse_norm: float
    poisson_norm: float

    @property
    def score(self) -> float:
        """The headline: the mean of the two normalised scores."""
        return (self.mse_norm + self.poisson_norm) / 2

    def as_dict(self) -> dict[str, float]:
        return {"score": self.score, "mse_norm": self.mse_norm,
                "poisson_norm": self.poisson_norm, "mse": self.mse, "poisson": self.poisson}


class References:
    """The no-denoising and perfect losses of one (train, test) pair, computed once."""

    def __init__(self, train: np.ndarray, test: np.ndarray):
        self.train = np.asarray(train, dtype=np.float64)
        self.test = np.asarray(test, dtype=np.float64)
        perfect = perfect_prediction(self.train, self.test)
        self.mse_none, self.mse_perfect = mse(self.train, self.test), mse(perfect, self.test)
        self.poisson_none = poisson(self.train, self.test, self.train)
        self.poisson_perfect = poisson(perfect, self.test, self.train)

    def score(self, pred: np.ndarray) -> Scores:
        m = mse(pred, self.test)
        p = poisson(pred, self.test, self.train)
        return Scores(m, p, _normalise(m, self.mse_none, self.mse_perfect),
                      _normalise(p, self.poisson_none, self.poisson_perfect))


def _normalise(value: float, none: float, perfect: float) -> float:
    span = none - perfect
    return float((none - value) / span) if span > 0 else 0.0


def answer_problem(answer, shape: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """(matrix, "") when ``answer`` is a valid prediction of ``shape``, else (None, why);
    the evaluator marks the latter ``failure="format"``."""
    if answer is None:
        return None, "not a valid prediction: the harness returned no answer (missing)"
    try:
        matrix = np.asarray(answer, dtype=np.float64)
    except (TypeError, ValueError):
        return None, f"not a valid prediction: a {type(answer).__name__}, not a numeric matrix"
    if matrix.shape != tuple(shape):
        return None, f"not a valid prediction: shape {matrix.shape}, expected {tuple(shape)} (cells x genes)"
    if not np.all(np.isfinite(matrix)):
        return None, f"not a valid prediction: {int(np.sum(~np.isfinite(matrix)))} NaN or infinite values"
    if matrix.min() < 0:
        return None, (f"not a valid prediction: {int(np.sum(matrix < 0))} negative values (min "
                      f"{matrix.min():.3g}); expression must be >= 0, clip it")
    return matrix, ""
