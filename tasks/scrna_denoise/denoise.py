"""Denoising primitives (numpy and scipy.sparse) for the trusted baselines.

The seed harness carries its own copy of these functions (a harness may import nothing
from tasks/, which the sandbox cannot read); tests check that both copies agree.

Every method takes a dense cells x genes count matrix and returns one of the same shape
whose cells keep their train library sizes, so the Poisson metric's global rescaling is
meaningful (OpenProblems multiplies by the library size without renormalising, which
leaves MAGIC's totals low and costs it Poisson likelihood for no reason). MAGIC works in
the square-root, library-normalised space OpenProblems gives it; ALRA in its own log space;
kNN smoothing in Wagner et al.'s median-normalised square-root space; ``lowrank`` works on
plain library-normalised counts and can return negative values (the harness's clip option
exists for it).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def row_sums(matrix: np.ndarray) -> np.ndarray:
    return matrix.sum(axis=1, keepdims=True)


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to sum 1 (all-zero rows stay zero)."""
    sums = row_sums(matrix)
    return np.divide(matrix, sums, out=np.zeros_like(matrix), where=sums > 0)


def rescale_to_library(pred: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each predicted cell scaled to its observed total; a cell predicted all-zero keeps
    its observed counts (nothing to rescale)."""
    sums = row_sums(pred)
    return np.divide(pred * row_sums(counts), sums, out=counts.astype(np.float64), where=sums > 0)


def top_singular(matrix: np.ndarray, rank: int, n_iter: int = 4):
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


def pca_scores(matrix: np.ndarray, n_components: int) -> np.ndarray:
    u, s, _ = top_singular(matrix - matrix.mean(axis=0), n_components)
    return u * s


def squared_distances(points: np.ndarray) -> np.ndarray:
    norms = np.sum(points ** 2, axis=1)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * points @ points.T, 0)


def nearest(points: np.ndarray, k: int) -> np.ndarray:
    """Indices of each point's k nearest points, itself first."""
    d = squared_distances(points)
    np.fill_diagonal(d, -1.0)
    k = min(k, len(points))
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(d, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def pooling_matrix(neighbours: np.ndarray) -> sp.csr_matrix:
    """Sparse cells x cells matrix with a 1 for each cell's neighbours: a product with it
    sums the neighbours' counts without a cells x k x genes temporary."""
    n, k = neighbours.shape
    return sp.csr_matrix((np.ones(n * k), neighbours.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def knn_smooth(counts: np.ndarray, k: int = 10, n_pcs: int = 10) -> np.ndarray:
    """kNN smoothing (Wagner et al. 2017): pool each cell's counts with its k nearest
    cells, growing the neighbourhood 1, 3, 7, ... so neighbours are found on smoothed data."""
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
    counts = np.asarray(counts, dtype=np.float64)
    space = sqrt_space(counts)
    points = pca_scores(space, n_pcs) if space.shape[1] > n_pcs else space
    operator = markov(alpha_decay_kernel(points, k, decay, 3 * k if k_max is None else k_max))
    diffused = space
    for _ in range(max(1, int(t))):  # t products with the data: cheaper than a matrix power
        diffused = operator @ diffused
    return rescale_to_library(diffused ** 2, counts)


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
    approx = _match_nonzero_moments(approx, space)
    approx = np.maximum(approx, 0.0)
    observed = space > 0
    lost = observed & (approx == 0)
    approx[lost] = space[lost]
    return rescale_to_library(np.expm1(approx), counts)


def _match_nonzero_moments(approx: np.ndarray, original: np.ndarray) -> np.ndarray:
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


def lowrank(counts: np.ndarray, rank: int = 20) -> np.ndarray:
    """Truncated SVD of library-normalised counts, back on the count scale. Unlike the
    methods above it can return negative values."""
    counts = np.asarray(counts, dtype=np.float64)
    return truncated_svd(normalise_rows(counts), rank) * row_sums(counts)
