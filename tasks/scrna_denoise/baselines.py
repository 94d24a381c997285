"""Reference methods, run in the trusted process on ALL cells' train counts (the public
``train_counts`` file a harness reads too), exposed as the task's ``Baseline``s.

- ``no_denoising``   the train counts themselves (score 0 by construction);
- ``knn_smoothing``  Wagner et al. 2017, k=10;
- ``magic``          van Dijk et al. 2018 as magic-impute 3.0 runs it (knn=5, decay=1, t=3,
                     100 PCs, exact solver); checked against the package on pbmc68k;
- ``alra``           Linderman et al. 2022 as its authors' R code runs it (rank by the
                     spectral-gap rule, quantile 0.001);
- ``scvi``           scVI (Lopez et al. 2018) from scvi-tools, default model, trained on the
                     train counts; listed only where scvi-tools imports (a learned baseline:
                     minutes of CPU training, so ``baseline_reports`` leaves it out).

The "perfect" control (the held-out counts themselves) is not here: it needs the test half
and the totals of the cells being scored, so the task builds it per split.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp

from sia.tasks import Baseline, Example, Splits

from . import denoise

Method = Callable[[np.ndarray], np.ndarray]

METHODS: dict[str, Method] = {
    "no_denoising": lambda train: train,
    "knn_smoothing": lambda train: denoise.knn_smooth(train, k=10),
    "magic": lambda train: denoise.magic(train, t=3, k=5, decay=1.0, n_pcs=100),
    "alra": lambda train: denoise.alra(train, rank=0, quantile=0.001),
}


def scvi_denoise(train: np.ndarray, seed: int = 0, max_epochs: int | None = None) -> np.ndarray:
    """scVI's denoised expression (its decoder's mean per cell, as fractions of the library)
    times each cell's train library size. scvi-tools' defaults: 10 latent dimensions, a
    ZINB likelihood, and its own epoch rule (400 up to 20,000 cells, fewer above)."""
    import anndata
    import scvi

    scvi.settings.seed = seed
    adata = anndata.AnnData(X=sp.csr_matrix(np.asarray(train, dtype=np.float32)))
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata)
    model.train(max_epochs=max_epochs, accelerator="cpu", devices=1, enable_progress_bar=False)
    fractions = model.get_normalized_expression(library_size=1.0, return_numpy=True)
    return np.asarray(fractions, dtype=np.float64) * denoise.row_sums(np.asarray(train, dtype=np.float64))


def optional_methods() -> dict[str, Method]:
    """Learned baselines whose package is installed (scvi-tools is a declared dependency, but
    a harness-only install may lack it)."""
    try:
        import scvi  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: not available here
        return {}
    return {"scvi": scvi_denoise}


DESCRIPTIONS = {
    "no_denoising": "The train counts as they are (the metric's zero).",
    "knn_smoothing": "kNN smoothing (Wagner et al. 2017): pool each cell with its 10 nearest cells.",
    "magic": "MAGIC (van Dijk et al. 2018), magic-impute 3.0 defaults: knn 5, decay 1, t 3, 100 PCs, exact.",
    "alra": "ALRA (Linderman et al. 2022): spectral-gap rank, quantile thresholding, per-gene rescaling.",
    "scvi": "scVI (Lopez et al. 2018, scvi-tools defaults): the decoder's mean times the library size.",
}


def baselines(train_counts: Callable[[], sp.spmatrix]) -> list[Baseline]:
    """One Baseline per method; ``train_counts()`` gives every cell's train counts. Each
    method runs once on all cells (as a harness would), then answers every example's rows."""
    cache: dict[str, np.ndarray] = {}

    def make(name: str, method: Method):
        def predict(splits: Splits, examples: list[Example]) -> list[np.ndarray]:
            if name not in cache:
                matrix = train_counts()
                dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
                cache[name] = np.asarray(method(dense.astype(np.float64)), dtype=np.float64)
            pred = cache[name]
            return [pred[np.asarray(e.inputs["cells"], dtype=np.int64)].astype(np.float32) for e in examples]
        return predict

    methods = {**METHODS, **optional_methods()}
    return [Baseline(name, DESCRIPTIONS[name], make(name, method)) for name, method in methods.items()]
