"""The ``task`` config of scrna_denoise: every key, its type and its one default."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class DataConfig:
    path: Optional[str] = None         # .h5ad (AnnData) with raw integer counts; null = scanpy's bundled pbmc68k_reduced
    layer: str = "auto"                # where the counts are: auto (layers['counts'], raw.X, X) | X | raw | <layer name>
    max_cells: int = 4000              # cells are subsampled (seeded) above this
    max_genes: Optional[int] = None    # null = all genes; N keeps the N most-counted (the seed harness works on
                                       # dense matrices: 4000 cells x 5000 genes is 160 MB per copy in a worker)
    train_fraction: float = 0.9        # share of each count the harness sees (binomial thinning); the rest is held out
    seed: int = 0                      # thinning, cell subsampling and the cell splits
    train_cells: float = 0.2           # share of cells in the train split (the rules feedback's train probe)
    val_cells: float = 0.4             # share of cells in val; the rest are test cells
    cells_per_example: int = 70        # a val/test example asks for the denoised rows of this many cells
    train_cells_per_example: int = 14  # a train example's cells: 140 train cells give 10 examples, enough for
                                       # reward-driven training groups (>= 8) and the rules feedback's train probe


@dataclass
class Config:
    name: str = "scrna_denoise"
    # score: the mean of mse_norm and poisson_norm (0 = no denoising, 1 = the held-out counts). It is
    # the only primary metric: mse_norm and poisson_norm are reported, but a trivial answer wins on
    # each alone (all-zero on mse_norm, cell-agnostic gene means on poisson_norm). An example counts
    # as right (no failure) at score >= 0.15, what kNN smoothing and MAGIC reach on the bundled data.
    primary_metric: str = "score"
    data: DataConfig = field(default_factory=DataConfig)
