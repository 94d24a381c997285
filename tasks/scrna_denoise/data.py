"""Counts in, splits out: load integer UMI counts, thin them into train/test molecules
(molecular cross-validation) and split the cells into the loop's train/val/test examples.

Everything here is deterministic given the seed, so evaluate() can rebuild what load() made.
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

BUNDLED_FILE = "10x_pbmc68k_reduced.h5ad"
BUNDLED_LABEL = "scanpy pbmc68k_reduced (bundled)"
# pbmc68k_reduced stores log1p(counts / n_counts * 1e4) to 3 decimals, so the counts it
# gives back are integers up to a relative error of about 5e-4; 2e-3 leaves a margin.
BUNDLED_INTEGER_RTOL = 2e-3


class CountsError(ValueError):
    """The data holds no usable integer counts; the message says what was checked."""


class UnreadableFile(CountsError):
    """The file is not an AnnData .h5ad at all (not HDF5, or HDF5 without AnnData's layout)."""


@dataclass
class Counts:
    matrix: sp.csr_matrix     # cells x genes, integer-valued (int64)
    genes: list[str]
    label: str


@dataclass
class McvSplit:
    train: sp.csr_matrix      # what the harness sees
    test: sp.csr_matrix       # the held-out molecules; never leaves the trusted process
    genes: list[str]
    cell_ids: np.ndarray      # row -> row in the loaded matrix (after cell subsampling)


# ---- loading ---------------------------------------------------------------------------

def bundled_pbmc_path() -> Path:
    """scanpy ships pbmc68k_reduced inside the package; find it without importing scanpy."""
    spec = importlib.util.find_spec("scanpy")
    if spec is None or spec.origin is None:
        raise CountsError("scanpy is not installed, so its bundled pbmc68k_reduced is missing; "
                          "pip install scanpy, or set task.data.path to an .h5ad with counts")
    path = Path(spec.origin).parent / "datasets" / BUNDLED_FILE
    if not path.is_file():
        raise CountsError(f"scanpy's bundled {BUNDLED_FILE} is not at {path}")
    return path


def load_bundled_pbmc() -> Counts:
    """UMI counts of pbmc68k_reduced, recovered from its log-normalised ``raw.X``."""
    import anndata

    with warnings.catch_warnings():  # the old file format makes anndata print notes on moving fields
        warnings.simplefilter("ignore", FutureWarning)
        adata = anndata.read_h5ad(bundled_pbmc_path())
    lognorm = _dense(adata.raw.X).astype(np.float64)
    library = adata.obs["n_counts"].to_numpy(dtype=np.float64)[:, None]
    values = np.expm1(lognorm) * library / 1e4
    rounded = np.round(values)
    error = np.abs(values - rounded) / np.maximum(rounded, 1.0)
    if error.max() > BUNDLED_INTEGER_RTOL:
        raise CountsError(
            f"pbmc68k_reduced: expm1(raw.X) * n_counts / 1e4 is not integer (worst relative "
            f"error {error.max():.2g} > {BUNDLED_INTEGER_RTOL}); the bundled file has changed")
    return Counts(sp.csr_matrix(rounded.astype(np.int64)), list(adata.raw.var_names), BUNDLED_LABEL)


def load_h5ad_counts(path: str | Path, layer: str = "auto") -> Counts:
    """Integer counts from a user's .h5ad: ``layer`` names where they are (``X``, ``raw``
    or a layer name); ``auto`` tries layers['counts'], raw.X, then X."""
    import anndata

    path = Path(path)
    if not path.is_file():
        raise CountsError(f"{path} does not exist")
    try:
        adata = anndata.read_h5ad(path)
    except OSError as err:   # h5py: "Unable to open file (file signature not found)" and the like
        raise UnreadableFile(f"{path} is not a readable HDF5 file, so not an AnnData .h5ad "
                             f"(h5py: {str(err)[:200]})") from None
    except Exception as err:   # noqa: BLE001 - any other reader failure: HDF5, but not AnnData's layout
        raise UnreadableFile(f"{path} is HDF5 but anndata cannot read it as AnnData "
                             f"({type(err).__name__}: {str(err)[:200]})") from None
    checked = []
    for name, matrix, genes in _candidates(adata, layer):
        if matrix is None:
            checked.append(f"{name} (absent)")
            continue
        problem = integer_count_problem(matrix)
        if problem is None:
            return Counts(sp.csr_matrix(matrix, dtype=np.int64), [str(g) for g in genes], str(path))
        checked.append(f"{name} ({problem})")
    raise CountsError(f"{path} holds no raw integer counts: checked " + ", ".join(checked))


def _candidates(adata, layer: str):
    raw = adata.raw
    options = {
        "X": ("X", adata.X, adata.var_names),
        "raw": ("raw.X", None if raw is None else raw.X, None if raw is None else raw.var_names),
    }
    if layer == "auto":
        yield (f"layers['counts']", adata.layers["counts"] if "counts" in adata.layers else None,
               adata.var_names)
        yield options["raw"]
        yield options["X"]
    elif layer in options:
        yield options[layer]
    else:
        yield (f"layers[{layer!r}]", adata.layers[layer] if layer in adata.layers else None,
               adata.var_names)


def integer_count_problem(matrix) -> str | None:
    """None when ``matrix`` holds non-negative integers, else what is wrong with it."""
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    if values.size == 0:
        return "empty"
    if not np.all(np.isfinite(values)):
        return "not finite"
    if values.min() < 0:
        return f"negative values, e.g. {values.min():.3g}"
    fractional = values[values != np.round(values)]
    if fractional.size:
        return f"non-integer values, e.g. {fractional[0]:.3g}"
    return None


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


# ---- molecular cross-validation ---------------------------------------------------------

def mcv_split(counts: Counts, train_fraction: float, seed: int, max_cells: int,
              max_genes: int | None = None) -> McvSplit:
    """Subsample cells, keep the most-counted genes, and thin every count binomially into
    train and test molecules. Genes and cells left without train counts are dropped: no
    method can predict them, and library normalisation would divide by zero."""
    rng = np.random.default_rng(seed)
    matrix = counts.matrix.tocsr()
    cell_ids = np.arange(matrix.shape[0])
    if matrix.shape[0] > max_cells:
        cell_ids = np.sort(rng.choice(matrix.shape[0], size=max_cells, replace=False))
        matrix = matrix[cell_ids]
    genes = np.arange(matrix.shape[1])
    if max_genes and matrix.shape[1] > max_genes:
        totals = np.asarray(matrix.sum(axis=0)).ravel()
        genes = np.sort(np.argsort(-totals, kind="stable")[:max_genes])
        matrix = matrix[:, genes]

    train = matrix.copy()
    train.data = rng.binomial(matrix.data.astype(np.int64), train_fraction)
    test = matrix.copy()
    test.data = matrix.data - train.data

    keep_genes = np.asarray(train.sum(axis=0)).ravel() > 0
    keep_cells = np.asarray(train[:, keep_genes].sum(axis=1)).ravel() > 0
    train, test = (_tidy(m[keep_cells][:, keep_genes]) for m in (train, test))
    names = [counts.genes[g] for g in genes[keep_genes]]
    return McvSplit(train, test, names, cell_ids[keep_cells])


def _tidy(matrix: sp.csr_matrix) -> sp.csr_matrix:
    matrix = sp.csr_matrix(matrix, dtype=np.int64)
    matrix.eliminate_zeros()
    return matrix


# ---- cell splits -------------------------------------------------------------------------

def cell_splits(n_cells: int, train_cells: float, val_cells: float, cells_per_example: int,
                seed: int, train_cells_per_example: int | None = None) -> dict[str, list[np.ndarray]]:
    """Shuffle the cells once and cut them into train/val/test, each a list of examples
    (sorted row indices, at most ``cells_per_example`` rows each; train examples at most
    ``train_cells_per_example``, so that a small train share still gives many examples).
    Which cells land in which split does not depend on the example sizes."""
    order = np.random.default_rng([seed, 1]).permutation(n_cells)
    n_train = int(round(train_cells * n_cells))
    n_val = int(round(val_cells * n_cells))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
             "test": order[n_train + n_val:]}
    sizes = {"train": train_cells_per_example or cells_per_example}
    return {name: _chunks(rows, sizes.get(name, cells_per_example)) for name, rows in parts.items()}


def _chunks(rows: np.ndarray, size: int) -> list[np.ndarray]:
    if rows.size == 0:
        return []
    n = int(np.ceil(rows.size / size))
    return [np.sort(part) for part in np.array_split(rows, n)]
