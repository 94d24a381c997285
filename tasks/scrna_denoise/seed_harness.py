"""Seed harness for scrna_denoise: the model picks a denoising tool call from a short menu,
the harness runs it on the train counts and returns the denoised rows the example asks for.

Inputs: {"cells": [row indices into the train-count matrix], "n_genes": int}.
Answer: float32 array of shape (len(cells), n_genes), non-negative.
ctx.files["train_counts"] is a scipy CSR .npz of ALL cells' train counts (cells x genes);
a method may use every cell to denoise the ones asked for.

The primitives below are self-contained (numpy and scipy.sparse) so that an edit can change them;
``run_method`` runs the method on all cells, ``answer`` the output options on an example's cells.
"""
from __future__ import annotations

import contextlib
import re

import numpy as np
import scipy.sparse as sp

OPTIONS = {
    "ask_model": True,               # False: run default_pipeline without asking the model
    "default_pipeline": "knn(10)",   # used when the model is not asked or gives no tool call
    "retry_unparsed": False,         # ask once more, with feedback, when a reply has no call
    "sharpen": 1.0,                  # raise each cell's profile to this power (>1 helps the MSE)
    "mix": 0.0,                      # share of the unsharpened profile kept beside the sharpened one
    "loss_weight": 0.0,              # > 0: output the profile of least expected loss (MSE weighted
                                     # by this against Poisson) instead of sharpen/mix
    "mcv_tune": False,               # choose method, parameters and output settings by molecular
                                     # cross-validation on an inner split of the train counts
    "clip_negative": False,          # clip negative output values to 0
    "round_output": False,           # round the output to integer counts
    "max_tokens": 24,
}

# ---- denoising primitives (dense cells x genes, output keeps each cell's library size) ----


def row_sums(matrix):
    return matrix.sum(axis=1, keepdims=True)


def normalise_rows(matrix):
    sums = row_sums(matrix)
    return np.divide(matrix, sums, out=np.zeros_like(matrix), where=sums > 0)


def rescale_to_library(pred, counts):
    sums = row_sums(pred)
    return np.divide(pred * row_sums(counts), sums, out=counts.astype(np.float64), where=sums > 0)


def top_singular(matrix, rank, n_iter=4):
    """The top ``rank`` singular triplets by a seeded randomized range finder: much faster
    than a full SVD for the ranks used here, and deterministic."""
    k = max(1, min(rank, *matrix.shape))
    width = k + 10
    if width >= min(matrix.shape):
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        return u[:, :k], s[:k], vt[:k]
    q = matrix @ np.random.default_rng(0).standard_normal((matrix.shape[1], width))
    for _ in range(n_iter):  # power iterations sharpen the spectrum's decay
        q = matrix @ (matrix.T @ np.linalg.qr(q)[0])
    q = np.linalg.qr(q)[0]
    u, s, vt = np.linalg.svd(q.T @ matrix, full_matrices=False)
    return (q @ u)[:, :k], s[:k], vt[:k]


def pca_scores(matrix, n_components):
    u, s, _ = top_singular(matrix - matrix.mean(axis=0), n_components)
    return u * s


def squared_distances(points):
    norms = np.sum(points ** 2, axis=1)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * points @ points.T, 0)


def nearest(points, k):
    d = squared_distances(points)
    np.fill_diagonal(d, -1.0)
    k = min(k, len(points))
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(d, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def pooling_matrix(neighbours):
    """Sparse cells x cells matrix with a 1 for each cell's neighbours: a product with it
    sums the neighbours' counts without a cells x k x genes temporary."""
    n, k = neighbours.shape
    return sp.csr_matrix((np.ones(n * k), neighbours.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def knn_smooth(counts, k=10, n_pcs=10):
    """Pool each cell's counts with its k nearest cells (neighbourhood grown 1, 3, 7, ...)."""
    counts = np.asarray(counts, dtype=np.float64)
    smoothed = counts
    steps = [min(k, 2 ** (i + 1) - 1) for i in range(int(np.ceil(np.log2(k + 1))))] or [k]
    for step in steps:
        space = np.sqrt(normalise_rows(smoothed) * np.median(row_sums(smoothed)))
        neighbours = nearest(pca_scores(space, n_pcs), step + 1)
        smoothed = pooling_matrix(neighbours) @ counts
    return rescale_to_library(smoothed, counts)


def sqrt_space(counts: np.ndarray) -> np.ndarray:
    """Library-size normalised (rows sum to 1), then square-rooted: MAGIC's input as
    OpenProblems prepares it."""
    return np.sqrt(normalise_rows(np.asarray(counts, dtype=np.float64)))


def log_space(counts: np.ndarray) -> np.ndarray:
    """log1p of counts scaled to 1e4 per cell (ALRA's own ``normalize_data``)."""
    return np.log1p(normalise_rows(np.asarray(counts, dtype=np.float64)) * 1e4)


def alpha_decay_kernel(points: np.ndarray, k: int, decay: float, k_max: int,
                       threshold: float = 1e-4) -> sp.csr_matrix:
    """MAGIC's adaptive alpha-decay kernel: cell i's bandwidth is the distance to its k-th
    neighbour (itself not counted); affinities exp(-(d / bandwidth) ** decay) to its k_max
    nearest cells (itself included), those under ``threshold`` dropped; symmetrised as
    (K + K^T) / 2."""
    n = len(points)
    width = min(n, k_max + 1)
    d = np.sqrt(squared_distances(points))
    np.fill_diagonal(d, 0.0)
    near = np.argsort(d, axis=1, kind="stable")[:, :width]
    dist = np.take_along_axis(d, near, axis=1)
    bandwidth = np.maximum(dist[:, min(k, width - 1)], np.finfo(float).eps)
    affinity = np.exp(-(dist / bandwidth[:, None]) ** decay)
    affinity[affinity < threshold] = 0.0
    kernel = sp.csr_matrix((affinity.ravel(), near.ravel(), np.arange(0, n * width + 1, width)), shape=(n, n))
    return ((kernel + kernel.T) / 2).tocsr()


def markov(kernel: sp.csr_matrix) -> sp.csr_matrix:
    sums = np.asarray(kernel.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.maximum(sums, 1e-300)) @ kernel


def magic(counts: np.ndarray, t: int = 3, k: int = 5, decay: float = 1.0,
          n_pcs: int = 100, k_max: int | None = None) -> np.ndarray:
    """MAGIC (van Dijk et al. 2018) as magic-impute 3.0 runs it with the exact solver, on the
    input OpenProblems gives it: library-size normalise, square root, PCA (n_pcs), the
    alpha-decay kernel (k, decay, k_max = 3k), a Markov matrix, t diffusion steps of the full
    data, squared back; each cell keeps its library size."""
    t = max(1, int(t))
    return magic_steps(counts, (t,), k, decay, n_pcs, k_max)[t]


def magic_steps(counts, ts, k=5, decay=1.0, n_pcs=100, k_max=None):
    """``{t: magic(counts, t, k, ...)}`` for every t in ``ts`` from one kernel and one walk of
    diffusion steps (what a search over t needs)."""
    counts = np.asarray(counts, dtype=np.float64)
    space = sqrt_space(counts)
    points = pca_scores(space, n_pcs) if space.shape[1] > n_pcs else space
    operator = markov(alpha_decay_kernel(points, k, decay, 3 * k if k_max is None else k_max))
    wanted, out, diffused = {max(1, int(t)) for t in ts}, {}, space
    for step in range(1, max(wanted) + 1):  # t products with the data: cheaper than a matrix power
        diffused = operator @ diffused
        if step in wanted:
            out[step] = rescale_to_library(diffused ** 2, counts)
    return out


def truncated_svd(matrix: np.ndarray, rank: int, n_iter: int = 4) -> np.ndarray:
    u, s, vt = top_singular(matrix, rank, n_iter)
    return (u * s) @ vt


def spectral_gap_rank(matrix: np.ndarray, k_max: int = 100, noise_start: int = 80,
                      threshold: float = 6.0) -> int:
    """ALRA's ``choose_k``: the last gap between consecutive singular values (of the top
    k_max) that lies more than ``threshold`` standard deviations above the mean gap of the
    noise singular values (noise_start..k_max)."""
    k_max = min(k_max, min(matrix.shape) - 1)
    _, s, _ = top_singular(matrix, k_max, n_iter=2)
    gaps = s[:-1] - s[1:]
    noise = gaps[max(0, min(noise_start, len(gaps)) - 2):]   # R: diffs[(noise_start:k_max) - 1]
    if len(noise) < 2 or noise.std(ddof=1) == 0:
        return max(1, min(10, len(s)))
    above = np.nonzero((gaps - noise.mean()) / noise.std(ddof=1) > threshold)[0]
    return int(above[-1] + 1) if above.size else 1


def alra(counts: np.ndarray, rank: int = 0, quantile: float = 0.001) -> np.ndarray:
    """ALRA (Linderman et al. 2022), as its authors' R code runs it: log-normalise, rank k by
    the spectral-gap rule (``rank=0``) or as given, a rank-k approximation, each gene's
    values up to the magnitude of its ``quantile`` quantile set to zero (likely biological
    zeros), the remaining values of each gene rescaled to the mean and standard deviation of
    its observed nonzero values, negatives to zero, and observed values the completion
    zeroed put back. Back on the count scale (expm1); each cell keeps its library size."""
    counts = np.asarray(counts, dtype=np.float64)
    space = log_space(counts)
    k = spectral_gap_rank(space) if not rank else int(rank)
    approx = truncated_svd(space, k, n_iter=10)
    floor = np.abs(np.quantile(approx, quantile, axis=0))
    approx[approx <= floor[None, :]] = 0.0
    approx = match_nonzero_moments(approx, space)
    approx = np.maximum(approx, 0.0)
    observed = space > 0
    lost = observed & (approx == 0)
    approx[lost] = space[lost]
    return rescale_to_library(np.expm1(approx), counts)


def match_nonzero_moments(approx: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Per gene, scale and shift the nonzero completed values so their mean and standard
    deviation are those of the gene's nonzero observed values (genes where either spread
    is undefined or the completion's is zero stay as they are); zeros stay zero."""
    out = approx.copy()
    for gene in range(approx.shape[1]):
        a, o = approx[:, gene], original[:, gene]
        a_nz, o_nz = a[a != 0], o[o != 0]
        if a_nz.size < 2 or o_nz.size < 2:
            continue
        sd_a, sd_o = a_nz.std(ddof=1), o_nz.std(ddof=1)
        if sd_a == 0:
            continue
        out[a != 0, gene] = (a_nz - a_nz.mean()) * (sd_o / sd_a) + o_nz.mean()
    return out


def lowrank(counts, rank=20):
    """Truncated SVD of library-normalised counts; can return negative values."""
    counts = np.asarray(counts, dtype=np.float64)
    return truncated_svd(normalise_rows(counts), rank) * row_sums(counts)


def sharpen(pred, counts, power):
    """Raise each cell's normalised profile to ``power`` and restore its library size."""
    return rescale_to_library(normalise_rows(np.maximum(pred, 0)) ** power, counts)


def sharpen_mix(pred, counts, power, mix):
    """``sharpen`` with a share ``mix`` of the unsharpened profile added back: sharpening
    pushes rare genes towards 0, which the log-space MSE rewards, while the mixed-in share
    keeps them above 0, where the Poisson likelihood of a held-out count needs them."""
    if mix <= 0:
        return sharpen(pred, counts, power)
    profile = normalise_rows(np.maximum(pred, 0))
    return rescale_to_library((1 - mix) * normalise_rows(profile ** power) + mix * profile, counts)


def expected_log1p(mu, scale):
    """E[log1p(scale * Y)] for Y ~ Poisson(mu), entrywise (the pmf by its recursion)."""
    top = float(mu.max()) if mu.size else 0.0
    pmf, out = np.exp(-mu), np.zeros_like(mu)
    for y in range(1, int(min(400, np.ceil(top + 8 * np.sqrt(top) + 10))) + 1):
        pmf = pmf * mu / y
        out += pmf * np.log1p(scale * y)
    return out


def expected_loss(pred, counts, fraction, weight, outer=8, inner=14):
    """Per cell, the profile h (summing to 1) of least expected task loss when the held-out
    counts are Y ~ Poisson(mu), mu = pred's profile times the cell's expected held-out depth
    T = train total * (1 - fraction) / fraction:
    ``weight * sum_j (log1p(1e4 h_j) - E[log1p(1e4 Y_j / T)])^2 - sum_j mu_j log h_j``
    (the log MSE, and the Poisson likelihood, whose linear part the sum fixes). Stationarity
    gives one equation per entry and a multiplier per cell: bisection on log h for each entry,
    and on the multiplier for each cell until the profile sums to 1 (within a few percent; the
    final rescaling makes it exact). Back on the count scale."""
    counts = np.asarray(counts, dtype=np.float64)
    depth = np.maximum(row_sums(counts) * (1 - fraction) / fraction, 1e-9)
    mu = normalise_rows(np.maximum(np.asarray(pred, dtype=np.float64), 0)) * depth
    target = expected_log1p(mu, 1e4 / depth)

    def profile(multiplier):
        lo, hi = np.full_like(mu, np.log(1e-12)), np.zeros_like(mu)
        for _ in range(inner):
            mid = (lo + hi) / 2
            h = np.exp(mid)
            slope = 2 * weight * (np.log1p(1e4 * h) - target) * (1e4 * h / (1 + 1e4 * h)) - mu + multiplier * h
            up = slope > 0
            hi, lo = np.where(up, mid, hi), np.where(up, lo, mid)
        return np.exp((lo + hi) / 2)

    lo, hi = np.log(depth) - 10, np.log(depth) + 3
    for _ in range(outer):  # a larger multiplier gives a smaller profile sum
        mid = (lo + hi) / 2
        big = row_sums(profile(np.exp(mid))) > 1
        lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
    return rescale_to_library(profile(np.exp((lo + hi) / 2)), counts)


def output_stage(pred, counts, settings, fraction):
    """The output settings ``{"sharpen", "mix", "loss_weight"}`` applied to a prediction."""
    if settings["loss_weight"] > 0:
        return expected_loss(pred, counts, fraction, settings["loss_weight"])
    if (settings["sharpen"], settings["mix"]) != (1.0, 0.0):
        return sharpen_mix(pred, counts, settings["sharpen"], settings["mix"])
    return pred


# ---- self-tuning by molecular cross-validation (Batson et al. 2019, noise2self) ------------
# The harness cannot see the held-out molecules, but it can make its own: thin its train
# counts binomially again, denoise the inner train part with each candidate and score the
# prediction of the inner held-out part with the task's metric definitions (copied below).
# The best candidate then runs on the full train counts.

MCV_GRID = {
    "methods": [("magic", {"t": t, "k": k}) for k in (3, 5, 10) for t in (1, 2, 3, 4, 6)]
               + [("knn", {"k": k}) for k in (5, 10, 20)],
    "sharpen": (1.0, 1.5, 2.0, 2.5, 3.0),
    "mix": (0.0, 0.1, 0.2, 0.3, 0.5),
    # expected_loss for the method whose best sharpen/mix scored highest, its weight these
    # multiples of the inner split's Poisson span / MSE span (1: the score's own balance)
    "loss_weight": (0.5, 1.0, 2.0),
    # above this many cells, tune on a seeded subsample of them (the chosen settings then run on
    # all cells): tuning time stays flat, the per-example time limit holds on large data
    "cells": 1000,
    # likewise genes: the candidates' cost grows with cells x genes (a 559-cell matrix with 9,810
    # genes timed out at 60 s); a seeded uniform subsample keeps the score an estimate of the
    # task's (a mean over all genes), while tuning costs what pbmc68k's 765 genes cost
    "genes": 1000,
    "seed": 0,
}


def log_normalise(counts):
    totals = row_sums(counts)
    return np.log1p(counts * np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0))


def mcv_losses(pred, test, test_log, scale):
    """(mse, poisson) of ``pred`` as the task defines them: log1p of counts per 1e4, and the
    Poisson negative log-likelihood of ``test`` after scaling by test total / train total."""
    pred = np.asarray(pred, dtype=np.float64)
    mse = float(np.mean((log_normalise(pred) - test_log) ** 2))
    scaled = pred * scale
    return mse, float(np.mean(scaled - test * np.log(scaled + 1e-6)))


def mcv_scorer(train, test):
    """(score, balance): score is pred -> normalised score (mean of normalised mse and
    poisson: 0 = the inner train counts, 1 = the inner held-out counts themselves); balance is
    the Poisson span / the MSE span, the weight of the MSE in the score's own units."""
    test_log, scale = log_normalise(test), test.sum() / max(train.sum(), 1e-300)
    none = mcv_losses(train, test, test_log, scale)
    perfect = mcv_losses(test / scale, test, test_log, scale)

    def score(pred):
        losses = mcv_losses(pred, test, test_log, scale)
        parts = [(n - v) / (n - p) if n > p else 0.0 for v, n, p in zip(losses, none, perfect)]
        return (parts[0] + parts[1]) / 2
    spans = [n - p for n, p in zip(none, perfect)]
    return score, (spans[1] / spans[0] if spans[0] > 0 and spans[1] > 0 else 1.0)


def inner_split(counts, fraction, seed=0):
    """Every count thinned binomially into an inner train part (``fraction`` of it, as the
    task thinned the full counts) and an inner held-out part."""
    inner = np.random.default_rng(seed).binomial(np.rint(counts).astype(np.int64), fraction)
    return inner.astype(np.float64), counts - inner


def method_outputs(name, args_list, counts):
    """[(args, prediction)] of one method for several argument sets; MAGIC shares one kernel
    per k across its t values."""
    if name != "magic":
        return [(args, TOOLS[name][0](counts, **args)) for args in args_list]
    out = []
    for k in sorted({a.get("k", 10) for a in args_list}):
        same = [a for a in args_list if a.get("k", 10) == k]
        steps = magic_steps(counts, [a.get("t", 3) for a in same], k)
        out += [(a, steps[max(1, int(a.get("t", 3)))]) for a in same]
    return out


def mcv_tune(counts, incumbent, fraction, ctx, grid=None):
    """The (call, output settings) that predict an inner held-out split of ``counts`` (or of
    a seeded subsample of its cells, above ``grid["cells"]``) best.
    The incumbent (its call with OPTIONS' output settings) is scored first and wins ties, so
    tuning never picks worse than it on the inner split. Reads nothing but ``counts``."""
    grid = grid or MCV_GRID
    counts = tuning_sample(counts, grid)
    train, test = inner_split(counts, fraction, grid["seed"])
    (score, balance), base = mcv_scorer(train, test), train

    def scored(sub, settings):
        """The inner score of the answer the pipeline would give (clip and round included); an
        answer the evaluator would reject (negative or non-finite) scores 0, as it does there."""
        out = finish(output_stage(sub, base, settings, fraction))
        if not np.all(np.isfinite(out)) or out.min() < 0:
            return 0.0
        value = score(out)
        return value if np.isfinite(value) else 0.0

    own = output_settings()
    best = (scored(TOOLS[incumbent[0]][0](train, **incumbent[1]), own), incumbent, own)
    first, count, leader = best[0], 1, None   # leader: (score, call, prediction) of the best method
    calls = [incumbent] + [c for c in grid["methods"] if c != incumbent]
    for name in dict.fromkeys(n for n, _ in calls):
        for args, sub in method_outputs(name, [a for n, a in calls if n == name], train):
            for power in grid["sharpen"]:
                for mix in grid["mix"] if power != 1.0 else grid["mix"][:1]:   # unsharpened: mix changes nothing
                    settings = {"sharpen": power, "mix": mix, "loss_weight": 0.0}
                    value, count = scored(sub, settings), count + 1
                    if value > best[0]:
                        best = (value, (name, args), settings)
                    if leader is None or value > leader[0]:
                        leader = (value, (name, args), sub)
    for multiple in grid.get("loss_weight", ()) if leader else ():
        settings = {"sharpen": 1.0, "mix": 0.0, "loss_weight": float(multiple * balance)}
        value, count = scored(leader[2], settings), count + 1
        if value > best[0]:
            best = (value, leader[1], settings)
    ctx.log("mcv_tune", chosen={"call": [best[1][0], best[1][1]], **best[2]}, inner_score=round(best[0], 4),
            incumbent_inner_score=round(first, 4), candidates=count, fraction=fraction, tuned_cells=len(counts),
            tuned_genes=counts.shape[1])
    return best[1], best[2]


def tuning_sample(counts, grid):
    """The cells and genes tuning runs on: seeded subsamples above ``grid["cells"]`` cells and
    ``grid.get("genes")`` genes (so its cost is bounded whatever the data's size); cells left
    without counts on the kept genes are dropped (nothing to normalise)."""
    rng = np.random.default_rng(grid["seed"])
    if len(counts) > grid["cells"]:
        counts = counts[np.sort(rng.choice(len(counts), grid["cells"], replace=False))]
    genes = grid.get("genes")
    if genes and counts.shape[1] > genes:
        counts = counts[:, np.sort(np.random.default_rng([grid["seed"], 1]).choice(counts.shape[1], genes,
                                                                                    replace=False))]
        counts = counts[counts.sum(axis=1) > 0]
    return counts


# ---- tool dispatch -----------------------------------------------------------------------

# name -> (function, argument names, defaults, (low, high) bounds per argument)
TOOLS = {
    "knn": (knn_smooth, ("k",), (10,), ((1, 100),)),
    "magic": (magic, ("t", "k"), (3, 10), ((1, 12), (2, 100))),
    "alra": (alra, ("rank",), (20,), ((1, 100),)),
    "lowrank": (lowrank, ("rank",), (20,), ((1, 100),)),
}
CALL = re.compile(r"\b(knn|magic|alra|lowrank)\b\s*(?:\(([^)]*)\))?", re.IGNORECASE)

MENU = """Tools:
knn(k) - pool each cell with its k nearest cells
magic(t, k) - diffuse t steps on a k-neighbour cell graph
alra(rank) - low-rank completion that keeps likely-true zeros
lowrank(rank) - truncated SVD of normalised counts"""


def parse_call(text):
    """The first tool call in ``text`` as (name, {arg: value}), or None. Missing arguments
    take their defaults; values are clamped to each tool's bounds."""
    match = CALL.search(text or "")
    if match is None:
        return None
    name = match.group(1).lower()
    _, arg_names, defaults, bounds = TOOLS[name]
    numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", match.group(2) or "")]
    args = {}
    for i, arg in enumerate(arg_names):
        value = numbers[i] if i < len(numbers) else defaults[i]
        low, high = bounds[i]
        args[arg] = int(min(max(round(value), low), high))
    return name, args


def choose_call(counts, ctx):
    """Ask the model for a tool call; fall back to the default pipeline when it gives none."""
    if OPTIONS["ask_model"]:
        # One user turn: the small model ignores a system turn's instructions.
        messages = [{"role": "user", "content": f"Pick a denoising method for single-cell RNA counts "
                                                f"({describe(counts)}).\n{MENU}\nReply with one tool "
                                                f"call, e.g. {OPTIONS['default_pipeline']}."}]
        reply = ctx.llm.chat(messages, max_tokens=OPTIONS["max_tokens"]).text
        call = parse_call(reply)
        if call is None and OPTIONS["retry_unparsed"]:
            ctx.log("retry", reason="no tool call in the reply", reply=reply[:200])
            messages += [{"role": "assistant", "content": reply},
                         {"role": "user", "content": "That has no tool call. Reply with exactly one, "
                                                     "like alra(20) or knn(10)."}]
            reply = ctx.llm.chat(messages, max_tokens=OPTIONS["max_tokens"]).text
            call = parse_call(reply)
        if call is not None:
            return call
        ctx.log("fallback", reason="no tool call in the model's reply", reply=reply[:200],
                pipeline=OPTIONS["default_pipeline"])
    return parse_call(OPTIONS["default_pipeline"]) or ("knn", {"k": 10})


def describe(counts):
    per_cell = counts.sum(axis=1)
    return (f"{counts.shape[0]} cells x {counts.shape[1]} genes, {np.mean(counts > 0):.0%} nonzero, "
            f"median {np.median(per_cell):.0f} counts per cell")


def denoise(counts, call, ctx):
    """The whole pipeline on all cells: the method, then the output options."""
    return answer(run_method(counts, call, ctx), counts, slice(None), ctx)


def run_method(counts, call, ctx):
    """The method on all cells (it uses every cell to denoise each): the tool call, or with
    mcv_tune the call the inner split chose. Returns (prediction, output settings, fraction):
    the output stage works cell by cell, so ``answer`` applies it to an example's own cells
    and an example's cost grows with its cells, not with all of them."""
    settings = output_settings()
    fraction = 0.9
    if OPTIONS["mcv_tune"] or settings["loss_weight"] > 0:
        fraction = float((getattr(ctx, "resources", None) or {}).get("train_fraction", 0.9))
    if OPTIONS["mcv_tune"]:
        call, settings = mcv_tune(counts, call, fraction, ctx)
    name, args = call
    pred = TOOLS[name][0](counts, **args)
    ctx.log("tool_call", name=name, args=args, result=summary(pred))
    return pred, settings, fraction


def answer(denoised, counts, rows, ctx):
    """The output options on the rows asked for: sharpening or the expected-loss profile
    (each cell keeps its own library size), then clipping and rounding."""
    pred, settings, fraction = denoised
    pred, counts = pred[rows], counts[rows]
    if settings != {"sharpen": 1.0, "mix": 0.0, "loss_weight": 0.0}:
        pred = output_stage(pred, counts, settings, fraction)
        name = "expected_loss" if settings["loss_weight"] > 0 else "sharpen"
        ctx.log("tool_call", name=name, args=settings, result=summary(pred))
    return finish(pred)


def output_settings():
    """The output stage's settings as OPTIONS gives them (mcv_tune may choose others)."""
    return {key: float(OPTIONS[key]) for key in ("sharpen", "mix", "loss_weight")}


def finish(pred):
    """The last output options: clipping and rounding (mcv_tune scores what this returns)."""
    if OPTIONS["clip_negative"]:
        pred = np.maximum(pred, 0.0)
    if OPTIONS["round_output"]:
        pred = np.round(pred)
    return pred


def summary(pred):
    return {"shape": list(pred.shape), "min": round(float(pred.min()), 4),
            "max": round(float(pred.max()), 4), "mean": round(float(pred.mean()), 4)}


# A worker solves several examples in a row: keep the counts and the last denoised matrix.
_COUNTS = {}
_LAST = {}


def load_counts(path):
    if path not in _COUNTS:
        _COUNTS[path] = sp.load_npz(path).toarray().astype(np.float64)
    return _COUNTS[path]


def one_blas_thread():
    """Several workers share the CPU: with one BLAS thread each, threads stop waiting on
    each other (MAGIC ran ten times faster on a busy machine)."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1, user_api="blas")
    except Exception:  # noqa: BLE001 - optional; without it the primitives are only slower
        return contextlib.nullcontext()


def solve(inputs, ctx):
    path = str(ctx.files["train_counts"])
    counts = load_counts(path)
    call = choose_call(counts, ctx)
    key = (path, call[0], tuple(sorted(call[1].items())), repr(OPTIONS))
    with one_blas_thread():
        if key not in _LAST:
            _LAST.clear()
            _LAST[key] = run_method(counts, call, ctx)
        else:
            ctx.log("tool_call", name=call[0], args=call[1], result="reused this worker's last result")
        return answer(_LAST[key], counts, np.asarray(inputs["cells"], dtype=np.int64), ctx).astype(np.float32)
