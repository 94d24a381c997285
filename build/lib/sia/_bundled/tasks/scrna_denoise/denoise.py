"""Denoising primitives (numpy and scipy.sparse) for the trusted baselines.

The seed harness carries its own copy of these functions (a harness may import nothing
from tasks/, which the sandbox cannot read); tests check that both copies agree.

Every method takes a dense cells x genes count matrix and returns one of the same shape
whose cells keep their train library sizes, so the Poisson metric's global rescaling is
meaningful. kNN smoothing, MAGIC and ALRA work in the square-root, library-normalised
space that OpenProblems uses for them; ``lowrank`` works on plain library-normalised
counts and can return negative values (the harness's clip option exists for it).
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
    return normalise_rows(np.sqrt(np.asarray(counts, dtype=np.float64)))


def diffusion_operator(points: np.ndarray, k: int, decay: float, threshold: float = 1e-4) -> np.ndarray:
    """Row-stochastic Markov matrix of an adaptive kernel: each cell's bandwidth is the
    distance to its k-th neighbour, so dense and sparse regions get similar neighbourhoods."""
    distances = np.sqrt(squared_distances(points))
    bandwidth = np.sort(distances, axis=1)[:, min(k, len(points) - 1)]
    kernel = np.exp(-(distances / np.maximum(bandwidth, 1e-12)[:, None]) ** decay)
    kernel[kernel < threshold] = 0.0
    kernel = (kernel + kernel.T) / 2
    return normalise_rows(kernel)


def magic(counts: np.ndarray, t: int = 3, k: int = 10, decay: float = 1.0,
          n_pcs: int = 100) -> np.ndarray:
    """MAGIC-style diffusion (van Dijk et al. 2018): average each cell over t random-walk
    steps on a cell graph built in PCA space."""
    counts = np.asarray(counts, dtype=np.float64)
    space = sqrt_space(counts)
    operator = diffusion_operator(pca_scores(space, n_pcs), k, decay)
    diffused = space
    for _ in range(max(1, int(t))):  # t products with the data: cheaper than a matrix power
        diffused = operator @ diffused
    return rescale_to_library(diffused ** 2, counts)


def truncated_svd(matrix: np.ndarray, rank: int) -> np.ndarray:
    u, s, vt = top_singular(matrix, rank)
    return (u * s) @ vt


def alra(counts: np.ndarray, rank: int = 20, quantile: float = 0.001) -> np.ndarray:
    """ALRA-style zero-preserving low-rank completion (Linderman et al. 2022): a rank-k
    approximation, with each gene's values under the magnitude of its most negative
    quantile set back to zero (those zeros are likely biological), the rest rescaled to
    the observed mean and spread of the gene, and observed values never erased."""
    counts = np.asarray(counts, dtype=np.float64)
    space = sqrt_space(counts)
    approx = truncated_svd(space, rank)
    floor = np.abs(np.quantile(approx, quantile, axis=0))
    approx[approx <= floor] = 0.0
    approx = _match_nonzero_moments(approx, space)
    approx = np.maximum(approx, 0.0)
    observed = space > 0
    lost = observed & (approx == 0)
    approx[lost] = space[lost]
    return rescale_to_library(approx ** 2, counts)


def _match_nonzero_moments(approx: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Per gene, shift and scale the nonzero approximated values to the mean and standard
    deviation of the gene's nonzero observed values."""
    out = approx.copy()
    for gene in range(approx.shape[1]):
        a, o = approx[:, gene], original[:, gene]
        a_nz, o_nz = a[a > 0], o[o > 0]
        if a_nz.size < 2 or o_nz.size < 2 or a_nz.std() == 0:
            continue
        out[a > 0, gene] = (a_nz - a_nz.mean()) / a_nz.std() * o_nz.std() + o_nz.mean()
    return out


def lowrank(counts: np.ndarray, rank: int = 20) -> np.ndarray:
    """Truncated SVD of library-normalised counts, back on the count scale. Unlike the
    methods above it can return negative values."""
    counts = np.asarray(counts, dtype=np.float64)
    return truncated_svd(normalise_rows(counts), rank) * row_sums(counts)
